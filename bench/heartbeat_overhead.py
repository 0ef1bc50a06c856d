"""Heartbeat overhead: what the trainer's liveness (a heartbeat event every second, activity
events) costs its own throughput.

    .venv/bin/python bench/heartbeat_overhead.py [--rounds 6] [--steps 40] [--profile tiny]

Trains the same configuration as ``bench/console_overhead.py`` (simple trainer, sample corpus,
seq_len 64, micro-batch 4, a step event every 2 steps, no evaluations or checkpoints) in this
one process, alternating heartbeat on / off in ABBA order. The figure is the process's CPU time
per optimizer step (``time.process_time``, all threads, the heartbeat thread included) between
the first and the last step event, so the load of a shared machine does not enter; ratio =
CPU per step without ÷ with the heartbeat (1.0 = free; target ≥ 0.95 like the console's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(home: Path, name: str, profile: str, steps: int, heartbeat: bool) -> float:
    """CPU seconds per optimizer step of one run (first to last step event)."""
    from aeron_tui.commands.train import build_run_config
    from core.data.sample import ensure_sample_corpus
    from core.train.simple import SimpleTrainer

    class Trainer(SimpleTrainer):
        heartbeat_interval_s = 1.0 if heartbeat else None

    marks: list[tuple[int, float]] = []

    def meter(event: dict[str, Any]) -> None:
        if event["type"] == "step":
            marks.append((event["global_step"], time.process_time()))

    cfg, model = build_run_config(
        "simple", profile=profile,
        flags={"run_dir": str(home / name), "steps": steps, "seq_len": 64, "micro_batch": 4,
               "seed": 1, "data": str(ensure_sample_corpus().styles)},
        sets=["log_every=2", "eval_every=100000", "checkpoint_every=100000"])
    trainer = Trainer(cfg, model, listeners=[meter])
    if trainer.run() != "finished" or len(marks) < 3:
        raise RuntimeError(f"{name}: run did not finish with step events")
    (s0, c0), (s1, c1) = marks[1], marks[-1]  # the first interval holds the warm-up
    beats = sum(1 for line in (home / name / "events.jsonl").read_text().splitlines()
                if '"type":"heartbeat"' in line)
    if heartbeat and beats == 0:
        raise RuntimeError(f"{name}: no heartbeat was written")
    return (c1 - c0) / (s1 - s0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--profile", default="tiny")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="aeron-bench-heartbeat-"))
    os.environ["AERON_TUI_HOME"] = str(home)
    import torch

    torch.set_num_threads(1)
    load_before = os.getloadavg()
    on: list[float] = []
    off: list[float] = []
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)  # ABBA
        for heartbeat in order:
            cpu = one_run(home, f"r{r}-{'on' if heartbeat else 'off'}", args.profile,
                          args.steps, heartbeat)
            (on if heartbeat else off).append(cpu)
        print(f"round {r + 1}: CPU per step with heartbeat {1000 * on[-1]:.1f} ms, "
              f"without {1000 * off[-1]:.1f} ms, ratio {off[-1] / on[-1]:.3f}", flush=True)
    ratios = [b / a for a, b in zip(on, off, strict=True)]
    print(f"\nheartbeat_overhead (profile {args.profile}, seq_len 64, micro-batch 4, "
          f"{args.steps} steps, {args.rounds} rounds ABBA, 1 thread; load "
          f"{'/'.join(f'{x:.2f}' for x in load_before)} before, "
          f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())} after)")
    print(f"  CPU per step with / without heartbeat (median)  "
          f"{1000 * statistics.median(on):.1f} / {1000 * statistics.median(off):.1f} ms")
    print(f"  throughput ratio with ÷ without (median of paired rounds)  "
          f"{statistics.median(ratios):.3f}  (per round "
          + ", ".join(f"{x:.3f}" for x in ratios) + "; target ≥ 0.95)")


if __name__ == "__main__":
    main()
