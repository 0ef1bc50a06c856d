"""A run is never silent and obeys any process of its user: activity, heartbeats, the headless
phase line, control over the run directory, SIGHUP."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from train_helpers import cli_train_args, run_config, tiny_model_config

from aeron_tui.headless import HeadlessDisplay
from core.runs.events import describe_activity, fold, read_events
from core.train.simple import SimpleTrainer


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, dict)]


class _SlowStepTrainer(SimpleTrainer):
    """The simple trainer with steps as slow as a real model's (the sleep holds no lock)."""

    def train_step(self) -> None:
        super().train_step()
        time.sleep(0.15)


@pytest.mark.slow
def test_the_phase_line_follows_a_real_run_and_the_heartbeat_never_stops(
        tmp_path: Path, small_corpus: Path) -> None:
    out = io.StringIO()
    display = HeadlessDisplay("plain", out)
    shown: list[str] = []

    def phase_line(event: dict[str, Any]) -> None:
        # What the phase line shows right after the display folded this event.
        shown.append(describe_activity(display.state).rstrip("0123456789/ "))

    run_dir = tmp_path / "r"
    cfg = run_config(run_dir, small_corpus, steps=16, eval_every=8, checkpoint_every=8)
    trainer = _SlowStepTrainer(cfg, tiny_model_config(), listeners=[display, phase_line])
    assert trainer.run() == "finished"

    phases = [p for i, p in enumerate(shown) if i == 0 or shown[i - 1] != p]
    assert phases[:6] == ["building tokenizer", "loading data", "building model", "training",
                          "evaluating", "saving checkpoint"], phases
    assert phases[-1] == "finished" and "training" in phases[6:]
    events = _events(run_dir)
    assert events[-1]["type"] == "run_finished"  # nothing after it (the heartbeat stopped first)
    beats = [e for e in events if e["type"] == "heartbeat"]
    assert len(beats) >= 2
    gaps = [b["time"] - a["time"] for a, b in zip(beats, beats[1:], strict=False)]
    assert max(gaps) <= 2.0, gaps
    # A beat carries the step the trainer is at: never behind the last step event before it.
    last_step = 0
    for e in events:
        if e["type"] == "step":
            last_step = e["global_step"]
        elif e["type"] == "heartbeat":
            assert e["global_step"] >= last_step
    # The summary names what a user looks for next.
    state = fold(events)
    lines = out.getvalue().splitlines()
    assert state.best_val_bpb is not None and state.baseline_bigram_bpb is not None
    assert lines[-1] == (f"run finished: 16/16 steps in {lines[-1].split(' in ')[1].split(' ·')[0]}"
                         f" · best val {state.best_val_loss:.4f} (step {state.best_val_step})"
                         f" · {state.best_val_bpb:.3f} bpb (bigram {state.baseline_bigram_bpb:.3f})"
                         f" · final checkpoint {state.last_checkpoint}")
    assert Path(state.last_checkpoint or "").is_dir()
    assert "· evaluating" in lines and "· saving checkpoint" in lines


def _wait_for(run_dir: Path, check: Any, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = run_dir / "events.jsonl"
        if path.exists():
            for event in _events(run_dir):
                if check(event):
                    return event
        time.sleep(0.1)
    raise AssertionError(f"no matching event within {timeout}s")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aeron_tui", *args], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.slow
def test_control_from_another_process_and_sighup_keep_the_run_honest(
        tmp_path: Path, small_corpus: Path) -> None:
    from core.runs.registry import summarize_run
    from core.train.control import send_control, wait_for_effect

    run_dir = tmp_path / "ctl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AERON_TUI_HOME": str(tmp_path / "home")}
    args = cli_train_args(run_dir, small_corpus, 100000, log_every=5, checkpoint_every=100000)
    # Its own session, like a trainer in another terminal: nothing here reaches it but signals.
    proc = subprocess.Popen([sys.executable, "-m", "aeron_tui", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _wait_for(run_dir, lambda e: e["type"] == "step" and e["global_step"] >= 5)
        # The terminal closes: the run goes on, and says it is unattended.
        os.kill(proc.pid, signal.SIGHUP)
        detached = _wait_for(run_dir, lambda e: e["type"] == "detached")
        assert "SIGHUP" in detached["reason"]
        _wait_for(run_dir, lambda e: e["type"] == "step"
                  and e["global_step"] > detached["global_step"] + 5)
        assert proc.poll() is None
        assert summarize_run(run_dir).status_label == "running (detached)"

        # Pause from a second process (the CLI), which waits until the trainer did.
        done = _cli("runs", "control", str(run_dir), "pause", "--wait", "60", env=env)
        assert done.returncode == 0, done.stderr
        paused = _wait_for(run_dir, lambda e: e["type"] == "status" and e["status"] == "paused")
        step = paused["global_step"]
        assert done.stdout.strip() == f"pause: done at step {step}"
        time.sleep(0.6)
        state = fold(read_events(run_dir / "events.jsonl"))
        assert (state.status, state.global_step) == ("paused", step)  # and it stays there

        # Checkpoint while paused, then resume and stop — all through the run directory.
        t = time.time()
        send_control(run_dir, "checkpoint")
        ckpt = wait_for_effect(run_dir, "checkpoint", t, 60)
        assert ckpt is not None and ckpt["global_step"] == step and ckpt["reason"] == "requested"
        assert (run_dir / "checkpoints" / f"step_{step:06d}" / "manifest.json").is_file()
        t = time.time()
        send_control(run_dir, "resume")
        assert wait_for_effect(run_dir, "resume", t, 60) is not None
        t = time.time()
        send_control(run_dir, "stop")
        finished = wait_for_effect(run_dir, "stop", t, 60)
        assert finished is not None and finished["status"] == "stopped"
        assert proc.wait(60) == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The run is over: control is refused with one line, and nothing is written.
    refused = _cli("runs", "control", str(run_dir), "pause", env=env)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and "not live" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    commands = [json.loads(line)["cmd"]
                for line in (run_dir / "control.jsonl").read_text().splitlines()]
    assert commands == ["pause", "checkpoint", "resume", "stop"]
