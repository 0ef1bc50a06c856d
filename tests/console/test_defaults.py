"""The wizard's saved choice is the default of every later start — the console's launch, `s` in a
watch console, and `train` — unless a flag says otherwise; the setup screen says where each
default came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Label

from aeron_tui.app.app import AeronConsole, ConsoleOptions
from aeron_tui.app.runsetup import RunSetup, default_setup, prepare_launch
from aeron_tui.app.screens.setup import SetupScreen
from aeron_tui.commands.train import build_run_config
from profiles.settings import SavedChoice, choice_path, save_choice

from .helpers import estimates_in_process, fixed_hardware, sync, wait_for
from .synth import synthetic_events, write_events

# The example: tiny on the CPU, the simple trainer, micro-batch 8.
CHOICE = SavedChoice(device="cpu", profile="tiny", trainer="simple", micro_batch=8,
                     grad_accum=2)


def _what_the_child_runs(setup: RunSetup, root: Path) -> Any:
    """The RunConfig the headless trainer resolves for what the console starts (its run.toml,
    then the same layering as `aeron-tui train <trainer> --config run.toml`)."""
    spec = prepare_launch(setup, root)
    assert spec.config is not None
    run_config, _ = build_run_config(spec.trainer, config_path=spec.config,
                                     flags={"run_dir": str(spec.run_dir)})
    return run_config


def _console(tmp_path: Path, **options: Any) -> tuple[AeronConsole, list[RunSetup]]:
    started: list[RunSetup] = []

    def spawn(setup: RunSetup, hw: object, root: Path | None):  # type: ignore[no-untyped-def]
        started.append(setup)
        raise RuntimeError("not starting in this test")

    app = AeronConsole(ConsoleOptions(runs_root=tmp_path / "runs", **options),
                       hardware=fixed_hardware(), spawn=spawn)
    return app, started


@pytest.mark.slow  # profile estimates for the setup screen (in this process)
@sync
async def test_the_saved_choice_is_the_default_of_launch_and_of_s_in_watch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    estimates_in_process(monkeypatch)
    save_choice(CHOICE)
    # `aeron-tui launch` with no flags: the console's setup is the saved choice.
    app, started = _console(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("s")
        await wait_for(pilot, lambda: bool(started), what="launch start")
        await wait_for(pilot, lambda: app.screen is not app.dashboard, what="the stub's error")
        await pilot.press("escape")
        await pilot.press("n")
        screen = app.screen
        assert isinstance(screen, SetupScreen)
        origins = str(screen.query_one("#origins", Label).content)
        assert "trainer, profile ← the wizard's saved choice" in origins
        assert str(choice_path()) in origins and "micro-batch 8 × 2" in origins
    # `aeron-tui watch RUN_DIR` on a finished run, then `s`: the same defaults.
    write_events(tmp_path / "watched" / "events.jsonl", synthetic_events(5))
    app, watched = _console(tmp_path, mode="watch", watch_dir=tmp_path / "watched")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.session is not None and app.session.state.finished)
        await pilot.press("s")
        await wait_for(pilot, lambda: bool(watched), what="watch start")
    for setup in (started[0], watched[0]):
        assert (setup.trainer, setup.profile) == ("simple", "tiny")
        run = _what_the_child_runs(setup, tmp_path / "runs")
        assert (run.trainer, run.profile, run.device) == ("simple", "tiny", "cpu")
        assert (run.micro_batch, run.grad_accum) == (8, 2)


def test_flags_win_over_the_saved_choice_and_say_so(tmp_path: Path) -> None:
    save_choice(CHOICE)
    setup = default_setup(trainer="compressed", profile="small")
    assert (setup.trainer, setup.profile) == ("compressed", "small")
    assert setup.origins["trainer"] == "the command line"
    run = _what_the_child_runs(setup, tmp_path / "runs")
    # Another profile than the saved one: its own batch layout, the saved device still.
    from profiles.catalog import load_profile

    own = load_profile("small").train
    assert (run.profile, run.device) == ("small", "cpu")
    assert (run.micro_batch, run.grad_accum) == (own.micro_batch, own.grad_accum) != (8, 2)


def test_train_uses_the_saved_choice_unless_told_otherwise() -> None:
    save_choice(CHOICE)
    run, _ = build_run_config("simple")
    assert (run.profile, run.device, run.micro_batch, run.grad_accum) == ("tiny", "cpu", 8, 2)
    run, _ = build_run_config("simple", flags={"micro_batch": 2, "device": "auto"})
    assert (run.profile, run.micro_batch, run.device) == ("tiny", 2, "auto")
    # LONPT's presets own its batch: the saved layout does not override the preset's.
    run, _ = build_run_config("lonpt", flags={"preset": "smoke"})
    assert run.micro_batch is None and run.device == "cpu"


def test_without_a_saved_choice_the_setup_says_the_defaults_are_built_in() -> None:
    setup = default_setup()
    assert setup.profile == "auto"
    assert "built-in default" in setup.origins["trainer"]


def test_an_unreadable_saved_choice_does_not_stop_the_console_and_is_named() -> None:
    choice_path().parent.mkdir(parents=True, exist_ok=True)
    choice_path().write_text("profile = [not toml\n")
    setup = default_setup()
    assert setup.trainer is not None and setup.profile == "auto"
    assert str(choice_path()) in setup.origins["trainer"] and "not valid TOML" in \
        setup.origins["trainer"]
