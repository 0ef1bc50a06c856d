"""Checking values read from TOML/JSON against a dataclass field's annotation.

One set of rules for every config the project reads (``NeuralNetConfig``, ``RunConfig``,
``LonptConfig``), so the same mistake gets the same message everywhere:

* ``bool`` is never an ``int`` (``batch_size = true`` is an error), an ``int`` is a valid
  ``float`` (``lr = 1`` is legal, if odd) and is converted by :func:`coerce`;
* unions (``int | None``) accept any member; ``None`` stands for an absent key;
* ``list[X]`` / ``dict[K, V]`` check every item; ``tuple[...]`` needs a tuple (JSON and TOML
  callers convert lists first where a tuple field is meant).
"""

from __future__ import annotations

import types
import typing
from typing import Any

_UNIONS: tuple[Any, ...] = (typing.Union, types.UnionType)


def union_args(tp: Any) -> tuple[Any, ...]:
    """The members of a union annotation, or ``(tp,)``."""
    if typing.get_origin(tp) in _UNIONS:
        return typing.get_args(tp)
    return (tp,)


def type_ok(value: Any, tp: Any) -> bool:
    """Whether ``value`` is acceptable for a field annotated ``tp``."""
    if typing.get_origin(tp) in _UNIONS:
        return any(type_ok(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is list:
        return isinstance(value, list) and all(type_ok(v, args[0]) for v in value) if args else (
            isinstance(value, list))
    if origin is dict:
        if not isinstance(value, dict):
            return False
        if not args:
            return True
        key_t, val_t = args
        return all(type_ok(k, key_t) and type_ok(v, val_t) for k, v in value.items())
    if origin is tuple:
        return isinstance(value, tuple)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation these rules do not cover (Literal, Callable, ...) is not checked


def coerce(value: Any, tp: Any) -> Any:
    """``value`` converted where the rules allow it: an int to float where only a float fits."""
    args = union_args(tp)
    if float in args and int not in args and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def type_name(tp: Any, absent: str = "absent") -> str:
    """How a message names the annotation, e.g. ``"int or absent"``, ``"a list of str"``."""
    names = []
    for arg in union_args(tp):
        if arg is type(None):
            names.append(absent)
            continue
        origin = typing.get_origin(arg)
        args = typing.get_args(arg)
        if origin is list and args:
            names.append(f"a list of {type_name(args[0], absent)}")
        elif origin is dict and args:
            names.append(f"a table of {type_name(args[1], absent)}")
        else:
            names.append(getattr(origin or arg, "__name__", str(arg)))
    return " or ".join(names)
