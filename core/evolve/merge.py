"""Model merging: soups, task arithmetic, TIES, DARE, SLERP, layer-wise and Fisher-weighted.

Every method works tensor by tensor in fp32 and casts back to the stored dtype, so a merge can
stream from safetensors files with peak memory near one model (the output) plus one tensor per
input. Spec: ``shared/spec/rlhf.md`` §5.

* soup:             ``Σ w_k θ_k / Σ w_k``
* task_arithmetic:  ``θ_base + λ Σ w_k τ_k / Σ w_k`` with ``τ_k = θ_k − θ_base``
* ties:             trim each ``τ_k`` to its top ``density`` by magnitude, elect the sign of the
                    summed mass, average the agreeing entries (disjoint mean), ``θ_base + λ τ_m``
* dare_linear / dare_ties: drop each task-vector entry with probability ``p = 1 − density`` and
                    rescale by ``1/(1 − p)`` (unbiased), then task arithmetic or TIES
* slerp:            spherical interpolation of two models (or of their task vectors with a base),
                    linear when the vectors are nearly parallel or tiny
* layerwise:        ``(1 − α_l) θ_A + α_l θ_B`` with a per-layer schedule
* fisher:           ``Σ w_k (F̂_k + ε) θ_k / Σ w_k (F̂_k + ε)`` with ``F̂_k = F_k / mean(F_k)`` each
                    model's diagonal Fisher divided by its own mean over the whole model and
                    ``ε = 1e-6`` (:data:`FISHER_FLOOR`). Entries whose Fisher is ~0 in every
                    model (a module that never got a gradient, a tensor without a Fisher) get the
                    plain weighted average; merging a model with itself returns it unchanged.

Every method returns its input when all the models are the same checkpoint (task arithmetic,
TIES and DARE with that checkpoint as the base, or with another base at density 1 and λ 1).

Non-float tensors and state buffers (memory slots, scratchpad commits, EWC state, counters) are
copied from the base model (or the first model when there is no base): averaging them has no
meaning.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError

METHODS = ("soup", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "layerwise", "fisher")
# What `aeron-tui merge --method` accepts: the per-tensor methods plus greedy soup, which is a
# search over soups (:func:`greedy_soup_checkpoints`) rather than a tensor formula.
CLI_METHODS = ("soup", "greedy_soup", *METHODS[1:])
NEEDS_BASE = ("task_arithmetic", "ties", "dare_linear", "dare_ties")

# Buffers that hold per-model state rather than learned weights.
_STATE_PATTERNS = (
    r"(^|\.)neural_memory\.(mem_keys|mem_values|usage|written|age|writes_total)$",
    r"(^|\.)scratchpad\.(committed|committed_mask|slot_type|slot_priority|slot_timestamp|step_counter)$",
    r"(^|\.)active_learning\.",
    r"(^|\.)ewc",
    r"(^|\.)num_batches_tracked$",
)
_STATE_RE = re.compile("|".join(_STATE_PATTERNS))
EWC_PREFIX = "ewc_state."  # core.model.continual stores Fishers as continual_learning.ewc_state.*
_LAYER_RE = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.")
# Added to every model's mean-normalised Fisher: a relative 1e-6 keeps the division defined
# where no model has information and turns it into the plain average there (mean(F̂) = 1).
FISHER_FLOOR = 1e-6
FISHER_SOURCES = ("auto", "stored", "data")


class MergeError(ConfigError):
    """Inputs that cannot be merged (mismatched keys or shapes, bad parameters)."""


@dataclass
class MergeParams:
    """Parameters of a merge; defaults follow the spec (density 0.6, seed 42, λ 1.0, t 0.5)."""

    method: str = "soup"
    weights: list[float] | None = None
    density: float = 0.6
    lam: float = 1.0
    t: float = 0.5
    seed: int = 42
    alphas: list[float] | None = None  # layer-wise schedule, one per layer index
    alpha_start: float = 0.0  # linear ramp when `alphas` is not given
    alpha_end: float = 1.0
    alpha_default: float = 0.5

    def validate(self, num_models: int, has_base: bool) -> None:
        if self.method not in METHODS:
            raise MergeError(f"unknown merge method {self.method!r}; choose one of {', '.join(METHODS)}")
        if num_models < 1:
            raise MergeError("give at least one model to merge")
        if self.method in NEEDS_BASE and not has_base:
            raise MergeError(f"method {self.method!r} needs a base model (--base): task vectors are θ − θ_base")
        if self.method in ("slerp", "layerwise") and num_models != 2:
            raise MergeError(f"method {self.method!r} merges exactly two models, got {num_models}")
        if not 0.0 < self.density <= 1.0:
            raise MergeError(f"density must be in (0, 1], got {self.density}")
        if not math.isfinite(self.lam):
            raise MergeError(f"lambda must be finite, got {self.lam}")
        if not 0.0 <= self.t <= 1.0:
            raise MergeError(f"t must be in [0, 1], got {self.t}")
        if self.weights is not None:
            if len(self.weights) != num_models:
                raise MergeError(f"{len(self.weights)} weights given for {num_models} models; give one weight per model")
            if any(not math.isfinite(w) for w in self.weights):
                raise MergeError(f"weights must be finite numbers, got {self.weights}")
            if self.method in ("soup", "ties", "dare_ties", "fisher") and any(w < 0 for w in self.weights):
                raise MergeError(f"method {self.method!r} needs non-negative weights, got {self.weights}")
            if sum(self.weights) <= 0:
                raise MergeError(f"weights must sum to a positive number (they are normalised by their sum), got {self.weights}")
        if self.alphas is not None and any(not 0.0 <= a <= 1.0 for a in self.alphas):
            raise MergeError(f"layer-wise alphas must lie in [0, 1], got {self.alphas}")

    def normalised_weights(self, n: int) -> list[float]:
        w = self.weights if self.weights is not None else [1.0] * n
        total = sum(w)
        return [x / total for x in w]


@dataclass
class TensorStats:
    """What a merge did to one tensor (the report lists these)."""

    name: str
    shape: list[int]
    copied: bool = False
    change_norm: float = 0.0  # ‖θ_merged − θ_reference‖ (reference = base, else first model)
    relative_change: float = 0.0
    trimmed_frac: float = 0.0  # TIES: entries zeroed by trimming, mean over models
    fisher_fallback_frac: float = 0.0  # Fisher: entries with no Fisher information (plain average)
    dropped_frac: float = 0.0  # DARE: entries dropped, mean over models
    sign_conflict_frac: float = 0.0  # entries where the kept task vectors disagree in sign


@dataclass
class MergeReport:
    method: str
    params: dict[str, Any]
    models: list[str]
    base: str | None
    tensors: list[TensorStats] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        merged = [t for t in self.tensors if not t.copied]
        n = max(1, len(merged))
        out = {
            "tensors_merged": len(merged),
            "tensors_copied": len(self.tensors) - len(merged),
            "mean_relative_change": sum(t.relative_change for t in merged) / n,
            "mean_trimmed_frac": sum(t.trimmed_frac for t in merged) / n,
            "mean_dropped_frac": sum(t.dropped_frac for t in merged) / n,
            "mean_sign_conflict_frac": sum(t.sign_conflict_frac for t in merged) / n,
        }
        if self.method == "fisher":
            # Tensors no model has Fisher information about were plainly averaged.
            out["tensors_plain_average"] = sum(1 for t in merged if t.fisher_fallback_frac >= 1.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": self.params,
            "models": self.models,
            "base": self.base,
            "summary": self.summary(),
            "tensors": [asdict(t) for t in self.tensors],
        }


# --------------------------------------------------------------------------- tensor operations


def is_state_tensor(name: str, tensor: torch.Tensor) -> bool:
    """True for tensors copied rather than merged: non-float values and per-model state buffers."""
    return not tensor.is_floating_point() or bool(_STATE_RE.search(name))


def layer_index(name: str) -> int | None:
    match = _LAYER_RE.match(name)
    return int(match.group(2)) if match else None


def trim_top_density(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (ties broken by order)."""
    if density >= 1.0:
        return tau.clone()
    flat = tau.flatten()
    k = max(1, int(math.ceil(density * flat.numel())))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().topk(k, sorted=False).indices] = True
    return torch.where(keep, flat, torch.zeros_like(flat)).view_as(tau)


def ties_combine(taus: Sequence[torch.Tensor], weights: Sequence[float]) -> tuple[torch.Tensor, float]:
    """Sign election by summed (weighted) mass, then the disjoint mean of agreeing entries.

    Returns the merged task vector and the fraction of entries where non-zero inputs disagree.
    """
    stacked = torch.stack([w * t for w, t in zip(weights, taus, strict=True)])
    elected = torch.sign(stacked.sum(dim=0))
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    count = agree.sum(dim=0).clamp(min=1)
    merged = (stacked * agree).sum(dim=0) / count
    nonzero = (stacked != 0).sum(dim=0)
    conflict = ((nonzero > 0) & (agree.sum(dim=0) < nonzero)).float().mean().item()
    return merged, conflict


def dare_drop(tau: torch.Tensor, density: float, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Drop entries with probability ``p = 1 − density`` and rescale the rest by ``1/(1 − p)``."""
    if density >= 1.0:
        return tau.clone(), 0.0
    mask = torch.rand(tau.shape, generator=generator) < density
    return torch.where(mask, tau / density, torch.zeros_like(tau)), 1.0 - mask.float().mean().item()


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors; linear when nearly parallel or tiny."""
    fa, fb = a.flatten(), b.flatten()
    na, nb = fa.norm(), fb.norm()
    if na < eps or nb < eps:
        return (1 - t) * a + t * b
    cos = torch.clamp(torch.dot(fa, fb) / (na * nb), -1.0, 1.0)
    if cos.abs() > 0.9995:
        return (1 - t) * a + t * b
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / sin) * a + (torch.sin(t * omega) / sin) * b


def _tensor_seed(seed: int, name: str, index: int) -> int:
    # Independent of iteration order, so streaming and in-memory merges drop the same entries.
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 31 + index) % (2**63 - 1)


def merge_tensor(
    name: str,
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    params: MergeParams,
    fishers: Sequence[torch.Tensor] | None = None,
    num_layers: int | None = None,
) -> tuple[torch.Tensor, TensorStats]:
    """Merge one tensor across models; returns the result (input dtype) and its statistics."""
    ref = base if base is not None else tensors[0]
    stats = TensorStats(name=name, shape=list(ref.shape))
    for i, t in enumerate(tensors):
        if t.shape != ref.shape:
            raise MergeError(
                f"tensor {name!r}: shape {tuple(t.shape)} in model {i + 1} differs from "
                f"{tuple(ref.shape)}; only models of the same architecture can be merged"
            )
    if is_state_tensor(name, ref):
        stats.copied = True
        return ref.clone(), stats

    dtype = ref.dtype
    xs = [t.to(torch.float32) for t in tensors]
    b = base.to(torch.float32) if base is not None else None
    w = params.normalised_weights(len(xs))
    method = params.method

    if method == "soup":
        out = sum(wi * x for wi, x in zip(w, xs, strict=True))
    elif method == "fisher":
        if fishers is None:  # no model has a Fisher for this tensor: nothing to weigh by
            out = sum(wi * x for wi, x in zip(w, xs, strict=True))
            stats.fisher_fallback_frac = 1.0
        else:
            if len(fishers) != len(xs):
                raise MergeError(f"tensor {name!r}: {len(fishers)} Fishers for {len(xs)} models")
            for i, f in enumerate(fishers):
                if f.shape != ref.shape:
                    raise MergeError(f"tensor {name!r}: the Fisher of model {i + 1} has shape "
                                     f"{tuple(f.shape)}, the tensor {tuple(ref.shape)}")
            fs = [wi * f.to(torch.float32).clamp_min(0.0) for f, wi in zip(fishers, w, strict=True)]
            info = sum(fs)
            floored = [f + wi * FISHER_FLOOR for f, wi in zip(fs, w, strict=True)]
            out = sum(f * x for f, x in zip(floored, xs, strict=True)) / sum(floored)
            stats.fisher_fallback_frac = (info < FISHER_FLOOR).float().mean().item()
    elif method in ("task_arithmetic", "ties", "dare_linear", "dare_ties"):
        assert b is not None
        taus = [x - b for x in xs]
        if method.startswith("dare"):
            dropped = []
            for i, tau in enumerate(taus):
                g = torch.Generator().manual_seed(_tensor_seed(params.seed, name, i))
                taus[i], frac = dare_drop(tau, params.density, g)
                dropped.append(frac)
            stats.dropped_frac = sum(dropped) / len(dropped)
        if method in ("ties", "dare_ties"):
            if method == "ties":
                trimmed = [trim_top_density(tau, params.density) for tau in taus]
                stats.trimmed_frac = sum(
                    ((tr == 0) & (tau != 0)).float().mean().item() for tr, tau in zip(trimmed, taus, strict=True)
                ) / len(taus)
                taus = trimmed
            merged_tau, stats.sign_conflict_frac = ties_combine(taus, [1.0] * len(taus))
        else:
            merged_tau = sum(wi * tau for wi, tau in zip(w, taus, strict=True))
        out = b + params.lam * merged_tau
    elif method == "slerp":
        if b is not None:
            out = b + slerp(xs[0] - b, xs[1] - b, params.t)
        else:
            out = slerp(xs[0], xs[1], params.t)
    elif method == "layerwise":
        alpha = layer_alpha(name, params, num_layers)
        out = (1 - alpha) * xs[0] + alpha * xs[1]
    else:  # validated earlier
        raise MergeError(f"unknown merge method {method!r}")

    reference = b if b is not None else xs[0]
    delta = (out - reference).norm().item()
    stats.change_norm = delta
    stats.relative_change = delta / max(reference.norm().item(), 1e-12)
    return out.to(dtype), stats


def layer_alpha(name: str, params: MergeParams, num_layers: int | None) -> float:
    index = layer_index(name)
    if index is None:
        return params.alpha_default
    if params.alphas is not None:
        if index >= len(params.alphas):
            raise MergeError(
                f"layer-wise schedule has {len(params.alphas)} values but tensor {name!r} is layer {index}"
            )
        return params.alphas[index]
    if not num_layers or num_layers <= 1:
        return params.alpha_start
    return params.alpha_start + (params.alpha_end - params.alpha_start) * index / (num_layers - 1)


def count_layers(names: Iterable[str]) -> int:
    indices = [i for i in (layer_index(n) for n in names) if i is not None]
    return max(indices) + 1 if indices else 0


# ------------------------------------------------------------------------------- state dicts

TensorSource = Callable[[str], torch.Tensor]


def check_compatible(key_sets: Sequence[Sequence[str]], labels: Sequence[str]) -> list[str]:
    """All models must hold the same tensor names; return them in the first model's order."""
    first = list(key_sets[0])
    reference = set(first)
    for keys, label in zip(key_sets[1:], labels[1:], strict=True):
        other = set(keys)
        if other != reference:
            missing = sorted(reference - other)[:3]
            extra = sorted(other - reference)[:3]
            raise MergeError(
                f"{label} does not have the same tensors as {labels[0]} "
                f"(missing {missing or 'none'}, extra {extra or 'none'}); "
                "only checkpoints of the same architecture can be merged"
            )
    return first


def merge_state_dicts(
    models: Sequence[Mapping[str, torch.Tensor]],
    params: MergeParams,
    base: Mapping[str, torch.Tensor] | None = None,
    fishers: Sequence[Mapping[str, torch.Tensor]] | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """In-memory merge of state dicts (the streaming merge in :func:`merge_sources` is equivalent)."""
    return merge_sources(
        [m.keys() for m in models],
        [m.__getitem__ for m in models],
        params,
        base_keys=base.keys() if base is not None else None,
        base_get=base.__getitem__ if base is not None else None,
        fisher_gets=[f.get for f in fishers] if fishers is not None else None,
        labels=labels,
    )


def merge_sources(
    model_keys: Sequence[Iterable[str]],
    model_gets: Sequence[TensorSource],
    params: MergeParams,
    base_keys: Iterable[str] | None = None,
    base_get: TensorSource | None = None,
    fisher_gets: Sequence[Callable[[str], torch.Tensor | None]] | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[dict[str, torch.Tensor], MergeReport]:
    """Merge tensor by tensor, reading each input tensor only when it is needed."""
    n = len(model_gets)
    labels = list(labels) if labels is not None else [f"model {i + 1}" for i in range(n)]
    has_base = base_get is not None
    params.validate(n, has_base)
    key_sets = [list(k) for k in model_keys]
    all_labels = labels
    if base_keys is not None:
        key_sets = [list(base_keys), *key_sets]
        all_labels = ["base", *labels]
    # EWC state (Fishers and anchors) is per model and may exist in some inputs only: it is
    # not merged, but carried over from the base (or first) model when that one has it.
    names = check_compatible([[k for k in ks if not is_ewc_key(k)] for ks in key_sets], all_labels)
    carried = [k for k in key_sets[0] if is_ewc_key(k)]
    num_layers = count_layers(names)
    report = MergeReport(
        method=params.method,
        params={k: v for k, v in asdict(params).items() if v is not None},
        models=labels,
        base="base" if has_base else None,
    )
    scales = None
    if params.method == "fisher":
        if fisher_gets is None or len(fisher_gets) != n:
            raise MergeError("fisher merging needs a Fisher for every model")
        scales = fisher_scales(names, fisher_gets, labels)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        tensors = [get(name) for get in model_gets]
        base_t = base_get(name) if base_get is not None else None
        fisher_ts = None
        if scales is not None and fisher_gets is not None and not is_state_tensor(name, tensors[0]):
            found = [get(name) for get in fisher_gets]
            # A tensor some model has no Fisher for gets the plain average (unknown is not
            # unimportant); otherwise each Fisher is divided by its model's mean.
            if all(f is not None for f in found):
                fisher_ts = [f.to(torch.float32) * scale for f, scale in zip(found, scales, strict=True)]  # type: ignore[union-attr]
        merged, stats = merge_tensor(name, tensors, base_t, params, fisher_ts, num_layers)
        out[name] = merged
        report.tensors.append(stats)
    first_get = base_get if base_get is not None else model_gets[0]
    for name in carried:
        out[name] = first_get(name).clone()
        report.tensors.append(TensorStats(name=name, shape=list(out[name].shape), copied=True))
    return out, report


def fisher_scales(
    names: Sequence[str],
    fisher_gets: Sequence[Callable[[str], torch.Tensor | None]],
    labels: Sequence[str],
) -> list[float]:
    """``1 / mean(F_k)`` per model over the merged tensors its Fisher covers (0 for an all-zero one).

    A Fisher's scale is not portable between models (it grows with the tokens per sample and the
    loss: see :mod:`core.model.continual`), so each is compared to its own mean. Reads each Fisher
    tensor once, one at a time.
    """
    sums = [0.0] * len(fisher_gets)
    counts = [0] * len(fisher_gets)
    for name in names:
        if _STATE_RE.search(name):  # state buffers are copied, never merged
            continue
        for i, get in enumerate(fisher_gets):
            f = get(name)
            if f is not None:
                sums[i] += float(f.double().clamp_min(0.0).sum())
                counts[i] += f.numel()
    for label, count in zip(labels, counts, strict=True):
        if count == 0:
            raise MergeError(
                f"{label} has no Fisher for any merged tensor; merge the checkpoints with "
                "`aeron-tui merge --method fisher`, which computes one on --data"
            )
    return [count / total if total > 0 else 0.0 for total, count in zip(sums, counts, strict=True)]


def is_ewc_key(name: str) -> bool:
    return f".{EWC_PREFIX}" in f".{name}"


def fisher_key(name: str) -> str:
    """Where a parameter's EWC Fisher lives in a saved state dict."""
    return f"continual_learning.{EWC_PREFIX}fisher.{name}"


def merge_safetensors(
    model_files: Sequence[str | os.PathLike[str]],
    params: MergeParams,
    out_file: str | os.PathLike[str],
    base_file: str | os.PathLike[str] | None = None,
    fisher_files: Sequence[str | os.PathLike[str] | None] | None = None,
) -> MergeReport:
    """Streaming merge of ``model.safetensors`` files into ``out_file`` (written atomically).

    Input tensors are memory-mapped and read one at a time, so peak memory stays near the size of
    the merged model. Nothing is written when the inputs are incompatible. Fisher merging reads
    model ``i``'s Fisher from ``fisher_files[i]`` (tensors named like the weights, as
    :func:`compute_fisher` writes them) when one is given, else the EWC Fisher stored in its own
    file (``continual_learning.ewc_state.fisher.*``).
    """
    from contextlib import ExitStack

    from safetensors import safe_open
    from safetensors.torch import save_file

    out_path = Path(out_file)
    with ExitStack() as stack:

        def open_(path: str | os.PathLike[str]) -> Any:
            p = Path(path)
            if not p.is_file():
                raise MergeError(f"{p}: no such safetensors file")
            try:
                return stack.enter_context(safe_open(str(p), framework="pt"))
            except Exception as exc:  # safetensors raises its own error types
                raise MergeError(f"{p}: not a readable safetensors file ({exc})") from exc

        handles = [open_(p) for p in model_files]
        base = open_(base_file) if base_file is not None else None

        def fisher_getter(h: Any, key: Callable[[str], str]) -> Callable[[str], torch.Tensor | None]:
            keys = set(h.keys())
            return lambda name: h.get_tensor(key(name)) if key(name) in keys else None

        fisher_gets = None
        if params.method == "fisher":
            files = list(fisher_files) if fisher_files is not None else [None] * len(handles)
            if len(files) != len(handles):
                raise MergeError(f"{len(files)} Fisher files given for {len(handles)} models")
            fisher_gets = [
                fisher_getter(h, fisher_key) if f is None else fisher_getter(open_(f), str)
                for h, f in zip(handles, files, strict=True)
            ]

        merged, report = merge_sources(
            [list(h.keys()) for h in handles],
            [h.get_tensor for h in handles],
            params,
            base_keys=list(base.keys()) if base is not None else None,
            base_get=base.get_tensor if base is not None else None,
            fisher_gets=fisher_gets,
            labels=[str(p) for p in model_files],
        )
        report.base = str(base_file) if base_file is not None else None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in merged.items()}, str(tmp))
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return report


# --------------------------------------------------------------------------------- checkpoints


def check_checkpoints_mergeable(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Verify every checkpoint and require the same model config and tokenizer; return the config.

    Refuses with an explanation naming the checkpoints and the differing fields — mergekit's
    "completes but produces garbage" failure mode is a mismatched vocabulary.
    """
    import json

    from core.runs.checkpoint import CONFIG_FILE, config_differences, verify_checkpoint

    first = Path(paths[0])
    manifests = [verify_checkpoint(p) for p in paths]
    configs = [json.loads((Path(p) / CONFIG_FILE).read_text(encoding="utf-8")) for p in paths]
    for p, m, c in zip(paths[1:], manifests[1:], configs[1:], strict=True):
        diff = config_differences(c, configs[0])
        if diff:
            raise MergeError(
                f"{p} and {first} have different model configs ({'; '.join(diff[:4])}); "
                + _module_mismatch_hint(c, configs[0])
            )
        if m.get("tokenizer_sha256") != manifests[0].get("tokenizer_sha256"):
            raise MergeError(
                f"{p} and {first} use different tokenizers; merged weights would read tokens "
                "differently. Run `aeron-tui tokenizer upgrade` on one of them first"
            )
    return configs[0]


def _module_mismatch_hint(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Why two configs differ when one was trained with knowledge-graph/image/task data."""
    from core.model.modules import DATA_FED_MODULES, MODULE_NAMES

    differ = [s for s in DATA_FED_MODULES if bool(a.get(s)) != bool(b.get(s))]
    if not differ:
        return "only checkpoints of the same profile can be merged"
    names = ", ".join(MODULE_NAMES[s] for s in differ)
    return (f"only one of them has the {names} module (built only when the training data has "
            "its input); merge checkpoints trained on the same kind of data, or `continue` one "
            "on the other's data first")


@dataclass
class CheckpointMergeResult:
    path: Path
    report: MergeReport
    sanity: dict[str, dict[str, float]] = field(default_factory=dict)


def merge_checkpoints(
    models: Sequence[str | os.PathLike[str]],
    params: MergeParams,
    out: str | os.PathLike[str],
    base: str | os.PathLike[str] | None = None,
    sanity_data: str | os.PathLike[str] | None = None,
    sanity_samples: int = 128,
    report_params: dict[str, Any] | None = None,
    fisher_data: str | os.PathLike[str] | None = None,
    fisher_samples: int = 128,
    fisher_source: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> CheckpointMergeResult:
    """Merge checkpoint directories into a new checkpoint with lineage and a merge report.

    Everything is checked before anything is written; the output directory appears atomically.
    With ``sanity_data`` (a styles.jsonl) the validation loss and bits per byte of every input
    and of the result are measured and stored in the report.

    Fisher merging takes each model's Fisher from ``fisher_source``: ``stored`` (the EWC Fisher a
    continual run saved in the checkpoint), ``data`` (computed by :func:`compute_fisher` on
    ``fisher_samples`` samples of ``fisher_data``) or ``auto`` (stored when the checkpoint has
    one, else computed). ``progress`` receives one line per step that takes time.
    """
    import json
    import tempfile

    from core.runs.checkpoint import (
        ALIASES_KEY,
        MODEL_FILE,
        TOKENIZER_FILE,
        read_manifest,
        save_checkpoint,
    )

    out_path = Path(out)
    if out_path.exists():
        raise MergeError(f"{out_path} already exists; choose a new --out directory (nothing is overwritten)")
    inputs = ([base] if base is not None else []) + list(models)
    config = check_checkpoints_mergeable(inputs)
    params.validate(len(models), base is not None)
    fisher_plan = _plan_fishers(models, params.method, fisher_source, fisher_data)
    with tempfile.TemporaryDirectory(dir=out_path.parent if out_path.parent.exists() else None) as tmp:
        fisher_files: list[Path | None] = []
        fisher_report: list[dict[str, Any]] = []
        computed: dict[Path, tuple[Path, int]] = {}  # a checkpoint given twice is computed once
        for model, use_stored in zip(models if fisher_plan else [], fisher_plan, strict=True):
            if use_stored:
                fisher_files.append(None)
                fisher_report.append({"checkpoint": str(model), "source": "stored"})
                continue
            assert fisher_data is not None  # _plan_fishers checked it
            key = Path(model).resolve()
            if key not in computed:
                if progress is not None:
                    progress(f"computing the Fisher of {model} on up to {fisher_samples} samples "
                             f"of {fisher_data}")
                fisher, used = compute_fisher(model, fisher_data, fisher_samples)
                computed[key] = (Path(tmp) / f"fisher-{len(computed)}.safetensors", used)
                _save_tensors(fisher, computed[key][0])
                del fisher
            fisher_files.append(computed[key][0])
            fisher_report.append({"checkpoint": str(model), "source": "computed",
                                  "data": str(fisher_data), "samples": computed[key][1]})
        merged_file = Path(tmp) / MODEL_FILE
        report = merge_safetensors(
            [Path(m) / MODEL_FILE for m in models], params, merged_file,
            base_file=Path(base) / MODEL_FILE if base is not None else None,
            fisher_files=fisher_files if params.method == "fisher" else None,
        )
        if params.method == "fisher":
            report.params["fisher"] = fisher_report
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(Path(inputs[0]) / MODEL_FILE), framework="pt") as fh:
            aliases = json.loads((fh.metadata() or {}).get(ALIASES_KEY, "{}"))
        state = load_file(str(merged_file))
        for alias, stored in aliases.items():
            state[alias] = state[stored]  # shared storage: saved once again with its alias
        manifests = [read_manifest(p) for p in inputs]
        report.models = [str(m) for m in models]
        report.base = str(base) if base is not None else None
        report.params.update(report_params or {})
        path = save_checkpoint(
            out_path,
            model=state,
            config=config,
            tokenizer=Path(inputs[0]) / TOKENIZER_FILE,
            trainer_state={"global_step": 0, "merge": {"method": params.method}},
            parents=[{"id": m["version"], "relation": "merged"} for m in manifests],
            extra={"merge": {"method": params.method, "params": report.params, **report.summary()}},
        )
    result = CheckpointMergeResult(path=path, report=report)
    if sanity_data is not None:
        result.sanity = sanity_check([*inputs, path], sanity_data, sanity_samples)
    _write_json_atomic(path / "merge_report.json", {**report.to_dict(), "sanity": result.sanity})
    return result


def has_stored_fisher(checkpoint: str | os.PathLike[str]) -> bool:
    """True when the checkpoint's weights hold an EWC Fisher (``aeron-tui continue`` with EWC)."""
    from safetensors import safe_open

    from core.runs.checkpoint import MODEL_FILE

    prefix = fisher_key("")
    with safe_open(str(Path(checkpoint) / MODEL_FILE), framework="pt") as fh:
        return any(k.startswith(prefix) for k in fh.keys())


def _plan_fishers(models: Sequence[str | os.PathLike[str]], method: str, source: str,
                  data: str | os.PathLike[str] | None) -> list[bool]:
    """Per model: use its stored Fisher (True) or compute one (False); refusals before any work.

    Empty for the methods that use no Fisher."""
    if method != "fisher":
        return []
    if source not in FISHER_SOURCES:
        raise MergeError(f"Fisher source {source!r}; choose one of {', '.join(FISHER_SOURCES)}")
    stored = [source != "data" and has_stored_fisher(m) for m in models]
    if source == "stored":
        for m, has in zip(models, stored, strict=True):
            if not has:
                raise MergeError(
                    f"{m} has no stored Fisher (only `aeron-tui continue` with EWC saves one); "
                    "use --fisher data (or auto) to compute it on --data"
                )
    if not all(stored) and data is None:
        raise MergeError("the Fisher of a checkpoint without a stored one is computed on data: give --data")
    return stored


def compute_fisher(
    checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], samples: int = 128
) -> tuple[dict[str, torch.Tensor], int]:
    """The diagonal empirical Fisher of a checkpoint's model on ``samples`` samples of ``data``.

    ``F = mean over samples of (∂ log p(reply | prompt) / ∂θ)²`` — the same estimator EWC
    consolidation stores (:class:`core.model.continual.ElasticWeightConsolidation`), one
    backward pass per sample, in eval mode. The samples are a deterministic subset of the whole
    file spread over its length range. Returns ``({tensor name in model.safetensors: F}, samples
    used)``; parameters that get no gradient have an all-zero Fisher.
    """
    import json

    from safetensors import safe_open

    from core.data.formatting import encode_styles_sample
    from core.data.loader import collate
    from core.data.styles import read_styles
    from core.evolve.evaluation import evaluation_subset
    from core.model.continual import ElasticWeightConsolidation
    from core.runs.checkpoint import ALIASES_KEY, MODEL_FILE, build_model_from_checkpoint

    if samples < 1:
        raise MergeError(f"the Fisher needs at least one sample, got {samples}")
    model, tok, cfg = build_model_from_checkpoint(checkpoint)
    max_len = min(256, int(getattr(cfg, "max_position_embeddings", 256)) - 1)
    pairs = evaluation_subset([encode_styles_sample(s, tok, max_len) for s in read_styles(data)], samples)
    if not pairs:
        raise MergeError(f"{data}: no samples to compute the Fisher on")

    def batches() -> Iterable[dict[str, torch.Tensor]]:
        for i in range(0, len(pairs), 8):
            yield collate(pairs[i : i + 8])

    ewc = ElasticWeightConsolidation(0.0)
    used = ewc.consolidate(model, batches())
    with safe_open(str(Path(checkpoint) / MODEL_FILE), framework="pt") as fh:
        aliases = json.loads((fh.metadata() or {}).get(ALIASES_KEY, "{}"))
    fisher = {aliases.get(name, name): f.contiguous() for name, f in ewc.fisher.items()}
    return fisher, used


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path))


def sanity_check(
    checkpoints: Sequence[str | os.PathLike[str]], data: str | os.PathLike[str], samples: int = 128
) -> dict[str, dict[str, float]]:
    """Validation loss / perplexity / bits per byte of each checkpoint on ``data``'s val split."""
    from core.evolve.evaluation import evaluate_pairs
    from core.runs.checkpoint import build_model_from_checkpoint

    results: dict[str, dict[str, float]] = {}
    encoded: dict[str, list[Any]] = {}  # mergeable checkpoints share a tokenizer: encode once
    for ckpt in checkpoints:
        model, tok, cfg = build_model_from_checkpoint(ckpt)
        if tok.sha256 not in encoded:
            encoded[tok.sha256] = _validation_pairs(data, tok, cfg)
        results[str(ckpt)] = evaluate_pairs(model, encoded[tok.sha256], max_samples=samples).to_dict()
    return results


def _write_json_atomic(path: Path, obj: Any) -> None:
    import json

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=float), encoding="utf-8")
    os.replace(tmp, path)


def greedy_soup_checkpoints(
    models: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    data: str | os.PathLike[str],
    samples: int = 128,
) -> CheckpointMergeResult:
    """Greedy soup: add models best-first, keeping each only if the soup's validation loss does
    not get worse. Holds a running sum plus one candidate in memory."""
    from safetensors.torch import load_file

    from core.runs.checkpoint import MODEL_FILE, build_model_from_checkpoint, load_model_state

    out_path = Path(out)
    if out_path.exists():
        raise MergeError(f"{out_path} already exists; choose a new --out directory (nothing is overwritten)")
    check_checkpoints_mergeable(models)
    scores = sanity_check(models, data, samples)
    order = sorted(models, key=lambda m: scores[str(m)]["loss"])
    model, tok, cfg = build_model_from_checkpoint(order[0])
    pairs = _validation_pairs(data, tok, cfg)

    def score(state: Mapping[str, torch.Tensor]) -> float:
        from core.evolve.evaluation import evaluate_pairs

        load_model_state(model, dict(state), "greedy soup")
        return evaluate_pairs(model, pairs, max_samples=samples).loss

    total = {k: v.to(torch.float32) for k, v in load_file(str(Path(order[0]) / MODEL_FILE)).items()}
    kept = [order[0]]
    best = scores[str(order[0])]["loss"]
    for candidate in order[1:]:
        cand = load_file(str(Path(candidate) / MODEL_FILE))
        trial = {
            k: (v if is_state_tensor(k, cand[k]) or is_ewc_key(k) else (v + cand[k].float()) / (len(kept) + 1))
            for k, v in total.items()
        }
        loss = score(_restore_dtypes(trial, cand))
        if loss <= best:
            best = loss
            kept.append(candidate)
            for k in total:
                if not (is_state_tensor(k, cand[k]) or is_ewc_key(k)):
                    total[k] = total[k] + cand[k].float()
    greedy = {
        "considered": [str(m) for m in order],
        "scores": {str(m): scores[str(m)]["loss"] for m in order},
        "kept": [str(m) for m in kept],
    }
    return merge_checkpoints(
        kept, MergeParams("soup"), out_path, sanity_data=data, sanity_samples=samples,
        report_params={"greedy": greedy},
    )


def _restore_dtypes(trial: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(like[k].dtype) for k, v in trial.items()}


def _validation_pairs(data: str | os.PathLike[str], tok: Any, cfg: Any) -> list[Any]:
    from core.data.formatting import encode_styles_sample
    from core.data.styles import read_styles, split_samples

    _, val = split_samples(read_styles(data))
    max_len = min(256, int(getattr(cfg, "max_position_embeddings", 256)) - 1)
    return [encode_styles_sample(s, tok, max_len) for s in val]


# ------------------------------------------------------------------------------- ensembles


class EnsemblePolicy(torch.nn.Module):
    """Decode with several checkpoints at once: ``log mean_k softmax(logits_k)`` (or the mean of
    the logits). It has the backbone's ``encode``/``decode`` interface, so ``core.infer.generation``
    drives it like one model; the models must share the tokenizer and vocabulary.
    """

    def __init__(self, models: Sequence[torch.nn.Module], mode: str = "probs",
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not models:
            raise MergeError("an ensemble needs at least one model")
        if mode not in ("probs", "logits"):
            raise MergeError(f"ensemble mode {mode!r}; choose 'probs' or 'logits'")
        vocab = {int(m.config.vocab_size) for m in models}  # type: ignore[union-attr]
        if len(vocab) != 1:
            raise MergeError(f"ensemble members have different vocabularies {sorted(vocab)}")
        self.members = torch.nn.ModuleList(models)
        self.mode = mode
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(models), dtype=torch.float32)
        if w.numel() != len(models) or (w < 0).any() or w.sum() <= 0:
            raise MergeError("ensemble weights must be one non-negative number per model with a positive sum")
        self.register_buffer("weights", w / w.sum(), persistent=False)
        # The shortest context bounds generation.
        self.config = min((m.config for m in models), key=lambda c: c.max_position_embeddings)  # type: ignore[union-attr]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> list[Any]:
        return [m.encode(input_ids, attention_mask, **kwargs) for m in self.members]  # type: ignore[operator]

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_output: Sequence[Any],
        decoder_attention_mask: torch.Tensor | None = None,
        past_key_values: Sequence[Any] | None = None,
        use_cache: bool = False,
    ) -> dict[str, Any]:
        pasts = list(past_key_values) if past_key_values is not None else [None] * len(self.members)
        outs = [
            m.decode(decoder_input_ids, enc, decoder_attention_mask, past_key_values=p, use_cache=use_cache)  # type: ignore[operator]
            for m, enc, p in zip(self.members, encoder_output, pasts, strict=True)
        ]
        logits = torch.stack([o["logits"].float() for o in outs])  # (K, B, T, V)
        w = self.weights.view(-1, 1, 1, 1)
        if self.mode == "logits":
            combined = (w * logits).sum(0)
        else:
            combined = torch.logsumexp(torch.log_softmax(logits, dim=-1) + torch.log(w), dim=0)
        return {
            "logits": combined,
            "past_key_values": tuple(o.get("past_key_values") for o in outs) if use_cache else None,
        }

    def forward(self, **kwargs: Any) -> dict[str, Any]:
        enc = self.encode(kwargs["input_ids"], kwargs.get("attention_mask"))
        return self.decode(kwargs["decoder_input_ids"], enc, kwargs.get("decoder_attention_mask"))
