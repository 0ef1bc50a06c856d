"""`aeron-tui merge` end to end on tiny checkpoints: lineage, report, refusals before writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aeron_tui.cli import app


def _config(**changes):
    from core.model.config import NeuralNetConfig

    base = dict(
        vocab_size=268, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=1, num_decoder_layers=1,
        dim_feedforward=64, max_position_embeddings=128, num_tot_branches=2, num_scratchpad_slots=4,
        memory_slots=8, memory_dim=16, memory_heads=2, kg_num_entities=16, kg_dim=8, num_tasks=2,
        enable_multimodal=False,
    )
    base.update(changes)
    return NeuralNetConfig(**base)


def _checkpoint(path: Path, seed: int, tokenizer=None, **changes) -> Path:
    from core.data.tokenizer import AeronTokenizer
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    cfg = _config(**changes)
    model = TransformerNeuralNetBackbone(cfg)
    tok = tokenizer or AeronTokenizer.byte_level()
    return save_checkpoint(path, model=model, config=cfg, tokenizer=tok, trainer_state={"global_step": seed})


@pytest.fixture
def ckpts(tmp_path: Path) -> list[Path]:
    return [_checkpoint(tmp_path / f"c{i}", seed=i) for i in range(3)]


def _styles(tmp_path: Path) -> Path:
    rows = [
        {"provider": "p", "style_label": "qa", "user_input": f"q {i}", "assistant_reply": f"answer {i}", "turn_id": str(i)}
        for i in range(60)
    ]
    path = tmp_path / "styles.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ties_merge_writes_a_loadable_checkpoint_with_lineage_and_report(tmp_path: Path, ckpts: list[Path]) -> None:
    from core.runs.checkpoint import build_model_from_checkpoint, read_manifest

    out = tmp_path / "merged"
    result = CliRunner().invoke(app, [
        "merge", "--method", "ties", "--base", str(ckpts[0]), "--models", str(ckpts[1]), "--models", str(ckpts[2]),
        "--density", "0.5", "--out", str(out), "--data", str(_styles(tmp_path)), "--samples", "16",
    ])
    assert result.exit_code == 0, result.output
    model, tok, cfg = build_model_from_checkpoint(out)
    logits = model(torch.tensor([[5, 6, 7]]), decoder_input_ids=torch.tensor([[1, 8]]))["logits"]
    assert logits.shape == (1, 2, cfg.vocab_size) and torch.isfinite(logits).all()
    manifest = read_manifest(out)
    parents = {p["id"] for p in manifest["parents"]}
    assert parents == {read_manifest(c)["version"] for c in ckpts}
    assert all(p["relation"] == "merged" for p in manifest["parents"])
    report = json.loads((out / "merge_report.json").read_text())
    assert report["method"] == "ties" and report["summary"]["mean_trimmed_frac"] > 0.3
    assert str(out) in report["sanity"] and len(report["sanity"]) == 4
    assert "Sanity check" in result.output


def test_merge_of_identical_checkpoints_is_identity(tmp_path: Path, ckpts: list[Path]) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "same"
    result = CliRunner().invoke(app, [
        "merge", "--method", "slerp", "--models", str(ckpts[1]), "--models", str(ckpts[1]), "--out", str(out), "--no-sanity",
    ])
    assert result.exit_code == 0, result.output
    a, b = load_file(str(ckpts[1] / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_refuses_different_configs_and_tokenizers_before_writing(tmp_path: Path, ckpts: list[Path]) -> None:
    from core.data.tokenizer import AeronTokenizer

    other_cfg = _checkpoint(tmp_path / "wide", seed=5, d_model=64)
    tok = AeronTokenizer.train(["hello world hello world"] * 20, vocab_size=280)
    other_tok = _checkpoint(tmp_path / "tok", seed=6, tokenizer=tok, vocab_size=tok.vocab_size)
    other_tok2 = _checkpoint(tmp_path / "tok2", seed=7, vocab_size=tok.vocab_size)
    runner = CliRunner()
    out = tmp_path / "never"
    r1 = runner.invoke(app, ["merge", "--models", str(ckpts[0]), "--models", str(other_cfg), "--out", str(out), "--no-sanity"])
    assert r1.exit_code != 0 and "different model configs" in str(r1.exception or r1.output)
    r2 = runner.invoke(app, ["merge", "--models", str(other_tok2), "--models", str(other_tok), "--out", str(out), "--no-sanity"])
    assert r2.exit_code != 0 and "different tokenizers" in str(r2.exception or r2.output)
    r3 = runner.invoke(app, ["merge", "--method", "ties", "--models", str(ckpts[1]), "--out", str(out), "--no-sanity"])
    assert r3.exit_code != 0 and "base" in str(r3.exception or r3.output)
    r4 = runner.invoke(app, ["merge", "--method", "ties", "--base", str(ckpts[0]), "--models", str(ckpts[1]),
                             "--density", "0", "--out", str(out), "--no-sanity"])
    assert r4.exit_code != 0 and "density" in str(r4.exception or r4.output)
    assert not out.exists()
    existing = tmp_path / "exists"
    existing.mkdir()
    r5 = runner.invoke(app, ["merge", "--models", str(ckpts[0]), "--models", str(ckpts[1]), "--out", str(existing), "--no-sanity"])
    assert r5.exit_code != 0 and "already exists" in str(r5.exception or r5.output)


def test_greedy_soup_keeps_only_models_that_help(tmp_path: Path, ckpts: list[Path]) -> None:
    out = tmp_path / "greedy"
    result = CliRunner().invoke(app, [
        "merge", "--method", "greedy_soup", "--models", str(ckpts[0]), "--models", str(ckpts[1]),
        "--out", str(out), "--data", str(_styles(tmp_path)), "--samples", "16",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "merge_report.json").read_text())
    greedy = report["params"]["greedy"]
    scores = greedy["scores"]
    assert greedy["kept"][0] == min(scores, key=scores.get)  # the best single model comes first
    assert report["sanity"][str(out)]["loss"] <= min(scores.values()) + 1e-6  # the soup is never worse


def test_generate_with_an_ensemble_of_checkpoints(tmp_path: Path, ckpts: list[Path]) -> None:
    runner = CliRunner()
    args = ["generate", "--checkpoint", str(ckpts[0]), "--prompt", "hello", "--max-new-tokens", "5",
            "--temperature", "0"]
    solo = runner.invoke(app, args)
    same = runner.invoke(app, [*args, "--ensemble", str(ckpts[0])])  # an ensemble of one model twice
    assert solo.exit_code == 0 and same.exit_code == 0, solo.output + same.output
    assert solo.stdout.splitlines()[0] == same.stdout.splitlines()[0]
    mixed = runner.invoke(app, [*args, "--ensemble", str(ckpts[1])])
    assert mixed.exit_code == 0, mixed.output
    from core.data.tokenizer import AeronTokenizer

    tok = AeronTokenizer.train(["hello world hello world"] * 20, vocab_size=280)
    other = _checkpoint(tmp_path / "othertok", seed=9, tokenizer=tok, vocab_size=tok.vocab_size)
    refused = runner.invoke(app, [*args, "--ensemble", str(other)])
    assert refused.exit_code != 0


def _run_dir(root: Path, seed: int) -> tuple[Path, Path]:
    """A run directory with one complete checkpoint (what `train` leaves), and that checkpoint."""
    ckpt = _checkpoint(root / "checkpoints" / "step_000007", seed=seed)
    return root, ckpt


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _assert_same_weights(got: Path, expected: Path) -> None:
    a, b = _weights(expected), _weights(got)
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-6, atol=1e-6), k


@pytest.mark.parametrize("method, extra", [
    ("soup", []),
    ("greedy_soup", []),
    ("task_arithmetic", ["--base", "RUN"]),
    ("ties", ["--base", "RUN"]),
    ("ties", ["--base", "OTHER", "--density", "1"]),
    ("dare_ties", ["--base", "RUN"]),
    ("dare_linear", ["--base", "OTHER", "--density", "1"]),
    ("slerp", []),
    ("layerwise", []),
    ("fisher", []),
])
def test_merging_a_checkpoint_with_itself_gives_it_back(
        tmp_path: Path, ckpts: list[Path], method: str, extra: list[str]) -> None:
    run, ckpt = _run_dir(tmp_path / "run", seed=11)
    extra = [{"RUN": str(run), "OTHER": str(ckpts[0])}.get(x, x) for x in extra]
    out = tmp_path / "same"
    # The README's list syntax, one model named by its run directory.
    result = CliRunner().invoke(app, [
        "merge", "--method", method, "--models", str(run), str(ckpt), *extra, "--out", str(out),
        "--no-sanity", "--data", str(_styles(tmp_path)), "--samples", "8",
    ])
    assert result.exit_code == 0, result.output
    assert f"using its newest complete checkpoint {ckpt.name}" in result.output
    _assert_same_weights(out, ckpt)
    report = json.loads((out / "merge_report.json").read_text())
    assert report["models"] == [str(ckpt), str(ckpt)]


def _consolidated_checkpoint(path: Path, seed: int, data: Path) -> Path:
    """A checkpoint whose weights carry an EWC Fisher, as `aeron-tui continue` leaves one."""
    from core.data.formatting import encode_styles_sample
    from core.data.loader import collate
    from core.data.styles import read_styles
    from core.data.tokenizer import AeronTokenizer
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    cfg = _config()
    model = TransformerNeuralNetBackbone(cfg)
    tok = AeronTokenizer.byte_level()
    pairs = [encode_styles_sample(s, tok, 64) for s in read_styles(data)[:8]]
    assert model.continual_learning is not None
    model.continual_learning.consolidate(model, [collate(pairs[:4]), collate(pairs[4:])])
    return save_checkpoint(path, model=model, config=cfg, tokenizer=tok, trainer_state={"global_step": 1})


def test_fisher_self_merge_with_a_stored_ewc_fisher_is_the_identity(tmp_path: Path) -> None:
    # The reported defect: ΣFθ / (ΣF + 1e-8) moved weights by 64 % on average and zeroed every
    # tensor whose Fisher is ~0 (knowledge graph, vision, uncertainty heads).
    data = _styles(tmp_path)
    ckpt = _consolidated_checkpoint(tmp_path / "ewc", seed=3, data=data)
    fisher = {k: v for k, v in _weights(ckpt).items() if ".ewc_state.fisher." in k}
    assert fisher and any(float(v.abs().max()) == 0 for v in fisher.values())  # unused modules
    out = tmp_path / "self"
    result = CliRunner().invoke(app, ["merge", "--method", "fisher", "--fisher", "stored", "--models",
                                      str(ckpt), str(ckpt), "--out", str(out), "--no-sanity"])
    assert result.exit_code == 0, result.output
    _assert_same_weights(out, ckpt)
    assert "its stored EWC Fisher" in result.output
    assert "tensors had no Fisher information in any model and were averaged plainly" in result.output


def test_fisher_merge_computes_fishers_on_data_and_averages_where_they_are_zero(
        tmp_path: Path, ckpts: list[Path]) -> None:
    data = _styles(tmp_path)
    runner = CliRunner()
    fisher_out, soup_out = tmp_path / "fisher", tmp_path / "soup"
    args = ["--models", str(ckpts[1]), str(ckpts[2]), "--no-sanity", "--data", str(data), "--samples", "8"]
    fisher_run = runner.invoke(app, ["merge", "--method", "fisher", *args, "--out", str(fisher_out)])
    assert fisher_run.exit_code == 0, fisher_run.output
    assert runner.invoke(app, ["merge", "--method", "soup", *args, "--out", str(soup_out)]).exit_code == 0
    report = json.loads((fisher_out / "merge_report.json").read_text())
    assert [f["source"] for f in report["params"]["fisher"]] == ["computed", "computed"]
    assert report["params"]["fisher"][0]["samples"] == 8
    fisher_w, soup_w = _weights(fisher_out), _weights(soup_out)
    # No knowledge-graph input in the data: no gradient, no Fisher → the plain average.
    kg = [k for k in fisher_w if k.startswith("knowledge_graph.")]
    assert kg and all(torch.allclose(fisher_w[k], soup_w[k], rtol=1e-6, atol=1e-7) for k in kg)
    # Where the data gives information, the Fisher decides: not the soup, but between the inputs.
    name = "encoder.layers.0.ffn.up_proj.weight"
    a, b = _weights(ckpts[1])[name], _weights(ckpts[2])[name]
    assert not torch.allclose(fisher_w[name], soup_w[name], atol=1e-4)
    assert bool(((fisher_w[name] >= torch.minimum(a, b) - 1e-6) & (fisher_w[name] <= torch.maximum(a, b) + 1e-6)).all())
    assert report["summary"]["tensors_plain_average"] >= len(kg)


def test_fisher_stored_refuses_a_checkpoint_without_one(tmp_path: Path, ckpts: list[Path]) -> None:
    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["merge", "--method", "fisher", "--fisher", "stored", "--models",
                                      str(ckpts[0]), str(ckpts[1]), "--out", str(out), "--no-sanity"])
    assert result.exit_code != 0
    assert "has no stored Fisher" in str(result.exception or result.output)
    assert not out.exists()


def test_models_as_lists_and_repeated_keep_their_order(tmp_path: Path, ckpts: list[Path]) -> None:
    out = tmp_path / "order"
    result = CliRunner().invoke(app, [
        "merge", "--models", str(ckpts[2]), str(ckpts[0]), "-m", str(ckpts[1]), "--weights", "1", "2",
        "--weights", "3", "--out", str(out), "--no-sanity",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "merge_report.json").read_text())
    assert report["models"] == [str(ckpts[2]), str(ckpts[0]), str(ckpts[1])]
    assert report["params"]["weights"] == [1.0, 2.0, 3.0]
    w = {i: _weights(c)["decoder_norm.weight"].float() for i, c in enumerate(ckpts)}
    expected = (1 * w[2] + 2 * w[0] + 3 * w[1]) / 6
    assert torch.allclose(_weights(out)["decoder_norm.weight"].float(), expected, atol=1e-6)


def test_list_options_expand_in_order_and_stop_at_the_next_option() -> None:
    from aeron_tui.commands.merge import expand_list_options

    assert expand_list_options(["--models", "a", "b", "--out", "o", "-m", "c", "--weights", "-1", "2.5"]) == [
        "--models", "a", "--models", "b", "--out", "o", "-m", "c", "--weights", "-1", "--weights", "2.5"]
    assert expand_list_options(["--models=a", "b", "--", "c"]) == ["--models=a", "--models", "b", "--", "c"]


def test_unknown_method_lists_every_method_in_one_line(tmp_path: Path, ckpts: list[Path]) -> None:
    import subprocess
    import sys

    from core.evolve.merge import CLI_METHODS

    # Through the console script: one stderr line and exit code 1, before anything is loaded.
    proc = subprocess.run(
        [sys.executable, "-m", "aeron_tui", "merge", "--method", "bogus", "--models", str(ckpts[0]),
         str(ckpts[1]), "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--method 'bogus'" in lines[0]
    assert "greedy_soup" in CLI_METHODS and all(m in lines[0] for m in CLI_METHODS)
    assert not (tmp_path / "x").exists()


def test_a_directory_that_is_neither_a_checkpoint_nor_a_run_is_one_clear_error(
        tmp_path: Path, ckpts: list[Path]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["merge", "--models", str(empty), str(ckpts[0]), "--out",
                                      str(tmp_path / "x"), "--no-sanity"])
    assert result.exit_code != 0
    assert f"--models: {empty}: not a checkpoint or run directory" in str(result.exception)
