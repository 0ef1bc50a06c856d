"""Headless progress: a renderer of the event stream, like the console but in a terminal line.

It is an :class:`core.runs.events.EventWriter` listener (or, for ``aeron-tui watch --headless``,
the reader of a run's ``events.jsonl``) that folds every event into the same
:class:`core.runs.events.RunState` the console uses, and draws only from that state:

* ``rich``  — what the trainer is doing now (a spinner, the activity — ``loading data``,
  ``training``, ``evaluating 12/50``, ``saving checkpoint`` —, elapsed time ticking every
  second), a progress bar and the numbers (loss, lr, tokens/s, step/total, ETA, phase/domain),
  refreshed 4× a second, with evals, checkpoints and warnings printed above it;
* ``plain`` — one line per step event (log interval), per notable event and per change of
  activity, and a "still …" line after 30 s without one: for logs and pipes;
* ``off``   — nothing (``--quiet``, or when ``--events-stdout`` owns stdout and stderr is no TTY).

Every mode ends with a summary line: steps, time, best validation loss, final checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from core.runs.events import (
    EventTail,
    ParseProblem,
    RunState,
    describe_activity,
    describe_event,
    format_loss,
)

MODES = ("rich", "plain", "off")
NOTABLE = ("eval", "checkpoint", "warning", "error", "status", "phase_change", "domain_change",
           "batch_change", "run_finished", "total_changed", "info", "detached")
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
# Plain mode: a "still <activity>" line when nothing was printed for this long.
PLAIN_QUIET_S = 30.0
# Per-trainer log styles ("module:function", event -> line or None): a trainer whose users know
# a particular run log (LONPT's seed log) gets those lines instead of the generic ones.
LOG_STYLES = {"lonpt": "lonpt.log:format_lonpt_event"}


def log_style(trainer: str) -> Any:
    """The trainer's line formatter, or None for the generic display."""
    target = LOG_STYLES.get(trainer)
    if target is None:
        return None
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def choose_mode(events_stdout: bool, quiet: bool,
                stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> tuple[str, IO[str]]:
    """(mode, stream): events own stdout with ``--events-stdout``, so the display uses stderr
    (only when it is a terminal — a launcher capturing stderr wants clean error text)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if quiet:
        return "off", err
    if events_stdout:
        return ("rich", err) if _isatty(err) else ("off", err)
    return ("rich", out) if _isatty(out) else ("plain", out)


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "--"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_rate(value: float | None) -> str:
    if value is None:
        return "--"
    return f"{value / 1000:.1f}k" if value >= 10000 else f"{value:,.0f}"


def status_line(state: RunState, now: float | None = None) -> str:
    """``step 120/600 | loss 3.2145 | lr 2.91e-04 | 1,234 tok/s | ETA 5m12s`` (+ phase/domain).

    ``now`` is the clock for the ETA (default: the newest event's time, so the line is a pure
    function of the events).
    """
    parts = [f"step {state.global_step}/{state.total_steps}"]
    if state.loss is not None:
        parts.append(f"loss {state.loss:.4f}")
    if state.lr is not None:
        parts.append(f"lr {state.lr:.2e}")
    parts.append(f"{format_rate(state.tokens_per_s)} tok/s")
    if state.grad_norm is not None:
        parts.append(f"gnorm {state.grad_norm:.2f}")
    if state.phase:
        parts.append(f"phase {state.phase}")
    if state.domain:
        parts.append(f"domain {state.domain}")
    if state.best_val_loss is not None:
        parts.append(f"best val {state.best_val_loss:.4f}")
    clock = now if now is not None else state.last_time
    parts.append(f"ETA {format_duration(state.eta_at(clock) if clock is not None else None)}")
    return " | ".join(parts)


def activity_line(state: RunState, now: float, spin: bool = True) -> str:
    """``⠹ evaluating 12/50 · elapsed 3m41s``: what the trainer does now and for how long."""
    what = describe_activity(state)
    if state.detached and not state.finished:
        what += " (detached)"
    spinner = "" if not spin or state.finished or state.paused else SPINNER[int(now * 8) % len(SPINNER)] + " "
    line = f"{spinner}{what} · elapsed {format_duration(state.elapsed_at(now))}"
    quiet = state.quiet_s(now)
    if quiet is not None and quiet >= 10 and not state.finished:
        line += f" · no events for {format_duration(quiet)}"
    return line


def summary_line(state: RunState, now: float | None = None) -> str:
    """The last line of a run: ``run finished: 40/40 steps in 3m12s · best val 3.2145 (step 40) ·
    final checkpoint RUN/checkpoints/step_000040``."""
    clock = now if now is not None else (state.last_time or 0.0)
    status = state.status if state.finished else f"{state.status} (still live)"
    parts = [f"run {status}: {state.global_step}/{state.total_steps} steps in "
             f"{format_duration(state.elapsed_at(clock))}"]
    if state.best_val_loss is not None:
        at = f" (step {state.best_val_step})" if state.best_val_step is not None else ""
        parts.append(f"best val {format_loss(state.best_val_loss)}{at}")
    if state.last_checkpoint:
        label = "final checkpoint" if state.finished else "last checkpoint"
        parts.append(f"{label} {state.last_checkpoint}")
    else:
        parts.append("no checkpoint")
    if state.status == "failed" and state.last_error:
        parts.append(f"error: {state.last_error}")
    return " · ".join(parts)


class HeadlessDisplay:
    """Call it with each event (register it as an EventWriter listener); ``close()`` at the end."""

    def __init__(self, mode: str, stream: IO[str], clock: Any = time.time) -> None:
        if mode not in MODES:
            raise ValueError(f"display mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.stream = stream
        self.state = RunState()
        self._clock = clock
        self._live: Any = None
        self._console: Any = None
        self._style: Any = None
        self._summary_done = False
        self._last_printed = clock()
        self._last_activity: str | None = None

    def __call__(self, event: dict[str, Any] | ParseProblem) -> None:
        self.state.apply(event)
        if self.mode == "off" or isinstance(event, ParseProblem):
            return
        try:
            self._show(event)
        except (OSError, ValueError):
            self._gone()  # the terminal or pipe went away; training goes on

    def catch_up(self, events: list[dict[str, Any] | ParseProblem]) -> None:
        """Fold events that happened before this display started (``watch``), printing none."""
        for event in events:
            self.state.apply(event)
        if self.state.trainer:
            self._style = log_style(self.state.trainer)
        self._last_activity = self.state.activity

    def _show(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "run_started":
            self._style = log_style(self.state.trainer)
        if kind == "detached" and "SIGHUP" in str(event.get("reason")):
            self._gone()  # the terminal that showed this display is closed
            return
        if self.mode == "rich" and self._live is None and not self.state.finished:
            self._start_live()
        if self._style is not None:
            line = self._style(event)
        elif kind == "step" and self.mode == "plain":
            line = status_line(self.state)
        elif kind in NOTABLE or kind == "run_started":
            line = describe_event(event)
        else:
            line = None
        if line:
            self._print(line)
        if self.mode == "plain":
            self._plain_liveness(kind)
        if kind == "run_finished":
            self.finish()

    def _plain_liveness(self, kind: str) -> None:
        """Plain mode: a line when the activity changes, and a "still …" line after silence."""
        now = self._clock()
        name = self.state.activity
        if kind == "activity" and name != self._last_activity:
            self._last_activity = name
            self._print(f"· {describe_activity(self.state)}")
        elif kind == "heartbeat" and now - self._last_printed >= PLAIN_QUIET_S:
            self._print(f"· still {activity_line(self.state, now, spin=False)}")

    def note(self, line: str) -> None:
        """A line from outside the stream (a key's result in ``watch``); never raises."""
        if self.mode == "off":
            return
        try:
            self._print(line)
        except (OSError, ValueError):
            self._gone()

    def _print(self, line: str) -> None:
        self._last_printed = self._clock()
        if self.mode == "plain":
            self.stream.write(line + "\n")
            self.stream.flush()
        elif self._console is not None:
            self._console.print(line, highlight=False, markup=False)

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console(file=self.stream)
        self._live = Live(get_renderable=self._render, console=self._console,
                          refresh_per_second=4, transient=False)
        self._live.start()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        s = self.state
        now = self._clock()
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        title = f"{s.trainer or 'trainer'} · {s.profile or 'custom'} · {s.run_id or 'starting'}"
        bar = ProgressBar(total=max(1, s.total_steps), completed=s.global_step, width=30)
        grid.add_row(bar, f"{s.progress * 100:5.1f}%  {title}")
        grid.add_row("", status_line(s, now))
        return Group(Text(activity_line(s, now), no_wrap=True, overflow="ellipsis"), grid)

    def finish(self) -> None:
        """Stop the live display and print the run's summary line (once)."""
        self.close()
        if self._summary_done or self.mode == "off" or not self.state.run_id:
            return  # (a run that failed before it started: the CLI's error line says why)
        self._summary_done = True
        try:
            line = summary_line(self.state, self._clock())
            if self.mode == "plain":
                self.stream.write(line + "\n")
                self.stream.flush()
            elif self._console is not None:
                self._console.print(line, highlight=False, markup=False)
            else:
                self.stream.write(line + "\n")
                self.stream.flush()
        except (OSError, ValueError):
            self.mode = "off"

    def _gone(self) -> None:
        """Nobody can see this display any more: stop drawing, never raise."""
        self.mode = "off"
        self.close()

    def close(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            try:
                live.stop()
            except (OSError, ValueError):
                pass


# ----------------------------------------------------------------------------------------------
# aeron-tui watch --headless
# ----------------------------------------------------------------------------------------------


def watch_run(run_dir: str | os.PathLike[str], display: HeadlessDisplay,
              poll_s: float = 0.25, gone_after_s: float = 5.0,
              should_stop: Any = None) -> str:
    """Follow ``RUN_DIR/events.jsonl`` into ``display`` until the run ends; its final status.

    What happened before is folded silently and shown as one status line; then every new event
    is drawn like a live run's. A trainer that died without ``run_finished`` (its pid gone and
    the stream silent for ``gone_after_s``) ends the watch as ``crashed``.
    """
    from core.runs.registry import EVENTS_FILE, trainer_alive

    path = Path(run_dir)
    tail = EventTail(path / EVENTS_FILE)
    backlog = tail.poll()
    display.catch_up(backlog)
    state = display.state
    if state.finished:
        display.finish()
        return state.status
    if display.mode != "off" and state.events_seen:
        now = display._clock()
        display._print(f"watching {path}: {status_line(state, now)}")
        display._print(activity_line(state, now, spin=False))
    last_new = time.monotonic()
    while True:
        items = tail.poll()
        for item in items:
            display(item)
        if items:
            last_new = time.monotonic()
        if state.finished:
            display.finish()
            return state.status
        if should_stop is not None and should_stop():
            display.close()
            return "watching"
        if time.monotonic() - last_new > gone_after_s and trainer_alive(path) is False:
            display.close()
            if display.mode != "off":
                display.stream.write(
                    f"the trainer of {path} is gone without finishing (crashed or killed) at "
                    f"step {state.global_step}; see {path / 'trainer.stderr.log'}\n")
                display.stream.flush()
            return "crashed"
        time.sleep(poll_s)


class KeyControl:
    """Keys of ``watch --headless`` on a terminal: ``p`` pause/resume, ``c`` checkpoint, ``x``
    stop (pressed twice), ``q`` quit watching. Commands go over the run directory's control
    channel (:func:`core.train.control.send_control`), so they work for any live run of the user.
    """

    def __init__(self, run_dir: str | os.PathLike[str], display: HeadlessDisplay, fd: int) -> None:
        import termios
        import threading
        import tty

        self.run_dir = Path(run_dir)
        self.display = display
        self.fd = fd
        self._quit = threading.Event()
        self._stop_armed_until = 0.0
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._read, name="watch-keys", daemon=True)
        self._thread.start()

    @classmethod
    def for_terminal(cls, run_dir: str | os.PathLike[str], display: HeadlessDisplay,
                     stdin: IO[str]) -> KeyControl | None:
        """Keys when both the display and stdin are a terminal, else None."""
        if display.mode != "rich":
            return None
        try:
            fd = stdin.fileno()
            if not os.isatty(fd):
                return None
            return cls(run_dir, display, fd)
        except (AttributeError, ValueError, OSError, ImportError):
            return None
        except Exception:  # noqa: BLE001 - termios.error: no keys, the watch still works
            return None

    def _read(self) -> None:
        import select

        while not self._quit.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(self.fd, 1)
            except OSError:
                return
            if not data:
                return
            self.press(data.decode("utf-8", errors="ignore").lower())

    def press(self, key: str) -> None:
        """Act on one key (also the tests' entry point)."""
        from core.train.control import ControlError, send_control

        if key == "q":
            self._quit.set()
            return
        state = self.display.state
        cmd = {"p": "resume" if state.paused else "pause", "c": "checkpoint", "x": "stop"}.get(key)
        if cmd is None:
            return
        if cmd == "stop" and time.monotonic() > self._stop_armed_until:
            self._stop_armed_until = time.monotonic() + 3.0
            self.display.note("press x again within 3 s to stop the run "
                              "(it writes a final checkpoint)")
            return
        try:
            pid = send_control(self.run_dir, cmd)
        except ControlError as exc:
            self.display.note(str(exc))
            return
        self.display.note(f"{cmd} sent to the trainer (pid {pid})")

    def quit_requested(self) -> bool:
        return self._quit.is_set()

    def close(self) -> None:
        import termios

        self._quit.set()
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        except (OSError, termios.error):
            pass
