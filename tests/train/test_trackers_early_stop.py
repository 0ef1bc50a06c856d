"""Trackers read back against the event stream; early stopping at the right evaluation and
across a resume; the first-class training flags through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from train_helpers import cli_train_args, run_config, tiny_model_config
from typer.testing import CliRunner

from aeron_tui.cli import app
from core.errors import ConfigError
from core.runs.events import ParseProblem, read_events

runner = CliRunner()


def _events(run_dir: Path) -> list[dict[str, Any]]:
    out = [e for e in read_events(run_dir / "events.jsonl")]
    assert not any(isinstance(e, ParseProblem) for e in out)
    return out  # type: ignore[return-value]


def _tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _truth(events: list[dict[str, Any]], kind: str, field: str) -> list[tuple[int, float]]:
    return [(e["global_step"], float(e[field])) for e in events
            if e["type"] == kind and e.get(field) is not None]


def _close(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    # TensorBoard stores float32: compare at float32 precision.
    return len(a) == len(b) and all(sa == sb and abs(va - vb) <= 1e-6 * max(1.0, abs(vb))
                                    for (sa, va), (sb, vb) in zip(a, b, strict=True))


@pytest.mark.slow
def test_tensorboard_and_csv_equal_the_events_live_and_exported(
        tmp_path: Path, small_corpus: Path) -> None:
    pytest.importorskip("tensorboard")
    from core.train.simple import SimpleTrainer

    run_dir = tmp_path / "run"
    cfg = run_config(run_dir, small_corpus, steps=8, eval_every=4, trackers=["tensorboard", "csv"])
    assert SimpleTrainer(cfg, tiny_model_config()).run() == "finished"
    events = _events(run_dir)
    live = _tb_scalars(run_dir / "tb")
    for kind, field, tag in (("step", "loss", "train/loss"), ("step", "lr", "train/lr"),
                             ("step", "grad_norm", "train/grad_norm"),
                             ("step", "tokens_per_s", "perf/tokens_per_s"),
                             ("eval", "loss", "val/loss"), ("eval", "perplexity", "val/perplexity")):
        truth = _truth(events, kind, field)
        assert truth and _close(live[tag], truth), (tag, live.get(tag), truth)
    peak = [(e["global_step"], float(e["memory"]["peak"])) for e in events if e["type"] == "step"]
    assert _close(live["memory/peak"], peak)
    branches = [e for e in events if e["type"] == "step" and e.get("branch_scores_mean")]
    assert branches and _close(live["reasoning/branch_score_0"],
                               [(e["global_step"], e["branch_scores_mean"][0]) for e in branches])

    rows = list(csv.DictReader(open(run_dir / "metrics.csv", encoding="utf-8")))
    steps = [(int(r["global_step"]), float(r["train/loss"])) for r in rows if r["type"] == "step"]
    evals = [(int(r["global_step"]), float(r["val/loss"])) for r in rows if r["type"] == "eval"]
    assert steps == _truth(events, "step", "loss")  # exact: the CSV keeps every digit
    assert evals == _truth(events, "eval", "loss") and len(evals) == 2

    # A finished run exported from its events.jsonl gives the same scalars and rows.
    out = tmp_path / "exported"
    result = runner.invoke(app, ["runs", "export", str(run_dir), "--to", "tensorboard", "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    exported = _tb_scalars(out)
    assert sorted(exported) == sorted(live)
    assert all(_close(exported[t], live[t]) for t in live)
    again = runner.invoke(app, ["runs", "export", str(run_dir), "--to", "tensorboard"])
    assert again.exit_code != 0 and "already holds TensorBoard event files" in str(again.exception)
    result = runner.invoke(app, ["runs", "export", str(run_dir), "--to", "csv", "--out",
                                 str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.csv").read_text() == (run_dir / "metrics.csv").read_text()


def _scripted(losses: dict[int, float]) -> type:
    from core.train.simple import SimpleTrainer

    class ScriptedEval(SimpleTrainer):
        def evaluate(self, batches: Any = None) -> dict[str, float]:
            return {"loss": losses[self.global_step], "perplexity": 1.0, "tokens": 1.0}

    return ScriptedEval


# eval every 2 steps; patience 2, min delta 0.01: 6 is worse (1 bad), 8 improves by only 0.005
# (2 bad) → stop at step 8. The best checkpoint is step 8 (strictly lowest loss).
LOSSES = {2: 3.0, 4: 2.0, 6: 2.1, 8: 1.995, 10: 1.0, 12: 0.5}


def _check_early_stopped(run_dir: Path) -> None:
    events = _events(run_dir)
    assert max(e["global_step"] for e in events if e["type"] == "step") == 8
    [info] = [e for e in events if e["type"] == "info" and e.get("code") == "early_stop"]
    assert info["global_step"] == 8
    assert "has not improved by more than 0.01 in 2 evaluation(s) (last such improvement: " \
        "2.0000 at step 4); best checkpoint: step_000008 (val loss 1.9950)" in info["message"]
    [changed] = [e for e in events if e["type"] == "total_changed"]
    assert changed["total_steps"] == 8
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "finished"
    assert finished["reason"] == "early_stop" and finished["global_step"] == 8
    from core.runs.events import describe_event  # what the headless display and logs print

    assert describe_event(finished) == "[8] run finished (early stop)"
    assert describe_event(info) == f"[8] {info['message']}"
    assert (run_dir / "checkpoints" / "step_000008").is_dir()
    state = json.loads((run_dir / "checkpoints" / "step_000008" / "trainer_state.json")
                       .read_text())
    assert state["early_stop"] == {"best": 2.0, "best_step": 4, "bad_evals": 2}


def test_early_stop_triggers_at_the_right_evaluation(tmp_path: Path, small_corpus: Path) -> None:
    cfg = run_config(tmp_path / "r", small_corpus, steps=12, eval_every=2, checkpoint_every=100,
                     early_stop_patience=2, early_stop_min_delta=0.01)
    assert _scripted(LOSSES)(cfg, tiny_model_config()).run() == "finished"
    _check_early_stopped(tmp_path / "r")


def test_early_stop_counter_survives_resume(tmp_path: Path, small_corpus: Path) -> None:
    run_dir = tmp_path / "r"
    base = dict(steps=12, eval_every=2, checkpoint_every=100, early_stop_patience=2,
                early_stop_min_delta=0.01)
    holder: dict[str, Any] = {}

    def stop_at_7(event: dict[str, Any]) -> None:  # after the first bad evaluation (step 6)
        if event["type"] == "step" and event["global_step"] == 7:
            holder["t"].control.put("stop")

    first = _scripted(LOSSES)(run_config(run_dir, small_corpus, **base), tiny_model_config(),
                              listeners=[stop_at_7])
    holder["t"] = first
    assert first.run() == "stopped"
    state = json.loads((run_dir / "checkpoints" / "step_000007" / "trainer_state.json")
                       .read_text())
    assert state["early_stop"]["bad_evals"] == 1
    second = _scripted(LOSSES)(run_config(run_dir, small_corpus, resume="latest", **base),
                               tiny_model_config())
    assert second.run() == "finished"
    _check_early_stopped(run_dir)


def test_lonpt_refuses_early_stop_in_one_line(tmp_path: Path, small_corpus: Path) -> None:
    from lonpt.trainer import LonptTrainer

    cfg = run_config(tmp_path / "r", small_corpus, trainer="lonpt", early_stop_patience=2)
    with pytest.raises(ConfigError, match="early stopping works with simple"):
        LonptTrainer(cfg, tiny_model_config()).run()


def test_tracker_specs_and_missing_package_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from core.runs.trackers import check_available, parse_tracker_spec

    assert parse_tracker_spec("tensorboard:/x/tb") == ("tensorboard", "/x/tb")
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'"):
        parse_tracker_spec("mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "wandb") else real(name))
    with pytest.raises(ConfigError, match=r"pip install 'aeron-tui\[tensorboard\]'"):
        check_available(["csv", "tensorboard"])
    with pytest.raises(ConfigError, match="pip install wandb"):
        check_available(["wandb"])


def test_cli_flags_train_on_alpaca_csv_with_csv_log(tmp_path: Path) -> None:
    data = tmp_path / "alpaca.csv"
    with open(data, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["instruction", "input", "output"])
        for i in range(120):
            w.writerow([f"Add {i} and {i + 1}.", "", f"{2 * i + 1}"])
    run_dir = tmp_path / "run"
    args = cli_train_args(run_dir, data, steps=6)
    args += ["--eval-every", "3", "--checkpoint-every", "2", "--keep-last", "1", "--warmup", "2",
             "--weight-decay", "0.05", "--gradient-checkpointing", "--early-stop", "5:0.001",
             "--log", "csv"]
    # cli_train_args passes --set eval_every etc.; flags come before --set, so drop those sets.
    for key in ("eval_every", "checkpoint_every", "keep_last"):
        i = args.index(next(a for a in args if a.startswith(f"{key}=")))
        del args[i - 1: i + 1]
    result = runner.invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    import tomllib

    saved = tomllib.loads((run_dir / "run.toml").read_text())
    assert (saved["eval_every"], saved["checkpoint_every"], saved["keep_last"]) == (3, 2, 1)
    assert (saved["warmup_steps"], saved["weight_decay"]) == (2, 0.05)
    assert saved["gradient_checkpointing"] is True and saved["trackers"] == ["csv"]
    assert (saved["early_stop_patience"], saved["early_stop_min_delta"]) == (5, 0.001)
    events = _events(run_dir)
    [started] = [e for e in events if e["type"] == "run_started"]
    assert started["data"].endswith("alpaca.csv")
    rows = list(csv.DictReader(open(run_dir / "metrics.csv", encoding="utf-8")))
    assert [int(r["global_step"]) for r in rows if r["type"] == "eval"] == [3, 6]
    # keep-last 1: only the newest step checkpoint besides the best survives.
    assert len(list((run_dir / "checkpoints").iterdir())) <= 2
    bad = runner.invoke(app, [*args, "--early-stop", "two"])
    assert bad.exit_code != 0 and "expected PATIENCE[:MIN_DELTA]" in str(bad.exception)


def test_wandb_logs_offline_and_quietly(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("wandb")  # optional: never a dependency
    from core.runs.trackers import make_tracker

    tracker = make_tracker("wandb", tmp_path)
    tracker({"type": "run_started", "run_id": "r1", "global_step": 0, "time": 1.0,
             "config": {"steps": 3}})
    for step in (1, 2, 3):
        tracker({"type": "step", "global_step": step, "loss": 1 / step, "lr": 0.1, "time": 2.0})
    tracker({"type": "eval", "global_step": 3, "loss": 0.25, "time": 3.0})
    tracker.close()
    out, _ = capfd.readouterr()
    assert out == ""  # stdout may be the event stream (--events-stdout): wandb stays off it
    import wandb

    wandb.teardown()  # the service writes the log asynchronously; at process exit it is flushed
    [log] = list((tmp_path / "wandb").glob("offline-run-*/run-r1.wandb"))  # offline, never online
    data = log.read_bytes()
    for needle in (b"train/loss", b"val/loss", repr(1 / 3).encode(), b"0.25"):
        assert needle in data, needle
