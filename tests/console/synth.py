"""Synthetic event streams for console tests that need exact, hand-made numbers.

Snapshots use the recorded stream in ``data/events.jsonl`` (a real tiny run); these helpers
build edge cases (corrupt lines, newer schema versions, many steps) around valid events.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from core.runs.events import encode_event, make_event

T0 = 1_700_000_000.0


def synthetic_events(steps: int = 60, branches: int = 4, slots: int = 16,
                     eval_every: int = 20, t0: float = T0) -> list[dict[str, Any]]:
    """A plausible run: run_started, steps with ToT/scratchpad, evals, checkpoints, finish."""
    ev: list[dict[str, Any]] = []
    seq = 0

    def add(kind: str, t: float, **fields: Any) -> None:
        nonlocal seq
        ev.append(make_event(kind, seq=seq, **fields) | {"time": t})
        seq += 1

    add("run_started", t0, run_id="synthetic-run", trainer="simple", total_steps=steps,
        profile="tiny", model_params=1_234_567, device="cpu", precision="bf16", data="styles.jsonl")
    best = None
    for s in range(1, steps + 1):
        t = t0 + s * 0.5
        loss = 5.6 * math.exp(-s / 40) + 1.5 + 0.05 * math.sin(s)
        scores = [round(0.2 + 0.1 * b + 0.05 * math.sin(s / 5 + b), 4) for b in range(branches)]
        keep = [1.0 if b != branches - 1 else 0.25 for b in range(branches)]
        used = min(slots, 2 + s // 10)
        types = [1 if i == 0 else 2 if i < used else 0 for i in range(slots)]
        add("step", t, global_step=s, loss=loss, lr=3e-4 * min(1, s / 10), grad_norm=0.8,
            tokens_per_s=12345.0, branch_scores_mean=scores, branch_keep_frac=keep,
            scratchpad={"used_slots": used, "total_slots": slots, "step_counter": s,
                        "slot_types": types})
        if s % eval_every == 0:
            val = loss + 0.1
            is_best = best is None or val < best
            best = val if is_best else best
            add("eval", t + 0.1, global_step=s, loss=val, perplexity=math.exp(val), best=is_best)
            add("checkpoint", t + 0.2, global_step=s, path=f"checkpoints/step-{s:06d}",
                name=f"step-{s:06d}", val_loss=val, best=is_best, size_bytes=5_000_000)
    add("run_finished", t0 + steps * 0.5 + 1, status="finished", global_step=steps)
    return ev


def write_events(path: Path, events: list[dict[str, Any]], tail: str = "") -> Path:
    """Write events as JSON lines, then ``tail`` verbatim (e.g. a partial or garbage line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(encode_event(e) + "\n")
        fh.write(tail)
    return path
