"""Quit while a run is going: stop it, or leave it running headless (detach)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class QuitScreen(ModalScreen[str | None]):
    """Dismisses with ``"stop"``, ``"detach"`` or None (cancel)."""

    AUTO_FOCUS = "#cancel"
    BINDINGS = [
        Binding("s", "choose('stop')", "Stop run and quit"),
        Binding("d", "choose('detach')", "Leave running and quit"),
        Binding("escape,c", "choose(None)", "Cancel"),
    ]

    def __init__(self, run_dir: str) -> None:
        super().__init__(classes="modal")
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("A run is still going.", classes="question")
            yield Label(
                "Stop it (a final checkpoint is written), or leave it running headless and "
                f"re-attach later with:\n  aeron-tui watch {self.run_dir}",
                classes="detail", markup=False,
            )
            with Horizontal(classes="buttons"):
                yield Button("Stop run (s)", variant="error", id="stop")
                yield Button("Leave running (d)", variant="primary", id="detach")
                yield Button("Cancel (esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)

    def action_choose(self, choice: str | None) -> None:
        self.dismiss(choice)
