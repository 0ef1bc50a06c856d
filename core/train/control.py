"""Run control: JSON commands on stdin and SIGINT/SIGTERM, polled by the training loop.

Commands are JSON lines ``{"cmd": "pause" | "resume" | "stop" | "checkpoint"}``. A daemon thread
reads them into a queue; the loop calls :meth:`ControlChannel.poll` between optimizer steps.
End of stdin is *not* a stop: a console that detaches must not kill the run.

Signals: the first SIGINT or SIGTERM asks for a clean stop (final checkpoint, status
``stopped``); a second SIGINT raises ``KeyboardInterrupt`` and aborts at once. Signal handlers
only set a flag (taking a lock inside a handler could deadlock against the polling thread).
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

COMMANDS = ("pause", "resume", "stop", "checkpoint")


@dataclass(frozen=True)
class Command:
    """One control request. ``cmd`` is one of COMMANDS, or ``"invalid"`` with ``detail``."""

    cmd: str
    source: str = "stdin"
    detail: str = ""


def parse_command(line: str) -> Command | None:
    """Parse one stdin line; blank lines give None, bad ones an ``invalid`` command."""
    text = line.strip()
    if not text:
        return None
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        return Command("invalid", detail=f"control line is not JSON ({exc.msg}): {text[:80]}")
    if not isinstance(obj, dict) or not isinstance(obj.get("cmd"), str):
        return Command("invalid", detail=f'control line needs {{"cmd": ...}}: {text[:80]}')
    cmd = obj["cmd"].strip().lower()
    if cmd not in COMMANDS:
        return Command("invalid", detail=f"unknown control command {cmd!r}; use {', '.join(COMMANDS)}")
    return Command(cmd)


class ControlChannel:
    """The queue of pending commands plus the signal flags, polled once per optimizer step."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Command] = queue.Queue()
        self._signal_stop = 0  # number of stop signals received
        self._signal_reported = False
        self._reader: threading.Thread | None = None
        self._old_handlers: dict[int, Any] = {}

    # -- sources ----------------------------------------------------------------------------

    def put(self, cmd: str, source: str = "api") -> None:
        """Queue a command from code (tests, an in-process console)."""
        if cmd not in COMMANDS:
            raise ValueError(f"unknown control command {cmd!r}")
        self._queue.put(Command(cmd, source))

    def start_stdin_reader(self, stream: IO[str] | None = None) -> None:
        """Read JSON commands from ``stream`` (default stdin) on a daemon thread."""
        if self._reader is not None:
            return
        src = stream if stream is not None else sys.stdin

        def read() -> None:
            try:
                for line in src:
                    command = parse_command(line)
                    if command is not None:
                        self._queue.put(command)
            except (OSError, ValueError):
                pass  # stdin closed under us: same as EOF, which is not a stop
        self._reader = threading.Thread(target=read, name="aeron-control-stdin", daemon=True)
        self._reader.start()

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM → clean stop; a second SIGINT aborts. Main thread only."""
        if threading.current_thread() is not threading.main_thread() or self._old_handlers:
            return  # not allowed off the main thread; already installed
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    @property
    def handlers_installed(self) -> bool:
        return bool(self._old_handlers)

    def restore_signal_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal_stop += 1
        if self._signal_stop > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt

    # -- polling ----------------------------------------------------------------------------

    @property
    def stop_requested_by_signal(self) -> bool:
        return self._signal_stop > 0

    def poll(self) -> list[Command]:
        """Everything queued since the last poll (a signal shows up as a ``stop``)."""
        out: list[Command] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if self._signal_stop and not self._signal_reported:
            self._signal_reported = True
            out.append(Command("stop", source="signal"))
        return out

    def wait(self, timeout: float) -> list[Command]:
        """Block up to ``timeout`` seconds for a command (used while paused)."""
        out = self.poll()
        if out:
            return out
        try:
            out.append(self._queue.get(timeout=timeout))
        except queue.Empty:
            pass
        return out + self.poll()


def run_with_signals(channel: ControlChannel, fn: Callable[[], Any]) -> Any:
    """Call ``fn`` with the channel's signal handlers installed, restoring them afterwards."""
    channel.install_signal_handlers()
    try:
        return fn()
    finally:
        channel.restore_signal_handlers()
