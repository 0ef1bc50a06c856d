"""Snapshot tests of the main screens at a fixed size, with a recorded fake GPU machine, frozen
CPU/RAM figures and clock, and the recorded event stream of a real tiny run (data/events.jsonl).

Update after reviewing the look: ``.venv/bin/pytest tests/console/test_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

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
