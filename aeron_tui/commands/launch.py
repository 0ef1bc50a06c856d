"""`aeron-tui launch` (the console) and `aeron-tui watch RUN_DIR` (the console on an existing run).

Textual is imported inside the command functions only, so the CLI stays fast to start.
"""

from __future__ import annotations

from pathlib import Path

import typer

from core.errors import ConfigError


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("launch")(launch)
    app.command("watch")(watch)


def launch(
    trainer: str | None = typer.Option(
        None, "--trainer", "-t", help="Trainer to run (default: lonpt when installed, else simple)."),
    profile: str | None = typer.Option(
        None, "--profile", "-p",
        help="Size profile name, or 'auto' to pick for this hardware "
        "(default: the wizard's saved choice, else auto)."),
    preset: str | None = typer.Option(None, "--preset", help="Trainer preset (LONPT: smoke, light, standard, heavy)."),
    data: str | None = typer.Option(None, "--data", help="Training data (default: the bundled sample corpus)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Optimizer steps (default: the trainer's/preset's)."),
    config: Path | None = typer.Option(
        None, "--config", help="Start from a run.toml (flags override its values)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Directory for the run started here (default: a new one under the runs root)."),
    runs_root: Path | None = typer.Option(None, "--runs-root", help="Where past runs are listed (default: $AERON_TUI_HOME/runs)."),
    start: bool = typer.Option(False, "--start", help="Start the run immediately."),
) -> None:
    """Open the console; with --start, begin training at once (what `make run` does)."""
    from aeron_tui.app.runsetup import (
        AUTO,
        MAX_STEPS,
        check_data,
        default_setup,
        default_trainer_and_preset,
        preset_problem,
    )

    base: dict[str, object] = {}
    if config is not None:
        base = _read_run_toml(config)
        # Flags win over the file; the file's other keys (model, batch, ...) go to run.toml.
        trainer = trainer or _str_or_none(base.pop("trainer", None))
        profile = profile or _str_or_none(base.pop("profile", None))
        preset = preset or _str_or_none(base.pop("preset", None))
        data = data or _str_or_none(base.pop("data", None))
        file_steps = base.pop("steps", None)
        steps = steps or (file_steps if isinstance(file_steps, int) else None)
        for key in ("trainer", "profile", "preset", "data", "run_dir"):
            base.pop(key, None)
    if profile is not None and profile != AUTO:
        from profiles.catalog import load_profile

        try:
            load_profile(profile)
        except ConfigError as exc:
            raise ConfigError(f"--profile: {exc}") from None
    if steps is not None and steps > MAX_STEPS:
        raise ConfigError(f"--steps {steps:,} is more than {MAX_STEPS:,}; give a smaller number")
    if trainer is not None:
        from aeron_tui.trainers import TRAINERS

        if trainer not in TRAINERS:
            raise ConfigError(
                f"--trainer {trainer!r} is not a known trainer; choose one of {', '.join(TRAINERS)}")
    if preset is not None:
        problem = preset_problem(trainer or default_trainer_and_preset()[0], preset)
        if problem:
            raise ConfigError(f"--preset: {problem}")
    if data is not None:
        problem = check_data(data, trainer).problem
        if problem:
            raise ConfigError(f"--data {problem}")
    if run_dir is not None:
        from aeron_tui.app.runsetup import used_run_dir_problem

        problem = used_run_dir_problem(run_dir.expanduser())
        if problem:
            raise ConfigError(f"--run-dir: {problem}")
    # Unset values default to the wizard's saved choice (the same rule as `train`), and the
    # setup screen says where each one came from.
    given = {"trainer": trainer, "profile": profile, "preset": preset, "data": data,
             "steps": steps, "run_dir": str(run_dir) if run_dir else None}
    setup = default_setup(**given, overrides=base)
    _run_console(mode="launch", setup=setup, start=start, runs_root=runs_root,
                 given={k: v for k, v in given.items() if v is not None})


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _read_run_toml(path: Path) -> dict[str, object]:
    """A run.toml's table, validated as a RunConfig (errors name the file and the key)."""
    import sys

    from core.train.config import RunConfig

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    RunConfig.load(path)  # reports a missing file, bad TOML or a bad key with the file name
    with open(path, "rb") as fh:
        return dict(tomllib.load(fh))


def watch(
    run_dir: Path = typer.Argument(..., help="A run directory (holds events.jsonl)."),
    replay: bool = typer.Option(False, "--replay", help="Replay the recorded events instead of following the file."),
    speed: float = typer.Option(10.0, "--speed", min=0.0, help="Replay speed (× recorded pace; 0 = at once)."),
    runs_root: Path | None = typer.Option(None, "--runs-root", help="Where past runs are listed."),
    headless: bool = typer.Option(
        False, "--headless", help="Follow the run in this terminal (activity, progress, ETA, "
        "summary) instead of the console: for SSH, logs and pipes. Keys when a terminal: "
        "p pause/resume, c checkpoint, x stop, q quit watching."),
) -> None:
    """Open the console on an existing run, live or finished, by following its events.jsonl."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    if replay and not (run_dir / "events.jsonl").is_file():
        raise ConfigError(f"{run_dir}: no events.jsonl to replay")
    if headless:
        _watch_headless(run_dir)
        return
    _run_console(mode="watch", watch_dir=run_dir, replay_speed=speed if replay else None,
                 runs_root=runs_root)


def _watch_headless(run_dir: Path) -> None:
    """``watch --headless``: the headless renderer on the run's events.jsonl until it ends."""
    import sys

    from aeron_tui.headless import HeadlessDisplay, KeyControl, choose_mode, watch_run

    mode, stream = choose_mode(False, False)
    display = HeadlessDisplay(mode, stream)
    keys = KeyControl.for_terminal(run_dir, display, sys.stdin)
    try:
        status = watch_run(run_dir, display, should_stop=keys.quit_requested if keys else None)
    except KeyboardInterrupt:
        display.close()
        status = "watching"
    finally:
        if keys is not None:
            keys.close()
    if status == "watching":
        typer.echo(f"stopped watching {run_dir}; the run goes on "
                   f"(aeron-tui watch {run_dir} to look again)")
    elif status in ("failed", "crashed"):
        raise typer.Exit(1)


def _run_console(**kwargs: object) -> None:
    from aeron_tui.app.app import AeronConsole, ConsoleOptions

    app = AeronConsole(ConsoleOptions(**kwargs))  # type: ignore[arg-type]
    app.run()
    if app.return_code not in (0, None):
        raise typer.Exit(app.return_code)
