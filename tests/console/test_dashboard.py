"""The dashboard on a watched run: the numbers shown are the numbers emitted, bad input is shown
in place, the layout survives resizes down to 80x24, and every screen opens and closes."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable

from aeron_tui.app.app import AeronConsole, ConsoleOptions
from aeron_tui.app.screens.confirm import ConfirmScreen
from aeron_tui.app.screens.help import HelpScreen
from aeron_tui.app.widgets.branch_scores import BranchScores
from aeron_tui.app.widgets.checkpoints_table import CheckpointsTable
from aeron_tui.app.widgets.event_log import EventLog
from aeron_tui.app.widgets.loss_chart import LossChart
from aeron_tui.app.widgets.run_panel import RunPanel
from aeron_tui.app.widgets.scratchpad_grid import ScratchpadGrid
from core.runs.events import encode_event

from .helpers import FROZEN_NOW, fixed_hardware, plain, sync, wait_for
from .synth import synthetic_events, write_events


def _app(run_dir: Path, replay: float | None = None) -> AeronConsole:
    opts = ConsoleOptions(mode="watch", watch_dir=run_dir, replay_speed=replay,
                          runs_root=run_dir.parent)
    return AeronConsole(opts, clock=lambda: FROZEN_NOW, hardware=fixed_hardware())


@sync
async def test_watch_shows_the_emitted_numbers(tmp_path: Path) -> None:
    events = synthetic_events(80)
    write_events(tmp_path / "run" / "events.jsonl", events)
    app = _app(tmp_path / "run")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.session is not None
                       and app.session.state.status == "finished", what="finished run")
        app.render_now()
        await pilot.pause()
        steps = [e for e in events if e["type"] == "step"]
        last = steps[-1]
        chart = app.dashboard.query_one(LossChart)
        assert chart.train_points == len(steps)
        assert chart.val_points == sum(1 for e in events if e["type"] == "eval")
        bars = app.dashboard.query_one(BranchScores)
        assert bars.shown_scores == last["branch_scores_mean"]
        assert bars.pruned == [3]  # keep fraction 0.25 < 0.5
        grid = app.dashboard.query_one(ScratchpadGrid)
        assert grid.occupied_count == last["scratchpad"]["used_slots"]
        assert grid.total_slots == last["scratchpad"]["total_slots"]
        table = app.dashboard.query_one(CheckpointsTable)
        ckpts = [e for e in events if e["type"] == "checkpoint"]
        assert table.row_count == len(ckpts)
        best_row = table.get_row_at(table.row_count - 1)
        assert best_row[0] == "★" and str(best_row[1]) == ckpts[-1]["name"]
        log = app.dashboard.query_one(EventLog)
        assert log.lines_written == sum(1 for e in events if e["type"] in (
            "run_started", "eval", "checkpoint", "run_finished"))
        panel_text = plain(app.dashboard.query_one(RunPanel))
        assert "finished" in panel_text and "80 / 80" in panel_text
        # Smoothing toggles at once on the key press (no wait for the render timer).
        assert chart.smoothing
        await pilot.press("m")
        assert not chart.smoothing
        assert str(app.dashboard.query_one("#chart-box").border_title).startswith("loss · raw")


@sync
async def test_branch_panel_says_how_much_the_engine_reasoned_and_never_shows_stale_bars(
        tmp_path: Path) -> None:
    """The complexity gate skips samples: the panel says on what share of the batch the engine
    ran (the bars average those samples) and, once a step event reports that no sample reasoned,
    since when — the bars are then marked as from their own step, not passed off as current."""
    events = synthetic_events(40, eval_every=100)
    steps = [e for e in events if e["type"] == "step"]
    for e in steps:
        s = e["global_step"]
        e["complexity_mean"] = 0.5 - s / 100
        e["reasoning_skipped_frac"] = 0.25 if s <= 30 else 1.0
        if s > 30:  # the gate closed for every sample: the trainer emits no branch scores
            e["branch_scores_mean"] = e["branch_keep_frac"] = None
    run = tmp_path / "run"
    cut = events.index(steps[29]) + 1
    write_events(run / "events.jsonl", events[:cut])
    app = _app(run)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.session is not None
                       and app.session.state.global_step == 30, what="step 30")
        app.render_now()
        await pilot.pause()
        bars = app.dashboard.query_one(BranchScores)
        assert bars.shown_scores == steps[29]["branch_scores_mean"]
        assert bars.reasoning_line == "reasoned 75% · complexity 0.200"
        assert "reasoned 75% · complexity 0.200" in plain(bars)
        # The rest of the run: no sample reasoned after step 30.
        with open(run / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.writelines(encode_event(e) + "\n" for e in events[cut:])
        await wait_for(pilot, lambda: app.session.state.status == "finished", what="finished")
        app.render_now()
        await pilot.pause()
        assert bars.shown_scores == steps[29]["branch_scores_mean"]
        assert bars.reasoning_line == "none reasoned since 31 · bars @30 · complexity 0.100"
        assert "none reasoned since 31" in plain(bars)


@sync
async def test_corrupt_events_are_shown_and_the_console_keeps_working(tmp_path: Path) -> None:
    events = synthetic_events(20)
    newer = dict(events[5], v=2)
    write_events(tmp_path / "run" / "events.jsonl", events[:10] + [newer] + events[10:],
                 tail='garbage line\n{"v":1,"type":"step","ti')
    app = _app(tmp_path / "run")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.session is not None
                       and app.session.state.status == "finished", what="finished run")
        app.render_now()
        await pilot.pause()
        session = app.session
        assert session is not None
        # The trailing partial line is held back by the tail (a writer may finish it).
        assert session.problem_count == 2
        panel = plain(app.dashboard.query_one(RunPanel))
        assert "2 unreadable event line(s)" in panel
        log = app.dashboard.query_one(EventLog)
        text = " ".join(" ".join(strip.text for strip in log.lines).split())
        assert "newer than this aeron-tui understands" in text
        assert "not JSON" in text
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is app.dashboard


@pytest.mark.parametrize("size", [(80, 24), (60, 20), (200, 60), (100, 30)])
@sync
async def test_layout_survives_resizes(tmp_path: Path, size: tuple[int, int]) -> None:
    write_events(tmp_path / "run" / "events.jsonl", synthetic_events(30))
    app = _app(tmp_path / "run")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.session is not None and app.session.state.finished)
        await pilot.resize_terminal(*size)
        await pilot.pause(0.3)
        app.render_now()
        await pilot.pause()
        for widget in (LossChart, RunPanel, BranchScores, EventLog, CheckpointsTable):
            region = app.dashboard.query_one(widget).region
            assert region.width > 0 and region.height > 0, (widget.__name__, size)
        if size[0] >= 80 and size[1] >= 24:
            assert app.dashboard.query_one(LossChart).size.height >= 6


@sync
async def test_stop_on_a_finished_run_says_so(tmp_path: Path) -> None:
    write_events(tmp_path / "run" / "events.jsonl", synthetic_events(5))
    app = _app(tmp_path / "run")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.session is not None and app.session.state.finished)
        await pilot.press("x")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)  # nothing to stop, nothing asked
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


@sync
async def test_replay_mode_plays_the_run_forward(tmp_path: Path) -> None:
    write_events(tmp_path / "run" / "events.jsonl", synthetic_events(40))
    app = _app(tmp_path / "run", replay=20.0)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.session is not None
                       and 0 < app.session.state.global_step < 40, what="mid-replay")
        await wait_for(pilot, lambda: app.session.state.status == "finished", timeout=15)
        assert isinstance(app.dashboard.query_one(CheckpointsTable), DataTable)
