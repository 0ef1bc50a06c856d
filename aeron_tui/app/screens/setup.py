"""Run setup: trainer (from the registry), size profile with memory estimate and fit, preset,
data path (validated as you type), steps. Saving writes the run's run.toml; Start launches it.

The trainer list is :data:`aeron_tui.trainers.TRAINERS`, so a new trainer is one registry entry.
Profiles and their estimates come from ``profiles.pick.pick_profile`` in a worker (estimates
may import torch; the screen is up before they are).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.suggester import SuggestFromList
from textual.widgets import Button, DataTable, Footer, Input, Label, Select
from textual.widgets.data_table import ColumnKey
from textual.worker import get_current_worker

from aeron_tui.app.format import (
    PROFILE_COLUMNS,
    fit_mark,
    fmt_bytes,
    fmt_count,
    profile_detail_width,
)
from aeron_tui.app.runsetup import (
    AUTO,
    MAX_STEPS,
    RunSetup,
    check_data,
    preset_problem,
    trainer_presets,
)

if TYPE_CHECKING:
    from aeron_tui.app.runsetup import ProfileRow

class SetupScreen(Screen[None]):
    """Edits a :class:`RunSetup`; ``ctrl+s`` saves run.toml, ``ctrl+r`` saves and starts."""

    BINDINGS = [
        Binding("escape", "app.dashboard", "Back"),
        Binding("tab", "app.focus_next", "Next"),
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+r", "start", "Start"),
    ]

    def __init__(self, setup: RunSetup, hardware: Any = None) -> None:
        super().__init__(id="setup")
        self.setup = setup
        self.hardware = hardware
        self.profile_rows: list[ProfileRow] = []
        self.auto_choice: str | None = None
        self.notes: list[str] = []
        self.chosen_profile = setup.profile
        self._profiles_for: str | None = None
        self._vocab_for = (setup.data or "").strip()

    # -- layout ---------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        from aeron_tui.trainers import TRAINERS

        trainer = self.setup.trainer or _default_trainer()
        with VerticalScroll(classes="form-screen"):
            yield Label("Run setup", classes="screen-title")
            yield Label(self._origins_text(), id="origins", classes="field-help")
            with Horizontal(classes="form-row"):
                yield Label("trainer")
                yield Select([(f"{name} — {entry.description}", name)
                              for name, entry in TRAINERS.items()],
                             value=trainer if trainer in TRAINERS else Select.BLANK,
                             allow_blank=False, id="trainer")
            with Horizontal(classes="form-row"):
                yield Label("preset")
                yield Input(self.setup.preset or "", id="preset",
                            placeholder="blank: the trainer's default preset")
            yield Label("", id="preset-help", classes="field-help")
            with Horizontal(classes="form-row"):
                yield Label("data")
                yield Input(self.setup.data or "", placeholder="blank: the bundled sample corpus",
                            id="data")
            yield Label("", id="data-status", classes="field-help")
            with Horizontal(classes="form-row"):
                yield Label("steps")
                # A text field checked as a whole: an integer field silently drops the "." of
                # "10.5" (→ 105) and the "e" of "1e3" (→ 13).
                yield Input(str(self.setup.steps or ""),
                            placeholder="blank: the trainer's / preset's default", id="steps")
            yield Label("", id="steps-status", classes="field-help")
            yield Label("profile  (enter picks; auto = the largest that fits this hardware)",
                        classes="screen-title")
            table: DataTable[Text | str] = DataTable(id="profiles", cursor_type="row",
                                                     zebra_stripes=True)
            yield table
            yield Label("estimating memory per profile…", id="profile-status",
                        classes="field-help")
            with Horizontal(classes="form-row buttons-row"):
                yield Button("Save run.toml (ctrl+s)", id="save")
                yield Button("Start (ctrl+r)", variant="success", id="start")
                yield Button("Back (esc)", id="back")
            yield Label("", id="save-status", classes="field-help")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#profiles", DataTable)
        for title, key, width in PROFILE_COLUMNS:
            table.add_column(title, key=key, width=width)
        table.add_column("detail", key="detail", width=profile_detail_width(self.app.size.width))
        self._refresh_presets(self._trainer())
        self._check_data(self.query_one("#data", Input).value)
        self._check_steps(self.query_one("#steps", Input).value)
        self._load_profiles(self._trainer())
        self.query_one("#trainer", Select).focus()

    # -- fields ---------------------------------------------------------------------------------

    def _trainer(self) -> str:
        value = self.query_one("#trainer", Select).value
        return str(value) if value is not Select.BLANK else _default_trainer()

    def _refresh_presets(self, trainer: str) -> None:
        presets = trainer_presets(trainer)
        field = self.query_one("#preset", Input)
        field.suggester = SuggestFromList(presets, case_sensitive=False) if presets else None
        if presets and not field.value and trainer == self.setup.trainer and self.setup.preset:
            field.value = self.setup.preset
        self._check_preset(field.value)

    @on(Input.Changed, "#preset")
    def _preset_changed(self, event: Input.Changed) -> None:
        self._check_preset(event.value)

    def _check_preset(self, value: str) -> bool:
        trainer = self._trainer()
        presets = trainer_presets(trainer)
        label = self.query_one("#preset-help", Label)
        problem = preset_problem(trainer, value)
        if problem:
            label.update(Text(f"✗ {problem}", style="bold red"))
            return False
        if presets:
            label.update(f"{trainer} presets: {', '.join(presets)} (or a TOML path); "
                         "blank: the trainer's default")
        else:
            label.update(f"{trainer} lists no presets: leave blank (or give a preset TOML path)")
        return True

    @on(Select.Changed, "#trainer")
    def _trainer_changed(self, event: Select.Changed) -> None:
        trainer = self._trainer()
        self._refresh_presets(trainer)
        self._check_data(self.query_one("#data", Input).value)
        if trainer != self._profiles_for:
            self._load_profiles(trainer)

    @on(Input.Changed, "#data")
    def _data_changed(self, event: Input.Changed) -> None:
        self._check_data(event.value)

    @on(Input.Changed, "#steps")
    def _steps_changed(self, event: Input.Changed) -> None:
        self._check_steps(event.value)

    def _check_data(self, value: str) -> bool:
        """Read the head of the data as the trainer will (one line: what is wrong, or what
        was found)."""
        label = self.query_one("#data-status", Label)
        found = check_data(value, self._trainer())
        if found.problem:
            label.update(Text(f"✗ {found.problem}", style="bold red"))
            label.set_classes("field-error")
            return False
        label.set_classes("field-help")
        name = Path(value).expanduser().name if value.strip() else ""
        label.update(Text(f"✓ {name + ': ' if name else ''}{found.summary}", style="green"))
        if value.strip() != self._vocab_for:
            self._vocab_for = value.strip()
            if self.is_mounted and self._profiles_for is not None:
                self._load_profiles(self._trainer())  # the vocabulary may differ: new counts
        return True

    def _check_steps(self, value: str) -> bool:
        label = self.query_one("#steps-status", Label)
        problem = steps_problem(value)
        label.update(Text(f"✗ {problem}", style="bold red") if problem else "")
        return problem is None

    # -- profiles -------------------------------------------------------------------------------

    def _load_profiles(self, trainer: str) -> None:
        self._profiles_for = trainer
        data = self.query_one("#data", Input).value.strip()
        if check_data(data, trainer).problem:
            data = ""
        self.query_one("#profile-status", Label).update(
            f"estimating memory per profile for the {trainer} trainer…")
        self._estimate_profiles(trainer, data or None)

    @work(thread=True, exclusive=True, group="profiles", exit_on_error=False)
    def _estimate_profiles(self, trainer: str, data: str | None) -> None:
        from aeron_tui.app.offload import Cancelled, in_child
        from aeron_tui.app.runsetup import profile_rows

        worker = get_current_worker()
        try:
            auto, rows, notes = in_child(profile_rows, self.hardware, trainer, data,
                                         cancelled=lambda: worker.is_cancelled)
            error = None
        except Cancelled:
            return  # the screen closed or the trainer changed: nobody waits for these rows
        except Exception as exc:  # noqa: BLE001 - shown in place; the form stays usable
            auto, rows, notes, error = None, [], [], f"{type(exc).__name__}: {exc}"
        if not worker.is_cancelled:
            self.app.call_from_thread(self._show_profiles, auto, rows, notes, error)

    def _show_profiles(self, auto: str | None, rows: list[ProfileRow], notes: list[str],
                       error: str | None) -> None:
        self.profile_rows = rows
        self.auto_choice = auto
        self.notes = notes
        table = self.query_one("#profiles", DataTable)
        table.clear()
        status = self.query_one("#profile-status", Label)
        if error:
            status.update(Text(f"✗ could not estimate profiles: {error}", style="red"))
        table.add_row(self._mark(AUTO), Text("auto", style="bold"), "", "", "",
                      f"→ {auto}" if auto else "no profile fits this hardware", key=AUTO)
        for row in rows:
            fits = fit_mark(row.fits)
            table.add_row(self._mark(row.name), row.name, fmt_count(row.params),
                          fmt_bytes(row.estimate_bytes) if row.estimate_bytes else "—", fits,
                          Text(row.detail, overflow="ellipsis", no_wrap=True), key=row.name)
        if not error:
            status.update(self._profile_summary())
        names = [AUTO] + [r.name for r in rows]
        if self.chosen_profile in names:
            table.move_cursor(row=names.index(self.chosen_profile))

    def on_resize(self) -> None:
        table = self.query_one("#profiles", DataTable)
        column = table.columns.get(ColumnKey("detail"))
        width = profile_detail_width(self.app.size.width)
        if column is not None and column.width != width:
            column.width = width
            if self.profile_rows:  # lay the verdicts out again (their … moves)
                self._show_profiles(self.auto_choice, self.profile_rows, self.notes, None)

    def _mark(self, name: str) -> Text:
        return Text("●", style="bold green") if name == self.chosen_profile else Text(" ")

    def _profile_summary(self) -> Text:
        chosen = self.chosen_profile
        trainer = self._profiles_for or self._trainer()
        rules = "8/12/16-bit moments" if trainer == "compressed" else "AdamW fp32 moments"
        if chosen == AUTO:
            text = Text(f"profile: auto → {self.auto_choice or 'nothing fits'}", style="bold")
        else:
            row = next((r for r in self.profile_rows if r.name == chosen), None)
            text = Text(f"profile: {chosen}", style="bold")
            if row is not None and not row.fits:
                text.append("  (estimated not to fit this hardware)", style="bold yellow")
        vocab, *notes = self.notes or [""]
        text.append(f"\nmemory with the {trainer} trainer's optimizer state ({rules}); {vocab}",
                    style="dim")
        if chosen == AUTO:
            for note in notes:
                text.append(f"\n{note}", style="yellow")
        return text

    def _origins_text(self) -> Text:
        """Where the defaults in this form came from (the wizard's saved choice, a flag, …)."""
        by_origin: dict[str, list[str]] = {}
        for name, origin in self.setup.origins.items():
            by_origin.setdefault(origin, []).append(name)
        text = Text()
        for origin, names in by_origin.items():
            if text:
                text.append("\n")
            text.append(f"{', '.join(names)} ← ", style="bold")
            text.append(origin, style="dim")
        return text

    @on(DataTable.RowSelected, "#profiles")
    def _profile_picked(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key is None:
            return
        self.chosen_profile = str(key)
        table = self.query_one("#profiles", DataTable)
        for row_key in list(table.rows):
            table.update_cell(row_key, "mark", self._mark(str(row_key.value)))
        self.query_one("#profile-status", Label).update(self._profile_summary())

    # -- actions --------------------------------------------------------------------------------

    def current_setup(self) -> RunSetup | None:
        """The form as a RunSetup, or None (with the problem shown) when a field is invalid."""
        data = self.query_one("#data", Input).value.strip()
        steps_txt = self.query_one("#steps", Input).value.strip()
        preset = self.query_one("#preset", Input).value.strip()
        valid = [self._check_data(data), self._check_steps(steps_txt), self._check_preset(preset)]
        if not all(valid):
            self.notify("fix the fields marked ✗ first", severity="error", markup=False)
            return None
        profile = self.chosen_profile
        if profile == AUTO and self.auto_choice:
            profile = self.auto_choice  # start exactly what the table showed for "auto"
        return self.setup.with_(
            trainer=self._trainer(),
            profile=profile,
            preset=preset or None,
            data=data or None,
            steps=int(steps_txt.replace("_", "").replace(",", "")) if steps_txt else None,
            run_dir=None,
        )

    def action_save(self) -> None:
        setup = self.current_setup()
        if setup is not None:
            self.query_one("#save-status", Label).update("saving…")
            self._save(setup)

    @work(thread=True, exclusive=True, group="save", exit_on_error=False)
    def _save(self, setup: RunSetup) -> None:
        from aeron_tui.app.runsetup import write_run_config

        try:
            runs_root = self.app.options.runs_root  # type: ignore[attr-defined]
            path = write_run_config(setup, runs_root)
        except Exception as exc:  # noqa: BLE001 - shown in place
            self.app.call_from_thread(self._saved, setup, None, str(exc))
            return
        self.app.call_from_thread(self._saved, setup, path, None)

    def _saved(self, setup: RunSetup, path: Path | None, error: str | None) -> None:
        label = self.query_one("#save-status", Label)
        if error or path is None:
            label.update(Text(f"✗ {error}", style="bold red"))
            return
        label.update(Text(f"✓ saved {path} — ctrl+r starts it", style="green"))
        self.setup = setup.with_(run_dir=str(path.parent))
        self.app.use_setup(self.setup, start=False, stay=True)  # type: ignore[attr-defined]

    def action_start(self) -> None:
        setup = self.current_setup()
        if setup is None:
            return
        if self.setup.run_dir and setup.with_(run_dir=self.setup.run_dir) == self.setup:
            setup = self.setup  # start exactly what was saved
        self.app.use_setup(setup, start=True)  # type: ignore[attr-defined]

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#back")
    def _back_pressed(self) -> None:
        self.app.action_dashboard()  # type: ignore[attr-defined]


def steps_problem(value: str) -> str | None:
    """Why ``value`` is not a step count (one line), or None (blank = the default)."""
    text = value.strip().replace("_", "").replace(",", "")
    if not text:
        return None
    if not text.isdigit():
        return f"steps must be a whole number of optimizer steps, got {value.strip()!r}"
    n = int(text)
    if n < 1:
        return "steps must be at least 1"
    if n > MAX_STEPS:
        return f"{n:,} steps is more than {MAX_STEPS:,}; give a smaller number"
    return None


def _default_trainer() -> str:
    from aeron_tui.app.runsetup import default_trainer_and_preset

    return default_trainer_and_preset()[0]


