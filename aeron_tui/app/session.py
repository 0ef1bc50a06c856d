"""The run the dashboard shows: its folded :class:`RunState` plus where its events come from.

No Textual here. Every number the console shows comes from ``state`` (the shared
:class:`core.runs.events.RunState` fold); the session only adds what a live view needs on top of the
same events: per-metric histories for sparklines and the queue of new event-log lines.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aeron_tui.launcher import TrainerProcess
from core.runs.events import ParseProblem, RunState

# Event types RunState keeps in its log (plus run_started): what the event log widget shows.
LOG_TYPES = frozenset({
    "run_started", "eval", "checkpoint", "phase_change", "domain_change", "batch_change",
    "info", "warning", "status", "error", "run_finished", "total_changed", "detached",
})
MAX_METRIC_POINTS = 2000
LIVE_STATUSES = ("starting", "running", "paused", "stopping")
# Bookkeeping counts some trainers put in ``metrics`` (e.g. eval token counts): not headlines.
COUNT_METRICS = frozenset({"tokens", "samples", "n", "count"})

_ids = itertools.count(1)


@dataclass
class LogLine:
    """One line for the event log: an event (``kind`` = its type) or a stream problem."""

    kind: str
    time: float | None
    step: int | None
    event: dict[str, Any] | None = None
    problem: ParseProblem | None = None


@dataclass
class RunSession:
    """One run being shown. ``source`` is ``child`` (started here), ``watch`` or ``replay``."""

    source: str = "none"
    run_dir: Path | None = None
    process: TrainerProcess | None = None
    state: RunState = field(default_factory=RunState)
    id: int = field(default_factory=lambda: next(_ids))
    version: int = 0
    metric_history: dict[str, list[float]] = field(default_factory=dict)
    pending_log: list[LogLine] = field(default_factory=list)
    exit_code: int | None = None
    stderr_tail: list[str] = field(default_factory=list)
    problem_count: int = 0
    # tokens/s of each step event (the throughput sparkline), newest last.
    throughput_history: list[float] = field(default_factory=list)
    # When this view of the run began (the console's clock): "waiting for the first event".
    created_at: float = field(default_factory=time.time)
    pending_command: str | None = None
    status_before_command: str | None = None
    _gone_checked_at: float = 0.0
    _gone: bool = False

    def apply(self, items: list[dict[str, Any] | ParseProblem]) -> None:
        """Fold a batch of events (and parse problems) into the state."""
        state = self.state
        for item in items:
            state.apply(item)
            if isinstance(item, ParseProblem):
                self.problem_count += 1
                self.pending_log.append(LogLine("problem", None, None, problem=item))
                continue
            kind = item["type"]
            if kind == "step":
                tps = item.get("tokens_per_s")
                if isinstance(tps, (int, float)) and math.isfinite(tps):
                    self.throughput_history.append(float(tps))
                    if len(self.throughput_history) > MAX_METRIC_POINTS:
                        del self.throughput_history[:-MAX_METRIC_POINTS]
            if kind == "step" and item.get("metrics"):
                for name, value in item["metrics"].items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) \
                            and math.isfinite(value):
                        hist = self.metric_history.setdefault(name, [])
                        hist.append(float(value))
                        if len(hist) > MAX_METRIC_POINTS:
                            del hist[: len(hist) - MAX_METRIC_POINTS]
            if kind in LOG_TYPES:
                self.pending_log.append(
                    LogLine(kind, float(item["time"]), item.get("global_step"), event=item)
                )
        if len(self.pending_log) > 1000:
            del self.pending_log[: len(self.pending_log) - 1000]
        self.version += 1

    def take_log(self) -> list[LogLine]:
        """New log lines since the last call (the event-log widget appends them)."""
        lines, self.pending_log = self.pending_log, []
        return lines

    def request(self, cmd: str) -> None:
        """Remember a control command sent and not yet reflected by a status event."""
        self.pending_command = cmd
        self.status_before_command = self.state.status

    @property
    def display_status(self) -> str:
        """The status to show: the events' status, unless the process exit says otherwise.

        A trainer that died without a final event would otherwise look "running" forever.
        """
        status = self.state.status
        if self.exit_code is not None and status in LIVE_STATUSES:
            return "failed" if self.exit_code != 0 else "stopped"
        if status in LIVE_STATUSES and self.source == "watch" and self.trainer_gone():
            return "crashed"
        return status

    def trainer_gone(self, every_s: float = 2.0) -> bool:
        """A watched run's trainer process is known to be gone (pid file; checked every 2 s)."""
        if self.run_dir is None or self.state.events_seen == 0:
            return False
        now = time.monotonic()
        if now - self._gone_checked_at >= every_s:
            from core.runs.registry import trainer_alive

            self._gone_checked_at = now
            self._gone = trainer_alive(self.run_dir) is False or (
                trainer_alive(self.run_dir) is None
                and not (self.run_dir / "trainer.pid").exists())
        return self._gone

    def watched_pid(self) -> int | None:
        """The trainer pid of a watched run on this host, from its pid file (None if unknown)."""
        if self.run_dir is None:
            return None
        from core.runs.registry import PID_FILE, trainer_alive

        if trainer_alive(self.run_dir) is not True:
            return None
        try:
            info = json.loads((self.run_dir / PID_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        pid = info.get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def attached(self) -> bool:
        """A child process this console started and still controls."""
        return self.process is not None and not self.process.detached and self.process.running

    @property
    def live(self) -> bool:
        """The run may still produce events (status not final)."""
        return self.display_status in LIVE_STATUSES

    def headline_metrics(self) -> dict[str, Any]:
        """Trainer metrics to show where branch scores would go (RLHF, runs without ToT)."""
        return {k: v for k, v in self.state.metrics.items()
                if k not in COUNT_METRICS and isinstance(v, (int, float))
                and not isinstance(v, bool)}


def send_run_command(session: RunSession, cmd: str) -> str | None:
    """Deliver a control command to the session's trainer; None when sent, else why not.

    A child this console started hears it on its stdin at once. Any other live run of this user
    (watched, started elsewhere, or by an earlier console) gets it over its run directory's
    control channel (``core.train.control.send_control``, the one ``runs control`` uses).
    """
    if session.attached and session.process is not None:
        if session.process.send(cmd):
            return None
    if session.run_dir is None:
        return "the run has no run directory to send it to"
    from core.errors import AeronError
    from core.train.control import send_control

    try:
        send_control(session.run_dir, cmd)
    except AeronError as exc:
        return str(exc)
    return None
