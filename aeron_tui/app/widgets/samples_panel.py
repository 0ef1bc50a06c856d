"""Samples panel: the model's latest greedy replies to the run's fixed validation prompts.

Drawn from ``RunState.samples`` (the newest ``sample`` event); ``h`` opens every earlier set
(:class:`aeron_tui.app.screens.samples.SamplesScreen`), so a user can read how the replies
changed as the run learned.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from aeron_tui.app.session import RunSession

PROMPT_STYLE = "grey62"
REPLY_STYLE = "bold"


def sample_lines(samples: list[dict[str, Any]], width: int) -> list[Text]:
    """Each sample as ``[style] prompt`` then ``→ reply`` (line breaks shown as ⏎), cut to
    ``width`` with … so one sample always takes two rows."""
    from core.runs.events import one_line

    width = max(8, width)
    lines: list[Text] = []
    for sample in samples:
        style = f"[{sample['style']}] " if sample.get("style") else ""
        prompt = one_line(f"{style}{sample.get('prompt', '')}", width)
        reply = one_line(f"→ {sample.get('text', '') or '(empty)'}", width)
        lines.append(Text(prompt, style=PROMPT_STYLE, no_wrap=True, overflow="ellipsis"))
        lines.append(Text(reply, style=REPLY_STYLE, no_wrap=True, overflow="ellipsis"))
    return lines


class SamplesPanel(Widget):
    """The latest samples; the box title says at which step they were generated."""

    DEFAULT_CSS = """
    SamplesPanel { height: 1fr; min-height: 2; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shown_step: int | None = None
        self.shown: list[dict[str, Any]] = []
        self._key: tuple[object, ...] = ()
        self._session: RunSession | None = None

    def show(self, session: RunSession | None) -> None:
        self._session = session
        state = session.state if session is not None else None
        history = getattr(state, "sample_history", None) or []
        step = history[-1][0] if history else None
        samples = list(getattr(state, "samples", None) or [])
        key = (session.id if session else None, step, len(history), self.size.width)
        if key == self._key:
            return
        self._key = key
        self.shown_step, self.shown = step, samples
        box = self.parent
        if box is not None:
            box.border_title = (f"samples · step {step} · h history" if step is not None
                                else "samples")
        self.refresh()

    def history(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """Every set of samples of the shown run, oldest first."""
        state = self._session.state if self._session is not None else None
        return list(getattr(state, "sample_history", None) or [])

    def on_resize(self) -> None:
        self._key = ()
        self.refresh()

    def render(self) -> Text:
        if not self.shown:
            return Text("no samples yet — greedy replies to validation prompts appear after "
                        "each evaluation", style="dim")
        return Text("\n").join(sample_lines(self.shown, self.size.width))
