"""Writing files so a crash never leaves a half-written one, and hashing them.

Every file the product writes for a user (configs, run configs, tokenizers, sample data, the
wizard's choice) goes through :func:`atomic_write_bytes`: a temporary file in the same directory,
flushed to disk, then ``os.replace``d over the target. Readers see the old file or the new one,
never a mix; a failure removes the temporary file and leaves the old file untouched.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from core.errors import AeronError


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (parent directories are created); returns the path.

    Raises ``OSError`` (after removing the temporary file) when it cannot be written: callers
    that report errors their own way use this; others use :func:`atomic_write_bytes`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, mode)  # mkstemp creates 0600; these are ordinary shareable files
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


_HINT = "Check the directory's permissions and free space"


def atomic_write_bytes(
    path: str | os.PathLike[str],
    data: bytes,
    error: type[AeronError] = AeronError,
    hint: str = _HINT,
) -> Path:
    """:func:`write_bytes_atomically`, raising ``error`` (an :class:`core.errors.AeronError`)
    that names the path and ends with ``hint`` when the file cannot be written."""
    try:
        return write_bytes_atomically(path, data)
    except OSError as exc:
        raise error(
            f"cannot write {path}: {exc.strerror or exc}; the previous file (if any) is "
            f"unchanged. {hint}"
        ) from None


def atomic_write_text(
    path: str | os.PathLike[str],
    text: str,
    error: type[AeronError] = AeronError,
    hint: str = _HINT,
) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), error=error, hint=hint)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
