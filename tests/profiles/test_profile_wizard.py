"""The wizard end to end (scripted answers and --yes) and `aeron-tui profile --json`."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from typer.testing import CliRunner

from aeron_tui.cli import app
from core.errors import ConfigError
from profiles.runplan import run_vocabulary
from profiles.settings import choice_path, load_saved_choice
from profiles.wizard import apply_wizard_answers, build_wizard_plan, run_wizard


def _console() -> Console:
    return Console(file=io.StringIO(), width=120, force_terminal=False)


def test_scripted_answers_with_retries_are_saved_and_reread(machine) -> None:
    console = _console()
    # device: "9" is out of range, then 1 (cuda); profile: "7" out of range, then by name;
    # trainer: "bogus" is asked again, then simple.
    answers = io.StringIO("9\n1\n7\nsmall\nbogus\nsimple\n")
    choice, path = run_wizard(console, stream=answers, hardware=machine("rtx-8gb"))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Please enter a number from 1 to 2" in out and "Please enter a number from 1 to 5" in out
    assert "Please answer one of: simple, compressed" in out
    assert (choice.device, choice.profile, choice.trainer) == ("cuda", "small", "simple")
    assert choice.gpus == (0,) and choice.precision == "bf16"
    assert path == choice_path() and load_saved_choice() == choice


def test_choosing_cpu_and_compressed_refits_the_layout(machine) -> None:
    answers = io.StringIO("cpu\n1\ncompressed\n")
    choice, _ = run_wizard(_console(), stream=answers, hardware=machine("rtx-8gb"))
    assert (choice.device, choice.profile, choice.trainer) == ("cpu", "tiny", "compressed")
    assert choice.gpus == () and choice.precision == "bf16"
    assert load_saved_choice() == choice


def test_defaults_on_empty_answers_equal_the_recommendation(machine) -> None:
    hw = machine("rtx-24gb")
    choice, _ = run_wizard(_console(), stream=io.StringIO("\n\n\n"), hardware=hw)
    # The wizard estimates at the run's vocabulary (the tokenizer's, not the catalog's 50k).
    assert choice == build_wizard_plan(hw, vocab_size=run_vocabulary().size).recommended
    # The model a text run builds (no knowledge-graph, vision or task modules: nothing feeds
    # them) fits 24 GB at large with the compressed trainer without recomputing activations.
    assert (choice.profile, choice.trainer, choice.gradient_checkpointing) == ("large", "compressed", False)


def test_a_choice_that_does_not_fit_asks_before_saving(machine) -> None:
    console = _console()
    choice, path = run_wizard(console, stream=io.StringIO("1\ndefault\nsimple\n\n"), hardware=machine("rtx-8gb"))
    assert path is None and load_saved_choice() is None
    assert "does not fit" in choice.reason
    assert "Nothing saved" in console.file.getvalue()  # type: ignore[attr-defined]


def test_input_ending_early_is_a_clear_error(machine) -> None:
    with pytest.raises(ConfigError, match="input ended"):
        run_wizard(_console(), stream=io.StringIO("1\n"), hardware=machine("rtx-8gb"))


def test_yes_accepts_recommendation(machine) -> None:
    choice, path = run_wizard(_console(), yes=True, hardware=machine("2x24gb"))
    assert (choice.profile, choice.plan, choice.gpus) == ("large", "ddp", (0, 1))
    assert path is not None and load_saved_choice() == choice


def test_apply_answers_rejects_unknown_values(machine) -> None:
    plan = build_wizard_plan(machine("no-driver"))
    assert [d.key for d in plan.devices] == ["cpu"]
    with pytest.raises(ConfigError, match="device 'cuda' is not available"):
        apply_wizard_answers(plan, "cuda", "tiny", "simple")
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        apply_wizard_answers(plan, "cpu", "huge", "simple")
    with pytest.raises(ConfigError, match="trainer 'lonpt' is not available"):
        apply_wizard_answers(plan, "cpu", "tiny", "lonpt")


def test_cli_wizard_yes_and_scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AERON_TUI_FAKE_GPU", "a100-80gb")
    runner = CliRunner()
    result = runner.invoke(app, ["wizard", "--yes"])
    assert result.exit_code == 0, result.output
    saved = load_saved_choice()
    assert saved is not None and (saved.profile, saved.device, saved.trainer) == ("default", "cuda", "simple")
    assert "saved to" in result.output
    result = runner.invoke(app, ["wizard"], input="2\n1\nsimple\n")
    assert result.exit_code == 0, result.output
    saved = load_saved_choice()
    assert saved is not None and (saved.profile, saved.device) == ("tiny", "cpu")


def test_cli_profile_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AERON_TUI_FAKE_GPU", "busy-24gb")
    result = CliRunner().invoke(app, ["profile", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["hardware"]["gpus"][0]["processes"][0]["pid"] == 31337
    rec = data["recommendation"]
    assert rec["profile"] == "small" and rec["device"] == "cuda"
    assert [r["name"] for r in rec["reasons"]] == ["tiny", "small", "medium", "large", "default"]
    assert rec["reasons"][2]["detail"].startswith("does not fit by")
    assert rec["reasons"][1]["estimate"]["total"] > 0 and data["saved_choice"] is None


def test_cli_profile_table_and_bad_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AERON_TUI_FAKE_GPU", "no-driver")
    result = CliRunner().invoke(app, ["profile"])
    assert result.exit_code == 0, result.output
    assert "no NVIDIA GPU detected" in result.output and "recommended:" in result.output
    result = CliRunner().invoke(app, ["profile", "--mode", "fly"])
    assert result.exit_code != 0
