"""DPO: the reference equals the starting policy (zero margin, loss log 2), the precomputed and
frozen-model references agree, training raises the held-out chosen-over-rejected margin."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from rlhf_helpers import read_events
from typer.testing import CliRunner

from aeron_tui.cli import app
from aeron_tui.commands.train import build_run_config
from core.data.tokenizer import AeronTokenizer
from core.train.rlhf.common import preference_batches
from core.train.rlhf.dpo import REFERENCE_CACHE, DPOTrainer


def _trainer(tmp_path: Path, prefs: Path, name: str, **options: object) -> DPOTrainer:
    tok_dir = AeronTokenizer.byte_level().save(tmp_path / "tok")
    run_config, model_config = build_run_config(
        "dpo", profile="tiny",
        # fp32: bf16 autocast makes log-probs depend on the padding of the batch (~1e-3).
        flags={"run_dir": str(tmp_path / name), "steps": 2, "micro_batch": 4, "seq_len": 64,
               "precision": "fp32"},
        sets=[f"tokenizer={tok_dir}", "model.d_model=64", "model.nhead=4", "model.num_kv_heads=2",
              "max_samples=40", "eval_max_batches=2", f"options.prefs={prefs}"],
    )
    run_config = run_config.with_overrides(options=options)
    return DPOTrainer(run_config, model_config)


def test_reference_is_the_starting_policy(tmp_path: Path, code_task_prefs: Path) -> None:
    pre = _trainer(tmp_path, code_task_prefs, "pre")
    pre.setup()
    result = pre.evaluate()
    assert result["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert result["metrics"]["margin"] == pytest.approx(0.0, abs=1e-5)
    assert (pre.run_dir / REFERENCE_CACHE).is_file()
    frozen = _trainer(tmp_path, code_task_prefs, "frozen", reference="model")
    frozen.setup()
    assert frozen.reference is not None
    # Same seed, same init: the frozen copy gives the precomputed numbers, batch by batch.
    batch = preference_batches(frozen.val_examples, 4, full_sequence=False)[0]
    pre_batch = preference_batches(pre.val_examples, 4, full_sequence=False)[0]
    assert "ref_logps" in pre_batch and "ref_logps" not in batch
    with torch.no_grad():
        a = frozen._loss(batch)
        b = pre._loss(pre_batch)
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-5)
    pre.cleanup()
    frozen.cleanup()


@pytest.mark.slow
def test_dpo_raises_the_held_out_margin(code_task_prefs: Path, sample_tokenizer: Path,
                                        tmp_path: Path) -> None:
    """Tiny profile, fresh model, 40 steps on the sample code-task pairs (see the reward test).

    At step 0 the held-out margin is exactly 0 (policy = reference, tested above)."""
    run = tmp_path / "dpo"
    result = CliRunner().invoke(app, [
        "rlhf", "dpo", "--profile", "tiny", "--prefs", str(code_task_prefs), "--steps", "40",
        "--lr", "1e-3", "--run-dir", str(run), "--quiet", "--set", f"tokenizer={sample_tokenizer}",
        "--set", "eval_every=40", "--set", "log_every=10",
    ])
    assert result.exit_code == 0, result.output
    events = read_events(run)
    final = [e for e in events if e["type"] == "eval"][-1]["metrics"]
    print("DPO held-out after 40 steps:", final)
    assert final["margin"] > 0.2, final
    assert final["accuracy"] > 0.6, final
    steps = [e for e in events if e["type"] == "step"]
    assert {"reward_chosen", "reward_rejected", "margin", "accuracy"} <= set(steps[-1]["metrics"])


@pytest.mark.parametrize("loss", ["simpo", "ipo", "hinge"])
def test_other_preference_losses_train(tmp_path: Path, code_task_prefs: Path, loss: str) -> None:
    trainer = _trainer(tmp_path, code_task_prefs, loss, loss=loss)
    assert trainer.run() == "finished"
    if loss == "simpo":  # reference-free: nothing precomputed, no frozen copy
        assert trainer.reference is None
        assert not (trainer.run_dir / REFERENCE_CACHE).exists()
    steps = [e for e in read_events(trainer.run_dir) if e["type"] == "step"]
    assert {"margin", "accuracy"} <= set(steps[-1]["metrics"])
