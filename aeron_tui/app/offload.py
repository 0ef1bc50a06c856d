"""Run torch-importing helpers (profile estimates, the auto pick) in a short-lived child process.

The console never imports torch: it would add hundreds of MB to a process that only draws, and
the import holds the GIL for seconds, freezing the UI. Call :func:`in_child` from a worker
thread. ``fn`` must be a module-level function; arguments and result must be picklable (plain
dataclasses are). A plain subprocess (not multiprocessing) because Textual replaces the console's
stdio, which multiprocessing's spawn start method trips over.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# The child: read (fn, args) from stdin, run it with stdout pointed at stderr (so a stray print
# cannot corrupt the reply), write ("ok", result) or ("err", exception) to the real stdout.
_CHILD = (
    "import pickle, sys\n"
    "out = sys.stdout.buffer\n"
    "sys.stdout = sys.stderr\n"
    "fn, args = pickle.load(sys.stdin.buffer)\n"
    "try:\n"
    "    reply = ('ok', fn(*args))\n"
    "except BaseException as exc:\n"
    "    try:\n"
    "        pickle.dumps(exc)\n"
    "        reply = ('err', exc)\n"
    "    except Exception:\n"
    "        reply = ('err', RuntimeError(f'{type(exc).__name__}: {exc}'))\n"
    "pickle.dump(reply, out)\n"
    "out.flush()\n"
)


class ChildFailed(RuntimeError):
    """The helper process died without a reply (its last stderr lines are in the message)."""


def in_child(fn: Callable[..., T], *args: Any, timeout: float = 300.0) -> T:
    """``fn(*args)`` in a fresh interpreter; an exception it raises is re-raised here."""
    payload = pickle.dumps((fn, args))
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=payload, capture_output=True,
                          timeout=timeout, check=False)
    try:
        status, value = pickle.loads(proc.stdout)
    except Exception as exc:  # noqa: BLE001 - no reply: report what the child said
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise ChildFailed(f"{fn.__name__} failed in a helper process (exit {proc.returncode}): "
                          + (" | ".join(tail) or "no output")) from exc
    if status == "err":
        raise value
    return value  # type: ignore[no-any-return]
