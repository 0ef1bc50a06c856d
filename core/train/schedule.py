"""Learning-rate schedule: linear warmup, then cosine decay to a floor (training.md §7).

The schedule is a pure function of the step, so "scheduler state" is just the global step and the
run config — nothing to drift on resume.
"""

from __future__ import annotations

import math


def default_warmup_steps(total_steps: int) -> int:
    """``min(100, 5 %)`` of the run, at least one step when the run has more than one."""
    if total_steps <= 1:
        return 0
    return max(1, min(100, round(0.05 * total_steps)))


def warmup_cosine_scale(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Rises linearly over ``warmup_steps`` (step 0 already trains at ``1/warmup``), then follows a
    half cosine from 1 down to ``min_ratio`` at ``total_steps``; stays at ``min_ratio`` beyond.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * cosine
