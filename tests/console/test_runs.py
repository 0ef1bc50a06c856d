"""The runs screen lists past runs (and those started elsewhere) with status and best loss; Enter
watches one, R resumes a stopped one, space + c compares two, o shows a config; s after a stop
offers to resume."""

from __future__ import annotations

from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import DataTable

from aeron_tui.app.app import AeronConsole, ConsoleOptions
from aeron_tui.app.runsetup import RunSetup, prepare_launch
from aeron_tui.app.screens.choice import ChoiceScreen
from aeron_tui.app.screens.runs import CompareChart, CompareScreen, ConfigScreen, RunsScreen
from core.runs.registry import remember_run_dir

from .helpers import fixed_hardware, sync, wait_for
from .synth import T0, synthetic_events, write_events


def _make_runs(root: Path) -> None:
    finished = synthetic_events(40, t0=T0)
    write_events(root / "simple-tiny-a" / "events.jsonl", finished)
    # A run that died without a final event and has no live trainer: "crashed".
    write_events(root / "simple-tiny-b" / "events.jsonl", synthetic_events(40, t0=T0 + 100)[:12])


async def _open_runs(pilot: Pilot[None], app: AeronConsole, count: int) -> RunsScreen:
    """Press r on the dashboard and wait until the runs screen lists ``count`` runs."""
    await pilot.press("r")
    screen = app.screen
    assert isinstance(screen, RunsScreen)
    await wait_for(pilot, lambda: len(screen.runs) == count, what="run list")
    return screen


@sync
async def test_runs_screen_lists_and_opens_runs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _make_runs(root)
    app = AeronConsole(ConsoleOptions(runs_root=root), hardware=fixed_hardware())
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await _open_runs(pilot, app, 2)
        table = screen.query_one(DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        by_name = {str(row[2]): row for row in rows}
        assert str(by_name["simple-tiny-a"][1]).endswith("finished")
        assert str(by_name["simple-tiny-b"][1]).endswith("crashed")
        best = min(e["loss"] for e in synthetic_events(40) if e["type"] == "eval")
        assert by_name["simple-tiny-a"][5] == f"{best:.4f}"
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


def _stopped_run(run_dir: Path) -> Path:
    """A run stopped at step 12 with a checkpoint directory and its run.toml."""
    events = synthetic_events(40, t0=T0 + 200)[:14]
    events.append(events[-1] | {"type": "run_finished", "status": "stopped", "global_step": 12,
                                "seq": 99})
    for key in ("loss", "lr", "branch_scores_mean", "branch_keep_frac", "scratchpad",
                "grad_norm", "tokens_per_s"):
        events[-1].pop(key, None)
    write_events(run_dir / "events.jsonl", events)
    (run_dir / "checkpoints" / "step_000012").mkdir(parents=True)
    (run_dir / "run.toml").write_text(f'trainer = "simple"\nprofile = "tiny"\n'
                                      f'run_dir = "{run_dir}"\n')
    return run_dir


def _console_with_spawn(root: Path) -> tuple[AeronConsole, list[RunSetup]]:
    started: list[RunSetup] = []

    def spawn(setup: RunSetup, hw: object, runs_root: Path | None):  # type: ignore[no-untyped-def]
        started.append(setup)
        raise RuntimeError("not starting in this test")

    return AeronConsole(ConsoleOptions(runs_root=root), hardware=fixed_hardware(),
                        spawn=spawn), started


@sync
async def test_runs_elsewhere_are_listed_compared_configured_and_resumed(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _make_runs(root)
    elsewhere = _stopped_run(tmp_path / "elsewhere" / "my-run")
    remember_run_dir(elsewhere, root)  # what starting it with --run-dir there does
    app, started = _console_with_spawn(root)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await _open_runs(pilot, app, 3)
        assert "(+1 elsewhere)" in str(screen.query_one("#runs-where").content)
        paths = [r.path for r in screen.runs]
        assert elsewhere in paths
        table = screen.query_one(DataTable)
        # o: the run's config as written.
        table.move_cursor(row=paths.index(elsewhere))
        await pilot.pause()
        await pilot.press("o")
        assert isinstance(app.screen, ConfigScreen)
        assert 'profile = "tiny"' in str(app.screen.query_one("#config-text").content)
        await pilot.press("escape")
        # space marks two runs, c compares them on one chart.
        await pilot.press("space")
        table.move_cursor(row=paths.index(root / "simple-tiny-a"))
        await pilot.pause()
        assert not screen.check_action("compare", ())
        await pilot.press("space")
        await pilot.press("c")
        assert isinstance(app.screen, CompareScreen)
        await pilot.pause()
        chart = app.screen.query_one(CompareChart)
        series = chart.series()
        a = next(r for r in screen.runs if r.path == root / "simple-tiny-a").state
        b = next(r for r in screen.runs if r.path == elsewhere).state
        # one train line and the validation points per run (b stopped before its first eval)
        assert len(series) == 3
        assert series[0].xs[-1] == a.train_losses[-1][0] or series[2].xs[-1] == \
            a.train_losses[-1][0]
        legend = str(app.screen.query_one("#compare-legend").content)
        assert "my-run" in legend and "simple-tiny-a" in legend
        assert f"step {b.global_step:,}" in legend
        await pilot.press("escape")
        # R on the stopped run: the console resumes it (train --resume on that directory).
        table.move_cursor(row=paths.index(elsewhere))
        await pilot.pause()
        assert screen.check_action("resume", ())
        await pilot.press("R")
        await wait_for(pilot, lambda: bool(started), what="resume start")
    assert started[0].resume_dir == str(elsewhere)
    spec = prepare_launch(started[0], root)
    assert spec.run_dir == elsewhere and spec.argv()[-1] == "--resume"
    assert spec.argv()[3:5] == ["train", "simple"]


@sync
async def test_s_after_a_stop_offers_to_resume(tmp_path: Path) -> None:
    run_dir = _stopped_run(tmp_path / "runs" / "stopped")
    app, started = _console_with_spawn(tmp_path / "runs")
    app.options.mode, app.options.watch_dir = "watch", run_dir
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.session is not None and app.session.state.finished)
        assert app.dashboard.check_action("offer_resume", ())
        assert not app.dashboard.check_action("start", ())
        await pilot.press("s")
        assert isinstance(app.screen, ChoiceScreen)
        await pilot.press("r")
        await wait_for(pilot, lambda: bool(started), what="resume")
    assert started[0].resume_dir == str(run_dir)


@sync
async def test_launch_says_which_runs_are_live_without_a_console(tmp_path: Path) -> None:
    import json
    import os
    import socket

    import psutil

    root = tmp_path / "runs"
    _make_runs(root)
    live = root / "simple-tiny-live"
    write_events(live / "events.jsonl", synthetic_events(40, t0=T0 + 500)[:10])
    # Its trainer is alive (this process stands in for it) and nobody is watching it.
    (live / "trainer.pid").write_text(json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(),
        "started": psutil.Process().create_time()}))
    app = AeronConsole(ConsoleOptions(runs_root=root), hardware=fixed_hardware())
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: any("live without a console" in n.message
                                          for n in app._notifications), what="the notice")
        notice = next(n.message for n in app._notifications if "without a console" in n.message)
    assert "1 run(s)" in notice and "simple-tiny-live" in notice
    assert "simple-tiny-a" not in notice  # finished runs are not live


@sync
async def test_g_writes_the_runs_plot(tmp_path: Path) -> None:
    """g on the runs screen writes what `aeron-tui runs plot` draws: the selected run, or the two
    marked runs overlaid."""
    root = tmp_path / "runs"
    _make_runs(root)
    app = AeronConsole(ConsoleOptions(runs_root=root), hardware=fixed_hardware())
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await _open_runs(pilot, app, 2)
        table = screen.query_one(DataTable)
        paths = [r.path for r in screen.runs]
        table.move_cursor(row=paths.index(root / "simple-tiny-a"))
        await pilot.pause()
        await pilot.press("g")
        single = root / "simple-tiny-a" / "plot.png"
        await wait_for(pilot, single.exists, what="plot.png", timeout=60)
        assert single.read_bytes().startswith(b"\x89PNG")
        await pilot.press("space")
        table.move_cursor(row=paths.index(root / "simple-tiny-b"))
        await pilot.pause()
        await pilot.press("space")
        await pilot.press("g")
        both = root / "simple-tiny-a" / "compare-simple-tiny-b.png"
        await wait_for(pilot, both.exists, what="comparison plot", timeout=60)
        await wait_for(pilot, lambda: any(f"wrote {both}" in str(n.message)
                                          for n in app._notifications), what="notice")
        # n and w are off the footer here (80 columns) but still lead to setup and the wizard.
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen.id == "setup", what="setup screen")
