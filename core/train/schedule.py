"""Learning-rate schedules (training.md §7): linear warmup, then a decay that ends with the run.

Two shapes, both pure functions of the step (so "scheduler state" is just the global step and the
run config — nothing to drift on resume), both fitted to the run's own length ``total_steps``
(which may change mid-run: the engine passes the newest total):

* ``cosine`` — a half cosine from the peak down to ``min_ratio`` at ``total_steps``;
* ``constant_decay`` — the peak held until the last ``decay_fraction`` of the run, then a linear
  decay to ``min_ratio`` (warmup-stable-decay). A short run spends most of its steps at the peak
  learning rate, which is where it learns fastest; the final decay still anneals the weights.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant_decay")
DEFAULT_DECAY_FRACTION = 0.2


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


def constant_decay_scale(step: int, total_steps: int, warmup_steps: int, min_ratio: float,
                         decay_fraction: float = DEFAULT_DECAY_FRACTION) -> float:
    """Warmup, then 1.0 until the last ``decay_fraction`` of ``total_steps``, then linear down
    to ``min_ratio``, reached on the run's last step (``total_steps - 1``) and kept beyond."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, round(decay_fraction * total_steps))
    decay_start = max(warmup_steps, total_steps - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
    return 1.0 - (1.0 - min_ratio) * progress


def lr_scale(schedule: str, step: int, total_steps: int, warmup_steps: int, min_ratio: float,
             decay_fraction: float = DEFAULT_DECAY_FRACTION) -> float:
    """The multiplier of ``schedule`` (one of :data:`SCHEDULES`) at optimizer step ``step``."""
    if schedule == "cosine":
        return warmup_cosine_scale(step, total_steps, warmup_steps, min_ratio)
    if schedule == "constant_decay":
        return constant_decay_scale(step, total_steps, warmup_steps, min_ratio, decay_fraction)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of "
                     f"{', '.join(SCHEDULES)}")
