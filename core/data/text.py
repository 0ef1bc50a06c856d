"""Plain-text corpora: a ``.txt`` file (one document per blank-line block) or a directory of
``.txt`` files (one document per file, sorted by path for determinism)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.errors import DataError

_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); check permissions") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8; re-save the file as UTF-8") from exc
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def split_documents(text: str) -> list[str]:
    """Blank-line separated blocks, stripped, empty ones dropped."""
    return [block.strip("\n") for block in _BLANK_LINES.split(text) if block.strip()]


def read_text_corpus(path: str | os.PathLike[str]) -> list[str]:
    """Documents of a .txt file or a directory of .txt files; DataError if none."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.txt") if f.is_file())
        if not files:
            raise DataError(
                f"{p}: directory holds no .txt files; add text files or pick another path"
            )
        docs = [t for t in (_read_utf8(f).strip() for f in files) if t]
    elif p.exists():
        docs = split_documents(_read_utf8(p))
    else:
        raise DataError(f"{p}: no such file or directory")
    if not docs:
        raise DataError(f"{p}: corpus is empty (no non-blank text); give a file with text")
    return docs
