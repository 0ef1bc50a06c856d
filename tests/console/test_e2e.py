"""The console driving the REAL headless trainer (`aeron-tui train simple ...` as a child):
numbers shown equal numbers emitted, pause freezes the step count, stop leaves a checkpoint,
and a trainer that fails shows its error in the modal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.message import Message

from aeron_tui.app.app import AeronConsole, ConsoleOptions
from aeron_tui.app.messages import EventsArrived
from aeron_tui.app.runsetup import RunSetup
from aeron_tui.app.screens.confirm import ConfirmScreen
from aeron_tui.app.screens.crash import CrashScreen
from aeron_tui.app.widgets.branch_scores import BranchScores
from aeron_tui.app.widgets.checkpoints_table import CheckpointsTable
from aeron_tui.app.widgets.loss_chart import LossChart
from aeron_tui.app.widgets.scratchpad_grid import ScratchpadGrid

from .helpers import fixed_hardware, sync, wait_for

# A model that steps in milliseconds; 4 ToT branches and 16 scratchpad slots to look at.
TINY: dict[str, Any] = {
    "model": dict(d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=1,
                  num_decoder_layers=1, dim_feedforward=128, max_position_embeddings=128,
                  num_tot_branches=4, num_scratchpad_slots=16, memory_slots=16, memory_dim=64,
                  memory_heads=4, kg_num_entities=64, kg_dim=16, num_tasks=4),
    "log_every": 1, "micro_batch": 4, "seq_len": 48, "eval_every": 1000,
    "checkpoint_every": 1000, "eval_max_batches": 2, "precision": "fp32", "device": "cpu",
    "tokenizer_vocab_size": 300,
}


def _console(tmp_path: Path, data: str | None, steps: int = 400) -> tuple[AeronConsole, list]:
    setup = RunSetup(trainer="simple", profile="tiny", data=data, steps=steps, overrides=TINY)
    received: list[dict[str, Any]] = []
    app = AeronConsole(ConsoleOptions(setup=setup, runs_root=tmp_path / "runs"),
                       hardware=fixed_hardware())

    def hook(message: Message) -> None:
        if isinstance(message, EventsArrived):
            received.extend(e for e in message.items if isinstance(e, dict))

    return app, [hook, received]


@pytest.mark.slow
@pytest.mark.timeout(300)
@sync
async def test_real_run_numbers_pause_and_stop(tmp_path: Path, sample_corpus_dir: Path) -> None:
    app, (hook, received) = _console(tmp_path, str(sample_corpus_dir / "styles.jsonl"))
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await pilot.press("s")
        await wait_for(pilot, lambda: sum(e["type"] == "step" for e in received) >= 3,
                       timeout=180, what="three step events from the trainer")
        await pilot.press("p")
        await wait_for(pilot, lambda: app.session.state.status == "paused", timeout=60,
                       what="paused status")
        app.render_now()
        await pilot.pause()
        steps = [e for e in received if e["type"] == "step"]
        last = steps[-1]
        chart = app.dashboard.query_one(LossChart)
        assert chart.train_points == len(steps) >= 3
        assert app.session.state.train_losses[-1] == (last["global_step"], last["loss"])
        bars = app.dashboard.query_one(BranchScores)
        assert bars.shown_scores == last["branch_scores_mean"]
        assert len(bars.shown_scores) == 4
        grid = app.dashboard.query_one(ScratchpadGrid)
        assert grid.occupied_count == last["scratchpad"]["used_slots"]
        assert grid.total_slots == 16
        # Paused: the step count does not move.
        frozen = app.session.state.global_step
        await pilot.pause(3.0)
        assert app.session.state.global_step == frozen
        assert not any(e["type"] == "step" and e["global_step"] > frozen for e in received)
        # Stop (with confirmation) leaves a checkpoint on disk and in the table.
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: app.session.exit_code is not None, timeout=120,
                       what="the trainer to exit")
        assert app.session.exit_code == 0
        assert app.session.state.status == "stopped"
        app.render_now()
        await pilot.pause()
        ckpt = app.session.state.checkpoints[-1]
        assert ckpt["global_step"] == frozen
        assert Path(ckpt["path"]).is_dir() and any(Path(ckpt["path"]).iterdir())
        assert app.dashboard.query_one(CheckpointsTable).row_count >= 1
        run_dir = app.session.run_dir
        assert run_dir is not None and (run_dir / "run.toml").is_file()


@pytest.mark.slow
@pytest.mark.timeout(300)
@sync
async def test_real_trainer_failure_shows_the_modal(tmp_path: Path) -> None:
    # The first records are fine (setup and `s` read those), a later line is not: only the
    # trainer finds it, and its one-line error is what the modal shows.
    good = ('{"provider": "p", "style_label": "qa", "user_input": "hi %d", '
            '"assistant_reply": "yo"}\n')
    bad = tmp_path / "broken.jsonl"
    bad.write_text("".join(good % i for i in range(30)) + "not json at all\n")
    app, (hook, _) = _console(tmp_path, str(bad))
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, CrashScreen)
                       and bool(app.screen.query("#error-text")), timeout=180, what="crash modal")
        text = str(app.screen.query_one("#error-text").content)
        assert "broken.jsonl" in text  # the trainer's error names the file
        assert app.session.display_status == "failed"
        await pilot.press("enter")
        assert app.screen is app.dashboard


@pytest.mark.slow
@pytest.mark.timeout(300)
@sync
async def test_watch_follows_a_live_headless_run_and_can_stop_it(
        tmp_path: Path, sample_corpus_dir: Path) -> None:
    import subprocess
    import sys

    from aeron_tui.app.runsetup import write_run_config

    setup = RunSetup(trainer="simple", profile="tiny", data=str(sample_corpus_dir / "styles.jsonl"),
                     steps=400, overrides=TINY, run_dir=str(tmp_path / "live"))
    config = write_run_config(setup, tmp_path)
    child = subprocess.Popen([sys.executable, "-m", "aeron_tui", "train", "simple", "--config",
                              str(config), "--quiet"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        app = AeronConsole(ConsoleOptions(mode="watch", watch_dir=config.parent,
                                          runs_root=tmp_path), hardware=fixed_hardware())
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: app.session is not None
                           and app.session.state.global_step >= 2, timeout=180,
                           what="live steps through the tail")
            assert app.session.source == "watch" and app.session.display_status == "running"
            # One rule for every live run of the user: pause, resume and stop all work on a run
            # this console did not start (its run directory's control channel).
            await pilot.press("p")
            await wait_for(pilot, lambda: app.session.state.status == "paused", timeout=120,
                           what="paused through the control channel")
            assert app.dashboard.check_action("resume", ()) and \
                not app.dashboard.check_action("pause", ())
            await pilot.press("p")
            await wait_for(pilot, lambda: app.session.state.status == "running", timeout=120,
                           what="resumed")
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await wait_for(pilot, lambda: app.session.state.status == "stopped", timeout=120,
                           what="stopped status from the file")
        assert child.wait(60) == 0
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.slow
@pytest.mark.timeout(300)
@sync
async def test_make_run_ends_with_a_final_sample(tmp_path: Path, sample_corpus_dir: Path) -> None:
    """What `make run` starts (the default trainer and preset, here with a very small model):
    when the run finishes, the samples panel shows the replies generated at its last step."""
    from aeron_tui.app.widgets.samples_panel import SamplesPanel

    small = {k: v for k, v in TINY.items() if k in ("model", "tokenizer_vocab_size", "device")}
    setup = RunSetup(data=str(sample_corpus_dir / "styles.jsonl"), overrides=small)
    received: list[dict[str, Any]] = []

    def hook(message: Message) -> None:
        if isinstance(message, EventsArrived):
            received.extend(e for e in message.items if isinstance(e, dict))

    app = AeronConsole(ConsoleOptions(setup=setup, start=True, runs_root=tmp_path / "runs"),
                       hardware=fixed_hardware())
    async with app.run_test(size=(120, 40), message_hook=hook) as pilot:
        await wait_for(pilot, lambda: app.session is not None and app.session.state.finished,
                       timeout=240, what="the default run to finish")
        app.render_now()
        await pilot.pause()
        assert app.session.state.status == "finished"
        finished = next(e for e in received if e["type"] == "run_finished")
        last = [e for e in received if e["type"] == "sample"][-1]
        assert last["global_step"] == finished["global_step"] > 0
        panel = app.dashboard.query_one(SamplesPanel)
        assert panel.shown_step == finished["global_step"]
        assert panel.shown == last["samples"] and len(panel.shown) >= 2
