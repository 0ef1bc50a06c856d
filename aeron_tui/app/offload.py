"""Run torch-importing helpers (profile estimates, the auto pick) in a short-lived child process.

The console never imports torch: it would add hundreds of MB to a process that only draws, and
the import holds the GIL for seconds, freezing the UI. Call :func:`in_child` from a worker
thread; arguments and results must be picklable (plain dataclasses are).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def in_child(fn: Callable[..., T], *args: Any, timeout: float = 120.0) -> T:
    """``fn(*args)`` in a fresh spawned interpreter; its exception is re-raised here."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result(timeout=timeout)
