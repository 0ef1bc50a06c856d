"""The optional inputs a record may carry beside its text (issue 17), for every data format.

A record (a styles.jsonl line, or the same keys in any other format's record) may have:

``"triples": [["Python", "created_by", "Guido van Rossum"], ...]``
    Knowledge-graph facts (subject, relation, object) given to the model's knowledge-graph
    attention, not in the text.
``"entities": ["Python", ...]``
    Entities the record is about (read by the same attention, one item per entity).
``"image": "images/cat.png"``
    A PNG/JPEG path, relative to the data file's directory (absolute paths are kept). It is
    resolved here and must exist; it is decoded (Pillow) when the batches are built.
``"task": "name"``
    A task name for the continual-learning module's task conditioning.

:func:`parse_record_extras` validates these keys and returns them as keyword arguments of the
canonical record (:class:`core.data.styles.StyleSample`); any reader calls it once per record.
Errors are :class:`DataError` naming ``file:line`` and the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import DataError

EXTRA_FIELDS = ("triples", "entities", "image", "task")

Triple = tuple[str, str, str]


def _where(source: str | os.PathLike[str], line: int) -> str:
    return f"{source}:{line}" if line else str(source)


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def parse_triples(value: Any, where: str) -> tuple[Triple, ...]:
    """``[[subject, relation, object], ...]`` → a tuple of string triples (stripped)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DataError(
            f"{where}: field 'triples' must be a list of [subject, relation, object] lists, "
            f"got {type(value).__name__}"
        )
    out: list[Triple] = []
    for i, item in enumerate(value):
        if (not isinstance(item, (list, tuple)) or len(item) != 3
                or not all(_nonempty_str(x) for x in item)):
            raise DataError(
                f"{where}: field 'triples' item {i} must be [subject, relation, object] with "
                f"three non-empty strings, got {item!r}"
            )
        out.append((item[0].strip(), item[1].strip(), item[2].strip()))
    return tuple(out)


def parse_entities(value: Any, where: str) -> tuple[str, ...]:
    """``["name", ...]`` → a tuple of stripped entity names."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DataError(
            f"{where}: field 'entities' must be a list of strings, got {type(value).__name__}"
        )
    for i, item in enumerate(value):
        if not _nonempty_str(item):
            raise DataError(
                f"{where}: field 'entities' item {i} must be a non-empty string, got {item!r}"
            )
    return tuple(x.strip() for x in value)


def resolve_image_path(value: Any, source: str | os.PathLike[str], where: str) -> str | None:
    """The image path resolved against the data file's directory; it must be a file."""
    if value is None:
        return None
    if not _nonempty_str(value):
        raise DataError(
            f"{where}: field 'image' must be a path string (relative to the data file), "
            f"got {value!r}"
        )
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = Path(source).resolve().parent / p
    if not p.is_file():
        raise DataError(
            f"{where}: image {value!r} not found (looked for {p}); paths are relative to the "
            "data file — fix the path or remove the 'image' field"
        )
    return str(p)


def parse_task(value: Any, where: str) -> str | None:
    """A non-empty task name, or None."""
    if value is None:
        return None
    if not _nonempty_str(value):
        raise DataError(f"{where}: field 'task' must be a non-empty string, got {value!r}")
    return value.strip()


def parse_record_extras(
    record: Mapping[str, Any], source: str | os.PathLike[str], line: int
) -> dict[str, Any]:
    """The optional ``triples``/``entities``/``image``/``task`` of one raw record.

    Returns ``{"triples": tuple, "entities": tuple, "image": str | None, "task": str | None}``
    (absent keys give the empty values), ready to pass as keyword arguments to
    :class:`core.data.styles.StyleSample`. ``source`` is the data file (image paths are relative
    to its directory), ``line`` the 1-based line/row number used in error messages (0: none).
    """
    where = _where(source, line)
    return {
        "triples": parse_triples(record.get("triples"), where),
        "entities": parse_entities(record.get("entities"), where),
        "image": resolve_image_path(record.get("image"), source, where),
        "task": parse_task(record.get("task"), where),
    }


def record_entities(triples: tuple[Triple, ...], entities: tuple[str, ...]) -> list[str]:
    """Every entity name a record mentions (explicit entities, then subjects and objects),
    in first-seen order without repeats."""
    seen: dict[str, None] = {}
    for name in entities:
        seen.setdefault(name, None)
    for s, _, o in triples:
        seen.setdefault(s, None)
        seen.setdefault(o, None)
    return list(seen)
