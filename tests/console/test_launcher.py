"""The launcher: child in its own process group, events from stdout, control on stdin,
detach that leaves the trainer running, stderr kept for the crash modal."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from aeron_tui.launcher import GLIBC_TUNABLES, LaunchSpec, TrainerProcess, read_tail
from core.runs.events import ParseProblem

SCRIPT = str(Path(__file__).with_name("scripted_trainer.py"))


def _spawn(tmp_path: Path, *args: str) -> TrainerProcess:
    return TrainerProcess([sys.executable, SCRIPT, *args], tmp_path / "run")


def _collect(proc: TrainerProcess, until, timeout: float = 10.0) -> list[dict]:
    events: list[dict] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        events += [e for e in proc.drain(0.05) if not isinstance(e, ParseProblem)]
        if until(events):
            return events
    raise AssertionError(f"timed out; got {[e['type'] for e in events][-10:]}")


def _steps(events: list[dict]) -> list[int]:
    return [e["global_step"] for e in events if e["type"] == "step"]


def test_launch_spec_builds_the_headless_command(tmp_path: Path) -> None:
    spec = LaunchSpec("lonpt", tmp_path / "r", profile="tiny", data="d.jsonl", steps=5,
                      config=tmp_path / "r" / "run.toml", overrides=["seed=3"])
    argv = spec.argv()
    assert argv[:5] == [sys.executable, "-m", "aeron_tui", "train", "lonpt"]
    assert argv[argv.index("--run-dir") + 1] == str(tmp_path / "r")
    assert argv[argv.index("--steps") + 1] == "5"
    assert argv[argv.index("--set") + 1] == "seed=3"
    assert "--events-stdout" in argv and "--control-stdin" in argv


def test_events_pause_resume_stop(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "100000", "--period", "0.01")
    try:
        assert os.getpgid(proc.pid) == proc.pid  # own process group
        events = _collect(proc, lambda ev: len(_steps(ev)) >= 5)
        assert events[0]["type"] == "run_started"
        assert events[0]["data"] == GLIBC_TUNABLES  # the allocator tunables reach the child
        assert proc.pause()
        events += _collect(proc, lambda ev: any(e.get("status") == "paused" for e in ev))
        frozen = _steps(events)[-1]
        time.sleep(0.3)
        later = [e for e in proc.drain(0.05) if not isinstance(e, ParseProblem)]
        assert _steps(later) == []  # paused: no step moved
        assert proc.resume()
        events = _collect(proc, lambda ev: len(_steps(ev)) >= 2)
        assert _steps(events)[0] == frozen + 1
        assert proc.stop()
        events = _collect(proc, lambda ev: any(e["type"] == "run_finished" for e in ev))
        assert events[-1]["status"] == "stopped"
        assert proc.wait(5) == 0
    finally:
        proc.terminate(grace=2)


def test_detach_leaves_the_trainer_running(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    proc = _spawn(tmp_path, "60", "--period", "0.02", "--events-file", str(events_file))
    _collect(proc, lambda ev: len(_steps(ev)) >= 3)
    proc.detach()
    assert not proc.send("pause")  # nobody to talk to any more
    # The trainer keeps writing (to its stdout, now read by the drainer) and finishes cleanly.
    assert proc.wait(20) == 0
    lines = events_file.read_text().splitlines()
    assert '"run_finished"' in lines[-1] and '"status":"finished"' in lines[-1]


def test_crash_keeps_stderr_and_exit_code(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "50", "--fail-after", "2")
    _collect(proc, lambda ev: any(e["type"] == "error" for e in ev))
    assert proc.wait(10) == 3
    tail = proc.stderr_tail()
    assert tail[-1] == "RuntimeError: scripted failure"
    assert (tmp_path / "run" / "trainer.stderr.log").exists()


def test_terminate_kills_a_hung_child(tmp_path: Path) -> None:
    proc = TrainerProcess([sys.executable, "-c", "import signal,time\n"
                           "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"],
                          tmp_path / "run")
    time.sleep(0.3)
    start = time.monotonic()
    code = proc.terminate(grace=0.5)
    assert code is not None and code < 0  # killed by SIGKILL
    assert time.monotonic() - start < 5


def test_read_tail(tmp_path: Path) -> None:
    p = tmp_path / "log"
    p.write_text("a\n\nb\nc\n")
    assert read_tail(p, 2) == ["b", "c"]
    assert read_tail(tmp_path / "missing") == []
