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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: every error becomes one red line and a non-zero exit code.

    A process that took part in a torchrun process group ends with ``os._exit`` once the
    command is done (:func:`core.train.distributed.exit_process` says why).
    """
    try:
        _main(argv)
    except SystemExit as exc:
        _leave_after_collectives(exc.code)
        raise
    _leave_after_collectives(0)


def _leave_after_collectives(code: object) -> None:
    distributed = sys.modules.get("core.train.distributed")  # imported only by such commands
    if distributed is not None and distributed.left_process_group():
        distributed.exit_process(code)


def _main(argv: list[str] | None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    args = _take_debug_flag(args)
    try:
        # Without standalone mode click hands back a typer.Exit's code instead of raising it.
        code = app(args=args, prog_name="aeron-tui", standalone_mode=False)
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
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
        code = getattr(exc, "exit_code", 1)
        sys.exit(code if isinstance(code, int) and not isinstance(code, bool) and code else 1)


def _take_debug_flag(args: list[str]) -> list[str]:
    """``--debug`` anywhere before ``--`` (also after the sub-command): set the debug mode and
    drop the flag, so ``aeron-tui train simple --debug`` works like ``aeron-tui --debug ...``."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    os.environ["AERON_TUI_DEBUG"] = "1"
    return [a for a in args[:end] if a != "--debug"] + args[end:]


def _is_click_exception(exc: BaseException) -> bool:
    """Click's own exceptions, or the copy Typer vendors (``typer._click``) in newer releases."""
    return any(cls.__name__ == "ClickException" and "click" in cls.__module__
               for cls in type(exc).__mro__)


def usage_message(exc: BaseException) -> str:
    """A command-line usage error as one line that names the option and how to get help.

    Typer checks option values with pydantic, whose text ("Input should be a valid integer")
    names neither the option nor the value; this says ``--steps: 'abc' is not an integer``.
    """
    param = getattr(exc, "param", None)
    ctx = getattr(exc, "ctx", None)
    name = _param_name(param)
    detail = _value_problem(exc)
    if name and detail:
        message = f"{name}: {detail}"
    else:
        format_message = getattr(exc, "format_message", None)
        message = format_message() if callable(format_message) else str(exc)
    command = getattr(ctx, "command_path", None) if ctx is not None else None
    if command and type(exc).__name__ != "NoArgsIsHelpError":
        message = f"{message} (see '{command} --help')"
    return message


def _param_name(param: object) -> str | None:
    if param is None:
        return None
    opts = [o for o in (getattr(param, "opts", None) or []) if isinstance(o, str)]
    long = [o for o in opts if o.startswith("--")]
    if long or opts:
        return max(long or opts, key=len)
    human = getattr(param, "human_readable_name", None)
    return str(human) if human else None


_PYDANTIC_KINDS = {
    "int_parsing": "is not an integer",
    "int_from_float": "is not an integer",
    "int_type": "is not an integer",
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "bool_parsing": "is not true or false",
    "bool_type": "is not true or false",
}


def _value_problem(exc: BaseException) -> str | None:
    """``'abc' is not an integer`` (or the range it breaks) from the value check behind ``exc``."""
    cause = exc.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
        except Exception:  # noqa: BLE001 - not a pydantic error after all
            return None
        value = first.get("input")
        kind = str(first.get("type", ""))
        limits = first.get("ctx") or {}
        if kind in _PYDANTIC_KINDS:
            return f"{value!r} {_PYDANTIC_KINDS[kind]}"
        bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
                  "less_than": "<"}
        for key, sign in bounds.items():
            if kind == key:
                limit = next(iter(limits.values()), "?")
                return f"must be {sign} {limit}, got {value}"
        return f"{value!r}: {first.get('msg', 'invalid value')}"
    message = getattr(exc, "message", None)
    if type(exc).__name__ in ("BadParameter",) and message:
        return str(message).rstrip(".")
    return None


def _report(exc: BaseException) -> None:
    from aeron_tui.commands.common import print_error

    if _is_click_exception(exc):
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # the help text, not an error
            return
        print_error(usage_message(exc))
        return
    if os.environ.get("AERON_TUI_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    message = str(exc) or type(exc).__name__
    from core.errors import AeronError

    if not isinstance(exc, (AeronError, OSError, ValueError)):
        message = f"{type(exc).__name__}: {message} (run with --debug for the traceback)"
    print_error(message)


if __name__ == "__main__":
    main()
