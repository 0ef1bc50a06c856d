"""ONNX export: the graph computes what generate runs (memory, reasoning, uncertainty), dynamic
axes, the opset asked for, mode restored."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from enh_common import tiny_config

from core.infer.export import ExportError, export_model_to_onnx, require_onnx
from core.model.layers import NO_MASK
from core.model.model import TransformerNeuralNetBackbone

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None


def _inputs(b: int, s: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (b, s), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, s - 1 :] = 0
    dec = torch.randint(3, 96, (b, t), generator=gen)
    return ids, mask, dec


def _trained_checkpoint(run_dir: Path) -> Path:
    """A checkpoint in the state training leaves one in: memory slots written, and a complexity
    threshold the reasoning engine passes for some samples and not for others."""
    from core.data.tokenizer import AeronTokenizer
    from core.runs.checkpoint import save_checkpoint

    tok = AeronTokenizer.byte_level()
    config = tiny_config(vocab_size=tok.vocab_size, memory_slots=16)
    torch.manual_seed(0)
    model = TransformerNeuralNetBackbone(config)
    memory = model.neural_memory
    assert memory is not None and model.reasoning_engine is not None
    memory.write(torch.randn(6, memory.memory_dim), torch.randn(6, memory.memory_dim))
    ids, _, _ = _inputs(6, 9, 4, 1)
    with torch.no_grad():
        states = model.encoder(model.token_embedding(ids), NO_MASK, model.rotary(9, 0, ids.device))[0]
        complexity = model.reasoning_engine.complexity(model.encoder_norm(states), None)
    config = config.replace(reasoning_complexity_threshold=float(complexity.median()))
    return save_checkpoint(run_dir / "checkpoints" / "step_000001", model=model, config=config,
                           tokenizer=tok, trainer_state={"global_step": 1})


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_ONNX and HAVE_ORT),
                    reason="needs the onnx extra: pip install 'aeron-tui[onnx]' (onnx, onnxscript, onnxruntime)")
def test_exported_graph_computes_what_generate_runs(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from typer.testing import CliRunner

    from aeron_tui.cli import app
    from core.infer.generation import DECODER_PREFIX, GenerationConfig, generate_ids
    from core.infer.inference import load_policy

    ckpt = _trained_checkpoint(tmp_path / "run")
    path = tmp_path / "out" / "model.onnx"
    # The CLI with its defaults (opset 18, --verify), given the run directory as generate takes it.
    result = CliRunner().invoke(app, ["model", "export", "--checkpoint", str(tmp_path / "run"),
                                      "--out", str(path)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Error" not in result.output
    assert f"opset 18) from {ckpt}" in result.output
    assert float(result.output.split("max |difference|")[1].split()[0]) < 1e-5
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temp left over
    assert [o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")] == [18]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "evidential_uncertainty"]
    model, _, _ = load_policy(tmp_path / "run")  # the model generate runs
    ran = set()
    for b, s, t in ((6, 9, 4), (3, 4, 9), (1, 11, 2)):  # batch and both lengths are dynamic
        ids, mask, dec = _inputs(b, s, t, b + s + t)
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
            model.set_export_mode(True)  # the plain backbone the old graph held
            plain = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)["logits"]
            model.set_export_mode(False)
        ran.update(bool(x) for x in expected["reasoning_info"]["skip_mask"])
        logits, uncertainty = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                                 "decoder_input_ids": dec.numpy()})
        assert logits.shape == tuple(expected["logits"].shape)
        error = float(abs(torch.from_numpy(logits) - expected["logits"]).max())
        assert error < 1e-5
        # Memory and reasoning are in the graph: without them (the old export) the logits of
        # this freshly initialised model move by far more than the graph's rounding error.
        assert float(abs(torch.from_numpy(logits) - plain).max()) > max(1e-4, 50 * error)
        evidential = expected["uncertainty_estimates"]["evidential_uncertainty"]
        assert float(abs(torch.from_numpy(uncertainty) - evidential).max()) < 1e-5
    assert ran == {True, False}  # samples over and under the complexity threshold
    # Greedy decoding with the graph (the whole decoder input each step) gives generate's tokens.
    ids, mask, _ = _inputs(2, 6, 2, 5)
    want = generate_ids(model, ids, mask, GenerationConfig(max_new_tokens=6, temperature=0.0)).tokens
    seq = torch.tensor([list(DECODER_PREFIX)] * 2)
    for _ in range(6):
        logits = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                    "decoder_input_ids": seq.numpy()})[0]
        seq = torch.cat((seq, torch.from_numpy(logits[:, -1]).argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(seq[:, len(DECODER_PREFIX):], want[:, :6])


def test_unsupported_opsets_are_refused_in_one_line_before_any_work(tmp_path: Path) -> None:
    model = TransformerNeuralNetBackbone(tiny_config())
    for opset in (17, 99):
        with pytest.raises(ExportError, match=r"--opset \d+ is not supported: .* writes opsets 18-\d+; use --opset 18"):
            export_model_to_onnx(model, *_inputs(2, 5, 4, 0), tmp_path / "m.onnx", opset=opset)
    assert not (tmp_path / "m.onnx").exists()


def test_export_rejects_bad_example_inputs(tmp_path: Path) -> None:
    model = TransformerNeuralNetBackbone(tiny_config())
    ids, mask, dec = _inputs(2, 5, 4, 0)
    with pytest.raises(ExportError, match="attention_mask"):
        export_model_to_onnx(model, ids, mask[:, :3], dec, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="at least 2"):
        export_model_to_onnx(model, ids[:, :1], mask[:, :1], dec, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnx_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake_find_spec(name: str, *args: object):
        return None if name == "onnxscript" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ExportError, match=r"onnxscript.*aeron-tui\[onnx\]"):
        require_onnx()


@pytest.mark.parametrize("written", [0, 5])
def test_the_exported_form_of_the_memory_read_equals_the_eager_one(written: int) -> None:
    from core.model.memory import NeuralMemoryNetwork

    torch.manual_seed(0)
    memory = NeuralMemoryNetwork(tiny_config(memory_slots=8)).eval()
    if written:
        memory.write(torch.randn(written, memory.memory_dim), torch.randn(written, memory.memory_dim))
    x = torch.randn(3, 6, 32)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    with torch.no_grad():
        eager, recall, pending = memory(x, mask)
        traced, traced_recall, _ = memory._traced_read(
            x, memory.norm(x), pending.keys, pending.values, pending)
    assert torch.allclose(traced, eager, atol=1e-6)
    if written:
        assert recall is not None and torch.allclose(traced_recall, recall, atol=1e-6)
        assert not torch.allclose(eager, x)  # the read changed the states
    else:
        assert recall is None and torch.equal(traced, x) and not traced_recall.any()
