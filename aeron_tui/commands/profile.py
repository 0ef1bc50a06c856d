"""`aeron-tui profile` (hardware + size profiles + recommendation) and `aeron-tui wizard`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("profile")(profile_command)
    app.command("wizard")(wizard_command)


def profile_command(
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    mode: str = typer.Option("train", "--mode", help="What to fit: train or infer."),
    run_dir: str = typer.Option(None, "--run-dir", help="Report free disk space here."),
    trainer: str = typer.Option(
        None, "--trainer", help="Estimate with this trainer's memory rules (simple or "
        "compressed; default: the saved choice's trainer, else the one recommended)."),
    data: str = typer.Option(
        None, "--data", help="The run's data: its tokenizer's vocabulary sets the parameter "
        "counts (default: the bundled sample corpus)."),
) -> None:
    """Show this machine's hardware, every size profile's memory estimate and fit, and the pick.

    The figures are the ones the console's setup and wizard screens show: the same estimate
    (at the run's vocabulary) and the same budget rule, for one trainer's memory rules.
    """
    from core.errors import ConfigError

    if mode not in ("train", "infer"):
        raise ConfigError(f"--mode must be train or infer, got {mode!r}")
    from profiles.hardware import probe
    from profiles.pick import available_trainers
    from profiles.runplan import profile_pick, run_vocabulary
    from profiles.settings import load_saved_choice

    if trainer is not None and trainer not in available_trainers():
        raise ConfigError(f"--trainer {trainer!r}: choose one of {', '.join(available_trainers())}")
    hardware = probe(run_dir=run_dir)
    vocab = run_vocabulary(data)
    saved = load_saved_choice()
    if trainer is None and mode == "train":
        trainer = saved.trainer if saved else profile_pick(hardware, None, vocab).trainer
    pick = profile_pick(hardware, trainer, vocab, mode=mode)
    if json_output:
        import json

        payload = {
            "hardware": hardware.to_dict(),
            "recommendation": pick.to_dict(),
            "vocab_size": vocab.size,
            "vocab_source": vocab.source,
            "saved_choice": saved.to_dict() if saved else None,
        }
        typer.echo(json.dumps(payload, indent=2, default=str))
        return
    from rich.console import Console

    from profiles.settings import choice_path
    from profiles.wizard import hardware_table, render_pick

    console = Console()
    console.print(hardware_table(hardware))
    console.print(vocab.note, highlight=False, markup=False)
    render_pick(console, pick)
    if saved:
        console.print(
            f"saved choice ({choice_path()}): {saved.profile} on {saved.device}, "
            f"{saved.trainer} trainer — used by later runs unless told otherwise",
            highlight=False,
        )
    else:
        console.print("no saved choice yet: `aeron-tui wizard` saves one", highlight=False)


def wizard_command(
    yes: bool = typer.Option(False, "--yes", "-y", help="Accept the recommendation without asking."),
    mode: str = typer.Option("train", "--mode", help="What to fit: train or infer."),
) -> None:
    """Detect the hardware, recommend a size profile, let you choose, and save the choice."""
    if mode not in ("train", "infer"):
        from core.errors import ConfigError

        raise ConfigError(f"--mode must be train or infer, got {mode!r}")
    import sys

    from rich.console import Console

    from profiles.wizard import run_wizard

    # Prompts read the terminal; when stdin is a pipe (scripts, tests) read answers from it.
    stream = None if sys.stdin.isatty() else sys.stdin
    run_wizard(Console(), stream=stream, yes=yes, mode=mode)
