"""HPF: low-rank factorised linears and the reversible module-rewrite pass (training.md §5.6).

``HPFLinear`` computes ``y = W_out (W_in x) (+ b)`` with ``W_in (r×in)``, ``W_out (out×r)`` and
``r = ⌈ratio·min(in, out)⌉``; a projection is only replaced where ``r(in+out) < in·out``.
Fresh factors are drawn from ``N(0, sqrt(0.02/√r))`` so their product has the dense init's
standard deviation 0.02; from dense weights the factors are a truncated SVD
(``W_out = U_r Σ_r^½``, ``W_in = Σ_r^½ V_rᵀ``) with the relative error
``sqrt(Σ_{i>r} σ_i²) / ‖W‖_F`` reported.

The rewrite pass is named and logged (:class:`HPFReport`), records its structure
(``{module name: rank}``) so a checkpoint can be rebuilt (:func:`apply_structure`), and is
reversible (:func:`revert_hpf` multiplies the factors back with :meth:`HPFLinear.densify`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

PASS_NAME = "hpf_lowrank"
INIT_STD = 0.02


def hpf_rank(in_features: int, out_features: int, ratio: float) -> int | None:
    """``⌈ratio·min(in, out)⌉``, or None when the factorisation would not save parameters."""
    r = math.ceil(ratio * min(in_features, out_features) - 1e-9)
    r = max(1, r)
    if r * (in_features + out_features) < in_features * out_features:
        return r
    return None


class HPFLinear(nn.Module):
    """A rank-``r`` factorised ``nn.Linear`` replacement (same input/output contract)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank {rank} must be in [1, min({in_features}, {out_features})]")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight_in = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.weight_out = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh factors ``N(0, sqrt(0.02/√r))``: the product then has std ≈ 0.02."""
        std = math.sqrt(INIT_STD / math.sqrt(self.rank))
        nn.init.normal_(self.weight_in, 0.0, std)
        nn.init.normal_(self.weight_out, 0.0, std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.weight_in), self.weight_out, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")

    @property
    def dense_parameters(self) -> int:
        """Parameters of the dense layer this replaces."""
        return self.in_features * self.out_features + (self.out_features if self.bias is not None else 0)

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int) -> tuple[HPFLinear, float]:
        """Truncated SVD of ``linear.weight``; returns the layer and the relative error."""
        w = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, rank, linear.bias is not None,
                     device=w.device, dtype=w.dtype)
        u, s, vh = torch.linalg.svd(w.float(), full_matrices=False)
        root = s[:rank].sqrt()
        with torch.no_grad():
            module.weight_out.copy_((u[:, :rank] * root).to(w.dtype))
            module.weight_in.copy_((root[:, None] * vh[:rank]).to(w.dtype))
            if linear.bias is not None and module.bias is not None:
                module.bias.copy_(linear.bias.detach())
        total = float(s.square().sum())
        rest = float(s[rank:].square().sum())
        rel_error = math.sqrt(rest / total) if total > 0 else 0.0
        return module, rel_error

    def densify(self) -> nn.Linear:
        """The equivalent dense ``nn.Linear`` (``W = W_out W_in``), for export and merging."""
        w = self.weight_out.detach()
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=w.device, dtype=w.dtype)
        with torch.no_grad():
            dense.weight.copy_((self.weight_out.float() @ self.weight_in.float()).to(w.dtype))
            if self.bias is not None and dense.bias is not None:
                dense.bias.copy_(self.bias.detach())
        return dense


@dataclass
class Rewrite:
    """One replaced projection."""

    name: str
    in_features: int
    out_features: int
    rank: int
    dense_params: int
    lowrank_params: int
    rel_error: float | None  # None for fresh factors


@dataclass
class HPFReport:
    """What the rewrite pass did: the log of replaced modules and the parameter saving."""

    pass_name: str = PASS_NAME
    ratio: float = 0.0
    init: str = "fresh"
    rewrites: list[Rewrite] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # matched but no saving at this ratio
    params_before: int = 0
    params_after: int = 0

    @property
    def saved(self) -> int:
        return self.params_before - self.params_after

    @property
    def structure(self) -> dict[str, int]:
        """``{module name: rank}`` — enough to rebuild the factorised model for loading."""
        return {r.name: r.rank for r in self.rewrites}

    @property
    def max_rel_error(self) -> float | None:
        errors = [r.rel_error for r in self.rewrites if r.rel_error is not None]
        return max(errors) if errors else None

    def summary(self) -> str:
        """One line for the log: ``[HPF] 12 projections at ratio 0.15: 1.05M -> 0.53M (...)``."""
        if not self.rewrites:
            return f"[HPF] no projection matched or saved parameters at ratio {self.ratio:g}"
        pct = 100.0 * self.saved / self.params_before if self.params_before else 0.0
        line = (
            f"[HPF] {len(self.rewrites)} projections low-rank at ratio {self.ratio:g} "
            f"({self.init}): {self.params_before:,} -> {self.params_after:,} parameters "
            f"(saved {self.saved:,}, {pct:.1f} % of the model)"
        )
        err = self.max_rel_error
        if err is not None:
            line += f"; max SVD relative error {err:.4f}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass": self.pass_name,
            "ratio": self.ratio,
            "init": self.init,
            "structure": self.structure,
            "replaced": len(self.rewrites),
            "skipped": list(self.skipped),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "saved": self.saved,
            "max_rel_error": self.max_rel_error,
        }


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def _count(model: nn.Module) -> int:
    # Shared (tied) tensors count once.
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def apply_hpf(
    model: nn.Module,
    ratio: float,
    targets: Iterable[str],
    init: str = "fresh",
) -> HPFReport:
    """Replace every ``nn.Linear`` whose name matches a target pattern by an ``HPFLinear``.

    ``init``: ``fresh`` draws new factors, ``svd`` factorises the current dense weights.
    """
    if init not in ("fresh", "svd"):
        raise ValueError(f"HPF init {init!r}: expected 'fresh' or 'svd'")
    patterns = list(targets)
    report = HPFReport(ratio=ratio, init=init, params_before=_count(model))
    chosen = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and _matches(name, patterns)
    ]
    for name, linear in chosen:
        rank = hpf_rank(linear.in_features, linear.out_features, ratio)
        if rank is None:
            report.skipped.append(name)
            continue
        rel_error: float | None = None
        if init == "svd":
            new, rel_error = HPFLinear.from_dense(linear, rank)
        else:
            w = linear.weight
            new = HPFLinear(linear.in_features, linear.out_features, rank,
                            linear.bias is not None, device=w.device, dtype=w.dtype)
        new.train(linear.training)
        _set_submodule(model, name, new)
        lowrank = sum(p.numel() for p in new.parameters())
        report.rewrites.append(Rewrite(name, linear.in_features, linear.out_features, rank,
                                       new.dense_parameters, lowrank, rel_error))
    report.params_after = _count(model)
    return report


def apply_structure(model: nn.Module, structure: dict[str, int]) -> None:
    """Rebuild a recorded factorisation (``{name: rank}``) before loading factorised weights."""
    for name, rank in structure.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"HPF structure names {name!r}, which this model does not have") from exc
        if isinstance(linear, HPFLinear):
            continue
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"HPF structure names {name!r}, which is not a linear layer")
        w = linear.weight
        new = HPFLinear(linear.in_features, linear.out_features, int(rank),
                        linear.bias is not None, device=w.device, dtype=w.dtype)
        new.train(linear.training)
        _set_submodule(model, name, new)


def revert_hpf(model: nn.Module) -> list[str]:
    """Undo the pass: every ``HPFLinear`` becomes its dense ``nn.Linear``; returns the names."""
    names = [name for name, mod in model.named_modules() if isinstance(mod, HPFLinear)]
    for name in names:
        mod = model.get_submodule(name)
        assert isinstance(mod, HPFLinear)
        dense = mod.densify()
        dense.train(mod.training)
        _set_submodule(model, name, dense)
    return names


def densify_state_dict(state: dict[str, torch.Tensor], structure: dict[str, int]) -> dict[str, torch.Tensor]:
    """A dense state dict from a factorised one (``name.weight = weight_out @ weight_in``)."""
    out = dict(state)
    for name in structure:
        w_in = out.pop(f"{name}.weight_in")
        w_out = out.pop(f"{name}.weight_out")
        out[f"{name}.weight"] = (w_out.float() @ w_in.float()).to(w_out.dtype)
    return out


def hpf_structure(model: nn.Module) -> dict[str, int]:
    """The current ``{name: rank}`` of a model's HPF layers."""
    return {name: mod.rank for name, mod in model.named_modules() if isinstance(mod, HPFLinear)}
