"""Event log: warnings, phase and domain changes, checkpoints, evals, errors, stream problems."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from aeron_tui.app.format import fmt_clock
from aeron_tui.app.session import LogLine, RunSession
from core.runs.events import describe_event

KIND_STYLE = {
    "run_started": "bold",
    "eval": "green",
    "checkpoint": "cyan",
    "phase_change": "magenta",
    "domain_change": "bright_cyan",
    "batch_change": "blue",
    "info": "default",
    "warning": "yellow",
    "status": "dim",
    "error": "bold red",
    "run_finished": "bold",
    "problem": "yellow",
}


class EventLog(RichLog):
    """Appends new log lines from the session; timestamps are offsets from the run start."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; min-height: 3; overflow-x: hidden; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=500, wrap=True, markup=False, highlight=False,
                         auto_scroll=True, **kwargs)  # type: ignore[arg-type]
        self.session_id: int | None = None
        self.lines_written = 0

    def show(self, session: RunSession | None) -> None:
        if session is None:
            return
        if session.id != self.session_id:
            self.clear()
            self.session_id = session.id
            self.lines_written = 0
        new = session.take_log()
        for line in new:
            self.write(format_line(line, session.state.started_at))
            self.lines_written += 1


def format_line(line: LogLine, started_at: float | None) -> Text:
    """One styled log line."""
    if line.problem is not None:
        # Problems wrap: what is wrong with the input must be readable in full.
        p = line.problem
        text = Text()
        text.append("       ! ", "bold yellow")
        text.append(f"events line {p.line_no}: {p.message}", "yellow")
        if p.text:
            text.append(f"  {p.text[:80]}", "dim")
        return text
    text = Text(no_wrap=True, overflow="ellipsis")
    assert line.event is not None
    if line.time is not None and started_at is not None:
        text.append(f"{fmt_clock(line.time - started_at):>8} ", "dim")
    text.append(describe_event(line.event), KIND_STYLE.get(line.kind, ""))
    return text
