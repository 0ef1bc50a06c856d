"""Help overlay: every key binding of the console, grouped by where it works."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

# (keys, what it does) per context; kept next to the bindings' actions in app.py and screens/.
KEYS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Everywhere", [
        ("?", "this help"),
        ("n", "run setup: trainer, profile, preset, data, steps"),
        ("w", "hardware-profile wizard"),
        ("r", "past runs (open one to watch it)"),
        ("d", "back to the dashboard"),
        ("q  ctrl+c  ctrl+q", "quit (asks to stop or detach a running run)"),
        ("escape", "close the current screen or dialog"),
    ]),
    ("Dashboard (the footer shows the keys valid now)", [
        ("s", "start a run with the current setup (the wizard's saved choice unless changed); "
              "after a stop it offers to resume; beside a live run it asks first"),
        ("p  space", "pause / resume the run (any live run of yours, watched ones too)"),
        ("x", "stop the run (asks first; writes a final checkpoint)"),
        ("c", "checkpoint now"),
        ("m", "loss chart: raw values / debiased EMA"),
        ("b", "chart: loss ↔ validation bits per byte (with the bigram/unigram baselines)"),
        ("h", "every set of live samples so far (the panel shows the newest)"),
        ("tab", "move focus (event log, checkpoints)"),
    ]),
    ("Run setup", [
        ("tab  shift+tab", "next / previous field"),
        ("enter", "pick the highlighted profile"),
        ("ctrl+s", "save run.toml"),
        ("ctrl+r", "save and start the run"),
    ]),
    ("Wizard", [
        ("tab  shift+tab", "device, trainer, profile table"),
        ("enter", "pick the highlighted profile"),
        ("ctrl+s", "save the hardware choice (later runs use it)"),
    ]),
    ("Runs", [
        ("enter", "watch the highlighted run"),
        ("R", "resume the highlighted stopped run from its latest checkpoint"),
        ("space", "mark a run (two marked: c compares their loss curves)"),
        ("c", "compare the two marked runs on one chart"),
        ("o", "show the highlighted run's config (run.toml)"),
        ("g", "write the runs plot (PNG) of the marked runs, or of the highlighted one"),
        ("f5", "refresh the list"),
    ]),
    ("Dialogs", [
        ("y  n", "answer yes / no"),
        ("s  d", "quit dialog: stop the run / leave it running headless"),
        ("r  n", "after a stop: resume the run / start a new one"),
    ]),
]


def help_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for i, (section, rows) in enumerate(KEYS):
        if i:
            table.add_row("", "")
        table.add_row(Text(section, style="bold underline"), "")
        for keys, what in rows:
            table.add_row(keys, what)
    return table


class HelpScreen(ModalScreen[None]):
    """Lists every binding; any of Escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="modal", id="help")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Aeron TUI — keys", classes="question")
            with VerticalScroll():
                yield Static(help_table())

    def action_close(self) -> None:
        self.dismiss(None)
