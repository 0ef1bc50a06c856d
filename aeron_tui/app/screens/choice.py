"""A modal with a question and a few answers, each on a key (resume or start new, …)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


@dataclass(frozen=True)
class Choice:
    """One answer: its key, button label, the value the screen dismisses with, its style."""

    key: str
    label: str
    value: str
    variant: str = "default"


class ChoiceScreen(ModalScreen[str | None]):
    """Dismisses with the chosen :class:`Choice` value, or None on Escape."""

    AUTO_FOCUS = "Button"
    BINDINGS = [Binding("escape", "choose(None)", "Cancel")]

    def __init__(self, question: str, detail: str, choices: list[Choice]) -> None:
        super().__init__(classes="modal")
        self.question = question
        self.detail = detail
        self.choices = choices
        for c in choices:
            self._bindings.bind(c.key, f"choose({c.value!r})", c.label, show=False)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question", markup=False)
            if self.detail:
                yield Label(self.detail, classes="detail", markup=False)
            with Horizontal(classes="buttons"):
                for c in self.choices:
                    yield Button(f"{c.label} ({c.key})", variant=c.variant,  # type: ignore[arg-type]
                                 id=f"choice-{c.value}")
                yield Button("Cancel (esc)", id="choice-cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        value = (event.button.id or "").removeprefix("choice-")
        self.dismiss(None if value == "cancel" else value)

    def action_choose(self, value: str | None) -> None:
        self.dismiss(value)
