"""Snapshot tests of the main screens — dashboard, setup, runs, wizard — at 80×24 and 140×45,
with a recorded fake GPU machine, frozen CPU/RAM figures and clock, and the recorded event
stream of a real tiny run (data/events.jsonl). The setup and wizard estimates run in this test
process (the same functions the console runs in a helper process).

Update after reviewing the look: ``.venv/bin/pytest tests/console/test_snapshots.py --snapshot-update``
(read each changed snapshot's text before accepting it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from aeron_tui.app.app import AeronConsole, ConsoleOptions

from .helpers import FROZEN_NOW, estimates_in_process, fixed_hardware, wait_for

RECORDED = Path(__file__).with_name("data") / "events.jsonl"


def _watch_app(tmp_path: Path, machine: str = "rtx-24gb") -> AeronConsole:
    run_dir = tmp_path / "runs" / "simple-tiny-recorded"
    run_dir.mkdir(parents=True)
    shutil.copy(RECORDED, run_dir / "events.jsonl")
    opts = ConsoleOptions(mode="watch", watch_dir=run_dir, runs_root=run_dir.parent)
    return AeronConsole(opts, clock=lambda: FROZEN_NOW, hardware=fixed_hardware(machine))


async def _until_finished(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, AeronConsole)
    await wait_for(pilot, lambda: app.session is not None and app.session.state.finished,
                   what="the recorded run to load")
    app.render_now()
    await pilot.pause()


def test_dashboard_snapshot(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(_watch_app(tmp_path), terminal_size=(140, 45), run_before=_until_finished)


def test_dashboard_snapshot_80x24_two_gpus(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(_watch_app(tmp_path, "2x24gb"), terminal_size=(80, 24),
                        run_before=_until_finished)


def test_dashboard_snapshot_cpu_only(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(_watch_app(tmp_path, "no-driver"), terminal_size=(100, 30),
                        run_before=_until_finished)


def _setup_app(tmp_path: Path) -> AeronConsole:
    from aeron_tui.app.runsetup import default_setup

    opts = ConsoleOptions(setup=default_setup(trainer="simple"), runs_root=tmp_path / "runs")
    return AeronConsole(opts, clock=lambda: FROZEN_NOW, hardware=fixed_hardware("rtx-24gb"))


async def _setup_loaded(pilot: Pilot[Any]) -> None:
    from aeron_tui.app.screens.setup import SetupScreen

    app = pilot.app
    await pilot.press("n")
    screen = app.screen
    assert isinstance(screen, SetupScreen)
    # Estimates run in a helper process (torch); wait for the table to fill.
    await wait_for(pilot, lambda: len(screen.profile_rows) > 0, timeout=240,
                   what="profile estimates")
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (140, 45)])
def test_setup_snapshot(snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        size: tuple[int, int]) -> None:
    estimates_in_process(monkeypatch)
    assert snap_compare(_setup_app(tmp_path), terminal_size=size, run_before=_setup_loaded)


async def _wizard_loaded(pilot: Pilot[Any]) -> None:
    from aeron_tui.app.screens.wizard import WizardScreen

    await pilot.press("w")
    screen = pilot.app.screen
    assert isinstance(screen, WizardScreen)
    await wait_for(pilot, lambda: screen.view is not None, timeout=240, what="wizard plan")
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (140, 45)])
def test_wizard_snapshot(snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         size: tuple[int, int]) -> None:
    estimates_in_process(monkeypatch)
    app = AeronConsole(ConsoleOptions(runs_root=tmp_path / "runs"), clock=lambda: FROZEN_NOW,
                       hardware=fixed_hardware("2x24gb"))
    assert snap_compare(app, terminal_size=size, run_before=_wizard_loaded)


async def _runs_loaded(pilot: Pilot[Any]) -> None:
    from aeron_tui.app.screens.runs import RunsScreen

    await pilot.press("r")
    screen = pilot.app.screen
    assert isinstance(screen, RunsScreen)
    await wait_for(pilot, lambda: len(screen.runs) == 3, what="the run list")
    await pilot.press("space")  # one run marked for comparison
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (140, 45)])
def test_runs_snapshot(snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       size: tuple[int, int]) -> None:
    import time

    from .synth import T0, synthetic_events, write_events

    monkeypatch.setenv("TZ", "UTC")  # the "started" column is local time
    time.tzset()
    monkeypatch.chdir(tmp_path)  # a relative runs root: the screen shows "runs", not a tmp path
    root = Path("runs")
    shutil.copytree(RECORDED.parent, root / "simple-tiny-recorded",
                    ignore=lambda d, names: [n for n in names if n != "events.jsonl"])
    write_events(root / "lonpt-tiny-20231114-221320" / "events.jsonl",
                 synthetic_events(40, t0=T0 + 100))
    write_events(root / "simple-small-with-a-rather-long-name-20231114-221500" / "events.jsonl",
                 synthetic_events(40, t0=T0 + 300)[:15])
    app = AeronConsole(ConsoleOptions(runs_root=root), clock=lambda: FROZEN_NOW,
                       hardware=fixed_hardware())
    try:
        assert snap_compare(app, terminal_size=size, run_before=_runs_loaded)
    finally:
        monkeypatch.undo()
        time.tzset()
