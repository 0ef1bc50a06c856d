"""One owner per run directory, and the rule for starting a run in a directory that has one.

A trainer holds an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock`` for its whole life. The kernel
drops the lock when the process dies, however it dies, so a crashed run never blocks a restart
(a pid file could be stale; a lock cannot). The file records the owner's pid for the refusal
message. Under torchrun only rank 0 takes it.

A directory that already holds a run (events or checkpoints) is never reused silently: a new
run there needs ``--resume`` (continue it) or ``--overwrite`` (move the old run into a dated
``previous-YYYYmmdd-HHMMSS/`` subfolder — nothing is deleted). :func:`existing_run` is the one
rule; the trainer, the CLI and the console's setup all ask it.
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import RunDirError

LOCK_FILE = ".lock"
ASIDE_PREFIX = "previous-"
# Kept in place by --overwrite: the lock itself, the live trainer's pid file, and earlier
# moved-aside runs (they are history, not part of the run being replaced).
_KEEP = (LOCK_FILE, "trainer.pid")


@dataclass
class RunDirLock:
    """An acquired run-directory lock; :meth:`release` (or process exit) frees it."""

    run_dir: Path
    fd: int | None
    # Why the directory is not actually locked (a filesystem without flock support), or "".
    unlocked_reason: str = ""

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(fd)

    def record_owner(self) -> None:
        """Write this process's pid into the lock file (read by the next one's refusal)."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)


def acquire_run_lock(run_dir: str | os.PathLike[str]) -> RunDirLock:
    """Take the exclusive lock of ``run_dir`` (which must exist) or raise :class:`RunDirError`
    naming the owner's pid and how to watch it."""
    directory = Path(run_dir)
    path = directory / LOCK_FILE
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking, as before
        return RunDirLock(directory, None)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot open the lock file {path} ({exc.strerror or exc}); "
                          "choose a writable --run-dir") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            # Some network filesystems have no flock: train anyway, say so (caller warns).
            os.close(fd)
            return RunDirLock(directory, None, f"{path}: the filesystem does not support "
                              f"locking ({exc.strerror or exc}); nothing stops a second trainer "
                              "on this run directory")
        owner = _read_owner(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunDirError(f"cannot lock {path} ({exc.strerror or exc})") from exc
        raise RunDirError(busy_message(directory, owner)) from None
    return RunDirLock(directory, fd)


def busy_message(run_dir: Path, owner: int | None) -> str:
    who = f"pid {owner}" if owner else "another process"
    return (f"run directory {run_dir} is in use by a running trainer ({who}); watch it with "
            f"`aeron-tui watch {run_dir}`, or choose another --run-dir")


def lock_owner(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the live trainer holding ``run_dir``'s lock (0 when it is held but the pid is
    unknown), or None when nobody holds it. Does not create the lock file."""
    path = Path(run_dir) / LOCK_FILE
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (ImportError, OSError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_owner(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_owner(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def existing_run(run_dir: str | os.PathLike[str]) -> str | None:
    """What run ``run_dir`` already holds, as a short phrase (``"4 checkpoints, up to step 8"``),
    or None when a new run may start there (missing, empty, or only a saved run.toml)."""
    directory = Path(run_dir)
    checkpoints_dir = directory / "checkpoints"
    names: list[str] = []
    if checkpoints_dir.is_dir():
        names = sorted(p.name for p in checkpoints_dir.iterdir())
    events = directory / "events.jsonl"
    has_events = events.is_file() and events.stat().st_size > 0
    if not names and not has_events:
        return None
    complete = [n for n in names if not n.startswith(".")]
    step = _last_step(directory / "events.jsonl") if has_events else None
    parts = []
    if complete:
        parts.append(f"{len(complete)} checkpoint{'s' if len(complete) != 1 else ''}")
    elif names:
        parts.append("an interrupted checkpoint save")
    if step is not None:
        parts.append(f"up to step {step}")
    elif has_events and not complete:
        parts.append("the events of an earlier start")
    return ", ".join(parts)


def _last_step(events: Path) -> int | None:
    """The last ``global_step`` in an events file (read from its end; None when none)."""
    try:
        with open(events, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            tail = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        step = event.get("global_step") if isinstance(event, dict) else None
        if isinstance(step, int) and step > 0:
            return step
    return None


def reuse_message(run_dir: Path, what: str) -> str:
    """The refusal for starting a new run in a directory that holds one: both ways on."""
    return (f"run directory {run_dir} already holds a run ({what}); continue it with --resume, "
            f"choose a new --run-dir, or pass --overwrite to move the old run into "
            f"{run_dir / (ASIDE_PREFIX + 'DATE')}/ (nothing is deleted)")


def move_run_aside(run_dir: str | os.PathLike[str], when: float | None = None) -> Path:
    """Move everything of the run in ``run_dir`` into ``run_dir/previous-YYYYmmdd-HHMMSS/``
    (renames only, nothing is deleted) and return that folder."""
    directory = Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when if when is not None else time.time()))
    target = directory / f"{ASIDE_PREFIX}{stamp}"
    n = 2
    while target.exists():
        target = directory / f"{ASIDE_PREFIX}{stamp}-{n}"
        n += 1
    target.mkdir()
    for entry in sorted(directory.iterdir()):
        if entry.name in _KEEP or entry == target or entry.name.startswith(ASIDE_PREFIX):
            continue
        os.replace(entry, target / entry.name)
    return target


def claim_run_dir(
    run_dir: str | os.PathLike[str], *, resume: bool, overwrite: bool
) -> tuple[RunDirLock, Path | None]:
    """Lock ``run_dir`` for this trainer and apply the reuse rule.

    Returns the lock (release it when the run ends) and, with ``overwrite``, where the old run
    was moved. Raises :class:`RunDirError` (the directory unchanged) when another trainer owns
    it, or when it holds a run and neither ``resume`` nor ``overwrite`` is given.
    """
    directory = Path(run_dir)
    lock = acquire_run_lock(directory)
    try:
        moved: Path | None = None
        if not resume:
            what = existing_run(directory)
            if what is not None:
                if not overwrite:
                    raise RunDirError(reuse_message(directory, what))
                moved = move_run_aside(directory)
        lock.record_owner()
    except BaseException:
        lock.release()
        raise
    return lock, moved
