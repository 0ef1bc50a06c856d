"""Safety rails of training.md §5.7: non-finite skips, spike rollback, update-norm monitor.

* A non-finite loss or gradient skips the update and is counted.
* ``rail_max_nonfinite`` consecutive skips, or a loss above ``rail_spike_factor`` × its EMA
  (α 0.05, armed after 20 accepted steps), asks for a rollback: the trainer restores the
  snapshot taken at the domain start and the rail LR multiplier halves.
* A tensor whose update is large relative to its norm (``‖Δθ‖/‖θ‖ > rail_update_ratio``) is
  reported (a warning, no action).

:class:`SafetyRails` only decides; the trainer acts and emits the events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

OK = "ok"
SKIP = "skip"
ROLLBACK = "rollback"

EMA_ALPHA = 0.05
ARM_AFTER = 20


@dataclass(frozen=True)
class Verdict:
    """What to do with a step: ``ok``, ``skip`` (non-finite) or ``rollback`` (and why)."""

    action: str
    reason: str = ""


class SafetyRails:
    """Loss/gradient checks and the rail learning-rate multiplier."""

    def __init__(
        self,
        spike_factor: float = 3.0,
        max_nonfinite: int = 3,
        update_ratio: float = 0.1,
        ema_alpha: float = EMA_ALPHA,
        arm_after: int = ARM_AFTER,
    ) -> None:
        self.spike_factor = spike_factor
        self.max_nonfinite = max_nonfinite
        self.update_ratio = update_ratio
        self.ema_alpha = ema_alpha
        self.arm_after = arm_after
        self.ema: float | None = None
        self.accepted = 0  # finite steps folded into the EMA
        self.consecutive_nonfinite = 0
        self.nonfinite_total = 0
        self.rollbacks = 0
        self.lr_multiplier = 1.0

    @property
    def armed(self) -> bool:
        return self.accepted >= self.arm_after

    def check(self, loss: float, grads_finite: bool = True) -> Verdict:
        """Judge one step's loss (and gradients) before the optimizer update."""
        if not math.isfinite(loss) or not grads_finite:
            self.consecutive_nonfinite += 1
            self.nonfinite_total += 1
            what = "loss" if not math.isfinite(loss) else "gradients"
            if self.consecutive_nonfinite >= self.max_nonfinite:
                return Verdict(ROLLBACK, f"{self.consecutive_nonfinite} consecutive non-finite "
                                         f"steps (last: non-finite {what})")
            return Verdict(SKIP, f"non-finite {what}")
        self.consecutive_nonfinite = 0
        if self.armed and self.ema is not None and loss > self.spike_factor * self.ema:
            return Verdict(ROLLBACK, f"loss spike {loss:.4f} > {self.spike_factor:g} x "
                                     f"running average {self.ema:.4f}")
        self.ema = loss if self.ema is None else (1 - self.ema_alpha) * self.ema + self.ema_alpha * loss
        self.accepted += 1
        return Verdict(OK)

    def on_rollback(self) -> float:
        """Halve the rail LR multiplier; returns the new value."""
        self.rollbacks += 1
        self.consecutive_nonfinite = 0
        self.lr_multiplier *= 0.5
        return self.lr_multiplier

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": self.ema,
            "accepted": self.accepted,
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "nonfinite_total": self.nonfinite_total,
            "rollbacks": self.rollbacks,
            "lr_multiplier": self.lr_multiplier,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ema = state.get("ema")
        self.ema = float(ema) if ema is not None else None
        self.accepted = int(state.get("accepted", 0))
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self.lr_multiplier = float(state.get("lr_multiplier", 1.0))


def grads_finite(parameters: Iterable[torch.nn.Parameter]) -> bool:
    """True when every gradient is finite (one fused reduction, one host sync)."""
    flags = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    if not flags:
        return True
    return bool(torch.stack(flags).all())


class UpdateMonitor:
    """Relative update ``‖Δθ‖/‖θ‖`` per weight matrix; call :meth:`before` then :meth:`after`.

    Only tensors with two or more dimensions are watched: a bias or gate scalar starts near zero,
    so its relative update is large by construction and says nothing about instability.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, torch.nn.Parameter]], limit: float) -> None:
        self.params = [(n, p) for n, p in named_parameters if p.requires_grad and p.dim() >= 2]
        self.limit = limit
        self._before: list[torch.Tensor] = []

    def before(self) -> None:
        self._before = [p.detach().clone() for _, p in self.params]

    @torch.no_grad()
    def after(self) -> list[tuple[str, float]]:
        """Tensors over the limit, worst first (empty when :meth:`before` was not called)."""
        if not self._before:
            return []
        over: list[tuple[str, float]] = []
        for (name, p), old in zip(self.params, self._before, strict=True):
            norm = float(old.float().norm())
            if norm == 0.0:
                continue
            ratio = float((p.detach().float() - old.float()).norm()) / norm
            if ratio > self.limit:
                over.append((name, ratio))
        self._before = []
        return sorted(over, key=lambda t: -t[1])
