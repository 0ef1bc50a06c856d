"""Continual training: replay / EWC keep the old corpus better than plain fine-tuning, the
retention report is complete, and `aeron-tui continue --compare` prints the table."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from aeron_tui.cli import app

TINY = dict(
    d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=128,
    max_position_embeddings=128, num_tot_branches=2, num_scratchpad_slots=4, memory_slots=16, memory_dim=32,
    memory_heads=4, kg_num_entities=32, kg_dim=16, num_tasks=4, enable_multimodal=False,
)


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def old_corpus(path: Path, n: int = 400) -> Path:
    rng = random.Random(1)
    animals = ["cat", "dog", "horse", "bird", "fish", "sheep", "mouse", "goat"]
    rows = []
    for i in range(n):
        a = rng.choice(animals)
        rows.append({"provider": "old", "style_label": "qa", "user_input": f"What does the {a} say?",
                     "assistant_reply": f"The {a} says hello to every {rng.choice(animals)} friend.",
                     "turn_id": f"o{i}"})
    return _write(path, rows)


def new_corpus(path: Path, n: int = 400) -> Path:
    rng = random.Random(2)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"provider": "new", "style_label": "math", "user_input": f"Add {a} and {b}.",
                     "assistant_reply": f"{a} + {b} = {a + b}; numbers only, no words.", "turn_id": f"n{i}"})
    return _write(path, rows)


def _run_config(run_dir: Path, data: Path, trainer: str, steps: int, **options: Any) -> Any:
    from core.train.config import RunConfig

    return RunConfig(
        trainer=trainer, run_dir=str(run_dir), data=str(data), steps=steps, micro_batch=8, seq_len=40,
        precision="fp32", device="cpu", log_every=10, eval_every=1000, eval_max_batches=4,
        checkpoint_every=1000, keep_last=1, tokenizer_vocab_size=320, seed=5, learning_rate=3e-3,
        warmup_steps=5, options=options,
    )


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from core.model.config import NeuralNetConfig
    from core.runs.checkpoint import latest_checkpoint
    from core.train.simple import SimpleTrainer

    root = tmp_path_factory.mktemp("continual")
    old, new = old_corpus(root / "old.jsonl"), new_corpus(root / "new.jsonl")
    trainer = SimpleTrainer(_run_config(root / "base", old, "simple", 150), NeuralNetConfig(**TINY))
    assert trainer.run() == "finished"
    ckpt = latest_checkpoint(root / "base")
    assert ckpt is not None
    return ckpt, old, new


def _continue(tmp: Path, base: tuple[Path, Path, Path], recipe: str, **extra: Any) -> dict[str, Any]:
    from core.train.continual_trainer import ContinualTrainer

    ckpt, old, new = base
    cfg = _run_config(tmp / recipe, new, "continual", 80, **{"from": str(ckpt), "old_data": str(old),
                                                              "recipe": recipe, "retention_samples": 64,
                                                              "ewc_batches": 20, **extra})
    assert ContinualTrainer(cfg).run() == "finished"
    return json.loads((tmp / recipe / "retention.json").read_text())


@pytest.mark.slow
def test_replay_and_ewc_keep_the_old_corpus_better_than_plain(tmp_path: Path, base_checkpoint) -> None:
    # Measured (80 steps, lr 3e-3, EWC at the default λ 1 on the mean-normalised Fisher):
    # old-corpus bpb 0.141 before; after plain 1.554, replay 0.178, EWC 0.495 (new-corpus 1.078,
    # 1.119, 1.282 from 9.7). Before the Fisher was the sequence log-likelihood's and normalised,
    # EWC at λ 200 on the per-token-mean Fisher (≈ 150× smaller here) did not beat plain (1.885).
    plain = _continue(tmp_path, base_checkpoint, "plain")
    replay = _continue(tmp_path, base_checkpoint, "replay")
    ewc = _continue(tmp_path, base_checkpoint, "ewc")
    figures = {name: (r["before"]["old"]["bpb"], r["after"]["old"]["bpb"], r["after"]["new"]["bpb"])
               for name, r in (("plain", plain), ("replay", replay), ("ewc", ewc))}
    print("old-before / old-after / new-after bpb:", figures)
    # Plain fine-tuning forgets: its old-corpus bits per byte rise.
    assert plain["after"]["old"]["bpb"] > plain["before"]["old"]["bpb"]
    assert replay["after"]["old"]["bpb"] < 0.5 * plain["after"]["old"]["bpb"]
    assert ewc["after"]["old"]["bpb"] < 0.5 * plain["after"]["old"]["bpb"]
    # ...and all three learn the new corpus.
    for r in (plain, replay, ewc):
        assert r["after"]["new"]["bpb"] < 0.5 * r["before"]["new"]["bpb"]
    assert replay["retained_fraction"] > plain["retained_fraction"]
    assert ewc["retained_fraction"] > plain["retained_fraction"]


def test_normalised_ewc_penalty_is_scale_free() -> None:
    """With ``normalize`` the penalty uses F/mean(F): the Fisher's overall scale (which differs by
    orders of magnitude between corpora) no longer changes the penalty; the raw one does."""
    from core.model.continual import ElasticWeightConsolidation

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    raw = ElasticWeightConsolidation(2.0)
    raw.consolidate(model, [(torch.randn(6, 4),)], loss_fn=lambda m, b: m(*b).square().sum())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    params = dict(model.named_parameters())
    mean_f = float(sum(f.sum() for f in raw.fisher.values()) / sum(f.numel() for f in raw.fisher.values()))
    assert raw.fisher_mean() == pytest.approx(mean_f, rel=1e-6)
    expected = 1.0 * sum(float((raw.fisher[n] / mean_f * (params[n].detach() - raw.anchor[n]) ** 2).sum())
                         for n in raw.fisher)
    norm = ElasticWeightConsolidation(2.0, normalize=True)
    norm.load_state_dict(raw.state_dict())
    assert not norm.normalize  # the saved flag wins over the constructor's
    norm = ElasticWeightConsolidation(2.0, normalize=True)
    state = {k: v for k, v in raw.state_dict().items() if k != "meta.normalize"}
    norm.load_state_dict(state)
    assert float(norm.penalty(model).detach()) == pytest.approx(expected, rel=1e-5)
    scaled = ElasticWeightConsolidation(2.0, normalize=True)
    scaled.load_state_dict({k: v * 1000 if k.startswith("fisher.") else v for k, v in state.items()})
    assert float(scaled.penalty(model).detach()) == pytest.approx(expected, rel=1e-5)
    raw_scaled = ElasticWeightConsolidation(2.0)
    raw_scaled.load_state_dict({k: v * 1000 if k.startswith("fisher.") else v for k, v in state.items()})
    assert float(raw_scaled.penalty(model).detach()) == pytest.approx(1000 * float(raw.penalty(model).detach()), rel=1e-5)
    # The flag travels in the state.
    assert bool(scaled.state_dict()["meta.normalize"])


@pytest.mark.slow
def test_full_recipe_report_events_and_lineage(tmp_path: Path, base_checkpoint) -> None:
    from core.runs.checkpoint import latest_checkpoint, read_manifest
    from core.runs.events import fold, read_events

    full = _continue(tmp_path, base_checkpoint, "full")
    assert full["terms"] == {"replay": True, "ewc": True, "mirror": True, "latent": True}
    assert full["vocabulary"]["total"] > 5
    assert 0 <= full["vocabulary"]["retained"] <= full["vocabulary"]["total"]
    assert -1.0 <= full["representation_cosine"] <= 1.0
    state = fold(read_events(tmp_path / "full" / "events.jsonl"))
    assert state.status == "finished"
    assert {"ce_loss", "ewc_loss", "mirror_loss", "latent_loss"} <= set(state.metrics)
    assert state.metrics["old_bpb_after"] == pytest.approx(full["after"]["old"]["bpb"])
    manifest = read_manifest(latest_checkpoint(tmp_path / "full"))
    assert manifest["parents"][0]["relation"] == "continued"
    assert manifest["parents"][0]["id"] == read_manifest(base_checkpoint[0])["version"]
    # The EWC Fisher travels in the checkpoint.
    from safetensors import safe_open

    with safe_open(str(latest_checkpoint(tmp_path / "full") / "model.safetensors"), "pt") as fh:
        assert any("ewc_state.fisher." in k for k in fh.keys())
    # A task per corpus: the base had no task module (its data had no 'task'); it was added.
    ckpt = latest_checkpoint(tmp_path / "full")
    assert json.loads((ckpt / "config.json").read_text())["enable_continual"] is True
    vocab = json.loads((ckpt / "input_vocab.json").read_text())
    assert vocab["tasks"] == ["old", "new"] and vocab["default_task"] == "new"
    infos = [e["message"] for e in read_events(tmp_path / "full" / "events.jsonl")
             if e["type"] == "info"]
    assert any("has no task conditioning module" in m and "starts freshly" in m for m in infos)


def test_bad_options_fail_before_training(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from core.train.continual_trainer import ContinualTrainer

    data = new_corpus(tmp_path / "n.jsonl", 20)
    with pytest.raises(ConfigError, match="--from"):
        ContinualTrainer(_run_config(tmp_path / "a", data, "continual", 5))
    with pytest.raises(ConfigError, match="recipe"):
        ContinualTrainer(_run_config(tmp_path / "b", data, "continual", 5, **{"from": "x", "recipe": "magic"}))
    with pytest.raises(ConfigError, match="replay_ratio"):
        ContinualTrainer(_run_config(tmp_path / "c", data, "continual", 5, **{"from": "x", "replay_ratio": 1.5}))
    with pytest.raises(ConfigError, match="ewc_normalize"):
        ContinualTrainer(_run_config(tmp_path / "e", data, "continual", 5, **{"from": "x", "ewc_normalize": "yes"}))
    with pytest.raises(ConfigError, match="ewc_lambda"):
        ContinualTrainer(_run_config(tmp_path / "f", data, "continual", 5, **{"from": "x", "ewc_lambda": -1.0}))
    with pytest.raises(ConfigError, match="unknown option"):
        ContinualTrainer(_run_config(tmp_path / "d", data, "continual", 5, **{"from": "x", "replay": 1}))


@pytest.mark.slow
def test_cli_compare_prints_the_table(tmp_path: Path, base_checkpoint) -> None:
    ckpt, old, new = base_checkpoint
    sets = ["micro_batch=8", "seq_len=40", "log_every=10", "eval_every=1000", "checkpoint_every=1000",
            "retention_samples=32", "ewc_batches=5", "precision=fp32", "device=cpu", "learning_rate=0.003"]
    args = ["continue", "--from", str(ckpt), "--data", str(new), "--old-data", str(old), "--compare",
            "--steps", "10", "--run-dir", str(tmp_path / "cmp"), "--profile", "tiny", "--quiet"]
    for s in sets:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    table = json.loads((tmp_path / "cmp" / "retention_compare.json").read_text())
    assert list(table) == ["plain", "ewc", "replay", "full"]
    assert "Retention" in result.output and "replay" in result.output
    torch.testing.assert_close(table["plain"]["steps"], 10)
