"""The compressed trainer: AdamW with block-quantised moments per model component (training.md §6).

Parameters are sorted into component groups by module name (:func:`group_parameters`):

========================  ==========================================  ==========================
group                     parameters                                  moment storage
========================  ==========================================  ==========================
``protected``             norms, biases, gates, scalars (any < 2-D)   fp32, never quantised
``memory``                ``neural_memory``, scratchpad, ``continual``  bf16 (16 bits)
``knowledge_graph``       ``knowledge_graph``                         bf16 (16 bits)
``reasoning``             ``reasoning_engine`` (minus the scratchpad)  12 bits, 2 values / 3 bytes
``bulk``                  everything else                             8 bits, blockwise
========================  ==========================================  ==========================

Each step dequantises the moments to fp32, applies the AdamW update in fp32 and requantises.
The first moment ``m`` is stored signed; the second as ``√v`` rounded *up*, so the update's
denominator is never under-estimated (a ``√v`` rounded to 0 would make the step ``m/ε``).

**Weights stay fp32 (a deliberate choice).** The spec's "memory and knowledge-graph state in
16-bit" is applied to their optimizer moments, not to the module weights: bf16 weights with an
fp32 master copy would cost 6 bytes per parameter instead of 4, and bf16 weights without a master
copy silently drop every update smaller than 2⁻⁸ of the weight (a 3e-4 learning rate lives below
that). The persistent memory buffers belong to the model and keep its dtype. Measured ratios,
not the seed's, are what :meth:`CompressedAdamW.state_bytes` and the benchmark report.

**Breath-safety** (:class:`BreathSafety`) runs every ``check_every`` steps and before each
checkpoint: (1) all optimizer state finite, (2) each group's quantisation error under its bound
(8-bit 0.03, 12-bit 0.004, 16-bit 0.01) — otherwise the group is promoted 8 → 12 → 16 → 32 bits,
(3) the loss EMA under ``spike_factor`` × the best EMA. (1) or (3) failing rolls back to the last
checkpoint.

The quantisation error of a group is measured on the step it is requested for: the exact fp32
moments computed in that step (``m`` and ``√v``) are the reference ``x`` and what the storage
decodes back is ``x̂``; the group error is ``max(‖m−m̂‖/‖m‖, ‖√v−√v̂‖/‖√v‖)`` with the norms taken
over every parameter of the group together.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from core.train.quant import (
    BLOCK_SIZE,
    QTensor,
    dequantize_blockwise,
    quantize_blockwise,
    squared_error_parts,
    storage_dtype,
)

# Component group → moment storage bits (training.md §6).
GROUP_BITS: dict[str, int] = {
    "protected": 32,
    "memory": 16,
    "knowledge_graph": 16,
    "reasoning": 12,
    "bulk": 8,
}
GROUP_ORDER = tuple(GROUP_BITS)
# Relative quantisation error bound per storage width; 32 bits is lossless.
ERROR_BOUNDS: dict[int, float] = {8: 0.03, 12: 0.004, 16: 0.01, 32: 0.0}
PROMOTION: dict[int, int] = {8: 12, 12: 16, 16: 32}

_NORM = re.compile(r"(^|\.)(\w*_norm|norm|norm_\w*|\w*norms?)(\.|$)")
# A gate: a module called `gate`, `*_gate` or `gate_*` — but not SwiGLU's `gate_proj`, a bulk weight.
_GATE = re.compile(r"(^|\.)(gate|\w+_gate|gate_(?!proj)\w+)(\.|$)")
_SCRATCHPAD = re.compile(r"(^|\.)scratchpad(\.|$)|(^|\.)\w*scratchpad\w*(\.|$)")


def component_of(name: str, param: torch.Tensor) -> str:
    """The compressed-trainer group of a parameter, from its qualified name and shape."""
    if param.ndim < 2 or name.endswith("bias") or _NORM.search(name) or _GATE.search(name):
        return "protected"
    if _SCRATCHPAD.search(name):
        return "memory"
    top = name.split(".", 1)[0]
    if top in ("neural_memory", "continual_learning"):
        return "memory"
    if top == "knowledge_graph":
        return "knowledge_graph"
    if top == "reasoning_engine":
        return "reasoning"
    return "bulk"


def group_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters by component group (all groups present, possibly empty).

    Tied weights appear once (``named_parameters`` deduplicates them).
    """
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUP_ORDER}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[component_of(name, param)].append((name, param))
    return groups


def compressed_param_groups(
    model: nn.Module, bits: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """Optimizer param groups, one per non-empty component, with its storage ``bits``."""
    chosen = {**GROUP_BITS, **(bits or {})}
    return [
        {"params": [p for _, p in named], "component": comp, "bits": chosen[comp]}
        for comp, named in group_parameters(model).items()
        if named
    ]


_MOMENTS = (("exp_avg", True), ("exp_avg_sq", False))  # (state name, signed)


class CompressedAdamW(torch.optim.Optimizer):
    """AdamW whose moments are stored quantised per param group (``bits`` 8, 12, 16 or 32).

    Accepts parameters or param groups; a group may carry ``component`` (a name for reports)
    and ``bits``. Weight decay is decoupled and applies to ≥ 2-D parameters only (training.md §3),
    so norms, biases and scalars are never decayed whatever group they are in.

    State per parameter: ``step`` (fp32 scalar) and, per moment, ``<name>_codes`` and
    ``<name>_scales`` (``exp_avg`` = m, signed; ``exp_avg_sq`` = √v, unsigned, rounded up). Only
    tensors, so ``state_dict()`` saved with ``torch.save`` loads with ``weights_only=True``.
    Under FSDP the state belongs to this rank's shard and stays a plain tensor.
    """

    shard_local_state = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        bits: int = 8,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if bits not in ERROR_BOUNDS:
            raise ValueError(f"bits must be one of {tuple(ERROR_BOUNDS)}, got {bits}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "bits": bits,
            "component": "default",
            "block_size": block_size,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["bits"] not in ERROR_BOUNDS:
                raise ValueError(
                    f"param group {group['component']!r}: bits must be one of "
                    f"{tuple(ERROR_BOUNDS)}, got {group['bits']}"
                )
        # Set by request_error_measurement(); filled by the next step().
        self._measure = False
        self.last_errors: dict[str, float] = {}

    # ----------------------------------------------------------------- storage helpers
    def _encode(self, x: torch.Tensor, group: dict[str, Any], signed: bool) -> QTensor:
        return quantize_blockwise(
            x, group["bits"], signed=signed, block_size=group["block_size"], round_up=not signed
        )

    def _decode(
        self,
        state: dict[str, torch.Tensor],
        name: str,
        p: torch.Tensor,
        group: dict[str, Any],
        signed: bool,
    ) -> torch.Tensor:
        q = QTensor(
            state[f"{name}_codes"],
            state[f"{name}_scales"],
            group["bits"],
            signed,
            tuple(_local(p).shape),
            group["block_size"],
        )
        return dequantize_blockwise(q)

    def _store(self, state: dict[str, torch.Tensor], name: str, q: QTensor) -> None:
        state[f"{name}_codes"] = q.codes
        state[f"{name}_scales"] = q.scales

    def _init_state(self, p: torch.Tensor, group: dict[str, Any]) -> dict[str, torch.Tensor]:
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.float32)
        local = _local(p)
        zeros = torch.zeros(local.shape, dtype=torch.float32, device=local.device)
        for name, signed in _MOMENTS:
            self._store(state, name, self._encode(zeros, group, signed))
        return state

    # ----------------------------------------------------------------------- the update
    def request_error_measurement(self) -> None:
        """Measure each group's quantisation error during the next :meth:`step`."""
        self._measure = True

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        measure = self._measure
        self._measure = False
        # component → [Σ‖m−m̂‖², Σ‖m‖², Σ‖√v−√v̂‖², Σ‖√v‖²]
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0])
        sharded = False
        for group in self.param_groups:
            # Bias correction uses each parameter's own step count (one that had no gradient
            # in some steps lags behind), so parameters are batched by equal counts.
            by_step: dict[float, list[_Item]] = defaultdict(list)
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("CompressedAdamW does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state = self._init_state(param, group)
                state["step"] = state["step"] + 1  # not in place: a loaded state may be shared
                # FSDP: update this rank's shard; its state is quantised shard-locally.
                local = _local(param)
                sharded = sharded or local is not param
                item = _Item(local, _local(param.grad), state, param.ndim)
                by_step[float(state["step"].item())].append(item)
            acc = sums[group["component"]] if measure else None
            for step, items in by_step.items():
                for chunk in _chunks(items, group, CHUNK_VALUES):
                    self._update_chunk(chunk, group, step, acc)
        if measure:
            if sharded:
                sums = _all_reduce_sums(sums, self.components())
            self.last_errors = {
                comp: max(_ratio(a[0], a[1]), _ratio(a[2], a[3])) for comp, a in sums.items()
            }
        return loss

    def _update_chunk(
        self, items: list[_Item], group: dict[str, Any], step: float, acc: list[float] | None
    ) -> None:
        """AdamW on several parameters at once, in the flat (block-padded) layout of their state.

        One dequantise → fp32 update → requantise pass over the concatenation: a few dozen tensor
        operations per chunk instead of per parameter (small models were dominated by them).
        """
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        bits, block = group["bits"], group["block_size"]
        lengths = [_stored_values(it.p.numel(), bits, block) for it in items]
        total = sum(lengths)
        first = items[0]
        if len(items) == 1 and lengths[0] == first.p.numel() and first.grad.is_contiguous():
            grad = first.grad.reshape(-1).to(torch.float32)  # read-only below: no copy needed
        else:
            grad = torch.zeros(total, dtype=torch.float32, device=first.p.device)
            offset = 0
            for it, n in zip(items, lengths, strict=True):
                grad[offset : offset + it.p.numel()].copy_(it.grad.reshape(-1))
                offset += n
        m = self._decode_flat(items, "exp_avg", group, True, total)
        v = self._decode_flat(items, "exp_avg_sq", group, False, total).square_()
        m.lerp_(grad, 1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        del grad
        sqrt_v = v.sqrt_()  # v is not needed any more: reuse its memory for √v
        denom = sqrt_v.mul(1.0 / math.sqrt(1.0 - beta2**step)).add_(eps)
        if wd != 0.0:
            decayed = [it.p for it in items if it.ndim >= 2]
            if decayed:
                torch._foreach_mul_(decayed, 1.0 - lr * wd)
        alpha = -lr / (1.0 - beta1**step)
        plain = [it for it in items if it.p.dtype == torch.float32]
        offsets, offset = [], 0
        for n in lengths:
            offsets.append(offset)
            offset += n
        if plain:  # p += alpha · m / denom, fused, on every fp32 parameter of the chunk
            spans = [
                (o, it) for o, it in zip(offsets, items, strict=True) if it.p.dtype == torch.float32
            ]
            torch._foreach_addcdiv_(
                [it.p for _, it in spans],
                [m[o : o + it.p.numel()].view(it.p.shape) for o, it in spans],
                [denom[o : o + it.p.numel()].view(it.p.shape) for o, it in spans],
                value=alpha,
            )
        for o, it in zip(offsets, items, strict=True):
            if it.p.dtype != torch.float32:
                n = it.p.numel()
                step_values = (m[o : o + n] / denom[o : o + n]).view(it.p.shape)
                it.p.add_(step_values.to(it.p.dtype), alpha=alpha)
        del denom
        qm = quantize_blockwise(m, bits, signed=True, block_size=block)
        qv = quantize_blockwise(sqrt_v, bits, signed=False, block_size=block, round_up=True)
        if acc is not None:
            dm, rm = squared_error_parts(m, dequantize_blockwise(qm))
            dv, rv = squared_error_parts(sqrt_v, dequantize_blockwise(qv))
            acc[0] += dm
            acc[1] += rm
            acc[2] += dv
            acc[3] += rv
        for name, q in (("exp_avg", qm), ("exp_avg_sq", qv)):
            codes, scales = _split_storage(q, lengths, bits, block)
            for it, c, sc, n in zip(items, codes, scales, lengths, strict=True):
                if bits in (16, 32):
                    c = c.view(it.p.shape) if n == it.p.numel() else c
                it.state[f"{name}_codes"], it.state[f"{name}_scales"] = c, sc

    def _decode_flat(
        self, items: list[_Item], name: str, group: dict[str, Any], signed: bool, total: int
    ) -> torch.Tensor:
        """The stored moment of ``items`` decoded into one new fp32 vector of ``total`` values."""
        codes = [it.state[f"{name}_codes"].reshape(-1) for it in items]
        scales = [it.state[f"{name}_scales"] for it in items]
        joined = codes[0] if len(codes) == 1 else torch.cat(codes)
        joined_scales = scales[0] if len(scales) == 1 else torch.cat(scales)
        q = QTensor(joined, joined_scales, group["bits"], signed, (total,), group["block_size"])
        out = dequantize_blockwise(q)
        # fp32 storage decodes without a copy; the update works in place, so copy it here.
        return out.clone() if out.data_ptr() == joined.data_ptr() else out

    # ------------------------------------------------------------- breath-safety helpers
    def components(self) -> dict[str, int]:
        """Component name → current storage bits."""
        return {g["component"]: g["bits"] for g in self.param_groups}

    def nonfinite_components(self) -> list[str]:
        """Components holding any non-finite state value (scales or float codes)."""
        bad: set[str] = set()
        sharded = False
        for group in self.param_groups:
            for p in group["params"]:
                sharded = sharded or _local(p) is not p
                state = self.state.get(p)
                if not state:
                    continue
                if any(
                    t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
                    for t in state.values()
                ):
                    bad.add(group["component"])
                    break
        if sharded:  # every rank must agree, or only some would roll back
            flags = {c: [1.0 if c in bad else 0.0] * 4 for c in self.components()}
            summed = _all_reduce_sums(flags, self.components())
            bad = {c for c, v in summed.items() if v[0] > 0}
        return sorted(bad)

    def promote(self, component: str) -> int:
        """Move a component to the next wider storage (8 → 12 → 16 → 32); return the new bits.

        The stored moments are decoded at the old width and re-encoded at the new one.
        """
        new_bits = 0
        for group in self.param_groups:
            if group["component"] != component:
                continue
            old = group["bits"]
            if old not in PROMOTION:
                return old
            decoded = {}
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    decoded[p] = [self._decode(state, n, p, group, s) for n, s in _MOMENTS]
            group["bits"] = new_bits = PROMOTION[old]
            for p, moments in decoded.items():
                for (name, signed), x in zip(_MOMENTS, moments, strict=True):
                    self._store(self.state[p], name, self._encode(x, group, signed))
        if not new_bits:
            raise KeyError(f"no param group has component {component!r}")
        return new_bits

    def reset_state(self, component: str) -> None:
        """Forget the moments of a component (they restart from zero at the next step)."""
        for group in self.param_groups:
            if group["component"] == component:
                for p in group["params"]:
                    self.state.pop(p, None)

    def state_bytes(self) -> dict[str, int]:
        """Actual bytes of optimizer state per component (codes, scales and step counters)."""
        out: dict[str, int] = {}
        for group in self.param_groups:
            total = out.get(group["component"], 0)
            for p in group["params"]:
                for t in self.state.get(p, {}).values():
                    total += t.numel() * t.element_size()
            out[group["component"]] = total
        return out

    # ------------------------------------------------------------------ save and load
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` keeping the stored dtypes (no float casting of codes).

        Raises ValueError naming the group or parameter when the saved state does not fit.
        """
        saved_groups = state_dict.get("param_groups")
        saved_state = state_dict.get("state")
        if not isinstance(saved_groups, list) or not isinstance(saved_state, dict):
            raise ValueError("optimizer state must have 'state' and 'param_groups'")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"optimizer state has {len(saved_groups)} param groups, this model has "
                f"{len(self.param_groups)}"
            )
        id_map: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"param group {group['component']!r}: saved state has "
                    f"{len(saved['params'])} parameters, the model has {len(group['params'])}"
                )
            if saved.get("bits") not in ERROR_BOUNDS:
                raise ValueError(
                    f"param group {group['component']!r}: bad bits {saved.get('bits')!r}"
                )
            for idx, p in zip(saved["params"], group["params"], strict=True):
                id_map[idx] = (p, saved)
        new_state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for idx, entry in saved_state.items():
            if idx not in id_map:
                raise ValueError(
                    f"optimizer state names parameter index {idx}, which no group holds"
                )
            p, saved = id_map[idx]
            new_state[p] = self._checked_entry(idx, entry, p, saved)
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            for key, value in saved.items():
                if key != "params":
                    group[key] = tuple(value) if key == "betas" else value
        self.state = new_state

    def _checked_entry(
        self, idx: int, entry: dict[str, Any], p: torch.Tensor, group: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        step = entry.get("step")
        if not isinstance(step, torch.Tensor):
            raise ValueError(f"optimizer state of parameter {idx}: 'step' is missing")
        out["step"] = step.to(torch.float32).reshape(())
        for name, signed in _MOMENTS:
            codes, scales = entry.get(f"{name}_codes"), entry.get(f"{name}_scales")
            if not isinstance(codes, torch.Tensor) or not isinstance(scales, torch.Tensor):
                raise ValueError(f"optimizer state of parameter {idx}: {name!r} is missing")
            want = storage_dtype(group["bits"], signed)
            shape = tuple(_local(p).shape)
            if codes.dtype != want:
                raise ValueError(
                    f"optimizer state of parameter {idx}: {name} codes are {codes.dtype}, "
                    f"{group['bits']}-bit storage needs {want}"
                )
            q = QTensor(
                codes.to(p.device),
                scales.to(p.device, torch.float32),
                group["bits"],
                signed,
                shape,
                group.get("block_size", BLOCK_SIZE),
            )
            try:
                dequantize_blockwise(q)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(
                    f"optimizer state of parameter {idx}: {name} does not fit shape {shape} ({exc})"
                ) from exc
            out[f"{name}_codes"], out[f"{name}_scales"] = q.codes, q.scales
        return out


# One update pass handles at most this many values (whole parameters; a larger one alone): it
# bounds the fp32 temporaries (about five vectors of this length) and keeps them in cache, while
# small parameters share one pass (measured: 2^22 was slower than 2^18 on a 2-core CPU).
CHUNK_VALUES = 1 << 18


@dataclass
class _Item:
    """A parameter (its local shard under FSDP) with its gradient and optimizer state."""

    p: torch.Tensor
    grad: torch.Tensor
    state: dict[str, torch.Tensor]
    ndim: int  # of the full parameter: weight decay applies to >= 2-D ones


def _stored_values(numel: int, bits: int, block: int) -> int:
    """Values a parameter takes in the flat state layout (8/12 bits: whole blocks)."""
    return numel if bits in (16, 32) else -(-numel // block) * block


def _chunks(items: list[_Item], group: dict[str, Any], limit: int) -> Iterable[list[_Item]]:
    chunk: list[_Item] = []
    size = 0
    for it in items:
        n = _stored_values(it.p.numel(), group["bits"], group["block_size"])
        if chunk and size + n > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(it)
        size += n
    if chunk:
        yield chunk


def _split_storage(
    q: QTensor, lengths: list[int], bits: int, block: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-parameter (codes, scales) views of a chunk's quantised storage."""
    if bits in (16, 32):
        empty = q.scales
        return list(q.codes.reshape(-1).split(lengths)), [empty] * len(lengths)
    code_sizes = [n * 3 // 2 for n in lengths] if bits == 12 else lengths
    return list(q.codes.split(code_sizes)), list(q.scales.split([n // block for n in lengths]))


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (the tensor itself otherwise); in-place updates reach the DTensor."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _all_reduce_sums(
    sums: dict[str, list[float]], components: dict[str, int]
) -> dict[str, list[float]]:
    """Sum the per-shard error parts over ranks so every rank decides on the same errors."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return sums
    names = sorted(components)
    t = torch.tensor([sums[n] if n in sums else [0.0] * 4 for n in names], dtype=torch.float64)
    dist.all_reduce(t)
    return {n: [float(x) for x in row] for n, row in zip(names, t.tolist(), strict=True)}


def _ratio(diff: float, ref: float) -> float:
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return math.sqrt(diff / ref)


def fp32_adamw_state_bytes(params: Iterable[torch.Tensor]) -> int:
    """Bytes torch's AdamW keeps for these parameters: fp32 m and v plus a step scalar each."""
    return sum(2 * p.numel() * 4 + 4 for p in params)


@dataclass
class BreathCheck:
    """The outcome of one breath-safety check."""

    errors: dict[str, float] = field(default_factory=dict)
    promoted: dict[str, tuple[int, int]] = field(default_factory=dict)  # component → (old, new)
    nonfinite: list[str] = field(default_factory=list)
    loss_spike: bool = False

    @property
    def rollback(self) -> bool:
        return bool(self.nonfinite) or self.loss_spike


class BreathSafety:
    """Periodic health check of the compressed optimizer and the loss (training.md §6, §5.7).

    Feed every step's loss to :meth:`observe_loss`; call :meth:`check` right after a step
    whose error measurement was requested (``CompressedAdamW.request_error_measurement``).
    ``bounds`` overrides the per-bit error bounds (tests force promotion with a tight bound).
    """

    def __init__(
        self,
        check_every: int = 100,
        spike_factor: float = 3.0,
        ema_alpha: float = 0.05,
        arm_after: int = 20,
        bounds: dict[int, float] | None = None,
    ) -> None:
        self.check_every = check_every
        self.spike_factor = spike_factor
        self.ema_alpha = ema_alpha
        self.arm_after = arm_after
        self.bounds = {**ERROR_BOUNDS, **(bounds or {})}
        self.loss_ema: float | None = None
        self.best_ema: float | None = None
        self.global_ema = math.nan  # the (rank-averaged) EMA judged at the last check
        self.observed = 0

    def observe_loss(self, loss: float) -> None:
        """Update this process's loss EMA (α 0.05); non-finite losses are the rails' business."""
        if not math.isfinite(loss):
            return
        self.observed += 1
        a = self.ema_alpha
        self.loss_ema = loss if self.loss_ema is None else (1 - a) * self.loss_ema + a * loss

    def check(
        self, optimizer: CompressedAdamW, reduce: Callable[[float], float] | None = None
    ) -> BreathCheck:
        """Run the three checks; promotes groups over their bound in place.

        ``reduce`` averages a number over ranks (distributed runs): every rank then judges the
        same EMA — the mean of the ranks' EMAs, which is the EMA of the mean loss — and takes
        the same decision. The best EMA is the lowest seen at a check once armed.
        """
        result = BreathCheck(errors=dict(optimizer.last_errors))
        result.nonfinite = optimizer.nonfinite_components()
        bits = optimizer.components()
        for component, error in result.errors.items():
            old = bits.get(component, 32)
            bound = self.bounds.get(old, 0.0)
            if old in PROMOTION and not error <= bound:  # `not <=` also catches NaN
                result.promoted[component] = (old, optimizer.promote(component))
        ema = self.loss_ema if self.loss_ema is not None else math.nan
        observed = float(self.observed)
        if reduce is not None:
            ema, observed = reduce(ema), reduce(observed)
        self.global_ema = ema
        if math.isfinite(ema) and observed >= self.arm_after:
            result.loss_spike = (
                self.best_ema is not None and ema > self.spike_factor * self.best_ema
            )
            if not result.loss_spike and (self.best_ema is None or ema < self.best_ema):
                self.best_ema = ema
        return result

    def reset_loss_tracking(self) -> None:
        """After a rollback: forget the EMA so the restored run re-arms from scratch."""
        self.loss_ema = None
        self.observed = 0

    def state(self) -> dict[str, Any]:
        return {"loss_ema": self.loss_ema, "best_ema": self.best_ema, "observed": self.observed}

    def load_state(self, state: dict[str, Any]) -> None:
        self.loss_ema = state.get("loss_ema")
        self.best_ema = state.get("best_ema")
        self.observed = int(state.get("observed", 0))


# ============================================================================================
# The trainer
# ============================================================================================

from core.errors import AeronError, ConfigError  # noqa: E402
from core.train.simple import SimpleTrainer  # noqa: E402  (the optimizer above needs no engine)


class TrainingDiverged(AeronError):
    """Breath-safety rolled back too often: the run cannot continue as configured."""


class CompressedTrainer(SimpleTrainer):
    """The simple trainer's recipe with :class:`CompressedAdamW` and breath-safety.

    Options (``RunConfig.options``, ``--set KEY=VALUE``): ``check_every`` (100),
    ``rail_spike_factor`` (3.0), ``rail_arm_after`` (20 steps), ``rail_max_nonfinite`` (3),
    ``rail_max_rollbacks`` (5), ``bound_8``/``bound_12``/``bound_16`` (override the error
    bounds), ``bits_<group>`` (start a group at other bits).

    Events: a ``warning`` with ``code="precision_promoted"`` when a group is promoted, and
    ``code="rollback"`` when non-finite state, a loss spike or repeated non-finite steps restore
    the last checkpoint (the rail LR multiplier is halved each time). Step events carry
    ``metrics.optimizer_state_bytes`` and ``metrics.optimizer_state_ratio`` (vs fp32 AdamW).
    """

    name = "compressed"
    description = (
        "AdamW with block-quantised moments per component (8/12/16-bit) and breath-safety checks"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.config.options
        bounds = {b: float(opts[f"bound_{b}"]) for b in (8, 12, 16) if f"bound_{b}" in opts}
        self.safety = BreathSafety(
            check_every=int(opts.get("check_every", 100)),
            spike_factor=float(opts.get("rail_spike_factor", 3.0)),
            arm_after=int(opts.get("rail_arm_after", 20)),
            bounds=bounds,
        )
        if self.safety.check_every < 1:
            raise ConfigError(f"option check_every must be >= 1, got {self.safety.check_every}")
        self.max_nonfinite = int(opts.get("rail_max_nonfinite", 3))
        self.max_rollbacks = int(opts.get("rail_max_rollbacks", 5))
        self.lr_multiplier = 1.0
        self.rollbacks = 0
        self.promotions: list[dict[str, Any]] = []
        self._measuring = False
        self._just_rolled_back = False

    @property
    def compressed_optimizer(self) -> CompressedAdamW:
        assert isinstance(self.optimizer, CompressedAdamW)
        return self.optimizer

    # ---------------------------------------------------------------------------- setup
    def build_optimizer(self) -> torch.optim.Optimizer:
        opts = self.config.options
        bits = {g: int(opts[f"bits_{g}"]) for g in GROUP_BITS if f"bits_{g}" in opts}
        return CompressedAdamW(
            compressed_param_groups(self.model, bits),
            lr=self.base_lr,
            betas=(0.9, 0.95),
            eps=1e-8,
            weight_decay=self.config.weight_decay,
        )

    def lr_at(self, step: int) -> float:
        return super().lr_at(step) * self.lr_multiplier

    # ----------------------------------------------------------------------------- step
    def _check_due(self, step: int) -> bool:
        """Breath-safety runs every ``check_every`` steps and on steps that may checkpoint."""
        cfg = self.config
        return (
            step % self.safety.check_every == 0
            or step % cfg.checkpoint_every == 0
            or step % cfg.eval_every == 0  # a new best validation loss saves a checkpoint
            or step >= self.total_steps
        )

    def train_step(self) -> None:
        self._just_rolled_back = False
        super().train_step()

    def optimizer_step(self, loss_sum: Tensor) -> tuple[Tensor, bool]:
        self._measuring = self._check_due(self.global_step + 1)
        if self._measuring:
            self.compressed_optimizer.request_error_measurement()
        return super().optimizer_step(loss_sum)

    def on_step_end(self, step: int, loss: Tensor | None) -> None:
        super().on_step_end(step, loss)
        if loss is not None:
            self.safety.observe_loss(float(loss))
        if self.consecutive_nonfinite >= self.max_nonfinite:
            self.rollback(f"{self.consecutive_nonfinite} consecutive non-finite steps")
            return
        if not self._measuring:
            return
        self._measuring = False
        opt = self.compressed_optimizer
        if not opt.last_errors:  # the update was skipped (non-finite): nothing measured
            return
        result = self.safety.check(opt, reduce=self._mean_over_ranks)
        for component, (old, new) in result.promoted.items():
            error = result.errors[component]
            self.promotions.append(
                {"step": step, "component": component, "from": old, "to": new, "error": error}
            )
            self.emit(
                "warning",
                message=(
                    f"{component}: quantisation error {error:.4g} over the {old}-bit bound "
                    f"{self.safety.bounds[old]:g}; moments now stored at {new} bits"
                ),
                code="precision_promoted",
                global_step=step,
            )
        opt.last_errors = {}
        if result.nonfinite:
            self.rollback(f"non-finite optimizer state in {', '.join(result.nonfinite)}")
        elif result.loss_spike:
            self.rollback(
                f"loss EMA {self.safety.global_ema:.4f} above {self.safety.spike_factor:g} x "
                f"best {self.safety.best_ema:.4f}"
            )

    def _mean_over_ranks(self, value: float) -> float:
        if self.dist is None or self.world_size <= 1:
            return value
        from core.train.distributed import all_reduce_mean

        return all_reduce_mean(value, self.dist)

    def step_event_extra(self) -> dict[str, Any]:
        extra = dict(super().step_event_extra())
        if isinstance(self.optimizer, CompressedAdamW):
            used = [
                p
                for g in self.optimizer.param_groups
                for p in g["params"]
                if p in self.optimizer.state
            ]
            total = sum(self.optimizer.state_bytes().values())
            metrics = dict(extra.get("metrics") or {})
            metrics["optimizer_state_bytes"] = total
            if total:
                metrics["optimizer_state_ratio"] = fp32_adamw_state_bytes(used) / total
            extra["metrics"] = metrics
        return extra

    # ------------------------------------------------------------------------- rollback
    def rollback(self, reason: str) -> None:
        """Restore the last checkpoint, keep promotions, halve the rail LR multiplier (§5.7).

        More than ``rail_max_rollbacks`` rollbacks end the run with :class:`TrainingDiverged`.
        """
        if self.rollbacks >= self.max_rollbacks:
            raise TrainingDiverged(
                f"training diverged: {reason} after {self.rollbacks} rollbacks "
                f"(rail_max_rollbacks={self.max_rollbacks}); lower the learning rate or "
                "resume from an earlier checkpoint"
            )
        opt = self.compressed_optimizer
        bits_before = opt.components()
        multiplier = self.lr_multiplier * 0.5
        rollbacks = self.rollbacks + 1
        promotions = list(self.promotions)
        from_step = self.global_step
        target = self.last_checkpoint
        if target is not None and target.is_dir():
            self.restore_checkpoint(target)
            where = f"restored {target.name} (step {self.global_step})"
        else:
            # No checkpoint yet: the damaged moments are the one thing we can repair.
            for component in opt.nonfinite_components():
                opt.reset_state(component)
            where = "no checkpoint yet: reset the non-finite optimizer state"
        for component, bits in bits_before.items():
            while opt.components().get(component, bits) < bits:
                opt.promote(component)
        self.lr_multiplier = multiplier
        self.rollbacks = rollbacks
        self.promotions = promotions
        self.consecutive_nonfinite = 0
        self.safety.reset_loss_tracking()
        self._just_rolled_back = True
        self.emit(
            "warning",
            message=f"breath-safety rollback at step {from_step}: {reason}; {where}; "
            f"lr multiplier now {multiplier:g}",
            code="rollback",
            reason=reason,
            global_step=self.global_step,
        )

    def save_checkpoint(
        self, name: str | None = None, best: bool = False, val_loss: float | None = None,
        *, reason: str | None = None,
    ) -> Any:
        if self._just_rolled_back and self.last_checkpoint is not None:
            return self.last_checkpoint  # this state *is* the last checkpoint
        # Never save poisoned state as the new "last good" checkpoint.
        bad = self.compressed_optimizer.nonfinite_components()
        if bad:
            self.rollback(f"non-finite optimizer state in {', '.join(bad)} before a checkpoint")
            if self.last_checkpoint is not None:
                return self.last_checkpoint
        return super().save_checkpoint(name=name, best=best, val_loss=val_loss, reason=reason)

    # ---------------------------------------------------------------------------- state
    def extra_state(self) -> dict[str, Any]:
        state = dict(super().extra_state())
        state["compressed"] = {
            "breath": self.safety.state(),
            "lr_multiplier": self.lr_multiplier,
            "rollbacks": self.rollbacks,
            "promotions": self.promotions,
        }
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        mine = state.get("compressed") or {}
        self.safety.load_state(mine.get("breath") or {})
        self.lr_multiplier = float(mine.get("lr_multiplier", 1.0))
        self.rollbacks = int(mine.get("rollbacks", 0))
        self.promotions = list(mine.get("promotions") or [])
