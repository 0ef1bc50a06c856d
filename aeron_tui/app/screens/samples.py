"""Samples history (``h`` on the dashboard): every set of live samples of the run, by step.

Reading the replies to the same prompts from the first evaluation to the last shows what the
model learned; the panel on the dashboard only has room for the newest set.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


def history_renderable(history: list[tuple[int, list[dict[str, Any]]]]) -> Group:
    """Oldest first: a ``step N`` heading, then each prompt and its reply in full."""
    parts: list[Text] = []
    for step, samples in history:
        parts.append(Text(f"step {step}", style="bold underline"))
        for sample in samples:
            style = f"[{sample['style']}] " if sample.get("style") else ""
            parts.append(Text(f"  {style}{sample.get('prompt', '')}", style="grey62"))
            parts.append(Text(f"  → {sample.get('text', '') or '(empty)'}", style="bold"))
        parts.append(Text(""))
    if not parts:
        parts.append(Text("no samples yet", style="dim"))
    return Group(*parts)


class SamplesScreen(ModalScreen[None]):
    """The run's sample history; Escape, q or h closes it."""

    BINDINGS = [Binding("escape,q,h", "close", "Close")]

    def __init__(self, history: list[tuple[int, list[dict[str, Any]]]]) -> None:
        super().__init__(classes="modal", id="samples-history")
        self.history = list(history)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(f"Samples — {len(self.history)} evaluation(s)", classes="question")
            with VerticalScroll(id="samples-scroll"):
                yield Static(history_renderable(self.history), id="samples-text")

    def on_mount(self) -> None:
        self.query_one("#samples-scroll", VerticalScroll).scroll_end(animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
