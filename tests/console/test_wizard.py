"""The wizard screen: the plan from profiles.wizard, choosing a profile, saving the choice."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Select

from aeron_tui.app.app import AeronConsole, ConsoleOptions
from aeron_tui.app.screens.wizard import WizardScreen
from profiles.settings import load_saved_choice

from .helpers import estimates_in_process, fixed_hardware, sync, wait_for


@sync
async def test_wizard_recommends_and_saves_the_chosen_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    estimates_in_process(monkeypatch)  # the helper-process path itself: test_offload.py
    app = AeronConsole(ConsoleOptions(runs_root=tmp_path / "runs"),
                       hardware=fixed_hardware("rtx-24gb"))
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("w")
        screen = app.screen
        assert isinstance(screen, WizardScreen)
        await wait_for(pilot, lambda: screen.view is not None, timeout=240, what="plan")
        view = screen.view
        assert view is not None
        assert [d.key for d in view.devices] == ["cuda", "cpu"]  # a GPU machine offers both
        assert screen.chosen_profile == view.recommended.profile
        assert screen.query_one("#device", Select).value == "cuda"
        table = screen.query_one("#wizard-profiles", DataTable)
        shown = screen.shown_rows()
        assert shown is not None
        names = [r.name for r in shown.rows]
        assert table.row_count == len(names)
        table.focus()
        await pilot.pause()
        table.move_cursor(row=names.index("tiny"))
        await pilot.pause()
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.chosen_profile == "tiny", what="row picked")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen.saved is not None, timeout=240, what="saved")
        saved = load_saved_choice()
        assert saved is not None and saved.profile == "tiny" and saved.device == "cuda"
        assert saved == screen.saved
        assert app.setup_choice.profile == "tiny"  # the next run started here uses it
