"""The engine end to end with a very small model: resume, events, control, bad input."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from train_helpers import run_config, tiny_model_config

from core.errors import ConfigError, DataError
from core.runs.events import ParseProblem, fold, read_events


def _trainer(cfg: Any, **kwargs: Any) -> Any:
    from core.train.simple import SimpleTrainer

    return SimpleTrainer(cfg, tiny_model_config(), **kwargs)


def _events(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for e in read_events(run_dir / "events.jsonl"):
        assert not isinstance(e, ParseProblem), e  # every line parses and validates
        out.append(e)
    return out


def step_losses(run_dir: Path) -> dict[int, float]:
    """Per-step loss from events.jsonl; a re-run step after a resume replaces the earlier one."""
    return {e["global_step"]: e["loss"] for e in _events(run_dir) if e["type"] == "step"}


class Recording:
    """Wraps a trainer class to record the losses it computes (the ground truth)."""

    @staticmethod
    def make() -> type:
        from core.train.simple import SimpleTrainer

        class RecordingTrainer(SimpleTrainer):
            def on_step_end(self, step: int, loss: Any) -> None:
                self.recorded = getattr(self, "recorded", {})
                self.recorded[step] = float(loss)

        return RecordingTrainer


@pytest.mark.parametrize("packing", ["on", "off"])
def test_stop_then_resume_equals_uninterrupted(tmp_path: Path, small_corpus: Path,
                                               packing: str) -> None:
    full_dir = tmp_path / "full"
    full_run = _trainer(run_config(full_dir, small_corpus, packing=packing))
    assert full_run.run() == "finished"
    assert (full_run.pack_length is not None) == (packing == "on")
    full = step_losses(full_dir)
    assert sorted(full) == list(range(1, 13))

    part_dir = tmp_path / "part"
    stopper: dict[str, Any] = {}

    def stop_at_7(event: dict[str, Any]) -> None:
        if event["type"] == "step" and event["global_step"] == 7:
            stopper["trainer"].control.put("stop")

    first = _trainer(run_config(part_dir, small_corpus, packing=packing), listeners=[stop_at_7])
    stopper["trainer"] = first
    assert first.run() == "stopped"
    assert (part_dir / "checkpoints" / "step_000007").is_dir()
    second = _trainer(run_config(part_dir, small_corpus, resume="latest", packing=packing))
    assert second.run() == "finished"
    resumed = step_losses(part_dir)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(1, 13):
        assert abs(resumed[step] - full[step]) <= 1e-6, (step, resumed[step], full[step])
    # The final checkpoint records its lineage: resumed from the step-7 checkpoint.
    import json

    manifest = json.loads((part_dir / "checkpoints" / "step_000012" / "manifest.json").read_text())
    assert manifest["parents"] and manifest["parents"][0]["relation"] == "resumed"


def _varied_corpus(path: Path, n: int = 200) -> Path:
    """Styles samples of 1-4 sentences a side: short and of varied length."""
    import json
    import random

    rng = random.Random(5)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        ask = " ".join(f"What is {a + k} plus {b}?" for k in range(rng.randint(1, 3)))
        reply = " ".join(f"{a + k} plus {b} is {a + k + b}." for k in range(rng.randint(1, 4)))
        rows.append({"provider": "synthetic", "style_label": "math", "user_input": ask,
                     "assistant_reply": reply, "turn_id": f"v{i:04d}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_packed_and_unpacked_runs_train_alike(tmp_path: Path) -> None:
    """Packing lays the same samples out differently, kept apart by masks: the runs match."""
    from core.train.simple import SimpleTrainer

    class Counting(SimpleTrainer):
        packed_batches = 0

        def next_batch(self) -> Any:
            batch = super().next_batch()
            type(self).packed_batches += "segment_ids" in batch
            return batch

    corpus = _varied_corpus(tmp_path / "styles.jsonl")
    runs = {}
    for packing in ("on", "off"):
        run_dir = tmp_path / packing
        trainer = type(f"Counting{packing}", (Counting,), {})(
            run_config(run_dir, corpus, steps=6, eval_every=6, seq_len=64, packing=packing),
            tiny_model_config())
        assert trainer.run() == "finished"
        packed_val = sum("segment_ids" in b for b in trainer.validation_batches())
        if packing == "on":
            assert type(trainer).packed_batches >= 2 and packed_val > 0
        else:
            assert type(trainer).packed_batches == 0 and packed_val == 0
        runs[packing] = _events(run_dir)
    notes = [e["message"] for e in runs["on"] if e["type"] == "info"]
    assert any(n.startswith("sequence packing on (on)") and "% packed" in n for n in notes)
    on, off = ({e["global_step"]: e for e in events if e["type"] == "step"}
               for events in runs.values())
    assert sorted(on) == sorted(off) == list(range(1, 7))
    for step in on:
        assert on[step]["loss"] == pytest.approx(off[step]["loss"], rel=2e-4), step
        assert on[step]["samples_per_s"] > 0
    val_on, val_off = ([e["loss"] for e in events if e["type"] == "eval"]
                       for events in runs.values())
    assert val_on == pytest.approx(val_off, rel=2e-4) and len(val_on) == 1
    # Bits per byte too (packed rows carry their samples' bytes), and the same baselines.
    [ev_on], [ev_off] = ([e for e in events if e["type"] == "eval"] for events in runs.values())
    assert ev_on["bpb"] == pytest.approx(ev_off["bpb"], rel=2e-4) and ev_on["bpb"] > 0
    for key in ("baseline_bigram_bpb", "baseline_unigram_bpb"):
        assert ev_on[key] == pytest.approx(ev_off[key], rel=1e-9)


def test_events_redraw_the_loss_curve(tmp_path: Path, small_corpus: Path) -> None:
    cls = Recording.make()
    trainer = cls(run_config(tmp_path / "r", small_corpus, steps=8), tiny_model_config())
    trainer.run()
    state = fold(read_events(tmp_path / "r" / "events.jsonl"))
    assert state.status == "finished" and state.global_step == 8 and state.total_steps == 8
    curve = dict(state.train_losses)
    assert curve.keys() == trainer.recorded.keys()
    for step, loss in trainer.recorded.items():
        assert abs(curve[step] - loss) < 1e-6
    assert state.val_losses and state.best_val_loss is not None
    events = _events(tmp_path / "r")
    step_event = next(e for e in events if e["type"] == "step")
    for key in ("lr", "lr_scale", "grad_norm", "tokens_per_s", "samples_per_s", "micro_batch",
                "grad_accum", "memory", "nonfinite_skipped", "branch_scores_mean",
                "scratchpad", "complexity_mean"):
        assert key in step_event, key
    assert len(step_event["branch_scores_mean"]) == 2
    assert set(step_event["memory"]) >= {"allocated", "reserved", "peak"}
    started = next(e for e in events if e["type"] == "run_started")
    assert started["model_params"] > 0
    assert started["config"]["steps"] == 8


def test_control_pause_checkpoint_stop(tmp_path: Path, small_corpus: Path) -> None:
    import threading
    import time

    run_dir = tmp_path / "ctl"
    trainer = _trainer(run_config(run_dir, small_corpus, steps=1000, checkpoint_every=1000,
                                  eval_every=1000))
    seen: dict[str, Any] = {}

    def driver(event: dict[str, Any]) -> None:
        if event["type"] == "step" and event["global_step"] == 3 and "paused" not in seen:
            seen["paused"] = True
            trainer.control.put("pause")

            def later() -> None:
                time.sleep(0.6)
                seen["step_during_pause"] = trainer.global_step
                trainer.control.put("checkpoint")
                time.sleep(0.3)
                trainer.control.put("resume")
            threading.Thread(target=later, daemon=True).start()
        if event["type"] == "step" and event["global_step"] == 6:
            trainer.control.put("stop")

    trainer.events_listeners = None
    trainer._listeners.append(driver)
    assert trainer.run() == "stopped"
    assert seen["step_during_pause"] == 3  # pause held the step count
    events = _events(run_dir)
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses[:2] == ["paused", "running"] and statuses[-1] == "stopping"
    ckpts = [e["name"] for e in events if e["type"] == "checkpoint"]
    assert ckpts == ["step_000003", "step_000006"]  # checkpoint-now, then the final one
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "stopped"
    from core.runs.checkpoint import latest_checkpoint

    assert latest_checkpoint(run_dir).name == "step_000006"


def test_malformed_data_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"provider": "x", "style_label": "qa", "user_input": "hi"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        _trainer(run_config(tmp_path / "r", bad)).run()
    events = _events(tmp_path / "r")
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "failed"


def test_empty_corpus(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        _trainer(run_config(tmp_path / "r", empty)).run()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_run_dir(tmp_path: Path, small_corpus: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            _trainer(run_config(locked / "run", small_corpus)).run()
    finally:
        locked.chmod(0o700)


def test_run_dir_that_is_a_file(tmp_path: Path, small_corpus: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        _trainer(run_config(blocker / "run", small_corpus)).run()


def test_retention_keeps_last_k_and_the_best(tmp_path: Path, small_corpus: Path) -> None:
    from core.train.simple import SimpleTrainer

    class ScriptedEval(SimpleTrainer):
        def evaluate(self, batches: Any = None) -> dict[str, float]:
            loss = {4: 1.0, 8: 2.0}[self.global_step]  # best at step 4, worse later
            return {"loss": loss, "perplexity": 2.718, "tokens": 1.0}

    cfg = run_config(tmp_path / "r", small_corpus, steps=8, checkpoint_every=1, eval_every=4,
                     keep_last=2)
    ScriptedEval(cfg, tiny_model_config()).run()
    left = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert left == ["step_000004", "step_000007", "step_000008"]
    import json

    state = json.loads((tmp_path / "r" / "checkpoints" / "step_000008" / "trainer_state.json")
                       .read_text())
    assert state["best"] == {"val_loss": 1.0, "checkpoint": "step_000004"}


def test_build_model_from_checkpoint(tmp_path: Path, small_corpus: Path) -> None:
    import torch

    from core.runs.checkpoint import build_model_from_checkpoint
    from core.train.simple import SimpleTrainer

    trainer = SimpleTrainer(run_config(tmp_path / "r", small_corpus, steps=4), tiny_model_config())
    trainer.run()
    model, tok, config = build_model_from_checkpoint(tmp_path / "r" / "checkpoints" / "step_000004")
    assert not model.training and config.vocab_size == tok.vocab_size
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
