"""The Aeron TUI console: a Textual app that drives trainer child processes and shows them live.

Threads and who does what:
- a thread worker per event source (the child's stdout, a tailed events.jsonl, or a replay)
  posts one coalesced :class:`EventsArrived` per ~150 ms;
- the UI thread folds those batches into the session's :class:`RunState` (cheap) and a
  ``set_interval`` renderer redraws changed widgets twice a second — never per step (key
  presses redraw at once; the tick only paces new events, and each tick is most of the
  console's CPU use while watching: bench/console_overhead.py);
- the hardware sampler thread posts replaceable :class:`HardwareSampled` messages;
- anything slow (hardware probe, profile estimates, building the sample corpus, spawning the
  trainer) runs in thread workers, so the first frame is never delayed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.worker import Worker, WorkerState, get_current_worker

from aeron_tui.app import feeds
from aeron_tui.app.messages import EventsArrived, HardwareProbed, HardwareSampled, TrainerExited
from aeron_tui.app.procwatch import ProcessWatch
from aeron_tui.app.runsetup import RunSetup, default_setup, prepare_launch
from aeron_tui.app.screens.confirm import ConfirmScreen
from aeron_tui.app.screens.crash import CrashScreen
from aeron_tui.app.screens.dashboard import DashboardScreen
from aeron_tui.app.screens.help import HelpScreen
from aeron_tui.app.screens.quit import QuitScreen
from aeron_tui.app.session import RunSession, send_run_command
from aeron_tui.launcher import STDERR_LOG, TrainerProcess
from core.runs.events import describe_event

if TYPE_CHECKING:
    from profiles.hardware import HardwareInfo
    from profiles.sampler import HardwareSample, HardwareSampler

RENDER_INTERVAL_S = 0.5
HARDWARE_PERIOD_S = 1.0
EVENTS_FILE = "events.jsonl"


@dataclass
class ConsoleOptions:
    """How the console starts: ``launch`` (optionally starting a run) or ``watch`` a run dir."""

    mode: str = "launch"
    # None: the defaults a new run starts from (the wizard's saved choice; runsetup.default_setup).
    setup: RunSetup | None = None
    start: bool = False
    watch_dir: Path | None = None
    replay_speed: float | None = None
    runs_root: Path | None = None
    # What the command line gave explicitly (these win over the saved choice, also after the
    # wizard saves a new one).
    given: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FixedHardware:
    """A fixed hardware view instead of the live sampler (deterministic tests and snapshots)."""

    info: Any
    sample: Any


def default_spawn(setup: RunSetup, hardware: Any, runs_root: Path | None) -> TrainerProcess:
    """Write the run's run.toml, then start ``aeron-tui train ... --events-stdout
    --control-stdin`` as a child process."""
    return TrainerProcess.start(prepare_launch(setup, runs_root))


class AeronConsole(App[None]):
    """The console. ``clock`` is injectable so tests and snapshots can freeze time."""

    CSS_PATH = "app.tcss"
    TITLE = "Aeron TUI"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]

    BINDINGS = [
        Binding("q", "quit_console", "Quit"),
        Binding("ctrl+c,ctrl+q", "quit_console", "Quit", show=False, priority=True),
        Binding("question_mark", "help", "Help"),
        Binding("n", "setup", "Setup"),
        Binding("n", "setup_hidden", "Setup", show=False),
        Binding("w", "wizard", "Wizard"),
        Binding("w", "wizard_hidden", "Wizard", show=False),
        Binding("r", "runs", "Runs"),
        Binding("d", "dashboard", "Dashboard", show=False),
    ]

    def __init__(
        self,
        options: ConsoleOptions | None = None,
        clock: Callable[[], float] = time.time,
        hardware: FixedHardware | None = None,
        spawn: Callable[[RunSetup, Any, Path | None], TrainerProcess] | None = None,
    ) -> None:
        super().__init__()
        # How a run is started: resolve + write run.toml + spawn the headless trainer.
        self.spawn = spawn or default_spawn
        self.options = options or ConsoleOptions()
        self.clock = clock
        self.setup_choice: RunSetup = self.options.setup or default_setup(**self.options.given)
        self.session: RunSession | None = None
        self.hardware_info: HardwareInfo | None = hardware.info if hardware else None
        self.hardware_sample: HardwareSample | None = hardware.sample if hardware else None
        self._fixed_hardware = hardware is not None
        self._sampler: HardwareSampler | None = None
        self._rendered_version: tuple[int, int] = (-1, -1)
        self._bindings_key: tuple[object, ...] | None = None
        self.process_watch = ProcessWatch()
        self._pid_lookup: tuple[int, float, int | None] = (-1, 0.0, None)
        self._starting = False
        self._quitting = False
        self.first_frame_at: float | None = None
        self.dashboard = DashboardScreen(clock)

    def say(self, message: str, **kwargs: Any) -> None:
        """A toast; never parsed as markup (messages carry paths and error text)."""
        self.notify(message, markup=False, **kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_mount(self) -> None:
        await self.push_screen(self.dashboard)
        self.set_interval(RENDER_INTERVAL_S, self.render_tick)
        self.call_after_refresh(self._first_frame)
        if self._fixed_hardware:
            self.dashboard.render_hardware(self.hardware_info, self.hardware_sample)
        opts = self.options
        if opts.mode == "watch" and opts.watch_dir is not None:
            self.watch_run(opts.watch_dir, replay_speed=opts.replay_speed)
        elif opts.start:
            self.action_start_run()
        self.render_tick()

    def _first_frame(self) -> None:
        self.first_frame_at = time.perf_counter()
        # The probe and the sampler thread start after the first frame is on screen: they
        # compete for the GIL and are not needed to draw it.
        if not self._fixed_hardware:
            self._start_hardware()
        if self.options.mode == "launch":
            self._find_unattended_runs()

    @work(thread=True, group="unattended", exit_on_error=False)
    def _find_unattended_runs(self) -> None:
        """Say at launch which runs are live with no console (detached, or a closed terminal):
        their trainers go on, and `r` opens them."""
        from core.runs.registry import default_runs_root, live_run_dirs

        live = live_run_dirs(self.options.runs_root or default_runs_root())
        if live:
            self.call_from_thread(self._say_unattended, live)

    def _say_unattended(self, live: list[Path]) -> None:
        own = self.session.run_dir if self.session is not None else None
        live = [p for p in live if p != own]  # the run this console just started is attended
        if live:
            names = ", ".join(p.name for p in live[:3]) + (" …" if len(live) > 3 else "")
            self.say(f"{len(live)} run(s) still live without a console: {names} — r opens the "
                     "runs list (enter watches, p/x control)", timeout=10)

    def on_unmount(self) -> None:
        if self._sampler is not None:
            self._sampler.stop(timeout=2.0)
        session = self.session
        # Leaving without an explicit detach: never orphan a trainer silently.
        if session is not None and session.attached and session.process is not None:
            session.process.shutdown(grace=30.0)

    # -- hardware -------------------------------------------------------------------------------

    @work(thread=True, group="hardware", exit_on_error=False)
    def _start_hardware(self) -> None:
        try:
            from profiles.hardware import probe

            info = probe(with_torch=False)
            self.post_message(HardwareProbed(info))
        except Exception as exc:  # noqa: BLE001 - the panel shows why, the console goes on
            self.post_message(HardwareProbed(None, f"{type(exc).__name__}: {exc}"))
        from profiles.sampler import HardwareSampler

        sampler = HardwareSampler(period=HARDWARE_PERIOD_S,
                                  callback=lambda s: self.post_message(HardwareSampled(s)))
        if get_current_worker().is_cancelled:
            return
        self._sampler = sampler.start()

    def on_hardware_probed(self, message: HardwareProbed) -> None:
        self.hardware_info = message.info
        if message.error:
            self.say(f"hardware probe failed: {message.error}", severity="warning")
        self.dashboard.render_hardware(self.hardware_info, self.hardware_sample)

    def on_hardware_sampled(self, message: HardwareSampled) -> None:
        self.hardware_sample = message.sample
        self.dashboard.render_hardware(self.hardware_info, self.hardware_sample)

    # -- rendering ------------------------------------------------------------------------------

    def render_tick(self) -> None:
        """Redraw the dashboard from the session (each widget skips work when unchanged)."""
        if not self.screen_stack:
            return  # the console is closing; late messages (a trainer's exit) draw nothing
        keys = self.dashboard.bindings_key() if self.dashboard.is_mounted else None
        if keys != self._bindings_key:
            self._bindings_key = keys
            self.refresh_bindings()  # the footer shows the keys valid in the new state
        session = self.session
        key = (session.id if session else 0, session.version if session else 0)
        live = session is not None and session.live
        if key == self._rendered_version and not live:
            return
        self._rendered_version = key
        self.dashboard.render_session(session)
        self.dashboard.render_process(session, self.process_watch.sample(self._trainer_pid()))

    def _trainer_pid(self) -> int | None:
        """The pid of the run's trainer on this machine (the child, or the pid file of a
        watched run — looked up every few seconds), None when unknown or not live."""
        session = self.session
        if session is None or not session.live or session.source == "replay":
            return None
        if session.process is not None and session.process.running:
            return session.process.pid
        now = time.monotonic()
        if self._pid_lookup[0] != session.id or now - self._pid_lookup[1] > 3.0:
            self._pid_lookup = (session.id, now, session.watched_pid())
        return self._pid_lookup[2]

    def render_now(self) -> None:
        self._rendered_version = (-1, -1)
        self.render_tick()

    # -- sessions and event feeds ---------------------------------------------------------------

    def _set_session(self, session: RunSession) -> None:
        old = self.session
        if old is not None and old.process is not None and old.attached:
            old.process.detach()
        self.session = session
        self.render_now()

    def watch_run(self, run_dir: Path, replay_speed: float | None = None) -> None:
        """Show an existing run (live or finished) by following its events.jsonl."""
        run_dir = Path(run_dir)
        session = RunSession(source="replay" if replay_speed is not None else "watch",
                             run_dir=run_dir, created_at=self.clock())
        self._set_session(session)
        path = run_dir / EVENTS_FILE
        if not path.exists():
            self.say(f"{path} does not exist yet — waiting for the run to write it",
                        severity="warning", timeout=6)
        if replay_speed is not None:
            self._feed_replay(session, path, replay_speed)
        else:
            self._feed_tail(session, path)

    def _post_batch(self, session: RunSession) -> Callable[[list[Any]], None]:
        sid = session.id

        def post(items: list[Any]) -> None:
            self.post_message(EventsArrived(sid, items))
        return post

    @work(thread=True, group="events", exclusive=True, exit_on_error=False)
    def _feed_tail(self, session: RunSession, path: Path) -> None:
        worker = get_current_worker()
        feeds.pump_tail(path, self._post_batch(session), lambda: worker.is_cancelled)

    @work(thread=True, group="events", exclusive=True, exit_on_error=False)
    def _feed_replay(self, session: RunSession, path: Path, speed: float) -> None:
        worker = get_current_worker()
        feeds.pump_replay(path, self._post_batch(session), lambda: worker.is_cancelled, speed)

    @work(thread=True, group="events", exclusive=True, exit_on_error=False)
    def _feed_child(self, session: RunSession, proc: TrainerProcess) -> None:
        worker = get_current_worker()
        code = feeds.pump_process(proc, self._post_batch(session), lambda: worker.is_cancelled)
        if not worker.is_cancelled and not proc.detached:
            self.post_message(TrainerExited(session.id, code, proc.stderr_tail(30)))

    def on_events_arrived(self, message: EventsArrived) -> None:
        session = self.session
        if session is None or session.id != message.session_id:
            return
        session.apply(message.items)
        if session.pending_command and session.state.status != session.status_before_command:
            session.pending_command = None

    def on_trainer_exited(self, message: TrainerExited) -> None:
        session = self.session
        if session is None or session.id != message.session_id:
            return
        session.exit_code = message.code
        if not self.screen_stack:
            return  # exiting: nothing to show it on
        session.stderr_tail = message.stderr_tail
        session.pending_command = None
        self.render_now()
        st = session.state
        if message.code not in (0, None) or st.status == "failed":
            lines: list[str] = []
            debug = bool(os.environ.get("AERON_TUI_DEBUG"))
            for entry in st.log:
                if entry["type"] == "error":
                    lines.append(describe_event(entry))
                    if entry.get("traceback") and debug:  # tracebacks only with --debug
                        lines += str(entry["traceback"]).rstrip().splitlines()[-12:]
            if message.stderr_tail:
                if lines:
                    lines.append("")
                lines.append("── trainer stderr (last lines) ──")
                lines += message.stderr_tail
            log = str(session.run_dir / STDERR_LOG) if session.run_dir else None
            self.push_screen(CrashScreen(
                f"The trainer failed (exit code {message.code})", lines[-40:], log))
        elif st.status in ("stopped", "finished"):
            self.say(f"run {st.status} at step {st.global_step}", timeout=4)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR and event.worker.group in ("events", "hardware"):
            self.say(f"{event.worker.group} worker failed: {event.worker.error}",
                        severity="error", timeout=8)

    # -- starting a run -------------------------------------------------------------------------

    def action_start_run(self) -> None:
        """``s``: start a run with the current setup — after asking, when it would run beside a
        live one, and offering to resume when the run on screen was stopped with a checkpoint."""
        if self._starting:
            return
        session = self.session
        if session is not None and session.live and session.source != "replay":
            st = session.state
            name = st.run_id or (session.run_dir.name if session.run_dir else "a run")

            def beside(yes: bool | None) -> None:
                if yes:
                    self._start(self.setup_choice)
            self.push_screen(ConfirmScreen(
                f"{name} is still {session.display_status} (step {st.global_step:,}). Start "
                f"another run beside it ({self.setup_choice.describe()})? Both share this "
                "machine.", yes="Start beside it", no="Don't"), beside)
            return
        resumable = self.resumable_run()
        if resumable is not None:
            self._offer_resume(resumable)
            return
        self._start(self.setup_choice)

    def resumable_run(self) -> Path | None:
        """The run on screen when it stopped (or crashed) with a checkpoint to resume from."""
        session = self.session
        if session is None or session.run_dir is None or session.live:
            return None
        if session.display_status not in ("stopped", "crashed", "failed"):
            return None
        from core.runs.checkpoint import list_checkpoints

        return session.run_dir if list_checkpoints(session.run_dir) else None

    def _offer_resume(self, run_dir: Path) -> None:
        from aeron_tui.app.screens.choice import Choice, ChoiceScreen

        session = self.session
        st = session.state if session is not None else None
        at = f" at step {st.global_step:,}" if st is not None else ""
        last = (st.last_checkpoint or "").rstrip("/").rsplit("/", 1)[-1] if st else ""

        def chosen(value: str | None) -> None:
            if value == "resume":
                self.resume_run(run_dir)
            elif value == "new":
                self._start(self.setup_choice)
        self.push_screen(ChoiceScreen(
            f"{run_dir.name} {session.display_status if session else 'stopped'}{at}.",
            f"Resume it from its latest checkpoint{f' ({last})' if last else ''}, or start a "
            f"new run ({self.setup_choice.describe()}) from step 0?",
            [Choice("r", "Resume", "resume", "success"), Choice("n", "New run", "new")]),
            chosen)

    def resume_run(self, run_dir: Path) -> None:
        """Resume ``run_dir`` from its latest checkpoint (``train … --resume``), watched here."""
        if self._starting:
            return
        self._start(RunSetup(resume_dir=str(run_dir)))

    def _start(self, setup: RunSetup) -> None:
        self._starting = True
        self.say(f"starting {setup.describe()} …", timeout=3)
        self._launch(setup)

    @work(thread=True, group="launch", exclusive=True, exit_on_error=False)
    def _launch(self, setup: RunSetup) -> None:
        try:
            proc = self.spawn(setup, self.hardware_info, self.options.runs_root)
        except Exception as exc:  # noqa: BLE001 - any failure to start is shown, not raised
            self.call_from_thread(self._launch_failed, exc)
            return
        self.call_from_thread(self._launched, proc)

    def _launched(self, proc: TrainerProcess) -> None:
        self._starting = False
        if self.setup_choice.run_dir:
            # That directory now holds this run: the next start gets a fresh one.
            self.setup_choice = self.setup_choice.with_(run_dir=None)
        from core.runs.registry import remember_run_dir

        remember_run_dir(proc.run_dir, self.options.runs_root)
        session = RunSession(source="child", run_dir=proc.run_dir, process=proc,
                             created_at=self.clock())
        self._set_session(session)
        self._feed_child(session, proc)

    def _launch_failed(self, exc: BaseException) -> None:
        self._starting = False
        from core.errors import AeronError

        if isinstance(exc, AeronError) and not os.environ.get("AERON_TUI_DEBUG"):
            # A problem the user can fix: one line, no dialog.
            self.say(f"could not start: {exc}", severity="error", timeout=10)
            return
        self.push_screen(CrashScreen("Could not start the run", [str(exc) or type(exc).__name__]))

    # -- run control ----------------------------------------------------------------------------

    def _controllable(self, what: str) -> RunSession | None:
        session = self.session
        if session is None or session.source == "none":
            self.say(f"no run to {what} — press s to start one", severity="warning")
            return None
        if session.source == "replay":
            self.say(f"this is a replay of a recorded run; nothing to {what}", severity="warning")
            return None
        if not session.live:
            self.say(f"the run is {session.display_status}; nothing to {what}",
                     severity="warning")
            return None
        return session

    def _send(self, session: RunSession, cmd: str) -> bool:
        """Deliver ``cmd`` to the run's trainer: the run directory's control channel (works for
        any live run of this user, started here or not), else the child's stdin."""
        error = send_run_command(session, cmd)
        if error is None:
            session.request(cmd)
            self.render_now()
            return True
        self.say(f"could not send {cmd}: {error}", severity="error")
        return False

    def action_pause_resume(self) -> None:
        session = self._controllable("pause")
        if session is not None:
            self._send(session, "resume" if session.state.paused else "pause")

    def action_pause_run(self) -> None:
        session = self._controllable("pause")
        if session is not None:
            self._send(session, "pause")

    def action_resume_paused(self) -> None:
        session = self._controllable("resume")
        if session is not None:
            self._send(session, "resume")

    def action_checkpoint_now(self) -> None:
        session = self._controllable("checkpoint")
        if session is not None and self._send(session, "checkpoint"):
            self.say("checkpoint requested", timeout=2)

    def action_stop_run(self) -> None:
        session = self._controllable("stop")
        if session is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._send(session, "stop")

        self.push_screen(
            ConfirmScreen("Stop the run? A final checkpoint is written.", yes="Stop", no="Keep"),
            confirmed,
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Which keys are valid now: the footer shows only those (80 columns hold them)."""
        screen = self.screen
        if action in ("setup", "wizard", "runs"):
            own = {"setup": "setup", "wizard": "wizard", "runs": "runs"}[action]
            if screen.id == own:
                return False  # already there
            if action in ("setup", "wizard") and screen.id == "dashboard" and \
                    self.session is not None and self.session.live:
                return False  # keep the footer for the run's keys (n/w still work: hidden)
            if action in ("setup", "wizard") and screen.id == "runs":
                return False  # the runs screen's own hidden n/w keys lead there (80 columns)
        return True

    # -- navigation -----------------------------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def open_dashboard(self) -> None:
        self.action_dashboard()

    def action_dashboard(self) -> None:
        while len(self.screen_stack) > 2:
            self.pop_screen()

    def _open(self, screen_type: type, factory: Callable[[], Any]) -> None:
        if isinstance(self.screen, screen_type):
            return
        self.action_dashboard()
        self.push_screen(factory())

    def action_setup_hidden(self) -> None:
        self.action_setup()

    def action_wizard_hidden(self) -> None:
        self.action_wizard()

    def action_setup(self) -> None:
        from aeron_tui.app.screens.setup import SetupScreen

        self._open(SetupScreen, lambda: SetupScreen(self.setup_choice, self.hardware_info))

    def action_wizard(self) -> None:
        from aeron_tui.app.screens.wizard import WizardScreen

        self._open(WizardScreen,
                   lambda: WizardScreen(self.hardware_info, self.hardware_sample))

    def action_runs(self) -> None:
        from aeron_tui.app.screens.runs import RunsScreen

        self._open(RunsScreen, lambda: RunsScreen(self.options.runs_root))

    def use_setup(self, setup: RunSetup, start: bool = False, stay: bool = False) -> None:
        """Called by the setup screen: remember the choice, and start it if asked."""
        self.setup_choice = setup
        if stay:
            return
        self.action_dashboard()
        if start:
            self.action_start_run()

    def open_run(self, run_dir: Path) -> None:
        """Called by the runs screen: watch ``run_dir`` (asks before leaving an attached run)."""
        current = self.session
        if current is not None and current.run_dir == run_dir:
            self.action_dashboard()
            return
        if current is not None and current.attached:
            def confirmed(yes: bool | None) -> None:
                if yes:
                    self.action_dashboard()
                    self.watch_run(run_dir)
            self.push_screen(ConfirmScreen(
                "The current run keeps going headless while you watch the other one. Switch?",
                yes="Switch", no="Stay"), confirmed)
            return
        self.action_dashboard()
        self.watch_run(run_dir)

    # -- quitting -------------------------------------------------------------------------------

    def action_quit_console(self) -> None:
        if self._quitting:
            return
        session = self.session
        if session is None or not session.attached or session.process is None:
            self.exit()
            return
        proc = session.process

        def chosen(choice: str | None) -> None:
            if choice == "detach":
                proc.detach()
                self.exit(message=f"The run keeps going headless. Re-attach with: "
                                  f"aeron-tui watch {proc.run_dir}")
            elif choice == "stop":
                self._quitting = True
                self.say("stopping the run (writing its final checkpoint) …", timeout=30)
                self._stop_and_exit(proc)

        self.push_screen(QuitScreen(str(proc.run_dir)), chosen)

    @work(thread=True, group="quit", exit_on_error=False)
    def _stop_and_exit(self, proc: TrainerProcess) -> None:
        code = proc.shutdown(grace=60.0)
        self.call_from_thread(self.exit, message=f"run stopped (trainer exit code {code})")
