"""The run setup screen: trainers from the registry, data path and steps validated in place,
saving writes the run's TOML, Start hands the choice to the launcher."""

from __future__ import annotations

import sys
from pathlib import Path

from textual.widgets import Input, Label, Select

from aeron_tui.app.app import AeronConsole, ConsoleOptions
from aeron_tui.app.runsetup import RunSetup
from aeron_tui.app.screens.setup import SetupScreen
from aeron_tui.trainers import TRAINERS
from core.train.config import RunConfig

from .helpers import fixed_hardware, sync, wait_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _app(tmp_path: Path, setup: RunSetup) -> tuple[AeronConsole, list[RunSetup]]:
    started: list[RunSetup] = []

    def spawn(s: RunSetup, hw: object, root: Path | None):  # type: ignore[no-untyped-def]
        started.append(s)
        raise RuntimeError("not starting in this test")

    app = AeronConsole(ConsoleOptions(setup=setup, runs_root=tmp_path / "runs"),
                       hardware=fixed_hardware(), spawn=spawn)
    return app, started


def _label(screen: SetupScreen, selector: str) -> str:
    return str(screen.query_one(selector, Label).content)


@sync
async def test_setup_validates_in_place_and_saves_run_toml(tmp_path: Path) -> None:
    data = tmp_path / "styles.jsonl"
    data.write_text('{"provider":"p","style_label":"qa","user_input":"hi","assistant_reply":"yo",'
                    '"turn_id":"1"}\n')
    app, started = _app(tmp_path, RunSetup(trainer="simple", profile="tiny"))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        screen = app.screen
        assert isinstance(screen, SetupScreen)
        trainer = screen.query_one("#trainer", Select)
        assert {value for _, value in trainer._options} >= set(TRAINERS)  # the registry
        data_input = screen.query_one("#data", Input)
        data_input.value = str(tmp_path / "missing.jsonl")
        await pilot.pause()
        assert "no such file or directory" in _label(screen, "#data-status")
        steps = screen.query_one("#steps", Input)
        steps.value = "0"
        await pilot.pause()
        assert "at least 1" in _label(screen, "#steps-status")
        preset = screen.query_one("#preset", Input)
        preset.value = "smoke"  # a LONPT preset: the simple trainer has none
        await pilot.pause()
        assert "simple has no named presets" in _label(screen, "#preset-help")
        preset.value = ""
        await pilot.pause()
        assert not _label(screen, "#preset-help").startswith("✗")
        await pilot.press("ctrl+r")  # invalid fields: nothing starts
        await pilot.pause()
        assert started == [] and isinstance(app.screen, SetupScreen)
        data_input.value = str(data)
        steps.value = "25"
        await pilot.pause()
        assert _label(screen, "#data-status").startswith("✓ styles.jsonl")
        assert _label(screen, "#steps-status") == ""
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "saved" in _label(screen, "#save-status"),
                       what="run.toml saved")
        saved = Path(_label(screen, "#save-status").split("saved ", 1)[1].split(" —")[0])
        table = tomllib.loads(saved.read_text())
        assert table == {"trainer": "simple", "profile": "tiny", "data": str(data),
                         "run_dir": str(saved.parent), "steps": 25}
        RunConfig.load(saved)  # a valid run config
        assert saved.parent.parent == tmp_path / "runs"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: started != [], what="start")
        assert started[0].run_dir == str(saved.parent) and started[0].steps == 25


@sync
async def test_escape_returns_to_the_dashboard(tmp_path: Path) -> None:
    app, _ = _app(tmp_path, RunSetup())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        assert isinstance(app.screen, SetupScreen)
        await pilot.press("escape")
        assert app.screen is app.dashboard
