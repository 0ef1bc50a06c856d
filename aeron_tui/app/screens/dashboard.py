"""The dashboard (home screen): hardware, run, loss chart, ToT branches, scratchpad, event log
and checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from aeron_tui.app.session import RunSession
from aeron_tui.app.widgets.branch_scores import BranchScores
from aeron_tui.app.widgets.checkpoints_table import CheckpointsTable
from aeron_tui.app.widgets.event_log import EventLog
from aeron_tui.app.widgets.hardware_panel import HardwarePanel
from aeron_tui.app.widgets.loss_chart import LossChart
from aeron_tui.app.widgets.process_panel import ProcessPanel
from aeron_tui.app.widgets.run_panel import RunPanel
from aeron_tui.app.widgets.samples_panel import SamplesPanel
from aeron_tui.app.widgets.scratchpad_grid import ScratchpadGrid

if TYPE_CHECKING:
    from aeron_tui.app.procwatch import ProcessSample
    from profiles.hardware import HardwareInfo
    from profiles.sampler import HardwareSample


def _box(widget_id: str, title: str, *children: object, classes: str = "box") -> Container:
    box = Container(*children, id=widget_id, classes=classes)  # type: ignore[arg-type]
    box.border_title = title
    return box


class DashboardScreen(Screen[None]):
    """Renders the current :class:`RunSession`; the app calls :meth:`render_session` on a timer."""

    # Several bindings share a key: the footer shows the first one valid now (check_action),
    # so it lists only the keys that do something in this state and fits 80 columns.
    BINDINGS = [
        Binding("s", "start", "Start"),
        Binding("s", "offer_resume", "Resume…"),
        Binding("s", "start_beside", "Start", show=False),
        Binding("p,space", "pause", "Pause"),
        Binding("p,space", "resume", "Resume"),
        Binding("x", "stop", "Stop"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("m", "toggle_smoothing", "Smooth"),
        Binding("b", "toggle_bpb", "Loss/bpb", show=False),
        Binding("h", "samples_history", "Samples", show=False),
        Binding("tab", "app.focus_next", "Focus", show=False),
    ]

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(id="dashboard")
        self._clock = clock
        self._hw_key: tuple[object, ...] = ()

    def compose(self) -> ComposeResult:
        with Vertical(id="dash"):
            with Horizontal(id="top"):
                yield _box("hw-box", "hardware", HardwarePanel(id="hardware"),
                           ProcessPanel(id="trainer-process"))
                yield _box("run-box", "run", RunPanel(self._clock, id="run"))
            with Horizontal(id="middle"):
                yield _box("chart-box", "loss", LossChart(id="loss"))
                with Vertical(id="side"):
                    yield _box("branch-box", "ToT branches", BranchScores(id="branches"))
                    yield _box("pad-box", "scratchpad", ScratchpadGrid(id="scratchpad"))
            with Horizontal(id="bottom"):
                yield _box("log-box", "events", EventLog(id="events"))
                yield _box("samples-box", "samples", SamplesPanel(id="samples"))
                yield _box("ckpt-box", "checkpoints", CheckpointsTable(id="checkpoints"))
        yield Footer()

    def render_session(self, session: RunSession | None) -> None:
        """Update every run widget from the session (cheap when nothing changed)."""
        if not self._ready():
            return
        self.query_one(RunPanel).show(session)
        self.query_one(LossChart).show(session)
        branches = self.query_one(BranchScores)
        branches.show(session)
        box = self.query_one("#branch-box")
        metrics_only = bool(branches.shown_metrics) and not branches.shown_scores
        box.border_title = "trainer metrics" if metrics_only else "ToT branches"
        box.border_subtitle = branches.legend
        self.query_one(ScratchpadGrid).show(session)
        self.query_one(EventLog).show(session)
        self.query_one(SamplesPanel).show(session)
        self.query_one(CheckpointsTable).show(session)

    def render_process(self, session: RunSession | None, sample: ProcessSample | None) -> None:
        """The trainer's own CPU % and memory (the app samples its pid)."""
        if self._ready():
            self.query_one(ProcessPanel).show(session, sample)

    def render_hardware(self, info: HardwareInfo | None, sample: HardwareSample | None) -> None:
        if not self._ready():
            return
        key = (id(info), id(sample))
        if key == self._hw_key:
            return
        self._hw_key = key
        self.query_one(HardwarePanel).show(info, sample)
        source = getattr(info, "source", "") or ""
        # A recorded fake machine (AERON_TUI_FAKE_GPU) is never passed off as real hardware.
        self.query_one("#hw-box").border_title = (
            f"hardware · simulated {source[5:]}" if source.startswith("fake:") else "hardware")

    def _ready(self) -> bool:
        """Composed and not being torn down (late messages arrive while the app exits)."""
        if not self.is_mounted:
            return False
        return bool(self.query(RunPanel)) and bool(self.query(HardwarePanel))

    # -- keys valid now --------------------------------------------------------------------------

    def _state(self) -> tuple[str, bool]:
        """(what the run on screen allows: "none" | "live" | "replay" | "done", paused)."""
        app = self.app
        session = getattr(app, "session", None)
        if session is None or session.source == "none":
            return "none", False
        if session.source == "replay":
            return "replay", False
        if session.live:
            return "live", session.state.paused
        return "done", False

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        kind, paused = self._state()
        app = self.app
        if action == "start":
            return kind in ("none", "done", "replay") and not self._resumable()
        if action == "offer_resume":
            return kind == "done" and self._resumable()
        if action == "start_beside":
            return kind == "live"
        if action == "pause":
            return kind == "live" and not paused
        if action == "resume":
            return kind == "live" and paused
        if action in ("stop", "checkpoint"):
            return kind == "live"
        if action == "toggle_smoothing":
            session = getattr(app, "session", None)
            return session is not None and bool(session.state.train_losses)
        return True

    def _resumable(self) -> bool:
        finder = getattr(self.app, "resumable_run", None)
        return finder is not None and finder() is not None

    def bindings_key(self) -> tuple[object, ...]:
        """What the footer depends on (the app refreshes the bindings when it changes)."""
        kind, paused = self._state()
        session = getattr(self.app, "session", None)
        return (kind, paused, session.display_status if session else None,
                bool(session and session.state.train_losses))

    def action_start(self) -> None:
        self.app.action_start_run()  # type: ignore[attr-defined]

    action_offer_resume = action_start
    action_start_beside = action_start

    def action_pause(self) -> None:
        self.app.action_pause_run()  # type: ignore[attr-defined]

    def action_resume(self) -> None:
        self.app.action_resume_paused()  # type: ignore[attr-defined]

    def action_stop(self) -> None:
        self.app.action_stop_run()  # type: ignore[attr-defined]

    def action_checkpoint(self) -> None:
        self.app.action_checkpoint_now()  # type: ignore[attr-defined]

    def action_toggle_bpb(self) -> None:
        self.query_one(LossChart).toggle_unit()

    def action_samples_history(self) -> None:
        from aeron_tui.app.screens.samples import SamplesScreen

        history = self.query_one(SamplesPanel).history()
        self.app.push_screen(SamplesScreen(history))

    def action_toggle_smoothing(self) -> None:
        # No toast: the chart's title says "EMA" or "raw", and a toast would cost a relayout.
        self.query_one(LossChart).toggle_smoothing()
