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
import time
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


class Cancelled(RuntimeError):
    """The caller gave up (its screen closed, the console is quitting); the child was killed."""


POLL_S = 0.1


def in_child(fn: Callable[..., T], *args: Any, timeout: float = 300.0,
             cancelled: Callable[[], bool] | None = None) -> T:
    """``fn(*args)`` in a fresh interpreter; an exception it raises is re-raised here.

    ``cancelled`` is polled while the child works: when it turns true the child is killed and
    :class:`Cancelled` is raised. Pass the worker's ``is_cancelled`` — a thread worker cannot be
    interrupted, and the console's exit waits for every worker thread, so without it quitting
    right after opening the setup screen would hang until the estimates were done.
    """
    payload = pickle.dumps((fn, args))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    send: bytes | None = payload
    while True:
        try:
            # Retrying communicate() after a timeout loses no output; the input goes once.
            out, err = proc.communicate(input=send, timeout=POLL_S)
            break
        except subprocess.TimeoutExpired:
            send = None
            if cancelled is not None and cancelled():
                _kill(proc)
                raise Cancelled(f"{fn.__name__} cancelled") from None
            if time.monotonic() > deadline:
                _kill(proc)
                raise ChildFailed(f"{fn.__name__} took longer than {timeout:.0f} s in a helper "
                                  "process; killed it") from None
    try:
        status, value = pickle.loads(out)
    except Exception as exc:  # noqa: BLE001 - no reply: report what the child said
        tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise ChildFailed(f"{fn.__name__} failed in a helper process (exit {proc.returncode}): "
                          + (" | ".join(tail) or "no output")) from exc
    if status == "err":
        raise value
    return value  # type: ignore[no-any-return]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        pass
