"""Scratchpad slot grid: ``total_slots`` cells, occupied vs free, coloured by slot type.

Slot positions carry no meaning to a user, so the grid is ordered by type: occupied cells first
(coloured by their reported ``slot_types``), then cells written in this step whose type was not
reported, then free cells. The occupied count always equals the event's ``used_slots``.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from aeron_tui.app.format import line_count
from aeron_tui.app.session import RunSession

# MemorySlotType order from the model spec: EMPTY, WORKING, SHORT_TERM, LONG_TERM, EPISODIC.
SLOT_TYPES = ("empty", "working", "short-term", "long-term", "episodic")
SLOT_COLORS = {1: "bright_green", 2: "cyan", 3: "magenta", 4: "yellow"}
UNTYPED_COLOR = "white"
FREE_COLOR = "grey30"


class ScratchpadGrid(Static):
    """The slot grid with used/total (and committed writes once there are any)."""

    DEFAULT_CSS = """
    ScratchpadGrid { height: auto; padding: 0 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.occupied_count = 0
        self.total_slots = 0
        self._key: tuple[object, ...] = ()
        self._lines = -1

    def show(self, session: RunSession | None) -> None:
        pad = session.state.scratchpad if session else {}
        key = (id(pad), session.version if session else -1, self.size.width)
        if key == self._key:
            return
        self._key = key
        body = self._render_grid(pad or {})
        lines = line_count(body)
        self.update(body, layout=lines != self._lines)
        self._lines = lines

    def _render_grid(self, pad: dict[str, object]) -> Text:
        total = _int(pad.get("total_slots"))
        used = _int(pad.get("used_slots"))
        types_raw = pad.get("slot_types")
        types = [t for t in types_raw if isinstance(t, int)] if isinstance(types_raw, list) else []
        if not total and types:
            total = len(types)
        if not total:
            self.occupied_count = 0
            self.total_slots = 0
            return Text("no scratchpad data yet", style="dim")
        used = min(max(used, 0), total)
        typed = sorted(t for t in types if t > 0)[:used]
        cells: list[tuple[str, str]] = [("■", SLOT_COLORS.get(t, UNTYPED_COLOR)) for t in typed]
        cells += [("■", UNTYPED_COLOR)] * (used - len(typed))
        cells += [("·", FREE_COLOR)] * (total - used)
        self.occupied_count = used
        self.total_slots = total

        out = Text()
        out.append(f"used {used}/{total}", "bold")
        # The scratchpad's step counter counts committed writes (inference-time memory); it
        # stays 0 through training, so it is shown only once it moves.
        counter = pad.get("step_counter")
        if isinstance(counter, int) and counter > 0:
            out.append(f"  committed writes {counter}", "dim")
        out.append("\n")
        width = max(8, (self.size.width - 2) if self.size.width else 32)
        # Spaced cells read better; go dense when the spaced grid would not fit the height.
        spaced = max(4, width // 2)
        rows_left = max(1, (self.parent.size.height if self.parent else 10) - 4)
        dense = -(-len(cells) // spaced) > rows_left
        per_row = width if dense else spaced
        gap = "" if dense else " "
        for i, (glyph, color) in enumerate(cells):
            out.append(glyph, color)
            out.append("\n" if (i + 1) % per_row == 0 and i + 1 < len(cells) else gap)
        out.append("\n")
        present = sorted({t for t in typed})
        for t in present:
            out.append("■ ", SLOT_COLORS.get(t, UNTYPED_COLOR))
            out.append(f"{SLOT_TYPES[t] if t < len(SLOT_TYPES) else f'type {t}'}  ", "dim")
        if used > len(typed):
            out.append("■ ", UNTYPED_COLOR)
            out.append("written (type not reported)  ", "dim")
        out.append("· ", FREE_COLOR)
        out.append("free", "dim")
        return out


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
