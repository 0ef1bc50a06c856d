"""`aeron-tui runs lineage` prints the ancestry across merges and vocabulary upgrades."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from aeron_tui.cli import app


def _ckpt(path: Path, seed: int) -> Path:
    from core.data.tokenizer import AeronTokenizer
    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    cfg = NeuralNetConfig(vocab_size=268, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=1,
                          num_decoder_layers=1, dim_feedforward=64, max_position_embeddings=64,
                          num_tot_branches=2, num_scratchpad_slots=4, memory_slots=8, memory_dim=16,
                          memory_heads=2, kg_num_entities=16, kg_dim=8, num_tasks=2, enable_multimodal=False)
    return save_checkpoint(path, model=TransformerNeuralNetBackbone(cfg), config=cfg,
                           tokenizer=AeronTokenizer.byte_level(), trainer_state={"global_step": seed},
                           extra={"global_step": seed})


def test_lineage_tree_across_merge_and_upgrade(tmp_path: Path) -> None:
    from core.data.tokenizer import AeronTokenizer
    from core.evolve.vocab_transfer import upgrade_checkpoint
    from core.runs.lineage import lineage_tree

    a, b = _ckpt(tmp_path / "runs" / "a", 1), _ckpt(tmp_path / "runs" / "b", 2)
    runner = CliRunner()
    merged = tmp_path / "runs" / "merged"
    r = runner.invoke(app, ["merge", "--models", str(a), "--models", str(b), "--out", str(merged), "--no-sanity"])
    assert r.exit_code == 0, r.output
    AeronTokenizer.train(["hello there general kenobi"] * 30, vocab_size=290).save(tmp_path / "tok")
    upgraded, _ = upgrade_checkpoint(merged, tmp_path / "tok", tmp_path / "elsewhere" / "up")

    tree = lineage_tree(upgraded)
    assert tree.parents[0].relation == "upgraded" and tree.parents[0].path == merged.resolve()
    grand = {p.path for p in tree.parents[0].parents}
    assert grand == {a.resolve(), b.resolve()}
    assert all(p.relation == "merged" for p in tree.parents[0].parents)

    out = runner.invoke(app, ["runs", "lineage", str(upgraded), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["parents"][0]["detail"] == "merge: soup"
    pretty = runner.invoke(app, ["runs", "lineage", str(upgraded)])
    assert "upgraded from" in pretty.output and "merged from" in pretty.output


def test_missing_parent_is_reported_not_fatal(tmp_path: Path) -> None:
    import shutil

    from core.runs.lineage import lineage_tree

    a = _ckpt(tmp_path / "a", 1)
    b = _ckpt(tmp_path / "b", 2)
    merged = tmp_path / "m"
    CliRunner().invoke(app, ["merge", "--models", str(a), "--models", str(b), "--out", str(merged), "--no-sanity"])
    shutil.rmtree(a)
    tree = lineage_tree(merged)
    details = sorted(p.detail for p in tree.parents)
    assert details == ["", "not found on disk"]
