"""The runs screen lists past runs with status and best loss; Enter watches the chosen one."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable

from aeron_tui.app.app import AeronConsole, ConsoleOptions
from aeron_tui.app.screens.runs import RunsScreen

from .helpers import fixed_hardware, sync, wait_for
from .synth import T0, synthetic_events, write_events


def _make_runs(root: Path) -> None:
    finished = synthetic_events(40, t0=T0)
    write_events(root / "simple-tiny-a" / "events.jsonl", finished)
    # A run that died without a final event and has no live trainer: "crashed".
    write_events(root / "simple-tiny-b" / "events.jsonl", synthetic_events(40, t0=T0 + 100)[:12])


@sync
async def test_runs_screen_lists_and_opens_runs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _make_runs(root)
    app = AeronConsole(ConsoleOptions(runs_root=root), hardware=fixed_hardware())
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("r")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await wait_for(pilot, lambda: len(screen.runs) == 2, what="run list")
        table = screen.query_one(DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        by_name = {str(row[2]): row for row in rows}
        assert str(by_name["simple-tiny-a"][1]).endswith("finished")
        assert str(by_name["simple-tiny-b"][1]).endswith("crashed")
        best = min(e["loss"] for e in synthetic_events(40) if e["type"] == "eval")
        assert by_name["simple-tiny-a"][6] == f"{best:.4f}"
        # Newest first: b started later.
        assert str(rows[0][2]) == "simple-tiny-b"
        table.move_cursor(row=1)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is app.dashboard, what="dashboard")
        await wait_for(pilot, lambda: app.session is not None
                       and app.session.state.status == "finished", what="watched run")
        assert app.session.run_dir == root / "simple-tiny-a"
        assert app.session.source == "watch"


@sync
async def test_empty_runs_root_says_so(tmp_path: Path) -> None:
    app = AeronConsole(ConsoleOptions(runs_root=tmp_path / "none"), hardware=fixed_hardware())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        await wait_for(pilot, lambda: "no runs under" in str(screen.query_one("#runs-where")
                                                              .content), what="empty note")
        await pilot.press("escape")
        assert app.screen is app.dashboard
