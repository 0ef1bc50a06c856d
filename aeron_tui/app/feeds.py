"""Event feeds: loops that read a run's events and hand them out in batches (no Textual here).

Each loop runs on a worker thread, calls ``post(items)`` at most every ``interval`` seconds (one
coalesced batch, never one call per training step) and returns when ``cancelled()`` is true or
the source is exhausted. Large backlogs (opening a long finished run) are split into chunks so
the UI thread never folds more than ``chunk`` events in one go.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aeron_tui.launcher import TrainerProcess
from core.runs.events import EventTail, ParseProblem, read_events

Item = dict[str, Any] | ParseProblem
Post = Callable[[list[Item]], None]
Cancelled = Callable[[], bool]

BATCH_INTERVAL_S = 0.15
CHUNK = 2000


def _post_chunks(post: Post, items: list[Item], chunk: int = CHUNK) -> None:
    for start in range(0, len(items), chunk):
        post(items[start:start + chunk])


def pump_process(proc: TrainerProcess, post: Post, cancelled: Cancelled,
                 interval: float = BATCH_INTERVAL_S) -> int | None:
    """Forward a child's stdout events until it exits; return its exit code (None if cancelled)."""
    batch: list[Item] = []
    last_post = time.monotonic()
    while not cancelled():
        batch.extend(proc.drain(timeout=min(0.05, interval)))
        now = time.monotonic()
        if batch and now - last_post >= interval:
            _post_chunks(post, batch)
            batch = []
            last_post = now
        if proc.finished_reading:
            batch.extend(proc.drain(timeout=0))
            if batch:
                _post_chunks(post, batch)
            return proc.returncode
        if proc.detached:
            if batch:
                _post_chunks(post, batch)
            return None
    return None


def pump_tail(path: Path, post: Post, cancelled: Cancelled, interval: float = BATCH_INTERVAL_S,
              idle_interval: float = 0.5) -> None:
    """Follow a growing events.jsonl (live or finished run) until cancelled."""
    tail = EventTail(path)
    while not cancelled():
        items = tail.poll()
        if items:
            _post_chunks(post, items)
            time.sleep(interval)
        else:
            # Nothing new: look again soon, but not so often that watching costs CPU.
            _sleep_unless(cancelled, idle_interval)


def pump_replay(path: Path, post: Post, cancelled: Cancelled, speed: float,
                interval: float = BATCH_INTERVAL_S, max_gap_s: float = 1.0) -> None:
    """Replay a recorded events.jsonl at ``speed``× its recorded pace (0 = all at once).

    Gaps longer than ``max_gap_s`` of replay time are shortened so a demo never stalls.
    """
    items = list(read_events(path))
    if speed <= 0:
        _post_chunks(post, items)
        return
    batch: list[Item] = []
    last_post = time.monotonic()
    prev_t: float | None = None
    for item in items:
        if cancelled():
            return
        t = item.get("time") if isinstance(item, dict) else None
        if isinstance(t, (int, float)) and prev_t is not None:
            gap = min(max_gap_s, max(0.0, (t - prev_t) / speed))
            if gap > 0:
                if batch and time.monotonic() - last_post + gap >= interval:
                    post(batch)
                    batch = []
                    last_post = time.monotonic()
                _sleep_unless(cancelled, gap)
        if isinstance(t, (int, float)):
            prev_t = float(t)
        batch.append(item)
        if time.monotonic() - last_post >= interval:
            post(batch)
            batch = []
            last_post = time.monotonic()
    if batch and not cancelled():
        post(batch)


def _sleep_unless(cancelled: Cancelled, seconds: float, step: float = 0.05) -> None:
    end = time.monotonic() + seconds
    while not cancelled():
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(step, left))
