"""Where records come from: JSONL, JSON arrays, CSV/TSV, Parquet and plain-text files, streamed.

This layer knows nothing of what a record means (``core.data.formats`` does); it turns a file
into a stream of ``RawRecord`` (a dict plus where it came from) or ``Problem`` (a line that could
not be read, with a message naming file and line). Nothing here loads a whole file: JSONL and
CSV are read line by line, JSON arrays element by element with a bounded buffer, Parquet by
row batches (``pyarrow``, an optional extra), text file by file.

The container of a file comes from its suffix (``.jsonl``/``.ndjson``, ``.json``, ``.csv``,
``.tsv``, ``.parquet``, ``.txt``/``.md``); a ``.json`` file holding one object per line is read
as JSONL. A directory is read as every supported file under it, sorted by path.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import DataError

MAX_LINE_BYTES = 4 * 1024 * 1024
_CHUNK = 1 << 20

SUFFIXES: dict[str, str] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".txt": "text",
    ".md": "text",
}
TEXT_SUFFIXES = (".txt", ".md")
RECORD_CONTAINERS = ("jsonl", "json", "csv", "tsv", "parquet")

PARQUET_HINT = "reading Parquet needs pyarrow: pip install 'aeron-tui[parquet]' (or pip install pyarrow)"


@dataclass(frozen=True)
class RawRecord:
    """One record as read: ``obj`` (a JSON-like dict), its file and line (``row`` for Parquet)."""

    obj: dict[str, Any]
    file: Path
    line: int
    row_based: bool = False

    @property
    def where(self) -> str:
        """``path:line`` (``path:row N`` for Parquet), the prefix of every message about it."""
        return f"{self.file}:row {self.line}" if self.row_based else f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """A line that could not be read (or a record that failed validation), and why."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def container_of(path: Path) -> str:
    """The container name of a file from its suffix; DataError naming the supported ones."""
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(SUFFIXES))
        raise DataError(
            f"{path}: cannot read files ending in {path.suffix or '(no suffix)'!r}; "
            f"supported: {known} (or a directory of them)"
        )
    return kind


def data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files a data path stands for: itself, or every supported file under a directory.

    A directory holding ``styles.jsonl`` means that file (a corpus directory such as the
    bundled sample); a directory with text files (.txt/.md) means those; otherwise its record
    files (JSONL, JSON, CSV, TSV, Parquet). Sorted by path, so the order is deterministic.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: cannot open (no such file or directory); check the path")
    if not p.is_dir():
        return [p]
    if (p / "styles.jsonl").is_file():
        return [p / "styles.jsonl"]
    files = sorted(f for f in p.rglob("*") if f.is_file() and not _hidden(f, p))
    text = [f for f in files if f.suffix.lower() in TEXT_SUFFIXES]
    if text:
        return text
    records = [f for f in files if SUFFIXES.get(f.suffix.lower()) in RECORD_CONTAINERS]
    if records:
        return records
    raise DataError(
        f"{p}: the directory holds no .txt/.md text and no .jsonl/.json/.csv/.tsv/.parquet "
        "records; add data files or pick another path"
    )


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in f.relative_to(root).parts)


def iter_file(
    path: Path, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[RawRecord | Problem]:
    """Records and problems of one record file (not text), in file order."""
    kind = container_of(path)
    if kind == "json" and _json_is_lines(path):
        kind = "jsonl"
    if kind == "jsonl":
        yield from iter_jsonl_lenient(path, max_line_bytes)
    elif kind == "json":
        yield from iter_json_array(path, max_line_bytes)
    elif kind in ("csv", "tsv"):
        yield from iter_delimited(path, "\t" if kind == "tsv" else ",", max_line_bytes)
    elif kind == "parquet":
        yield from iter_parquet(path)
    else:
        raise DataError(f"{path}: a text file has no records; read it as documents")


def _open(path: Path) -> Any:
    try:
        return open(path, "rb")  # noqa: SIM115 - callers close it
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc}); check the path") from exc


def _json_is_lines(path: Path) -> bool:
    """A ``.json`` file whose first line is a whole ``{...}`` object holds objects one per line
    (JSONL named .json); one that opens ``{`` but spans lines is a single object, refused."""
    with _open(path) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if not head.startswith(b"{"):
            return False
        fh.seek(0)
        first = fh.readline(MAX_LINE_BYTES).strip().removeprefix(b"\xef\xbb\xbf")
    try:
        json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(
            f"{path}: holds one JSON object, not records; put the records in a top-level array "
            "([{...}, ...]) or write one object per line (JSONL)"
        ) from None
    return True


def iter_jsonl_lenient(
    path: Path, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[RawRecord | Problem]:
    """JSON lines with a bounded ``readline``: a pathological 100 MB line is rejected after
    reading at most ``max_line_bytes`` of it (its rest is skipped), never loaded whole."""
    fh = _open(path)
    try:
        line_no = 0
        while True:
            try:
                raw = fh.readline(max_line_bytes + 1)
            except OSError as exc:
                raise DataError(f"{path}: read error after line {line_no} ({exc})") from exc
            if not raw:
                break
            line_no += 1
            if len(raw) > max_line_bytes:
                yield Problem(
                    f"{path}:{line_no}",
                    f"line longer than {max_line_bytes // (1024 * 1024)} MB; each JSONL record "
                    "must be on its own line — split or shorten it",
                )
                while raw and not raw.endswith(b"\n"):  # a lenient reader goes on after it
                    raw = fh.readline(_CHUNK)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Problem(
                    f"{path}:{line_no}",
                    f"invalid UTF-8 at byte {exc.start} of the line; re-save the file as UTF-8",
                )
                continue
            if line_no == 1 and text.startswith("\ufeff"):
                text = text[1:]  # tolerate a UTF-8 byte-order mark
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Problem(
                    f"{path}:{line_no}",
                    f"bad JSON ({exc.msg} at column {exc.colno}); fix or remove the line",
                )
                continue
            if not isinstance(obj, dict):
                yield Problem(
                    f"{path}:{line_no}",
                    f"expected a JSON object, got {type(obj).__name__}; each line must be one "
                    "{...} record",
                )
                continue
            yield RawRecord(obj, path, line_no)
    finally:
        fh.close()


def iter_json_array(
    path: Path, max_record_bytes: int = MAX_LINE_BYTES
) -> Iterator[RawRecord | Problem]:
    """The objects of a top-level JSON array, one at a time (``[{...}, {...}]``).

    Reads 1 MB chunks and decodes each element as soon as it is complete, so the file is never
    held whole; a record is named by the line it starts on. A syntax error ends the file (the
    rest of an array cannot be found reliably after it).
    """
    decoder = json.JSONDecoder()
    fh = _open(path)
    reader = io.TextIOWrapper(fh, encoding="utf-8-sig")
    buf = ""
    pos = 0
    line = 1  # line number at buf[0]
    eof = False

    def fill() -> bool:
        nonlocal buf, pos, line, eof
        if eof:
            return False
        line += buf.count("\n", 0, pos)
        buf = buf[pos:]
        pos = 0
        try:
            chunk = reader.read(_CHUNK)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}:{line + buf.count(chr(10))}: invalid UTF-8 ({exc.reason}); re-save the "
                "file as UTF-8"
            ) from exc
        if not chunk:
            eof = True
            return False
        buf += chunk
        return True

    def skip_ws() -> bool:
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf):
                return True
            if not fill():
                return False

    def here() -> str:
        return f"{path}:{line + buf.count(chr(10), 0, pos)}"

    try:
        if not skip_ws() or buf[pos] != "[":
            yield Problem(f"{path}:1", "expected a JSON array of objects ([{...}, ...]) or one "
                          "object per line")
            return
        pos += 1
        first = True
        while True:
            if not skip_ws():
                yield Problem(here(), "the JSON array is not closed (missing ']'); the file "
                              "may be truncated")
                return
            if buf[pos] == "]":
                return
            if not first:
                if buf[pos] != ",":
                    yield Problem(here(), "bad JSON (expected ',' or ']' between records)")
                    return
                pos += 1
                if not skip_ws():
                    yield Problem(here(), "the JSON array is not closed (missing ']')")
                    return
            first = False
            start_line = line + buf.count("\n", 0, pos)
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    if len(buf) - pos > max_record_bytes:
                        yield Problem(f"{path}:{start_line}", "record longer than "
                                      f"{max_record_bytes // (1024 * 1024)} MB or bad JSON")
                        return
                    if not fill():
                        yield Problem(f"{path}:{line + buf.count(chr(10), 0, exc.pos)}",
                                      f"bad JSON ({exc.msg}); fix the record")
                        return
            pos = end
            if isinstance(obj, dict):
                yield RawRecord(obj, path, start_line)
            else:
                yield Problem(f"{path}:{start_line}", "expected a JSON object, got "
                              f"{type(obj).__name__}; the array must hold {{...}} records")
    finally:
        reader.close()


# Fields that hold lists or objects: a CSV/TSV cell with them is read as JSON.
STRUCTURED_FIELDS = frozenset({
    "conversations", "messages", "history", "chosen", "rejected", "triples", "entities",
})


def iter_delimited(
    path: Path, delimiter: str, max_field_bytes: int = MAX_LINE_BYTES
) -> Iterator[RawRecord | Problem]:
    """CSV/TSV rows as dicts keyed by the header row; empty cells are left out (absent).

    Cells of list-valued fields (``messages``, ``conversations``, ``history``, ``triples``,
    ...) that start with ``[`` or ``{`` are parsed as JSON.
    """
    csv.field_size_limit(max(csv.field_size_limit(), max_field_bytes))
    fh = _open(path)
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")
    try:
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}:1: cannot read the header row ({exc})") from exc
        header = [h.strip() for h in header]
        if not any(header):
            raise DataError(f"{path}:1: the header row is empty; the first row must name the "
                            "columns")
        dupes = sorted({h for h in header if h and header.count(h) > 1})
        if dupes:
            raise DataError(f"{path}:1: column {dupes[0]!r} appears twice in the header")
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield Problem(f"{path}:{start}", f"bad CSV ({exc})")
                start = reader.line_num + 1
                continue
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{start}: invalid UTF-8 ({exc.reason}); re-save the "
                                "file as UTF-8") from exc
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                yield Problem(f"{path}:{line}", f"row has {len(row)} cells but the header names "
                              f"{len(header)} columns; quote cells that contain "
                              f"{'tabs' if delimiter == chr(9) else 'commas'}")
                continue
            obj: dict[str, Any] = {}
            bad = None
            for name, cell in zip(header, row, strict=False):
                if not name or cell == "":
                    continue
                if name in STRUCTURED_FIELDS and cell.lstrip()[:1] in ("[", "{"):
                    try:
                        obj[name] = json.loads(cell)
                    except json.JSONDecodeError as exc:
                        bad = f"column {name!r} is not valid JSON ({exc.msg})"
                        break
                else:
                    obj[name] = cell
            if bad:
                yield Problem(f"{path}:{line}", bad)
                continue
            yield RawRecord(obj, path, line)
    finally:
        text.close()


def iter_parquet(path: Path, batch_rows: int = 1024) -> Iterator[RawRecord | Problem]:
    """Parquet rows in batches of ``batch_rows`` (``pyarrow``; a one-line hint when missing)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(f"{path}: {PARQUET_HINT}") from exc
    try:
        pfile = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    row = 0
    for batch in pfile.iter_batches(batch_size=batch_rows):
        for obj in batch.to_pylist():
            row += 1
            yield RawRecord({k: v for k, v in obj.items() if v is not None}, path, row,
                            row_based=True)


def count_lines(path: Path) -> int:
    """Newlines in a file, read in 1 MB chunks (for progress, never the whole file at once)."""
    n = 0
    with _open(path) as fh:
        while chunk := fh.read(_CHUNK):
            n += chunk.count(b"\n")
    return n
