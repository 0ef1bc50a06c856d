"""`aeron-tui train lonpt` end to end on the bundled sample corpus (the smoke preset)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lonpt_helpers import events_of


@pytest.mark.slow
def test_train_lonpt_smoke_on_the_sample_corpus(tmp_path: Path, sample_corpus_dir: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "aeron_tui", "train", "lonpt", "--set", "preset=smoke",
           "--profile", "tiny", "--data", str(sample_corpus_dir / "styles.jsonl"),
           "--run-dir", str(run_dir), "--set", "tokenizer_vocab_size=512"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = events_of(run_dir)
    assert events[0]["type"] == "run_started" and events[0]["trainer"] == "lonpt"
    assert events[0]["preset"] == "smoke" and events[0]["config"]["seq_len"] == 64
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "finished"
    domains = [e["domain"] for e in events if e["type"] == "domain_change"]
    assert sorted(domains) == ["reasoning", "semantic", "syntactic"]
    steps = [e for e in events if e["type"] == "step"]
    assert all({"phase", "lr_scale", "domain"} <= set(e) for e in steps)
    # One best checkpoint per domain (first validation of each), named lonpt_<domain>_<step>.
    for e in (e for e in events if e["type"] == "eval"):
        name = f"lonpt_{e['domain']}_{e['global_step']:06d}"
        assert (run_dir / "checkpoints" / name / "manifest.json").is_file(), name
    # Loss falls: the last logged training loss is below the first.
    assert steps[-1]["loss"] < steps[0]["loss"]
    # The headless log is the seed-style LONPT log, built from the same events.
    out = proc.stdout
    assert "=== LONPT Cycle 1/1 ===" in out
    assert "[AKAP] Cycle 1: domain '" in out
    first = steps[0]
    expected = (f"  Step {first['step']:04d} | phase={first['phase']:>11} | "
                f"lr_scale={first['lr_scale']:.2f} | loss={first['loss']:.4f}")
    assert expected in out
    assert "(✓ BEST)" in out and f"Done! Checkpoints saved to: {run_dir / 'checkpoints'}" in out


def test_unknown_preset_is_one_red_line(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "aeron_tui", "train", "lonpt", "--set", "preset=turbo",
           "--profile", "tiny", "--run-dir", str(tmp_path / "r")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    text = " ".join(proc.stderr.split())  # Rich wraps the one message at the terminal width
    assert text.startswith("error: unknown LONPT preset 'turbo'"), proc.stderr
    assert "available presets: heavy, light, smoke, standard" in text
    assert "Traceback" not in proc.stderr
