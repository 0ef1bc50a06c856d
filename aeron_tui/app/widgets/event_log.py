"""Event log: warnings, phase and domain changes, checkpoints, evals, errors, stream problems."""

from __future__ import annotations

from rich.text import Text
from textual.events import Resize
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
    "total_changed": "magenta",
    "detached": "yellow",
}


MAX_LINES = 500


class EventLog(RichLog):
    """Appends new log lines from the session; timestamps are offsets from the run start.

    Lines are rendered at the log's own width (a line too long for it ends with ``…``) and
    rendered again when the terminal is resized, so no line is ever cut without saying so.
    """

    DEFAULT_CSS = """
    EventLog { height: 1fr; min-height: 3; overflow-x: hidden; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=MAX_LINES, wrap=True, markup=False, highlight=False,
                         auto_scroll=True, min_width=1, **kwargs)  # type: ignore[arg-type]
        self.session_id: int | None = None
        self.lines_written = 0
        self._entries: list[LogLine] = []
        self._started_at: float | None = None
        self._width = 0

    def show(self, session: RunSession | None) -> None:
        if session is None:
            return
        if session.id != self.session_id:
            self.clear()
            self._entries = []
            self.session_id = session.id
            self.lines_written = 0
        self._started_at = session.state.started_at
        new = session.take_log()
        for line in new:
            self.write(format_line(line, self._started_at))
            self.lines_written += 1
        self._entries.extend(new)
        del self._entries[: max(0, len(self._entries) - MAX_LINES)]

    def on_resize(self, event: Resize) -> None:
        super().on_resize(event)
        width = self.scrollable_content_region.width
        if width != self._width and self._entries:
            # Lines were laid out for the old width: lay them out again (ellipses included).
            self.clear()
            for line in self._entries:
                self.write(format_line(line, self._started_at))
        self._width = width


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
