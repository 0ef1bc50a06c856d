"""Run directories: naming, the trainer's pid file, listing runs with their status.

A run directory holds ``run.toml`` (the RunConfig), ``events.jsonl`` (the event stream),
``checkpoints/`` and, while the trainer lives, ``trainer.pid``. The status of a run comes from
its events; a run whose events stop without ``run_finished`` and whose trainer process is gone
is ``crashed``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.fileio import write_bytes_atomically
from core.paths import aeron_home
from core.runs.events import ParseProblem, RunState, read_events

RUN_CONFIG_FILE = "run.toml"
EVENTS_FILE = "events.jsonl"
PID_FILE = "trainer.pid"


def default_runs_root() -> Path:
    """``$AERON_TUI_HOME/runs``."""
    return aeron_home() / "runs"


def run_dir_name(trainer: str, profile: str | None, when: float | None = None) -> str:
    """``<trainer>-<profile>-<YYYYmmdd-HHMMSS>`` (local time)."""
    stamp = time.strftime(
        "%Y%m%d-%H%M%S", time.localtime(when if when is not None else time.time())
    )
    safe = re.sub(r"[^A-Za-z0-9_.]+", "_", profile or "custom")
    return f"{trainer}-{safe}-{stamp}"


def new_run_dir(root: str | os.PathLike[str], trainer: str, profile: str | None) -> Path:
    """A fresh, not yet existing run directory path under ``root`` (suffix ``-2``… on clashes)."""
    root = Path(root)
    base = run_dir_name(trainer, profile)
    candidate = root / base
    n = 2
    while candidate.exists():
        candidate = root / f"{base}-{n}"
        n += 1
    return candidate


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / RUN_CONFIG_FILE).is_file() or (p / EVENTS_FILE).is_file()


# --------------------------------------------------------------------------------------------
# pid file: lets `runs list` tell a live run from a crashed one
# --------------------------------------------------------------------------------------------


def write_pid_file(run_dir: str | os.PathLike[str]) -> Path:
    path = Path(run_dir) / PID_FILE
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _process_start(os.getpid()),
    }
    return write_bytes_atomically(path, json.dumps(info).encode("utf-8"))


def remove_pid_file(run_dir: str | os.PathLike[str]) -> None:
    path = Path(run_dir) / PID_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def trainer_alive(run_dir: str | os.PathLike[str]) -> bool | None:
    """True/False when the pid file says; None when unknown (no pid file, other host)."""
    try:
        info = json.loads((Path(run_dir) / PID_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("host") != socket.gethostname():
        return None
    pid = info.get("pid")
    if not isinstance(pid, int):
        return None
    started = _process_start(pid)
    if started is None:
        return False
    # A recycled pid belongs to a process that started later than ours.
    saved = info.get("started")
    return not (isinstance(saved, (int, float)) and abs(started - saved) > 1.0)


def trainer_pid(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the run's live trainer on this machine, or None (not live, unknown, other host)."""
    if trainer_alive(run_dir) is not True:
        return None
    try:
        pid = json.loads((Path(run_dir) / PID_FILE).read_text(encoding="utf-8")).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied, ImportError
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """One row of ``aeron-tui runs list``."""

    path: Path
    run_id: str
    trainer: str
    profile: str
    status: str
    global_step: int
    total_steps: int
    best_val_loss: float | None
    last_loss: float | None
    started_at: float | None
    last_time: float | None
    error: str | None
    state: RunState
    # The console went away and the trainer goes on unattended (SIGHUP, "leave running").
    detached: bool = False

    @property
    def live(self) -> bool:
        return self.status in ("starting", "running", "paused", "stopping")

    @property
    def status_label(self) -> str:
        """``running (detached)`` for a live run nobody watches, else the status."""
        return f"{self.status} (detached)" if self.detached and self.live else self.status

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "run_id": self.run_id,
            "trainer": self.trainer,
            "profile": self.profile,
            "status": self.status,
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "best_val_loss": self.best_val_loss,
            "last_loss": self.last_loss,
            "started_at": self.started_at,
            "last_time": self.last_time,
            "error": self.error,
            "detached": self.detached,
        }


def run_state(run_dir: str | os.PathLike[str]) -> RunState:
    """Fold a run's ``events.jsonl`` (missing file → an empty state)."""
    state = RunState()
    path = Path(run_dir) / EVENTS_FILE
    if not path.exists():
        return state
    for event in read_events(path):
        # An incomplete last line of a live run is expected; skip it quietly.
        if isinstance(event, ParseProblem) and event.message.startswith("incomplete"):
            continue
        state.apply(event)
    return state


def summarize_run(run_dir: str | os.PathLike[str]) -> RunSummary:
    """Status from the events: running / paused / finished / stopped / failed / crashed."""
    path = Path(run_dir)
    state = run_state(path)
    status = state.status
    if not state.finished:
        alive = trainer_alive(path)
        if alive is False or (
            alive is None and state.events_seen > 0 and not (path / PID_FILE).exists()
        ):
            status = "crashed"
    return RunSummary(
        path=path,
        run_id=state.run_id or path.name,
        trainer=state.trainer or state.config.get("trainer", "") or "?",
        profile=state.profile or str(state.config.get("profile") or "") or "?",
        status=status if state.events_seen else "empty",
        global_step=state.global_step,
        total_steps=state.total_steps,
        best_val_loss=state.best_val_loss,
        last_loss=state.loss,
        started_at=state.started_at,
        last_time=state.last_time,
        error=state.last_error,
        state=state,
        detached=state.detached and not state.finished and status != "crashed",
    )


def list_runs(root: str | os.PathLike[str] | None = None) -> list[RunSummary]:
    """Every run directory directly under ``root`` (default runs root), and those started from
    it elsewhere (:func:`remember_run_dir`), newest first."""
    base = Path(root) if root is not None else default_runs_root()
    if not base.is_dir():
        return []
    dirs = [p for p in base.iterdir() if p.is_dir() and is_run_dir(p)]
    dirs += [p for p in known_run_dirs(base) if p not in dirs]
    runs = [summarize_run(p) for p in dirs]
    return sorted(runs, key=lambda r: r.started_at or 0.0, reverse=True)


def live_runs(root: str | os.PathLike[str] | None = None) -> list[RunSummary]:
    """The runs under ``root`` whose trainer is alive (detached ones included), newest first."""
    return [run for run in list_runs(root) if run.live]


def latest_run(
    root: str | os.PathLike[str] | None = None, trainer: str | None = None
) -> Path | None:
    """The most recently started run (optionally of one trainer), or None."""
    for run in list_runs(root):
        if trainer is None or run.trainer == trainer:
            return run.path
    return None


# --------------------------------------------------------------------------------------------
# Runs outside the runs root (started with --run-dir elsewhere)
# --------------------------------------------------------------------------------------------

ELSEWHERE_FILE = "elsewhere.txt"  # in the runs root: one run directory path per line


def remember_run_dir(run_dir: str | os.PathLike[str],
                     root: str | os.PathLike[str] | None = None) -> None:
    """Note a run directory that is not directly under ``root`` so :func:`list_runs` lists it.

    Best effort (an unwritable root only means the run is not listed there).
    """
    base = Path(root) if root is not None else default_runs_root()
    path = Path(run_dir).expanduser().resolve()
    if path.parent == base.resolve():
        return
    if path in known_run_dirs(base):
        return
    try:
        base.mkdir(parents=True, exist_ok=True)
        with open(base / ELSEWHERE_FILE, "a", encoding="utf-8") as fh:
            fh.write(f"{path}\n")
    except OSError:
        pass


def known_run_dirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Run directories outside ``root`` that were started from it (still existing ones)."""
    base = Path(root) if root is not None else default_runs_root()
    try:
        lines = (base / ELSEWHERE_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out: list[Path] = []
    for line in lines:
        path = Path(line.strip())
        if line.strip() and path not in out and is_run_dir(path):
            out.append(path)
    return out


def live_run_dirs(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Run directories (under ``root`` and remembered elsewhere) whose trainer is alive on this
    machine, by their pid files only (no events are read): cheap enough for a console's start."""
    base = Path(root) if root is not None else default_runs_root()
    if not base.is_dir():
        return []
    dirs = [p for p in base.iterdir() if p.is_dir() and (p / PID_FILE).is_file()]
    dirs += [p for p in known_run_dirs(base) if p not in dirs and (p / PID_FILE).is_file()]
    return [p for p in dirs if trainer_alive(p) is True]
