"""Checkpoints table: name, step, validation loss, size, and which one is best."""

from __future__ import annotations

from typing import Any

from textual.widgets import DataTable

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

    def on_mount(self) -> None:
        self.add_column("", key="best", width=1)
        self.add_column("name", key="name")
        self.add_column("step", key="step")
        self.add_column("val", key="val")
        self.add_column("size", key="size")

    def show(self, session: RunSession | None) -> None:
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
                name,
                f"{c['global_step']:,}",
                fmt_float(c.get("val_loss")),
                fmt_bytes(c["size_bytes"]) if isinstance(c.get("size_bytes"), int) else "—",
                key=str(i),
            )
        self.rows_shown = len(ckpts)
        if ckpts:
            self.move_cursor(row=len(ckpts) - 1)
