"""A scripted stand-in for the headless trainer, used to test the launcher's plumbing.

It speaks the real protocol (events as JSON lines on stdout, control commands as JSON lines on
stdin) with no model behind it, so pipe, pause, stop, detach and crash handling are tested in
well under a second. The console's end-to-end tests use the real ``aeron-tui train``.

Usage: python scripted_trainer.py STEPS [--fail-after N] [--events-file PATH] [--period S]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from core.runs.events import EventWriter  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("steps", type=int)
    ap.add_argument("--fail-after", type=int, default=None)
    ap.add_argument("--events-file", default=None)
    ap.add_argument("--period", type=float, default=0.02)
    args = ap.parse_args()
    commands: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            try:
                commands.put(json.loads(line)["cmd"])
            except (ValueError, KeyError):
                pass
        # EOF on stdin is not a stop (a detached console closes it).

    threading.Thread(target=read, daemon=True).start()
    writer = EventWriter(args.events_file, stdout=True)
    writer.emit("run_started", run_id="scripted", trainer="scripted", total_steps=args.steps,
                data=os.environ.get("GLIBC_TUNABLES", ""))
    paused = False
    step = 0
    while step < args.steps:
        try:
            cmd = commands.get(timeout=0 if not paused else 0.05)
        except queue.Empty:
            cmd = None
        if cmd == "pause":
            paused = True
            writer.emit("status", status="paused")
        elif cmd == "resume":
            paused = False
            writer.emit("status", status="running")
        elif cmd == "checkpoint":
            writer.emit("checkpoint", global_step=step, path=f"ckpt-{step}", name=f"ckpt-{step}")
        elif cmd == "stop":
            writer.emit("checkpoint", global_step=step, path=f"ckpt-{step}", name=f"final-{step}")
            writer.emit("run_finished", status="stopped", global_step=step)
            return 0
        if paused:
            continue
        step += 1
        if args.fail_after is not None and step > args.fail_after:
            sys.stderr.write("Traceback (most recent call last):\n")
            sys.stderr.write("RuntimeError: scripted failure\n")
            writer.emit("error", message="RuntimeError: scripted failure", global_step=step)
            return 3
        writer.emit("step", global_step=step, loss=5.0 / step, lr=1e-3,
                    branch_scores_mean=[0.1 * step, 0.2], branch_keep_frac=[1.0, 0.0],
                    scratchpad={"used_slots": min(step, 8), "total_slots": 8,
                                "step_counter": step, "slot_types": [1] * min(step, 8)})
        time.sleep(args.period)
    writer.emit("run_finished", status="finished", global_step=step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
