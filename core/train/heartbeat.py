"""The trainer's heartbeat: a ``heartbeat`` event at least every 2 s while the trainer lives.

A daemon thread calls ``beat()`` every ``interval`` seconds (default 1 s, so a late wake-up on a
loaded machine still stays under the 2 s the renderers count on). ``beat`` emits through the
run's :class:`core.runs.events.EventWriter`, whose lock keeps the lines whole next to the
training loop's own events. Silence longer than a few seconds therefore means a dead or frozen
trainer, never a busy one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DEFAULT_INTERVAL_S = 1.0


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, beat: Callable[[], object], interval: float = DEFAULT_INTERVAL_S) -> None:
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be > 0, got {interval}")
        self._beat = beat
        self.interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="aeron-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Beats are due on a fixed grid (not "interval after the last one"), so a late wake-up
        # on a loaded machine does not push every later beat back.
        due = time.monotonic() + self.interval
        while not self._stopped.wait(max(0.0, due - time.monotonic())):
            try:
                self._beat()
            except Exception:  # noqa: BLE001 - a failed beat must never take training down
                pass
            now = time.monotonic()
            due += self.interval
            if due < now:  # more than a whole interval late: start the grid again from now
                due = now + self.interval

    def stop(self) -> None:
        """Stop and wait for the thread: no beat is emitted after this returns."""
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
