"""Headless progress: a renderer of the event stream, like the console but in a terminal line.

It is an :class:`core.runs.events.EventWriter` listener that folds every event into the same
:class:`core.runs.events.RunState` the console uses, and draws only from that state:

* ``rich``  — a live progress bar (loss, lr, tokens/s, step/total, ETA, phase/domain) refreshed
  at most 4× a second, with evals, checkpoints and warnings printed above it;
* ``plain`` — one line per step event (log interval) and per notable event: for logs and pipes;
* ``off``   — nothing (``--quiet``, or when ``--events-stdout`` owns stdout and stderr is no TTY).
"""

from __future__ import annotations

import sys
from typing import IO, Any

from core.runs.events import RunState, describe_event

MODES = ("rich", "plain", "off")
NOTABLE = ("eval", "checkpoint", "info", "warning", "error", "status", "phase_change", "domain_change",
           "batch_change", "run_finished")
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


def status_line(state: RunState) -> str:
    """``step 120/600 | loss 3.2145 | lr 2.91e-04 | 1,234 tok/s | ETA 5m12s`` (+ phase/domain)."""
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
    parts.append(f"ETA {format_duration(state.eta_s)}")
    return " | ".join(parts)


class HeadlessDisplay:
    """Call it with each event (register it as an EventWriter listener); ``close()`` at the end."""

    def __init__(self, mode: str, stream: IO[str]) -> None:
        if mode not in MODES:
            raise ValueError(f"display mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.stream = stream
        self.state = RunState()
        self._live: Any = None
        self._console: Any = None
        self._bar: Any = None
        self._style: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        self.state.apply(event)
        if self.mode == "off":
            return
        kind = event["type"]
        if kind == "run_started":
            self._style = log_style(self.state.trainer)
        if self._style is not None:
            self._styled(event)
            return
        if self.mode == "plain":
            if kind == "step":
                self._write(status_line(self.state))
            elif kind in NOTABLE or kind == "run_started":
                self._write(describe_event(event))
            return
        if kind == "run_started" and self._live is None:
            self._start_live()
        if kind in NOTABLE and self._console is not None:
            self._console.print(describe_event(event), highlight=False, markup=False)
        if kind == "run_finished":
            self.close()

    def _styled(self, event: dict[str, Any]) -> None:
        """The trainer's own log lines (plain: lines only; rich: lines above the live bar)."""
        line = self._style(event)
        if self.mode == "plain":
            if line:
                self._write(line)
            return
        if event["type"] == "run_started" and self._live is None:
            self._start_live()
        if line and self._console is not None:
            self._console.print(line, highlight=False, markup=False)
        if event["type"] == "run_finished":
            self.close()

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            self.mode = "off"  # the reader went away; training goes on

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console(file=self.stream)
        self._live = Live(get_renderable=self._render, console=self._console,
                          refresh_per_second=4, transient=False)
        self._live.start()

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        s = self.state
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        title = f"{s.trainer} · {s.profile or 'custom'} · {s.run_id}"
        bar = ProgressBar(total=max(1, s.total_steps), completed=s.global_step, width=30)
        grid.add_row(bar, f"{s.progress * 100:5.1f}%  {title}")
        grid.add_row("", status_line(s))
        return grid

    def close(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()
