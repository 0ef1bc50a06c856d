"""The trainer's own process, sampled by pid: CPU % and resident memory (no Textual here).

System-wide CPU alone misleads on a shared machine: this is what the trainer itself uses. The
trainer process and its children (torchrun ranks, loader workers) are summed. psutil's CPU
figure is the share of one core since the previous sample (200 % = two cores busy), so the
first sample after a new pid has no CPU figure yet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ProcessSample:
    """One look at the trainer process tree. ``cpu_percent`` is None on the first look."""

    pid: int
    alive: bool
    cpu_percent: float | None = None
    rss: int | None = None
    processes: int = 1
    error: str | None = None


class ProcessWatch:
    """Samples a pid (and its children) at most every ``period`` seconds."""

    def __init__(self, period: float = 1.0) -> None:
        self.period = period
        self._pid: int | None = None
        self._procs: dict[int, Any] = {}
        self._last: ProcessSample | None = None
        self._last_at = 0.0

    def sample(self, pid: int | None, now: float | None = None) -> ProcessSample | None:
        """The latest sample of ``pid`` (a cached one within ``period``); None without a pid."""
        if pid is None:
            self._pid, self._procs, self._last = None, {}, None
            return None
        now = time.monotonic() if now is None else now
        if pid == self._pid and self._last is not None and now - self._last_at < self.period:
            return self._last
        if pid != self._pid:
            self._pid, self._procs = pid, {}
        self._last = self._look(pid)
        self._last_at = now
        return self._last

    def _look(self, pid: int) -> ProcessSample:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil is a dependency
            return ProcessSample(pid, True, error="psutil is not installed")
        try:
            root = self._procs.get(pid) or psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return ProcessSample(pid, False)
        except psutil.AccessDenied:
            return ProcessSample(pid, True, error="not allowed to read this process")
        first = pid not in self._procs
        cpu = 0.0
        rss = 0
        seen: dict[int, Any] = {}
        for proc in tree:
            proc = self._procs.get(proc.pid, proc)  # keep the handle: cpu_percent needs it
            try:
                cpu += proc.cpu_percent(None)
                rss += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            seen[proc.pid] = proc
        self._procs = seen
        return ProcessSample(pid, True, None if first else cpu, rss, len(seen))
