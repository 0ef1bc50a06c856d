"""Run control: JSON commands on stdin or in the run directory, and signals, polled by the loop.

Commands are JSON lines ``{"cmd": "pause" | "resume" | "stop" | "checkpoint"}``. They come from
the launching console over the trainer's stdin (``--control-stdin``) and — for any process of
the user, e.g. ``aeron-tui runs control RUN_DIR pause`` or a console watching the run — from the
append-only ``RUN_DIR/control.jsonl``, which :func:`send_control` writes and the trainer follows.
Daemon threads read both into one queue; the loop calls :meth:`ControlChannel.poll` between
optimizer steps. End of stdin is *not* a stop: a console that detaches must not kill the run —
it is reported as a detach (:meth:`ControlChannel.take_detach`), as is SIGHUP (the terminal
closed): the run goes on unattended.

Signals: the first SIGINT or SIGTERM asks for a clean stop (final checkpoint, status
``stopped``); a second SIGINT raises ``KeyboardInterrupt`` and aborts at once. SIGHUP is a
detach. Signal handlers only set a flag (taking a lock inside a handler could deadlock against
the polling thread).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from core.errors import AeronError

COMMANDS = ("pause", "resume", "stop", "checkpoint")
CONTROL_FILE = "control.jsonl"
# How often the trainer looks for new lines in control.jsonl (a stat per look).
FILE_POLL_S = 0.2


class ControlError(AeronError):
    """A control command could not be delivered (the run is not live, not ours, ...)."""


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
        self._file_watcher: threading.Thread | None = None
        self._file_stop = threading.Event()
        # Detaches: SIGHUP count (set in the handler) and the end of stdin, each reported once.
        self._hangups = 0
        self._hangups_reported = 0
        self._stdin_closed = False
        self._stdin_close_reported = False
        self._detach_lock = threading.Lock()

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
            self._stdin_closed = True  # the console went away: a detach
        self._reader = threading.Thread(target=read, name="aeron-control-stdin", daemon=True)
        self._reader.start()

    def watch_file(self, path: str | os.PathLike[str], pid: int | None = None,
                   since: float | None = None) -> None:
        """Follow ``path`` (``RUN_DIR/control.jsonl``) on a daemon thread.

        Only lines addressed to this process (``"pid"``, default ``os.getpid()``) and written
        at or after ``since`` (default now; the trainer passes its start time) are commands:
        a resumed run never replays the commands its predecessor received.
        """
        if self._file_watcher is not None:
            return
        target = Path(path)
        me = os.getpid() if pid is None else pid
        start = time.time() if since is None else since

        def follow() -> None:
            offset, buffer = 0, b""
            while not self._file_stop.wait(FILE_POLL_S):
                try:
                    with open(target, "rb") as fh:
                        fh.seek(offset)
                        chunk = fh.read()
                except OSError:
                    continue
                if not chunk:
                    continue
                offset += len(chunk)
                *lines, buffer = (buffer + chunk).split(b"\n")
                for raw in lines:
                    command = _file_command(raw.decode("utf-8", errors="replace"), me, start)
                    if command is not None:
                        self._queue.put(command)

        self._file_watcher = threading.Thread(target=follow, name="aeron-control-file",
                                              daemon=True)
        self._file_watcher.start()

    def stop_watching(self) -> None:
        self._file_stop.set()

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM → clean stop; a second SIGINT aborts; SIGHUP → detach (the run goes
        on). Main thread only."""
        if threading.current_thread() is not threading.main_thread() or self._old_handlers:
            return  # not allowed off the main thread; already installed
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        if hasattr(signal, "SIGHUP"):
            self._old_handlers[signal.SIGHUP] = signal.getsignal(signal.SIGHUP)
            signal.signal(signal.SIGHUP, self._on_hangup)

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

    def _on_hangup(self, signum: int, frame: FrameType | None) -> None:
        self._hangups += 1

    def take_detach(self) -> str | None:
        """Why the run became unattended since the last call (SIGHUP, end of stdin), or None.

        Safe from any thread (the heartbeat reports a detach at once, the loop between steps);
        each detach is reported once.
        """
        with self._detach_lock:
            if self._hangups > self._hangups_reported:
                self._hangups_reported = self._hangups
                return "terminal closed (SIGHUP); the run goes on"
            if self._stdin_closed and not self._stdin_close_reported:
                self._stdin_close_reported = True
                return "the console closed the control channel (stdin); the run goes on"
        return None

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


def _file_command(line: str, pid: int, since: float) -> Command | None:
    """A control.jsonl line as a command for process ``pid``, or None (blank, not for us, old)."""
    text = line.strip()
    if not text:
        return None
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        target, sent = obj.get("pid"), obj.get("time")
        if isinstance(target, int) and target != pid:
            return None
        if isinstance(sent, (int, float)) and sent < since:
            return None
    command = parse_command(text)
    if command is None:
        return None
    return Command(command.cmd, source="file", detail=command.detail)


# ----------------------------------------------------------------------------------------------
# Sending: any process of the user (the CLI, a console watching the run)
# ----------------------------------------------------------------------------------------------


def send_control(run_dir: str | os.PathLike[str], command: str) -> int:
    """Append ``command`` for the live trainer of ``run_dir`` to its ``control.jsonl``.

    Returns the trainer's pid. Raises :class:`ControlError` with one line when the command is
    unknown or the run is not live (finished, crashed, no trainer on this machine) or belongs
    to another user. The trainer acts on it between optimizer steps (within ~0.2 s of the
    step's end) and says so in its events (``status``, ``checkpoint``, ``run_finished``).
    """
    from core.runs.registry import trainer_pid

    cmd = command.strip().lower()
    if cmd not in COMMANDS:
        raise ControlError(f"unknown control command {command!r}; use {', '.join(COMMANDS)}")
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ControlError(f"{path}: no such run directory")
    pid = trainer_pid(path)
    if pid is None:
        raise ControlError(f"{path}: the run is not live (no running trainer on this machine); "
                           f"nothing to {cmd}")
    try:
        os.kill(pid, 0)
    except PermissionError:
        raise ControlError(f"{path}: the trainer (pid {pid}) belongs to another user; "
                           "only its owner can control it") from None
    except ProcessLookupError:
        raise ControlError(f"{path}: the run is not live (its trainer, pid {pid}, is gone); "
                           f"nothing to {cmd}") from None
    line = json.dumps({"cmd": cmd, "pid": pid, "time": time.time(), "from": os.getpid()}) + "\n"
    try:
        fd = os.open(path / CONTROL_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))  # one write of one line: appends stay whole
        finally:
            os.close(fd)
    except OSError as exc:
        raise ControlError(f"{path / CONTROL_FILE}: cannot write the command "
                           f"({exc.strerror or exc})") from exc
    return pid


# What confirms each command in the run's events (type, status).
_EFFECTS = {
    "pause": ("status", "paused"),
    "resume": ("status", "running"),
    "checkpoint": ("checkpoint", None),
    "stop": ("run_finished", None),
}


def wait_for_effect(run_dir: str | os.PathLike[str], command: str, since: float,
                    timeout: float, poll_s: float = 0.1) -> dict[str, Any] | None:
    """The first event at or after ``since`` showing that ``command`` took effect (``status
    paused``, a ``checkpoint``, ``run_finished``, ...), or None after ``timeout`` seconds."""
    from core.runs.events import EventTail
    from core.runs.registry import EVENTS_FILE

    kind, status = _EFFECTS[command]
    tail = EventTail(Path(run_dir) / EVENTS_FILE)
    deadline = time.monotonic() + timeout
    while True:
        for event in tail.poll():
            if (isinstance(event, dict) and event["type"] == kind and event["time"] >= since
                    and (status is None or event.get("status") == status)):
                return event
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)
