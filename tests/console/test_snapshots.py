"""Snapshot tests of the main screens at a fixed size, with a recorded fake GPU machine, frozen
CPU/RAM figures and clock, and the recorded event stream of a real tiny run (data/events.jsonl).

Update after reviewing the look: ``.venv/bin/pytest tests/console/test_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from aeron_tui.app.app import AeronConsole, ConsoleOptions

from .helpers import FROZEN_NOW, fixed_hardware, wait_for

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
    assert snap_compare(_watch_app(tmp_path), terminal_size=(120, 40), run_before=_until_finished)


def test_dashboard_snapshot_80x24_two_gpus(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(_watch_app(tmp_path, "2x24gb"), terminal_size=(80, 24),
                        run_before=_until_finished)


def test_dashboard_snapshot_cpu_only(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(_watch_app(tmp_path, "no-driver"), terminal_size=(100, 30),
                        run_before=_until_finished)


def _setup_app(tmp_path: Path) -> AeronConsole:
    from aeron_tui.app.runsetup import RunSetup

    opts = ConsoleOptions(setup=RunSetup(trainer="simple", profile="auto"),
                          runs_root=tmp_path / "runs")
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


@pytest.mark.slow  # the profile estimates run in a helper process (torch import)
def test_setup_snapshot(snap_compare: Any, tmp_path: Path) -> None:
    assert snap_compare(_setup_app(tmp_path), terminal_size=(120, 36), run_before=_setup_loaded)


async def _wizard_loaded(pilot: Pilot[Any]) -> None:
    from aeron_tui.app.screens.wizard import WizardScreen

    await pilot.press("w")
    screen = pilot.app.screen
    assert isinstance(screen, WizardScreen)
    await wait_for(pilot, lambda: screen.view is not None, timeout=240, what="wizard plan")
    await pilot.pause()


@pytest.mark.slow  # the wizard plan runs in a helper process (torch import)
def test_wizard_snapshot(snap_compare: Any, tmp_path: Path) -> None:
    app = AeronConsole(ConsoleOptions(runs_root=tmp_path / "runs"), clock=lambda: FROZEN_NOW,
                       hardware=fixed_hardware("2x24gb"))
    assert snap_compare(app, terminal_size=(120, 36), run_before=_wizard_loaded)
