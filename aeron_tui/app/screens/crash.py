"""The trainer crashed (or could not start): its last error lines, and the console goes on."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class CrashScreen(ModalScreen[None]):
    """Shows ``title``, the error lines and where the full log is; Escape/Enter closes it."""

    AUTO_FOCUS = "#ok"
    BINDINGS = [Binding("escape,enter,o", "close", "Close")]

    def __init__(self, title: str, lines: list[str], log_path: str | None = None) -> None:
        super().__init__(classes="modal", id="crash")
        self.title_text = title
        self.lines = lines
        self.log_path = log_path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(self.title_text, classes="question error-title")
            with VerticalScroll(classes="error-lines"):
                yield Static("\n".join(self.lines) or "(the trainer printed nothing)",
                             markup=False, id="error-text")
            if self.log_path:
                yield Label(f"full log: {self.log_path}", classes="detail")
            yield Label("The console keeps working: press s to start a new run.", classes="detail")
            with Horizontal(classes="buttons"):
                yield Button("OK (enter)", variant="primary", id="ok")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
