"""Helpers shared by command modules (kept import-light: no torch, no textual)."""

from __future__ import annotations

from typing import NoReturn

import typer


def one_line(message: str) -> str:
    """``message`` as one line: line breaks inside it become "; " (a log reader greps one line)."""
    parts = [part.strip() for part in str(message).splitlines() if part.strip()]
    return "; ".join(parts)


def print_error(message: str) -> None:
    """Print ``error: MESSAGE`` as one red line on stderr.

    Never wrapped: Rich hard-wraps at 80 columns when stderr is not a terminal (and at the
    terminal's width on one), which would split a line like ``bad.jsonl:2: bad JSON`` wherever the
    path happens to end. The message is printed literally (no Rich markup: ``pip install
    'aeron-tui[onnx]'`` keeps its brackets).
    """
    from rich.console import Console
    from rich.text import Text

    text = Text.assemble(("error:", "bold red"), " ", one_line(message))
    Console(stderr=True, soft_wrap=True, highlight=False).print(text)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one red line and exit non-zero."""
    print_error(message)
    raise typer.Exit(code)
