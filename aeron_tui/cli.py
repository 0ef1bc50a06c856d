"""The `aeron-tui` command line. Heavy imports (torch, textual) happen inside commands only.

Each command group lives in its own module under ``aeron_tui/commands`` and exposes
``register(app)``; this file only assembles them and turns project errors into one red line.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

COMMAND_MODULES = (
    "model",
    "data",
    "tokenizer",
    "train",
    "runs",
    "ckpt",
    "profile",
    "launch",
    "rlhf",
    "generate",
    "merge",
    "continual",
)

app = typer.Typer(
    name="aeron-tui",
    help="Train the Aeron encoder-decoder transformer on whatever hardware you have.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    if debug:
        os.environ["AERON_TUI_DEBUG"] = "1"


for _name in COMMAND_MODULES:
    importlib.import_module(f"aeron_tui.commands.{_name}").register(app)


def main() -> None:
    """Console-script entry point: project errors become one red line and exit code 1."""
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("Aborted.\n")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns errors into a message
        _report(exc)
        sys.exit(getattr(exc, "exit_code", 1) if not isinstance(getattr(exc, "exit_code", 1), bool) else 1)


def _report(exc: BaseException) -> None:
    import click

    if isinstance(exc, click.exceptions.ClickException):
        exc.show()
        return
    if os.environ.get("AERON_TUI_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    message = str(exc) or type(exc).__name__
    from core.errors import AeronError

    if not isinstance(exc, (AeronError, OSError, ValueError)):
        message = f"{type(exc).__name__}: {message} (run with --debug for the traceback)"
    from aeron_tui.commands.common import print_error

    print_error(message)


if __name__ == "__main__":
    main()
