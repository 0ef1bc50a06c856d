"""The hardware-profile wizard inside the console: detect → show → recommend → choose → save.

The same steps as ``aeron-tui wizard`` (``profiles.wizard``): the options and recommendation
come from ``build_wizard_plan``, the answers go through ``apply_wizard_answers`` and the result
is saved with ``profiles.settings.save_choice`` — later runs (and this console) use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Label, Select
from textual.widgets.data_table import ColumnKey
from textual.worker import get_current_worker

from aeron_tui.app.format import (
    PROFILE_COLUMNS,
    fit_mark,
    fmt_bytes,
    fmt_count,
    profile_detail_width,
)
from aeron_tui.app.widgets.hardware_panel import HardwarePanel

if TYPE_CHECKING:
    from aeron_tui.app.wizardview import TrainerRows, WizardView


class WizardScreen(Screen[None]):
    """Choose device, trainer and profile from the wizard's plan; ``ctrl+s`` saves the choice."""

    BINDINGS = [
        Binding("escape", "app.dashboard", "Back"),
        Binding("tab", "app.focus_next", "Next"),
        Binding("ctrl+s", "save", "Save choice"),
    ]

    def __init__(self, hardware: Any = None, sample: Any = None) -> None:
        super().__init__(id="wizard")
        self.hardware = hardware
        self.sample = sample
        self.view: WizardView | None = None
        self.chosen_profile: str | None = None
        self._picked_by_hand = False
        self.saved: Any = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="form-screen"):
            yield Label("Hardware wizard — detect, recommend, choose, save", classes="screen-title")
            yield HardwarePanel(id="wizard-hardware")
            with Horizontal(classes="form-row"):
                yield Label("device")
                yield Select([("detecting…", "")], value="", allow_blank=False, id="device")
            with Horizontal(classes="form-row"):
                yield Label("trainer")
                yield Select([("…", "")], value="", allow_blank=False, id="trainer")
            yield Label("profiles  (enter picks; → marks the recommendation)",
                        classes="screen-title")
            table: DataTable[Text | str] = DataTable(id="wizard-profiles", cursor_type="row",
                                                     zebra_stripes=True)
            yield table
            yield Label("estimating every profile on this hardware…", id="wizard-status",
                        classes="field-help")
            with Horizontal(classes="form-row buttons-row"):
                yield Button("Save choice (ctrl+s)", variant="success", id="save")
                yield Button("Back (esc)", id="back")
            yield Label("", id="wizard-saved", classes="field-help")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#wizard-profiles", DataTable)
        for title, key, width in PROFILE_COLUMNS:
            table.add_column(title, key=key, width=width)
        table.add_column("detail", key="detail", width=profile_detail_width(self.app.size.width))
        self.query_one(HardwarePanel).show(self.hardware, self.sample)
        self._load()

    # -- the plan -------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="wizard", exit_on_error=False)
    def _load(self) -> None:
        from aeron_tui.app.offload import Cancelled, in_child
        from aeron_tui.app.wizardview import wizard_view

        worker = get_current_worker()
        try:
            view = in_child(wizard_view, self.hardware, cancelled=lambda: worker.is_cancelled)
            error = None
        except Cancelled:
            return  # the screen closed (or the console quits) before the plan was ready
        except Exception as exc:  # noqa: BLE001 - shown in place
            view, error = None, f"{type(exc).__name__}: {exc}"
        if not worker.is_cancelled:
            self.app.call_from_thread(self._show_plan, view, error)

    def _show_plan(self, view: WizardView | None, error: str | None) -> None:
        status = self.query_one("#wizard-status", Label)
        if view is None:
            status.update(Text(f"✗ could not build the plan: {error}", style="bold red"))
            return
        self.view = view
        rec = view.recommended
        devices = self.query_one("#device", Select)
        devices.set_options([(f"{d.key}: {d.label}", d.key) for d in view.devices])
        devices.value = rec.device
        trainers = self.query_one("#trainer", Select)
        trainers.set_options([(t, t) for t in view.trainers])
        trainers.value = rec.trainer if rec.trainer in view.trainers else view.trainers[0]
        self.chosen_profile = rec.profile
        self._fill_table()

    def _device(self) -> str:
        value = self.query_one("#device", Select).value
        return str(value) if isinstance(value, str) and value else "cpu"

    def on_resize(self) -> None:
        table = self.query_one("#wizard-profiles", DataTable)
        column = table.columns.get(ColumnKey("detail"))
        width = profile_detail_width(self.app.size.width)
        if column is not None and column.width != width:
            column.width = width
            self._fill_table()

    def _trainer_value(self) -> str:
        value = self.query_one("#trainer", Select).value
        return str(value) if isinstance(value, str) and value else "simple"

    def shown_rows(self) -> TrainerRows | None:
        """The verdicts the table shows: the selected device with the selected trainer."""
        if self.view is None:
            return None
        return self.view.device(self._device()).rows_for(self._trainer_value())

    def _fill_table(self) -> None:
        shown = self.shown_rows()
        if shown is None:
            return
        table = self.query_one("#wizard-profiles", DataTable)
        table.clear()
        for row in shown.rows:
            mark = Text("●", style="bold green") if row.name == self.chosen_profile else Text(" ")
            name = Text(("→ " if row.name == shown.recommended else "  ") + row.name,
                        style="bold" if row.name == shown.recommended else "")
            fits = fit_mark(row.fits)
            table.add_row(mark, name, fmt_count(row.params),
                          fmt_bytes(row.estimate_bytes) if row.estimate_bytes else "—", fits,
                          Text(row.detail, overflow="ellipsis", no_wrap=True), key=row.name)
        names = [r.name for r in shown.rows]
        if self.chosen_profile in names:
            table.move_cursor(row=names.index(self.chosen_profile))
        self._summary()

    def _summary(self) -> None:
        shown = self.shown_rows()
        if self.view is None or shown is None:
            return
        trainer = self._trainer_value()
        text = Text()
        text.append(f"choice: {self.chosen_profile or '—'} on {self._device()}, "
                    f"{trainer} trainer", style="bold")
        if shown.recommended is None:
            text.append(f"\nno profile fits this device with the {trainer} trainer",
                        style="bold red")
        rules = "8/12/16-bit moments" if trainer == "compressed" else "AdamW fp32 moments"
        text.append(f"\nmemory with the {trainer} trainer's optimizer state ({rules}); "
                    f"{self.view.vocab_note}", style="dim")
        for note in shown.notes:
            text.append(f"\nnote: {note}", style="yellow")
        self.query_one("#wizard-status", Label).update(text)

    def _follow_recommendation(self) -> None:
        """Keep the choice on the recommendation when the user has not picked another one."""
        shown = self.shown_rows()
        if shown is None:
            return
        names = [r.name for r in shown.rows]
        if self.chosen_profile not in names or not self._picked_by_hand:
            self.chosen_profile = shown.recommended or (names[0] if names else None)

    @on(Select.Changed, "#device")
    def _device_changed(self) -> None:
        if self.view is not None:
            self._follow_recommendation()
            self._fill_table()

    @on(Select.Changed, "#trainer")
    def _trainer_changed(self) -> None:
        if self.view is not None:
            self._follow_recommendation()
            self._fill_table()

    @on(DataTable.RowSelected, "#wizard-profiles")
    def _picked(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.chosen_profile = str(event.row_key.value)
            self._picked_by_hand = True
            self._fill_table()

    # -- saving ---------------------------------------------------------------------------------

    def action_save(self) -> None:
        if self.view is None or self.chosen_profile is None:
            self.notify("the plan is still being computed", severity="warning", markup=False)
            return
        trainer = str(self.query_one("#trainer", Select).value)
        self.query_one("#wizard-saved", Label).update("re-fitting the batch layout and saving…")
        self._save(self._device(), self.chosen_profile, trainer)

    @work(thread=True, exclusive=True, group="wizard-save", exit_on_error=False)
    def _save(self, device: str, profile: str, trainer: str) -> None:
        from aeron_tui.app.offload import in_child
        from aeron_tui.app.wizardview import wizard_answer
        from profiles.settings import save_choice

        try:
            choice, fits = in_child(wizard_answer, self.hardware, device, profile, trainer)
            path = save_choice(choice)
        except Exception as exc:  # noqa: BLE001 - shown in place
            self.app.call_from_thread(self._saved, None, False, None, str(exc))
            return
        self.app.call_from_thread(self._saved, choice, fits, path, None)

    def _saved(self, choice: Any, fits: bool, path: Any, error: str | None) -> None:
        label = self.query_one("#wizard-saved", Label)
        if error or choice is None:
            label.update(Text(f"✗ {error}", style="bold red"))
            return
        self.saved = choice
        text = Text(f"✓ saved to {path}: {choice.profile} on {choice.device}, {choice.trainer} "
                    f"trainer, micro-batch {choice.micro_batch} × {choice.grad_accum}, "
                    f"checkpointing {'on' if choice.gradient_checkpointing else 'off'}, "
                    f"plan {choice.plan}", style="green")
        if not fits:
            text.append(f"\nwarning: {choice.reason}", style="bold yellow")
        text.append("\nthe default of every later start (s here, `launch`, `train`) unless "
                    "told otherwise", style="dim")
        label.update(text)
        app = self.app
        if hasattr(app, "setup_choice"):
            from aeron_tui.app.runsetup import default_setup

            app.setup_choice = default_setup(**app.options.given)  # type: ignore[attr-defined]

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#back")
    def _back_pressed(self) -> None:
        self.app.action_dashboard()  # type: ignore[attr-defined]
