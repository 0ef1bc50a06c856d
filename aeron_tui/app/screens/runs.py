"""Runs screen: past runs under the runs root with status and best loss; Enter watches one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label

from aeron_tui.app.format import fmt_float
from aeron_tui.app.widgets.run_panel import STATUS_ICON, STATUS_STYLE

if TYPE_CHECKING:
    from core.runs.registry import RunSummary

EXTRA_STATUS_STYLE = {"crashed": "bold red", "empty": "dim"}


class RunsScreen(Screen[None]):
    """Lists runs (newest first), folded from their events.jsonl in a worker."""

    BINDINGS = [
        Binding("escape", "app.dashboard", "Back"),
        Binding("enter", "open", "Watch", show=True),
        Binding("f5", "refresh", "Refresh"),
    ]

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(id="runs")
        self.root = root
        self.runs: list[RunSummary] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="form-screen"):
            yield Label("Runs", classes="screen-title")
            yield Label("loading…", id="runs-where", classes="field-help")
            table: DataTable[Text | str] = DataTable(id="runs-table", cursor_type="row",
                                                     zebra_stripes=True)
            yield table
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for name in ("status", "run", "trainer", "profile", "step", "best val", "last loss",
                     "started"):
            table.add_column(name, key=name)
        table.focus()
        self.action_refresh()

    def action_refresh(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def _load(self) -> None:
        from core.runs.registry import default_runs_root, list_runs

        root = self.root or default_runs_root()
        try:
            runs = list_runs(root)
            error = None
        except OSError as exc:
            runs, error = [], f"cannot read {root}: {exc}"
        self.app.call_from_thread(self._show, root, runs, error)

    def _show(self, root: Path, runs: list[RunSummary], error: str | None) -> None:
        self.runs = runs
        where = self.query_one("#runs-where", Label)
        if error:
            where.update(Text(error, style="red"))
        elif not runs:
            where.update(f"no runs under {root} yet — press s on the dashboard to start one")
        else:
            where.update(f"{len(runs)} run(s) under {root} · enter: watch · f5: refresh · "
                         "esc: back")
        table = self.query_one(DataTable)
        table.clear()
        for i, run in enumerate(runs):
            style = STATUS_STYLE.get(run.status) or EXTRA_STATUS_STYLE.get(run.status, "")
            status = Text(f"{STATUS_ICON.get(run.status, '✖' if run.status == 'crashed' else '·')} "
                          f"{run.status}", style=style)
            step = f"{run.global_step:,}/{run.total_steps:,}" if run.total_steps else \
                f"{run.global_step:,}"
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started_at)) \
                if run.started_at else "—"
            table.add_row(status, run.path.name, run.trainer, run.profile, step,
                          fmt_float(run.best_val_loss), fmt_float(run.last_loss), started,
                          key=str(i))

    def action_open(self) -> None:
        table = self.query_one(DataTable)
        if not self.runs or table.cursor_row < 0 or table.cursor_row >= len(self.runs):
            return
        self.app.open_run(self.runs[table.cursor_row].path)  # type: ignore[attr-defined]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()
