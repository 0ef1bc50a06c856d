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
