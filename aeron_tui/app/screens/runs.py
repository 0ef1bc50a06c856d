"""Runs screen: past runs (under the runs root, and those started from it with ``--run-dir``
elsewhere) with status and losses. Enter watches one, ``R`` resumes a stopped one, space marks
runs and ``c`` compares two marked runs' loss curves on one chart, ``o`` opens a run's config,
``g`` writes the picture ``aeron-tui runs plot`` draws (the marked runs, or the selected one)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Label, Static
from textual.widgets.data_table import ColumnKey

from aeron_tui.app.format import debiased_ema, downsample, fmt_float
from aeron_tui.app.widgets.run_panel import STATUS_ICON, STATUS_STYLE

if TYPE_CHECKING:
    from core.runs.registry import RunSummary

EXTRA_STATUS_STYLE = {"crashed": "bold red", "empty": "dim"}
RESUMABLE = ("stopped", "crashed", "failed")
# (title, key, fixed width or None = takes the rest)
COLUMNS = (("", "mark", 1), ("status", "status", 10), ("run", "run", None),
           ("trainer/profile", "what", 15), ("step", "step", 9), ("best val", "best", 8),
           ("started", "started", 11))
# Below this width the "started" column goes (run names carry their start time anyway).
NARROW = 100
COMPARE_STYLES = ("rgb(90,170,255)", "rgb(255,170,60)")


class RunsScreen(Screen[None]):
    """Lists runs (newest first), folded from their events.jsonl in a worker."""

    BINDINGS = [
        Binding("escape", "app.dashboard", "Back", show=False),
        Binding("d", "app.dashboard", "Dashboard"),
        Binding("enter", "open", "Watch", priority=True),  # over the table's own enter
        Binding("R", "resume", "Resume"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("o", "config", "Config"),
        Binding("g", "plot", "Plot"),
        Binding("f5", "refresh", "Refresh", show=False),
        # Setup and wizard stay one key away without taking footer room from this screen's keys.
        Binding("n", "goto('setup')", "Setup", show=False),
        Binding("w", "goto('wizard')", "Wizard", show=False),
    ]

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(id="runs")
        self.root = root
        self.runs: list[RunSummary] = []
        self.marked: list[Path] = []
        self._narrow = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="form-screen"):
            yield Label("Runs", classes="screen-title")
            yield Label("loading…", id="runs-where", classes="field-help")
            table: DataTable[Text | str] = DataTable(id="runs-table", cursor_type="row",
                                                     zebra_stripes=True)
            yield table
        yield Footer()

    def on_mount(self) -> None:
        self._columns()
        self.query_one(DataTable).focus()
        self.action_refresh()

    def _shown_columns(self) -> list[tuple[str, str, int | None]]:
        narrow = self.app.size.width < NARROW
        return [c for c in COLUMNS if not (narrow and c[1] == "started")]

    def _columns(self) -> None:
        table = self.query_one(DataTable)
        table.clear(columns=True)
        for title, key, width in self._shown_columns():
            table.add_column(title, key=key, width=width or self._run_width())
        self._narrow = self.app.size.width < NARROW

    def _run_width(self) -> int:
        shown = self._shown_columns()
        fixed = sum(w or 0 for _, _, w in shown) + 2 * len(shown) + 6
        return max(12, self.app.size.width - fixed)

    def on_resize(self) -> None:
        if (self.app.size.width < NARROW) != self._narrow:
            self._columns()
        if self.runs:
            self._fill()

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
        self.marked = [p for p in self.marked if any(r.path == p for r in runs)]
        where = self.query_one("#runs-where", Label)
        if error:
            where.update(Text(error, style="red"))
        elif not runs:
            where.update(f"no runs under {root} yet — press s on the dashboard to start one")
        else:
            elsewhere = sum(1 for r in runs if r.path.parent != root)
            extra = f" (+{elsewhere} elsewhere)" if elsewhere else ""
            where.update(Text(f"{len(runs) - elsewhere} run(s) under {root}{extra}",
                              overflow="ellipsis", no_wrap=True))
        self._fill()

    def _fill(self) -> None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        column = table.columns.get(ColumnKey("run"))
        if column is not None:
            column.width = self._run_width()
        for i, run in enumerate(self.runs):
            style = STATUS_STYLE.get(run.status) or EXTRA_STATUS_STYLE.get(run.status, "")
            status = Text(f"{STATUS_ICON.get(run.status, '·')} {run.status}", style=style,
                          overflow="ellipsis", no_wrap=True)
            step = f"{run.global_step:,}/{run.total_steps:,}" if run.total_steps else \
                f"{run.global_step:,}"
            started = time.strftime("%m-%d %H:%M", time.localtime(run.started_at)) \
                if run.started_at else "—"
            mark = Text("●", "bold cyan") if run.path in self.marked else Text(" ")
            cells = [mark, status, _cut(run.path.name), _cut(f"{run.trainer}/{run.profile}"),
                     _cut(step), fmt_float(run.best_val_loss), started]
            table.add_row(*cells[:len(table.columns)], key=str(i))
        if self.runs:
            table.move_cursor(row=min(max(row, 0), len(self.runs) - 1))
        self.refresh_bindings()

    def selected(self) -> RunSummary | None:
        table = self.query_one(DataTable)
        if not self.runs or not 0 <= table.cursor_row < len(self.runs):
            return None
        return self.runs[table.cursor_row]

    # -- keys valid now ---------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        run = self.selected() if self.is_mounted else None
        if action in ("open", "mark", "config", "plot"):
            return run is not None
        if action == "resume":
            from core.runs.checkpoint import list_checkpoints

            return run is not None and run.status in RESUMABLE and bool(list_checkpoints(run.path))
        if action == "compare":
            return len(self.marked) == 2
        return True

    def on_data_table_row_highlighted(self) -> None:
        self.refresh_bindings()

    # -- actions ----------------------------------------------------------------------------------

    def action_open(self) -> None:
        run = self.selected()
        if run is not None:
            self.app.open_run(run.path)  # type: ignore[attr-defined]

    def action_resume(self) -> None:
        run = self.selected()
        if run is None:
            return
        from aeron_tui.app.runsetup import resume_problem

        problem = resume_problem(run.path)
        if problem:
            self.notify(problem, severity="warning", markup=False)
            return
        self.app.action_dashboard()  # type: ignore[attr-defined]
        self.app.resume_run(run.path)  # type: ignore[attr-defined]

    def action_mark(self) -> None:
        run = self.selected()
        if run is None:
            return
        if run.path in self.marked:
            self.marked.remove(run.path)
        else:
            self.marked = [*self.marked, run.path][-2:]  # the two most recently marked
        self._fill()

    def action_compare(self) -> None:
        runs = [r for p in self.marked for r in self.runs if r.path == p]
        if len(runs) == 2:
            self.app.push_screen(CompareScreen(runs))

    def action_config(self) -> None:
        run = self.selected()
        if run is not None:
            self.app.push_screen(ConfigScreen(run))

    def action_goto(self, where: str) -> None:
        getattr(self.app, f"action_{where}")()

    def plot_target(self) -> tuple[list[Path], Path] | None:
        """(run directories, picture path) for ``g``: the marked runs overlaid (next to the
        first), else the selected run (``RUN_DIR/plot.png``)."""
        runs = list(self.marked)
        if not runs:
            run = self.selected()
            if run is None:
                return None
            runs = [run.path]
        if len(runs) == 1:
            return runs, runs[0] / "plot.png"
        return runs, runs[0] / f"compare-{runs[1].name}.png"

    def action_plot(self) -> None:
        target = self.plot_target()
        if target is not None:
            self.notify(f"drawing {target[1].name} …", markup=False, timeout=3)
            self._write_plot(*target)

    @work(thread=True, exclusive=True, group="plot")
    def _write_plot(self, runs: list[Path], out: Path) -> None:
        # matplotlib draws in this worker thread; the UI thread only shows the outcome.
        from aeron_tui.plots import plot_runs
        from core.errors import AeronError

        try:
            written = plot_runs(runs, out)
        except AeronError as exc:
            self.app.call_from_thread(self.notify, str(exc), severity="error", markup=False)
            return
        self.app.call_from_thread(self.notify, f"wrote {written}", markup=False, timeout=8)


def _cut(text: str) -> Text:
    return Text(text, overflow="ellipsis", no_wrap=True)


class CompareChart(Widget):
    """Two runs' loss curves on one braille chart (train EMA lines, validation dots)."""

    DEFAULT_CSS = """
    CompareChart { height: 1fr; min-height: 6; }
    """

    def __init__(self, runs: list[RunSummary], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.runs = runs

    def series(self) -> list[object]:
        from aeron_tui.app.braille import Series
        from aeron_tui.app.widgets.loss_chart import SMOOTHING_WEIGHT

        buckets = max(20, 2 * max(10, self.size.width - 8))
        out: list[object] = []
        for run, style in zip(self.runs, COMPARE_STYLES, strict=False):
            st = run.state
            if st.train_losses:
                smooth = debiased_ema([p[1] for p in st.train_losses], SMOOTHING_WEIGHT)
                pairs = [(p[0], v) for p, v in zip(st.train_losses, smooth, strict=True)]
                xs, ys = downsample(pairs, buckets)
                out.append(Series(xs, ys, style))
            if st.val_losses:
                out.append(Series([float(s) for s, _ in st.val_losses],
                                  [v for _, v in st.val_losses], style, line=False,
                                  marker="●"))
        return out

    def render(self) -> Text:
        from aeron_tui.app.braille import render_chart

        series = self.series()
        if not series:
            return Text("neither run has logged a loss yet", style="dim")
        return Text("\n").join(render_chart(series, self.size.width, self.size.height))  # type: ignore[arg-type]


class CompareScreen(ModalScreen[None]):
    """Two runs on one chart; the legend names each run with its latest and best losses."""

    BINDINGS = [Binding("escape,q,c", "dismiss_screen", "Close")]

    def __init__(self, runs: list[RunSummary]) -> None:
        super().__init__(classes="modal")
        self.runs = runs

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="compare"):
            yield Label("Compare runs · train loss EMA 0.8 (lines), validation (●) · x: step",
                        classes="question")
            legend = Text()
            for run, style in zip(self.runs, COMPARE_STYLES, strict=False):
                if legend:
                    legend.append("\n")
                legend.append("━ ", style)
                legend.append(run.path.name, "bold")
                legend.append(f"  {run.trainer}/{run.profile}  step {run.global_step:,}  "
                              f"loss {fmt_float(run.last_loss)}  best val "
                              f"{fmt_float(run.best_val_loss)}", "dim")
            yield Static(legend, id="compare-legend")
            yield CompareChart(self.runs, id="compare-chart")

    def action_dismiss_screen(self) -> None:
        self.dismiss(None)


class ConfigScreen(ModalScreen[None]):
    """A run's configuration: its run.toml as written, else the config in its events."""

    BINDINGS = [Binding("escape,q,o", "dismiss_screen", "Close")]

    def __init__(self, run: RunSummary) -> None:
        super().__init__(classes="modal")
        self.run = run

    def text(self) -> tuple[str, str]:
        """(where it comes from, the config text)."""
        from core.runs.registry import RUN_CONFIG_FILE

        path = self.run.path / RUN_CONFIG_FILE
        try:
            return str(path), path.read_text(encoding="utf-8")
        except OSError:
            pass
        config = self.run.state.config
        if config:
            import tomli_w

            clean = {k: v for k, v in config.items() if v is not None}
            try:
                return "the run_started event (no run.toml)", tomli_w.dumps(clean)
            except (TypeError, ValueError):
                import json

                return "the run_started event (no run.toml)", json.dumps(config, indent=2)
        return str(path), "(no run.toml and no configuration in the events)"

    def compose(self) -> ComposeResult:
        where, text = self.text()
        with Vertical(classes="dialog wide"):
            yield Label(f"{self.run.path.name} · config from {where}", classes="question",
                        markup=False)
            with VerticalScroll(classes="error-lines"):
                yield Static(text, markup=False, id="config-text")

    def action_dismiss_screen(self) -> None:
        self.dismiss(None)
