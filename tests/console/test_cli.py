"""The launch/watch commands: bad input is one clear line, and the CLI never imports Textual
(or torch) before a console command actually runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from textual.binding import Binding

from aeron_tui.app.screens.help import KEYS


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "aeron_tui", *args], capture_output=True,
                          text=True, timeout=120)
    proc.stderr = " ".join(proc.stderr.split())  # Rich wraps long lines at the pipe's width
    return proc


def test_watch_rejects_a_missing_run_dir(tmp_path: Path) -> None:
    proc = _run("watch", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert "no such run directory" in proc.stderr and "Traceback" not in proc.stderr


def test_launch_rejects_bad_data_and_trainer(tmp_path: Path) -> None:
    proc = _run("launch", "--data", str(tmp_path / "missing.jsonl"))
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr
    proc = _run("launch", "--trainer", "bogus")
    assert proc.returncode == 1 and "not a known trainer" in proc.stderr


def _launch_error(*args: str) -> str:
    """The error `aeron-tui launch ARGS` stops with, before any console opens (in-process)."""
    from typer.testing import CliRunner

    from aeron_tui.cli import app
    from core.errors import ConfigError

    result = CliRunner().invoke(app, ["launch", *args])
    assert isinstance(result.exception, ConfigError), result.output
    return str(result.exception)


def test_launch_rejects_bad_profile_preset_and_used_run_dir(tmp_path: Path) -> None:
    message = _launch_error("--profile", "huge")
    assert "--profile" in message and "unknown size profile 'huge'" in message
    assert "tiny" in message  # lists the known ones
    message = _launch_error("--trainer", "lonpt", "--preset", "turbo")
    assert "lonpt has no preset 'turbo'" in message and "smoke" in message
    assert "simple has no named presets" in _launch_error("--trainer", "simple", "--preset", "smoke")
    used = tmp_path / "old-run"
    used.mkdir()
    (used / "events.jsonl").write_text('{"v":1}\n')
    message = _launch_error("--run-dir", str(used))
    assert "already holds a run" in message and "aeron-tui watch" in message  # what to do


def test_cli_import_stays_light() -> None:
    code = ("import sys, aeron_tui.cli; "
            "print('textual' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout.split()
    assert out == ["False", "False"]


def test_console_process_never_imports_torch() -> None:
    code = ("import sys, aeron_tui.app.app, aeron_tui.app.screens.setup, "
            "aeron_tui.app.screens.runs, aeron_tui.app.screens.wizard; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_help_lists_every_binding() -> None:
    from aeron_tui.app.app import AeronConsole
    from aeron_tui.app.screens import confirm, crash, dashboard, quit, runs, setup, wizard

    listed = " ".join(keys for _, rows in KEYS for keys, _ in rows)
    names = {"question_mark": "?", "escape": "escape", "space": "space", "enter": "enter"}
    classes = [AeronConsole, dashboard.DashboardScreen, setup.SetupScreen, runs.RunsScreen,
               wizard.WizardScreen, confirm.ConfirmScreen, quit.QuitScreen]
    missing = []
    for cls in classes:
        for binding in cls.BINDINGS:
            assert isinstance(binding, Binding)
            for key in binding.key.split(","):
                if names.get(key, key) not in listed:
                    missing.append(f"{cls.__name__}: {key}")
    assert crash.CrashScreen.BINDINGS  # closes with escape/enter (listed under Dialogs)
    assert missing == []


def test_a_command_that_exits_non_zero_exits_non_zero_from_main(monkeypatch) -> None:
    """typer.Exit(n) inside a command (fail(), a failed training run) must reach the shell:
    without standalone mode click returns the code instead of raising it."""
    import pytest
    import typer

    import aeron_tui.cli as cli

    small = typer.Typer()

    @small.command()
    def broken() -> None:
        raise typer.Exit(3)

    @small.command()
    def fine() -> None:
        pass

    monkeypatch.setattr(cli, "app", small)
    with pytest.raises(SystemExit) as info:
        cli.main(["broken"])
    assert info.value.code == 3
    cli.main(["fine"])  # no SystemExit: exit code 0


def test_no_help_text_loses_its_brackets_to_rich_markup() -> None:
    """Every bracketed part of a command's or option's help (schemas, install hints such as
    'aeron-tui[plot]', defaults) prints as written: Rich reads [...] as markup and drops it."""
    import re

    import click
    import typer
    from typer.testing import CliRunner

    from aeron_tui.cli import app

    root = typer.main.get_command(app)
    runner = CliRunner()
    checked = 0

    def walk(cmd: click.Command, path: list[str]) -> None:
        nonlocal checked
        raw = " ".join([cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)])
        groups = re.findall(r"\[[^\[\]]*\]", raw.replace("\\[", "["))
        if groups:
            out = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
            flat = " ".join(out.replace("│", " ").split())
            for group in groups:
                assert " ".join(group.split()) in flat, (path, group)
                checked += 1
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    assert checked > 10
