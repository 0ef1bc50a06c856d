"""Step-event aggregation: model outputs → the averaged numbers of one ``step`` event.

Everything is accumulated as tensors on the training device; the host sync (``.item()``/
``.tolist()``) happens only in :meth:`StepMetrics.flush`, once per log interval, so logging
costs nothing measurable per step (training.md §3 lists the fields).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import torch
from torch import Tensor


class StepMetrics:
    """Running sums over one log interval; ``flush()`` returns the event fields and resets."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self._t0 = time.perf_counter()
        self._zero = torch.zeros((), device=self.device)
        self.loss_sum: Tensor = self._zero.clone()
        self.loss_count: Tensor = self._zero.clone()
        self.micro_batches = 0
        self.optimizer_steps = 0
        self.grad_norm_sum: Tensor = self._zero.clone()
        self.grad_norm_count = 0
        self.tokens = 0
        self.samples = 0
        self.branch_sum: Tensor | None = None
        self.branch_rows = 0
        self.keep_sum: Tensor | None = None
        self.keep_rows = 0
        self.complexity_sum: Tensor = self._zero.clone()
        self.complexity_count = 0
        self.skipped_sum: Tensor = self._zero.clone()
        self.skipped_count = 0
        self.epistemic_sum: Tensor = self._zero.clone()
        self.epistemic_count = 0
        self.scratchpad: dict[str, Any] | None = None
        self.memory_slots_used: Any = None
        self.extra: dict[str, Tensor | float] = {}
        self.extra_counts: dict[str, int] = {}

    # -- accumulation (no host sync) ------------------------------------------------------

    def add_micro_batch(
        self, loss: Tensor, outputs: dict[str, Any] | None, tokens: int, samples: int
    ) -> None:
        """One forward/backward: its (unscaled) loss, the model outputs, batch sizes."""
        # Non-finite losses (skipped updates) are left out of the average, counted elsewhere.
        value = loss.detach().float()
        ok = torch.isfinite(value)
        self.loss_sum = self.loss_sum + torch.where(ok, value, torch.zeros_like(value))
        self.loss_count = self.loss_count + ok.float()
        self.micro_batches += 1
        self.tokens += int(tokens)
        self.samples += int(samples)
        if outputs:
            self._add_outputs(outputs)

    def add_optimizer_step(self, grad_norm: Tensor | float | None) -> None:
        self.optimizer_steps += 1
        if grad_norm is not None:
            g = grad_norm.detach().float() if isinstance(grad_norm, Tensor) else float(grad_norm)
            self.grad_norm_sum = self.grad_norm_sum + g
            self.grad_norm_count += 1

    def add_metric(self, name: str, value: Tensor | float) -> None:
        """A trainer-specific number averaged over the interval (goes to ``metrics``)."""
        v = value.detach().float() if isinstance(value, Tensor) else float(value)
        self.extra[name] = self.extra.get(name, 0.0) + v
        self.extra_counts[name] = self.extra_counts.get(name, 0) + 1

    def _add_outputs(self, outputs: dict[str, Any]) -> None:
        scores = outputs.get("tot_branch_scores")
        if isinstance(scores, Tensor) and scores.dim() == 2 and scores.shape[0] > 0:
            s = scores.detach().float().sum(0)
            self.branch_sum = (
                s
                if self.branch_sum is None or self.branch_sum.shape != s.shape
                else self.branch_sum + s
            )
            self.branch_rows += scores.shape[0]
        info = outputs.get("reasoning_info") or {}
        keep = info.get("branch_keep_mask")
        if isinstance(keep, Tensor) and keep.dim() == 2 and keep.shape[0] > 0:
            k = keep.detach().float().sum(0)
            self.keep_sum = (
                k if self.keep_sum is None or self.keep_sum.shape != k.shape else self.keep_sum + k
            )
            self.keep_rows += keep.shape[0]
        cm = info.get("complexity_mean")
        if cm is not None:
            # Python floats stay Python floats (no tensor creation per micro-batch).
            self.complexity_sum = self.complexity_sum + (
                cm.detach().float().mean() if isinstance(cm, Tensor) else float(cm))
            self.complexity_count += 1
        ran = info.get("skip_mask")  # 1 where the reasoning engine ran for the sample
        if isinstance(ran, Tensor) and ran.numel() > 0:
            self.skipped_sum = self.skipped_sum + (1.0 - ran.detach().float().mean())
            self.skipped_count += 1
        elif info.get("skipped") is not None:
            self.skipped_sum = self.skipped_sum + float(bool(info["skipped"]))
            self.skipped_count += 1
        stats = outputs.get("scratchpad_stats")
        if stats and stats.get("total_slots"):
            self.scratchpad = stats
        mem = outputs.get("memory_statistics") or {}
        if "slots_used" in mem:
            self.memory_slots_used = mem["slots_used"]
        unc = outputs.get("uncertainty_estimates") or {}
        epi = unc.get("epistemic")
        if isinstance(epi, Tensor) and epi.numel() > 0:
            self.epistemic_sum = self.epistemic_sum + epi.detach().float().mean()
            self.epistemic_count += 1

    # -- flush (one host sync) -------------------------------------------------------------

    def flush(self) -> dict[str, Any]:
        """The step-event fields for the interval since the last flush, then reset."""
        elapsed = max(1e-9, time.perf_counter() - self._t0)
        # One stacked transfer instead of one .item() per number.
        names: list[str] = ["loss", "loss_n", "grad_norm", "complexity", "skipped", "epistemic"]
        values = [
            self.loss_sum,
            self.loss_count,
            _tensor(self.grad_norm_sum, self.device),
            self.complexity_sum,
            self.skipped_sum,
            self.epistemic_sum,
        ]
        extra_names = sorted(self.extra)
        names += [f"x:{n}" for n in extra_names]
        values += [_tensor(self.extra[n], self.device) for n in extra_names]
        host = torch.stack([v.reshape(()) for v in values]).tolist()
        got = dict(zip(names, host, strict=True))
        fields: dict[str, Any] = {
            "loss": got["loss"] / got["loss_n"] if got["loss_n"] > 0 else None,
            "grad_norm": _finite_or_none(
                got["grad_norm"] / self.grad_norm_count if self.grad_norm_count else None
            ),
            "tokens_per_s": self.tokens / elapsed,
            "samples_per_s": self.samples / elapsed,
            "complexity_mean": (
                got["complexity"] / self.complexity_count if self.complexity_count else None
            ),
            "reasoning_skipped_frac": (
                got["skipped"] / self.skipped_count if self.skipped_count else None
            ),
            "epistemic_mean": got["epistemic"] / self.epistemic_count
            if self.epistemic_count
            else None,
            "branch_scores_mean": (
                (self.branch_sum / self.branch_rows).tolist()
                if self.branch_sum is not None
                else None
            ),
            "branch_keep_frac": (
                (self.keep_sum / self.keep_rows).tolist() if self.keep_sum is not None else None
            ),
            "scratchpad": _plain_scratchpad(self.scratchpad),
            "memory_slots_used": _int_or_none(self.memory_slots_used),
            "elapsed_s": elapsed,
        }
        metrics = {n: got[f"x:{n}"] / self.extra_counts[n] for n in extra_names}
        if metrics:
            fields["metrics"] = metrics
        self.reset()
        return fields


def memory_stats(device: torch.device | str) -> dict[str, int]:
    """Allocated / reserved / peak bytes: CUDA allocator stats, or process RSS on CPU."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return {
            "allocated": int(torch.cuda.memory_allocated(dev)),
            "reserved": int(torch.cuda.memory_reserved(dev)),
            "peak": int(torch.cuda.max_memory_allocated(dev)),
        }
    rss = _rss_bytes()
    return {"allocated": rss, "reserved": rss, "peak": max(rss, _peak_rss_bytes())}


def _rss_bytes() -> int:
    try:
        return int(_this_process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or restricted
        return 0


@functools.lru_cache(maxsize=4)
def _process(pid: int) -> Any:
    import psutil

    return psutil.Process(pid)


def _this_process() -> Any:
    return _process(os.getpid())  # keyed by pid: a forked child gets its own handle


def _peak_rss_bytes() -> int:
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * 1024 if os.uname().sysname != "Darwin" else int(peak)
    except Exception:  # noqa: BLE001 - not available on Windows
        return 0


def _finite_or_none(value: float | None) -> float | None:
    import math

    return value if value is not None and math.isfinite(value) else None


def _tensor(value: Tensor | float, device: torch.device) -> Tensor:
    return value if isinstance(value, Tensor) else torch.tensor(float(value), device=device)


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return int(value.item())
    return int(value)


def _plain_scratchpad(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    if not stats:
        return None
    out: dict[str, Any] = {}
    for key in ("used_slots", "total_slots", "step_counter"):
        v = stats.get(key)
        out[key] = int(v.item()) if isinstance(v, Tensor) else (int(v) if v is not None else 0)
    types = stats.get("slot_types") or []
    out["slot_types"] = types.tolist() if isinstance(types, Tensor) else [int(t) for t in types]
    return out
