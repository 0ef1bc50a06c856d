"""Run a trainer as a child process and talk to it: the console's only link to training.

The child runs the headless command (``python -m aeron_tui train ... --events-stdout
--control-stdin``) in its own process group, so a Ctrl-C in the console's terminal or a closed
SSH session never reaches it, and a crash in training never takes the console down. A reader
thread turns the child's stdout into parsed events on a queue; :meth:`TrainerProcess.drain` hands
them out in batches. Control commands are JSON lines on the child's stdin. The child's stderr goes
to ``RUN_DIR/trainer.stderr.log``, so its last lines survive the console (crash modal, detached
runs). No torch, no textual here: the launcher is plain ``subprocess`` and threads.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from core.runs.events import ParseProblem, parse_event_line

# Keep freed memory in the trainer's heap instead of returning it to the OS each step: measured
# 20-35 % faster small-profile steps and much less run-to-run noise (GUIDE, "Measured").
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
STDERR_LOG = "trainer.stderr.log"
CONTROL_COMMANDS = ("pause", "resume", "stop", "checkpoint")

# The drainer that inherits the child's stdout when the console detaches: it reads and discards,
# so the trainer never writes into a closed pipe, and it exits when the trainer does (EOF).
_DRAIN_CODE = (
    "import os\n"
    "while True:\n"
    "    try:\n"
    "        if not os.read(0, 65536): break\n"
    "    except OSError: break\n"
)

Item = dict[str, Any] | ParseProblem


@dataclass
class LaunchSpec:
    """What to run: the headless ``train`` command's arguments.

    ``overrides`` are ``key=value`` strings passed as ``--set``; ``extra_args`` go last verbatim.
    """

    trainer: str
    run_dir: Path
    profile: str | None = None
    data: str | None = None
    steps: int | None = None
    seed: int | None = None
    config: Path | None = None
    overrides: Sequence[str] = ()
    extra_args: Sequence[str] = ()
    python: str = field(default_factory=lambda: sys.executable)

    def argv(self) -> list[str]:
        """The full command line of the child process."""
        args = [self.python, "-m", "aeron_tui", "train", self.trainer,
                "--run-dir", str(self.run_dir)]
        if self.config is not None:
            args += ["--config", str(self.config)]
        if self.profile:
            args += ["--profile", self.profile]
        if self.data:
            args += ["--data", str(self.data)]
        if self.steps is not None:
            args += ["--steps", str(self.steps)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        for item in self.overrides:
            args += ["--set", item]
        args += ["--events-stdout", "--control-stdin"]
        args += list(self.extra_args)
        return args


def trainer_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the console's, plus unbuffered output and the allocator tunables."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    existing = env.get("GLIBC_TUNABLES")
    if not existing:
        env["GLIBC_TUNABLES"] = GLIBC_TUNABLES
    elif "malloc.trim_threshold" not in existing:
        env["GLIBC_TUNABLES"] = f"{existing}:{GLIBC_TUNABLES}"
    return env


class TrainerProcess:
    """One running trainer child. Thread-safe for ``send``/``drain`` from any one other thread."""

    def __init__(
        self,
        argv: Sequence[str],
        run_dir: str | os.PathLike[str],
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.run_dir / STDERR_LOG
        self.events: queue.Queue[Item] = queue.Queue()
        self.started_at = time.time()
        self.detached = False
        self._eof = threading.Event()
        self._stdin_lock = threading.Lock()
        self._stderr_start = self.stderr_path.stat().st_size if self.stderr_path.exists() else 0
        with open(self.stderr_path, "ab") as err:
            # start_new_session: own process group, no SIGINT/SIGHUP from the console's terminal.
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=trainer_env(env),
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        self._reader = threading.Thread(target=self._read_stdout, name="trainer-stdout", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, spec: LaunchSpec, env: dict[str, str] | None = None) -> TrainerProcess:
        """Spawn the headless trainer for ``spec``."""
        return cls(spec.argv(), spec.run_dir, env=env)

    # -- state ------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    @property
    def stdout_closed(self) -> bool:
        """True once the child's stdout reached end of file (it exited or closed it)."""
        return self._eof.is_set()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for exit; the exit code, or None on timeout."""
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    # -- events -----------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        line_no = 0
        try:
            for raw in iter(stdout.readline, b""):
                line_no += 1
                if self.detached:
                    continue  # nobody is listening any more
                text = raw.decode("utf-8", errors="replace")
                if not text.strip():
                    continue
                if not text.endswith("\n"):
                    self.events.put(ParseProblem(line_no, "incomplete last line on trainer stdout",
                                                 text[:200]))
                    continue
                self.events.put(parse_event_line(text, line_no))
        except (OSError, ValueError):
            pass  # stdout closed under us (detach); the drainer owns it now
        finally:
            self._eof.set()

    def drain(self, timeout: float = 0.05, limit: int = 5000) -> list[Item]:
        """Wait up to ``timeout`` s for the first item, then take everything queued (≤ limit)."""
        out: list[Item] = []
        try:
            out.append(self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait())
        except queue.Empty:
            return out
        while len(out) < limit:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                break
        return out

    @property
    def finished_reading(self) -> bool:
        """Stdout is closed, the queue is empty and the process has exited."""
        return self._eof.is_set() and self.events.empty() and self._proc.poll() is not None

    # -- control ----------------------------------------------------------------------------

    def send(self, cmd: str, **fields: Any) -> bool:
        """Write one control command as a JSON line; False when the child cannot hear it."""
        if cmd not in CONTROL_COMMANDS:
            raise ValueError(f"unknown control command {cmd!r}; expected one of {CONTROL_COMMANDS}")
        stdin = self._proc.stdin
        if stdin is None or self.detached or self._proc.poll() is not None:
            return False
        line = json.dumps({"cmd": cmd, **fields}) + "\n"
        with self._stdin_lock:
            try:
                stdin.write(line.encode())
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return False
        return True

    def pause(self) -> bool:
        return self.send("pause")

    def resume(self) -> bool:
        return self.send("resume")

    def stop(self) -> bool:
        """Ask for a clean stop (the trainer writes a final checkpoint and exits)."""
        return self.send("stop")

    def checkpoint(self) -> bool:
        return self.send("checkpoint")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group (torchrun ranks included)."""
        if self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self, grace: float = 10.0) -> int | None:
        """SIGTERM the group (the trainer checkpoints and exits), then SIGKILL after ``grace`` s."""
        self.signal(signal.SIGTERM)
        code = self.wait(grace)
        if code is None:
            self.signal(signal.SIGKILL)
            code = self.wait(5.0)
        self._close_pipes()
        return code

    def shutdown(self, grace: float = 30.0) -> int | None:
        """Stop cleanly over the control channel, escalating to SIGTERM/SIGKILL if it hangs."""
        if self._proc.poll() is None and self.stop():
            code = self.wait(grace)
            if code is not None:
                self._close_pipes()
                return code
        return self.terminate(grace=min(grace, 10.0))

    def detach(self) -> None:
        """Leave the trainer running headless after the console exits.

        Its stdin is closed (the trainer keeps going on EOF) and a small drainer process takes
        over its stdout, so later event writes never hit a closed pipe. events.jsonl and
        trainer.stderr.log keep recording; ``aeron-tui watch RUN_DIR`` re-attaches.
        """
        if self.detached:
            return
        self.detached = True
        stdout = self._proc.stdout
        if self._proc.poll() is None and stdout is not None:
            try:
                subprocess.Popen(
                    [sys.executable, "-S", "-c", _DRAIN_CODE],
                    stdin=stdout.fileno(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError:
                pass
        with self._stdin_lock:
            _close(self._proc.stdin)

    def _close_pipes(self) -> None:
        with self._stdin_lock:
            _close(self._proc.stdin)
        # The reader thread closes nothing itself; give it a moment to see EOF.
        self._reader.join(timeout=1.0)

    # -- diagnostics ------------------------------------------------------------------------

    def stderr_tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines this child wrote to stderr."""
        return read_tail(self.stderr_path, lines, start=self._stderr_start)


def _close(stream: IO[bytes] | None) -> None:
    if stream is None:
        return
    try:
        stream.close()
    except (OSError, ValueError):
        pass


def read_tail(path: str | os.PathLike[str], lines: int = 20, start: int = 0,
              max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``lines`` non-empty lines of a text file (from byte ``start``), or []."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            begin = max(start, end - max_bytes)
            fh.seek(begin)
            data = fh.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    out = [line.rstrip() for line in text.splitlines() if line.strip()]
    return out[-lines:]
