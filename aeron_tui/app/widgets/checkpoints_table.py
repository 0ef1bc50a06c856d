"""Checkpoints table: name, step, validation loss, size, and which one is best."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey

from aeron_tui.app.format import fmt_bytes, fmt_float
from aeron_tui.app.session import RunSession


def best_index(checkpoints: list[dict[str, Any]]) -> int | None:
    """The best checkpoint: the latest flagged ``best``, else the lowest ``val_loss``."""
    flagged = [i for i, c in enumerate(checkpoints) if c.get("best") is True]
    if flagged:
        return flagged[-1]
    scored = [(c["val_loss"], i) for i, c in enumerate(checkpoints)
              if isinstance(c.get("val_loss"), (int, float))]
    return min(scored)[1] if scored else None


class CheckpointsTable(DataTable[str]):
    """One row per checkpoint event, newest last; ★ marks the best."""

    DEFAULT_CSS = """
    CheckpointsTable { height: 1fr; min-height: 3; scrollbar-size-horizontal: 0; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._key: tuple[object, ...] = ()
        self.rows_shown = 0

    # Fixed columns (best mark, step, val, size); the name takes what is left and ends with …
    # when cut, so the numbers are never the part cropped.
    FIXED = {"best": 1, "step": 7, "val": 6, "size": 9}

    def on_mount(self) -> None:
        self.add_column("", key="best", width=self.FIXED["best"])
        self.add_column("name", key="name", width=self._name_width())
        self.add_column("step", key="step", width=self.FIXED["step"])
        self.add_column("val", key="val", width=self.FIXED["val"])
        self.add_column("size", key="size", width=self.FIXED["size"])
        self._session: RunSession | None = None

    def _name_width(self) -> int:
        gaps = 2 * len(self.FIXED) + 2  # cell padding
        return max(8, (self.size.width or 40) - sum(self.FIXED.values()) - gaps)

    def on_resize(self) -> None:
        column = self.columns.get(ColumnKey("name"))
        if column is not None and column.width != self._name_width():
            column.width = self._name_width()
            self._key = ()
            self.show(self._session)

    def show(self, session: RunSession | None) -> None:
        self._session = session
        ckpts = session.state.checkpoints if session else []
        key = (session.id if session else None, len(ckpts))
        if key == self._key:
            return
        self._key = key
        self.clear()
        best = best_index(ckpts)
        for i, c in enumerate(ckpts):
            name = c.get("name") or str(c.get("path", "")).rstrip("/").rsplit("/", 1)[-1]
            self.add_row(
                "★" if i == best else "",
                Text(name, overflow="ellipsis", no_wrap=True),
                f"{c['global_step']:,}",
                fmt_float(c.get("val_loss")),
                fmt_bytes(c["size_bytes"]) if isinstance(c.get("size_bytes"), int) else "—",
                key=str(i),
            )
        self.rows_shown = len(ckpts)
        if ckpts:
            self.move_cursor(row=len(ckpts) - 1)
