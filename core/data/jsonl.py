"""Strict, streaming JSON-lines reading shared by the styles, preference and prompt readers.

Lines are read with a bounded ``readline`` so a pathological 100 MB line is rejected after
reading at most ``max_line_bytes`` of it, never loaded whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import DataError

MAX_LINE_BYTES = 4 * 1024 * 1024


def iter_jsonl(
    path: str | os.PathLike[str], max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_no, object)`` for each non-blank line; DataError names file and line.

    Raises on: a missing/unreadable file, invalid UTF-8, bad JSON, a non-object line, a line
    longer than ``max_line_bytes``, and a file with no objects at all.
    """
    from core.data.containers import Problem, iter_jsonl_lenient

    p = Path(path)
    seen = 0
    for item in iter_jsonl_lenient(p, max_line_bytes):
        if isinstance(item, Problem):
            raise DataError(str(item))
        seen += 1
        yield item.line, item.obj
    if seen == 0:
        raise DataError(f"{p}: file is empty (no JSON records); give a JSONL file with data")


def require_str(
    obj: dict[str, Any],
    key: str,
    path: str | os.PathLike[str],
    line_no: int,
    *,
    non_empty: bool = True,
) -> str:
    """The string field ``key`` of ``obj``; DataError naming file, line and field otherwise."""
    if key not in obj:
        raise DataError(f"{path}:{line_no}: missing field {key!r}; add it to the record")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(
            f"{path}:{line_no}: field {key!r} must be a string, got {type(value).__name__}"
        )
    if non_empty and not value.strip():
        raise DataError(f"{path}:{line_no}: field {key!r} is empty; give a non-empty string")
    return value


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON (stable identity of a record)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
