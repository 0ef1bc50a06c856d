"""ACT: micro-batch control towards a memory target (training.md §5.5).

At each domain start the micro-batch resets to ``batch_size``. After ``act_probe_steps`` steps
the controller reads memory once — peak ``M_peak``, static part ``M_static`` (weights, grads,
optimizer state) and capacity ``M_total`` — and sets

    b' = ⌊b · (target·M_total − M_static) / (M_peak − M_static)⌋

clamped to ``[1, b·act_max_growth]`` and rounded down to a power of two (the log: 4 → 8). With
``act_keep_effective_batch`` the gradient accumulation becomes ``⌈b_eff / b'⌉``; otherwise the
effective batch follows ``b'``. An out-of-memory error halves the micro-batch and doubles the
accumulation (the effective batch is kept) so the step can be retried.

The memory reader is injected: :func:`cuda_memory_reader` / :func:`cpu_memory_reader` for real
runs, any callable returning :class:`MemoryReading` in tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError


@dataclass(frozen=True)
class MemoryReading:
    """Bytes: the peak since the domain started, the static footprint and the capacity."""

    peak: int
    static: int
    total: int


MemoryReader = Callable[[], MemoryReading]


@dataclass(frozen=True)
class BatchAdjustment:
    """A change of micro-batch / accumulation and why (``act``, ``oom``, ``domain start``)."""

    micro_batch: int
    grad_accum: int
    previous_micro_batch: int
    reason: str


def floor_power_of_two(n: int) -> int:
    """Largest power of two ≤ n (n ≥ 1)."""
    return 1 << (max(1, n).bit_length() - 1)


def next_micro_batch(b: int, reading: MemoryReading, target: float, max_growth: float) -> int:
    """The §5.5 formula: scale ``b`` so the peak would reach ``target·M_total``."""
    budget = target * reading.total - reading.static
    per_batch = reading.peak - reading.static
    limit = max(1, int(math.floor(b * max_growth)))
    if budget <= 0:
        proposed = 1
    elif per_batch <= 0:
        # Nothing measurable above the static part: grow as far as allowed.
        proposed = limit
    else:
        proposed = int(math.floor(b * budget / per_batch))
    return floor_power_of_two(min(max(proposed, 1), limit))


class BatchController:
    """Owns the micro-batch and gradient accumulation of a LONPT run."""

    def __init__(
        self,
        batch_size: int,
        target: float = 0.7,
        probe_steps: int = 2,
        max_growth: float = 2.0,
        keep_effective_batch: bool = False,
        enabled: bool = True,
        reader: MemoryReader | None = None,
        base_grad_accum: int = 1,
    ) -> None:
        self.batch_size = batch_size
        self.target = target
        self.probe_steps = probe_steps
        self.max_growth = max_growth
        self.keep_effective_batch = keep_effective_batch
        self.enabled = enabled
        self.reader = reader
        self.base_grad_accum = base_grad_accum
        self.micro_batch = batch_size
        self.grad_accum = base_grad_accum
        self.steps_in_domain = 0
        self.probed = False
        self.oom_count = 0

    @property
    def effective_batch(self) -> int:
        """The batch the user asked for: ``batch_size × base accumulation``."""
        return self.batch_size * self.base_grad_accum

    def start_domain(self) -> BatchAdjustment | None:
        """Reset to ``batch_size`` for a new domain; returns the change, if any."""
        self.steps_in_domain = 0
        self.probed = False
        if self.micro_batch == self.batch_size and self.grad_accum == self.base_grad_accum:
            return None
        previous = self.micro_batch
        self.micro_batch = self.batch_size
        self.grad_accum = self.base_grad_accum
        return BatchAdjustment(self.micro_batch, self.grad_accum, previous, "domain start")

    def after_step(self) -> BatchAdjustment | None:
        """Count a finished optimizer step; probe memory once after ``probe_steps`` steps."""
        self.steps_in_domain += 1
        if not self.enabled or self.probed or self.steps_in_domain < self.probe_steps:
            return None
        self.probed = True
        if self.reader is None:
            return None
        reading = self.reader()
        new_b = next_micro_batch(self.micro_batch, reading, self.target, self.max_growth)
        if self.keep_effective_batch:
            new_accum = max(1, math.ceil(self.effective_batch / new_b))
        else:
            new_accum = self.grad_accum
        if new_b == self.micro_batch and new_accum == self.grad_accum:
            return None
        previous = self.micro_batch
        self.micro_batch, self.grad_accum = new_b, new_accum
        return BatchAdjustment(new_b, new_accum, previous, "act")

    def on_oom(self) -> BatchAdjustment:
        """Halve the micro-batch and double the accumulation; raise when already at 1."""
        if self.micro_batch <= 1:
            raise MemoryError(
                "out of memory with micro-batch 1: lower max_length, choose a smaller profile, "
                "or turn on gradient checkpointing"
            )
        previous = self.micro_batch
        self.micro_batch = max(1, self.micro_batch // 2)
        self.grad_accum *= 2
        self.oom_count += 1
        return BatchAdjustment(self.micro_batch, self.grad_accum, previous, "oom")

    def state_dict(self) -> dict[str, Any]:
        """Controller state for ``trainer_state.json``."""
        return {
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "steps_in_domain": self.steps_in_domain,
            "probed": self.probed,
            "oom_count": self.oom_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.micro_batch = int(state["micro_batch"])
        self.grad_accum = int(state["grad_accum"])
        self.steps_in_domain = int(state.get("steps_in_domain", 0))
        self.probed = bool(state.get("probed", False))
        self.oom_count = int(state.get("oom_count", 0))


def check_target(target: float, static_bytes: int, total_bytes: int, device: str) -> None:
    """ConfigError before training when the target cannot hold even the static footprint."""
    if total_bytes <= 0:
        return
    if target * total_bytes <= static_bytes:
        raise ConfigError(
            f"target_memory_utilization {target:g} of {device} memory ({_gib(total_bytes)}) is "
            f"{_gib(int(target * total_bytes))}, below the model's static footprint "
            f"({_gib(static_bytes)}: weights, gradients, optimizer state); raise the target, "
            "choose a smaller profile, or turn HPF on"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def static_bytes(model: Any, optimizer: Any | None = None) -> int:
    """Weights + gradients + optimizer state in bytes (gradients counted for trainable weights).

    Before the optimizer has state, AdamW's two moments are counted as two fp32 copies of the
    trainable weights so the pre-training check sees the whole footprint.
    """
    weights = grads = 0
    trainable_numel = 0
    for p in model.parameters():
        weights += p.numel() * p.element_size()
        if p.requires_grad:
            grads += p.numel() * p.element_size()
            trainable_numel += p.numel()
    opt = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            for value in state.values():
                if hasattr(value, "numel") and hasattr(value, "element_size"):
                    opt += value.numel() * value.element_size()
    if opt == 0:
        opt = trainable_numel * 8
    return weights + grads + opt


def cuda_memory_reader(model: Any, optimizer: Any, device: Any) -> MemoryReader:
    """CUDA: peak = ``max_memory_allocated``, total = device memory."""
    import torch

    def read() -> MemoryReading:
        peak = int(torch.cuda.max_memory_allocated(device))
        total = int(torch.cuda.get_device_properties(device).total_memory)
        return MemoryReading(peak, static_bytes(model, optimizer), total)

    return read


def cpu_memory_reader(model: Any, optimizer: Any) -> MemoryReader:
    """CPU: peak = process RSS, total = available RAM + RSS (what this process could reach)."""
    import psutil

    process = psutil.Process()

    def read() -> MemoryReading:
        rss = int(process.memory_info().rss)
        total = int(psutil.virtual_memory().available) + rss
        return MemoryReading(rss, static_bytes(model, optimizer), total)

    return read


def reset_peak(device: Any) -> None:
    """Start a new peak measurement (CUDA only; RSS has no resettable peak)."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)


def device_capacity(device: Any) -> int:
    """Capacity used for the pre-training check: CUDA total memory or available RAM."""
    import psutil
    import torch

    if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(psutil.virtual_memory().available + psutil.Process().memory_info().rss)
