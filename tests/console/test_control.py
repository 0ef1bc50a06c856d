"""Console ↔ child plumbing with a scripted trainer (protocol-exact, no model): crash modal,
pause/resume/stop keys, quit → stop or detach. The real-trainer versions are in test_e2e.py."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from aeron_tui.app.app import AeronConsole, ConsoleOptions
from aeron_tui.app.runsetup import RunSetup
from aeron_tui.app.screens.confirm import ConfirmScreen
from aeron_tui.app.screens.crash import CrashScreen
from aeron_tui.app.screens.quit import QuitScreen
from aeron_tui.launcher import TrainerProcess

from .helpers import fixed_hardware, sync, wait_for

SCRIPT = str(Path(__file__).with_name("scripted_trainer.py"))


def _app(tmp_path: Path, *args: str) -> tuple[AeronConsole, list[TrainerProcess]]:
    started: list[TrainerProcess] = []

    def spawn(setup: RunSetup, hardware: Any, root: Path | None) -> TrainerProcess:
        run_dir = tmp_path / f"run{len(started)}"
        proc = TrainerProcess([sys.executable, SCRIPT, *args, "--events-file",
                               str(run_dir / "events.jsonl")], run_dir)
        started.append(proc)
        return proc

    app = AeronConsole(ConsoleOptions(runs_root=tmp_path), hardware=fixed_hardware(), spawn=spawn)
    return app, started


@sync
async def test_crashing_trainer_shows_its_error_and_the_console_goes_on(tmp_path: Path) -> None:
    app, started = _app(tmp_path, "50", "--fail-after", "3")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, CrashScreen)
                       and bool(app.screen.query("#error-text")), what="crash modal")
        text = str(app.screen.query_one("#error-text").content)
        assert "RuntimeError: scripted failure" in text  # the error event and the stderr tail
        assert "exit code 3" in app.screen.title_text
        assert app.session is not None and app.session.display_status == "failed"
        await pilot.press("enter")
        assert app.screen is app.dashboard
        # The console still works: a new run can start.
        await pilot.press("s")
        await wait_for(pilot, lambda: len(started) == 2)
        await wait_for(pilot, lambda: isinstance(app.screen, CrashScreen)
                       and bool(app.screen.query("#error-text")), what="second crash")
        await pilot.press("escape")


@sync
async def test_pause_resume_and_stop_from_the_keyboard(tmp_path: Path) -> None:
    app, started = _app(tmp_path, "100000", "--period", "0.01")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("s")
        await wait_for(pilot, lambda: app.session is not None
                       and app.session.state.global_step >= 5, what="steps")
        await pilot.press("p")
        await wait_for(pilot, lambda: app.session.state.status == "paused", what="paused")
        frozen = app.session.state.global_step
        await pilot.pause(0.4)
        assert app.session.state.global_step == frozen
        await pilot.press("p")
        await wait_for(pilot, lambda: app.session.state.global_step > frozen, what="resumed")
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.session.exit_code == 0, what="clean exit")
        assert app.session.state.status == "stopped"
        assert app.session.state.checkpoints[-1]["name"].startswith("final-")


@sync
async def test_quit_can_leave_the_run_going_headless(tmp_path: Path) -> None:
    app, started = _app(tmp_path, "150", "--period", "0.02")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("s")
        await wait_for(pilot, lambda: app.session is not None
                       and app.session.state.global_step >= 2, what="steps")
        await pilot.press("q")
        assert isinstance(app.screen, QuitScreen)
        await pilot.press("d")
        await pilot.pause()
    proc = started[0]
    assert proc.running or proc.returncode == 0
    assert proc.wait(30) == 0  # it finished on its own, with nobody reading its stdout
    assert '"status":"finished"' in (tmp_path / "run0" / "events.jsonl").read_text()


@sync
async def test_quit_with_stop_stops_the_run_first(tmp_path: Path) -> None:
    app, started = _app(tmp_path, "100000", "--period", "0.01")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("s")
        await wait_for(pilot, lambda: app.session is not None
                       and app.session.state.global_step >= 2, what="steps")
        await pilot.press("q")
        await pilot.press("s")
        end = time.monotonic() + 20
        while app.is_running and time.monotonic() < end:
            await pilot.pause(0.1)
    assert started[0].returncode == 0
    assert '"status":"stopped"' in (tmp_path / "run0" / "events.jsonl").read_text()


@sync
async def test_a_given_run_dir_is_used_once(tmp_path: Path) -> None:
    """`launch --run-dir DIR`: the first start goes there, the next one gets a fresh directory
    (two runs in one directory would interleave events and overwrite checkpoints)."""
    app, started = _app(tmp_path, "3", "--period", "0.01")
    app.setup_choice = RunSetup(trainer="simple", run_dir=str(tmp_path / "chosen"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("s")
        await wait_for(pilot, lambda: len(started) == 1 and app.session is not None)
        assert app.setup_choice.run_dir is None
        assert app.setup_choice.trainer == "simple"  # the rest of the choice stays


def test_write_run_config_refuses_a_directory_that_holds_a_run(tmp_path: Path) -> None:
    import pytest

    from aeron_tui.app.runsetup import write_run_config
    from core.errors import ConfigError

    fresh = RunSetup(trainer="simple", profile="tiny", run_dir=str(tmp_path / "a"))
    assert write_run_config(fresh).parent == tmp_path / "a"  # set up, not started: fine
    assert write_run_config(fresh).parent == tmp_path / "a"  # saving again too
    (tmp_path / "a" / "events.jsonl").write_text('{"v":1}\n')
    with pytest.raises(ConfigError, match="already holds a run"):
        write_run_config(fresh)
