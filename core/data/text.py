"""Plain-text corpora: ``.txt``/``.md`` files, or a directory of them (sorted by path).

Documents are split by file and by blank lines: each file is cut at every line holding only
spaces or tabs, and each non-empty block is one document. Files are streamed line by line, so
counting the documents of a multi-GB file never holds it in memory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from core.errors import DataError

_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def split_documents(text: str) -> list[str]:
    """Blank-line separated blocks, stripped of surrounding newlines, empty ones dropped."""
    return [block.strip("\n") for block in _BLANK_LINES.split(text) if block.strip()]


def iter_file_documents(path: Path) -> Iterator[tuple[int, str]]:
    """``(first line, document)`` of one text file, streamed; DataError names file:line.

    The same blocks as :func:`split_documents` on the whole file (``\\r\\n`` read as ``\\n``,
    a leading byte-order mark dropped).
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); check permissions") from exc
    try:
        block: list[str] = []
        start = 1
        line_no = 0
        for raw in fh:
            line_no += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{line_no}: invalid UTF-8; re-save the file as UTF-8") \
                    from exc
            if line_no == 1:
                line = line.removeprefix("\ufeff")
            line = line[:-1] if line.endswith("\n") else line
            line = line[:-1] if line.endswith("\r") else line
            # A blank line separates blocks, except on line 1 (nothing precedes it to split).
            if line_no > 1 and not line.strip(" \t"):
                doc = "\n".join(block).strip("\n")
                if doc.strip():
                    yield start, doc
                block, start = [], line_no + 1
                continue
            block.append(line)
        doc = "\n".join(block).strip("\n")
        if doc.strip():
            yield start, doc
    except OSError as exc:
        raise DataError(f"{path}: read error ({exc})") from exc
    finally:
        fh.close()


def text_files(path: str | os.PathLike[str]) -> list[Path]:
    """The text files of a path: the file itself, or every .txt/.md under a directory."""
    from core.data.containers import TEXT_SUFFIXES

    p = Path(path)
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
        )
        if not files:
            raise DataError(
                f"{p}: directory holds no .txt or .md files; add text files or pick another path"
            )
        return files
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    return [p]


def iter_documents(path: str | os.PathLike[str]) -> Iterator[str]:
    """Documents of a text file or directory, split by file and by blank lines."""
    for f in text_files(path):
        for _, doc in iter_file_documents(f):
            yield doc


def read_text_corpus(path: str | os.PathLike[str]) -> list[str]:
    """Documents of a .txt/.md file or a directory of them; DataError if there are none."""
    docs = list(iter_documents(path))
    if not docs:
        raise DataError(f"{path}: corpus is empty (no non-blank text); give a file with text")
    return docs
