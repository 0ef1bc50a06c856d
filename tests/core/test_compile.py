"""compile_model (spec rlhf.md §6): torch.compile per encoder/decoder layer, eager fallback.

Tests compile with the ``eager`` / ``aot_eager`` dynamo backends (a real dynamo trace, no C++
build) to check wiring and equal outputs; a backend that raises checks the fallback + warning.
Inductor itself is measured in bench/attention_compile.py, not here (it takes minutes on 2 cores).
"""

from __future__ import annotations

import copy
import json
import random
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from core.model.compile import compile_model, compiled_layers
from core.model.config import NeuralNetConfig
from core.model.model import TransformerNeuralNetBackbone


def _config(vocab: int = 64, **kw: Any) -> NeuralNetConfig:
    base: dict[str, Any] = dict(
        vocab_size=vocab, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=2,
        num_decoder_layers=2, dim_feedforward=64, max_position_embeddings=96,
        num_tot_branches=2, num_scratchpad_slots=4, memory_slots=8, memory_dim=32,
        memory_heads=4, kg_num_entities=16, kg_dim=16, num_tasks=2,
    )
    base.update(kw)
    return NeuralNetConfig(**base)


def _model(seed: int = 0, **kw: Any) -> TransformerNeuralNetBackbone:
    torch.manual_seed(seed)
    return TransformerNeuralNetBackbone(_config(**kw)).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 64, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False  # a padded row
    return ids, mask, torch.randint(3, 64, (2, 6), generator=g)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids, mask, dec = _batch()
    with torch.no_grad():
        return model(ids, attention_mask=mask, decoder_input_ids=dec)["logits"]


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_layers_give_the_same_logits(backend: str) -> None:
    reference = _logits(_model())
    model = _model()
    names = list(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning on a working backend
        assert compile_model(model, backend=backend) is model
        out = _logits(model)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    assert compiled_layers(model) == {
        "encoder.layers.0": True, "encoder.layers.1": True,
        "decoder.layers.0": True, "decoder.layers.1": True,
    }
    assert list(model.state_dict()) == names  # checkpoints are unchanged
    # The reasoning engine's control flow (and its own encoder layer) stays eager.
    assert model.reasoning_engine is not None
    assert all("forward" not in m.__dict__ for m in model.reasoning_engine.modules())


def test_compiled_layers_train_with_the_same_gradients() -> None:
    ids, mask, dec = _batch()
    grads = []
    for compiled in (False, True):
        model = _model().train()
        if compiled:
            compile_model(model, backend="aot_eager")
        out = model(ids, attention_mask=mask, decoder_input_ids=dec, labels=dec)
        out["loss"].backward()
        grads.append(model.decoder.layers[0].ffn.up_proj.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_cached_generation_equals_uncompiled() -> None:
    from core.infer.generation import GenerationConfig, generate_ids

    ids, mask, _ = _batch()
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.0, stop_ids=())
    plain = generate_ids(_model(), ids, mask, cfg)
    compiled = generate_ids(compile_model(_model(), backend="eager"), ids, mask, cfg)
    assert [compiled.row(i) for i in range(2)] == [plain.row(i) for i in range(2)]


def _failing_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    raise RuntimeError("simulated compiler crash")


def test_a_failing_compiler_falls_back_to_eager_with_a_warning() -> None:
    torch._dynamo.reset()
    reference = _logits(_model())
    model = compile_model(_model(), backend=_failing_backend)
    with pytest.warns(RuntimeWarning) as record:
        out = _logits(model)
    messages = [str(w.message) for w in record]
    assert len(messages) == 4, messages  # one per layer
    for name in ("encoder.layers.0", "encoder.layers.1", "decoder.layers.0", "decoder.layers.1"):
        assert any(m.startswith(f"compile_model: {name} could not be compiled with backend "
                                "'_failing_backend' (RuntimeError: simulated compiler crash)")
                   for m in messages), (name, messages)
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)
    assert set(compiled_layers(model).values()) == {False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per layer, then plain eager
        torch.testing.assert_close(_logits(model), reference, rtol=1e-6, atol=1e-6)


def test_an_unknown_backend_warns_when_compiling_and_runs_eager() -> None:
    reference = _logits(_model())
    with pytest.warns(RuntimeWarning, match="could not be compiled with backend 'no-such'"):
        model = compile_model(_model(), backend="no-such")
    torch.testing.assert_close(_logits(model), reference, rtol=1e-6, atol=1e-6)


def test_a_bad_input_is_the_callers_error_and_keeps_the_layer_compiled() -> None:
    model = compile_model(_model(), backend="eager")
    layer = model.encoder.layers[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError):
            layer(torch.randn(1, 4, 7))  # wrong width
    assert compiled_layers(model)["encoder.layers.0"] is True


def test_deep_copies_run_eager_on_their_own_weights() -> None:
    model = compile_model(_model(), backend="eager")
    twin = copy.deepcopy(model)
    assert compiled_layers(twin) == {}
    with torch.no_grad():
        for p in twin.decoder.layers[0].ffn.parameters():
            p.mul_(0.5)
    # The copy computes with its own (changed) weights, the original with its own.
    assert not torch.allclose(_logits(twin), _logits(model))
    torch.testing.assert_close(_logits(model), _logits(_model()), rtol=1e-5, atol=1e-5)


def test_compile_model_refuses_a_module_without_layers() -> None:
    with pytest.raises(TypeError, match="no Aeron encoder/decoder layers"):
        compile_model(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------ wiring


@pytest.fixture
def inductor_as_eager(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record the backend asked for and compile with ``eager`` instead (inductor is minutes)."""
    asked: list[Any] = []
    real = torch.compile

    def fake_compile(fn: Any, backend: Any = "inductor", mode: Any = None, **kw: Any) -> Any:
        asked.append(backend)
        return real(fn, backend="eager")

    monkeypatch.setattr(torch, "compile", fake_compile)
    return asked


def test_generate_compile_flag(tmp_path: Path, inductor_as_eager: list[Any]) -> None:
    from typer.testing import CliRunner

    from aeron_tui.cli import app
    from core.data.tokenizer import AeronTokenizer
    from core.runs.checkpoint import save_checkpoint

    tok = AeronTokenizer.byte_level()
    torch.manual_seed(1)
    model = TransformerNeuralNetBackbone(_config(tok.vocab_size, tie_word_embeddings=False))
    assert model.output_projection is not None
    with torch.no_grad():
        model.output_projection.weight.mul_(60.0)  # peaked, input-dependent greedy replies
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, config=model.config, tokenizer=tok,
                           trainer_state={"global_step": 0}, extra={"trainer": "simple"})
    base = ["generate", "--checkpoint", str(ckpt), "--prompt", "hello there",
            "--temperature", "0", "--max-new-tokens", "12"]
    runner = CliRunner()
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    assert inductor_as_eager == []
    compiled = runner.invoke(app, [*base, "--compile", "--attention", "manual"])
    assert compiled.exit_code == 0, compiled.output
    assert inductor_as_eager == ["inductor"] * 4  # one per encoder/decoder layer
    assert compiled.stdout == plain.stdout and plain.stdout.strip()
    bad = runner.invoke(app, [*base, "--attention", "fast"])
    assert bad.exit_code != 0
    assert "--attention must be one of auto, flash2, sdpa, manual" in str(bad.exception)


def _corpus(path: Path) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(60):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append({"provider": "synthetic", "style_label": "qa", "turn_id": f"t{i:04d}",
                     "user_input": f"What is {a} plus {b}?",
                     "assistant_reply": f"{a} plus {b} is {a + b}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train(tmp_path: Path, name: str, **changes: Any) -> Any:
    from core.train.config import RunConfig
    from core.train.simple import SimpleTrainer

    cfg = RunConfig(
        run_dir=str(tmp_path / name), data=str(_corpus(tmp_path / "c.jsonl")), steps=3,
        micro_batch=2, seq_len=32, precision="fp32", device="cpu", log_every=1, eval_every=100,
        eval_max_batches=1, checkpoint_every=3, keep_last=1, tokenizer_vocab_size=300, seed=3,
        **changes,
    )
    model_config = _config(300, num_encoder_layers=1, num_decoder_layers=1)
    trainer = SimpleTrainer(cfg, model_config)
    assert trainer.run() == "finished"
    return trainer


@pytest.mark.slow
def test_training_run_compile_field(tmp_path: Path, inductor_as_eager: list[Any]) -> None:
    plain = _train(tmp_path, "plain")
    compiled = _train(tmp_path, "compiled", compile=True,
                      model={"attention_backend": "manual"})
    assert inductor_as_eager == ["inductor", "inductor"]
    assert compiled_layers(compiled.model) == {"encoder.layers.0": True, "decoder.layers.0": True}
    assert compiled.train_model is compiled.model  # compiled in place, not wrapped
    assert {m.backend for m in compiled.model.modules() if hasattr(m, "backend")} == {"manual"}
    for name, tensor in plain.model.state_dict().items():  # same training, same weights
        torch.testing.assert_close(compiled.model.state_dict()[name], tensor,
                                   rtol=1e-4, atol=1e-5, msg=name)
