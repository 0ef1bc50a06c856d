"""Lazy re-exports for the rooms of ``core`` (PEP 562).

``from core.model import TransformerNeuralNetBackbone`` should read naturally, but importing a
package must stay cheap: the CLI imports ``core.runs.events`` without torch, and a package
``__init__`` that imported every module eagerly would pull torch into ``aeron-tui --help``.
Each room lists its public names and the module that defines them; a name is imported the first
time it is asked for and then cached on the package.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any],
                                                                  Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to its module
    (relative to the package)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
