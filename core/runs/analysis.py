"""Look inside checkpoints: per-tensor, per-layer and per-component statistics, and the
difference between two checkpoints.

Both read ``model.safetensors`` lazily with ``safe_open``, one tensor at a time, and reduce each
tensor in chunks, so a 3.7 B-parameter checkpoint never has to fit in memory twice (``diff``
holds one tensor of each side at a time). Nothing here prints: the CLI renders the reports.

Groups: a parameter ``encoder.layers.3.ffn.up_proj.weight`` belongs to the *component*
``encoder`` and the *layer* ``encoder.layers.3``; ``reasoning_engine.tree_of_thought.x`` to the
component ``reasoning_engine`` and the layer ``reasoning_engine.tree_of_thought``; a top-level
tensor such as ``token_embedding.weight`` is its own component and layer.

"Untouched since initialisation": when the checkpoint's trainer state records the run's seed,
:func:`inspect_checkpoint` can rebuild the model exactly as the trainer did (``manual_seed(seed)``
then the model constructor, which is how every engine trainer builds it) and compare each tensor
bit for bit. That costs one copy of the model in memory, so it is on by default only up to
:data:`INIT_CHECK_MAX_PARAMS` parameters.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import CheckpointError
from core.runs.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    TRAINER_STATE_FILE,
    config_differences,
    read_manifest,
    verify_checkpoint,
)

HIST_BINS = 16
CHUNK = 1 << 24  # elements reduced at a time (128 MiB in float64)
INIT_CHECK_MAX_PARAMS = 1_000_000_000
# A ≥2-D weight whose RMS is this many times the median RMS of the checkpoint's ≥2-D weights.
EXPLODING_RMS_FACTOR = 50.0
_LAYER = re.compile(r"^(?P<layer>.+?\.layers\.\d+)\.")


def group_of(name: str) -> tuple[str, str]:
    """``(component, layer)`` of a tensor name (see the module docstring)."""
    parts = name.split(".")
    component = parts[0]
    match = _LAYER.match(name)
    if match:
        return component, match.group("layer")
    if len(parts) > 2:
        return component, ".".join(parts[:2])
    return component, component


# ------------------------------------------------------------------------- tensor statistics
@dataclass
class TensorStats:
    """One tensor: shape, dtype and its value statistics (population std)."""

    name: str
    shape: list[int]
    dtype: str
    numel: int
    norm: float
    mean: float
    std: float
    min: float
    max: float
    zero_frac: float
    nan: int
    inf: int
    hist: list[int]
    untouched: bool | None = None  # bit-identical to the rebuilt initialisation (None: unknown)
    # Sums kept for aggregating groups exactly.
    total: float = 0.0
    total_sq: float = 0.0
    zeros: int = 0

    @property
    def rms(self) -> float:
        return self.norm / math.sqrt(self.numel) if self.numel else 0.0


def _chunks(flat: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start:start + CHUNK].to(torch.float64)


def tensor_stats(name: str, tensor: torch.Tensor) -> TensorStats:
    """Statistics of one tensor, reduced in float64 chunks (NaN/Inf counted and left out)."""
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    total = total_sq = 0.0
    lo, hi = math.inf, -math.inf
    zeros = nan = inf = 0
    if flat.dtype == torch.bool or not (flat.is_floating_point() or flat.dtype in
                                        (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        flat = flat.to(torch.int64)
    for chunk in _chunks(flat):
        nan += int(torch.isnan(chunk).sum())
        inf += int(torch.isinf(chunk).sum())
        finite = chunk[torch.isfinite(chunk)]
        if finite.numel():
            total += float(finite.sum())
            total_sq += float((finite * finite).sum())
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
        zeros += int((chunk == 0).sum())
    good = n - nan - inf
    mean = total / good if good else 0.0
    var = max(0.0, total_sq / good - mean * mean) if good else 0.0
    hist = [0] * HIST_BINS
    if good and math.isfinite(lo):
        for chunk in _chunks(flat):
            finite = chunk[torch.isfinite(chunk)]
            if finite.numel():
                counts = torch.histc(finite, bins=HIST_BINS, min=lo, max=hi if hi > lo else lo + 1)
                hist = [a + int(b) for a, b in zip(hist, counts.tolist(), strict=True)]
    return TensorStats(
        name=name, shape=list(tensor.shape), dtype=str(tensor.dtype).replace("torch.", ""),
        numel=n, norm=math.sqrt(total_sq), mean=mean, std=math.sqrt(var),
        min=lo if good else math.nan, max=hi if good else math.nan,
        zero_frac=zeros / n if n else 0.0, nan=nan, inf=inf, hist=hist,
        total=total, total_sq=total_sq, zeros=zeros,
    )


@dataclass
class GroupStats:
    """A component or layer: its tensors' statistics combined exactly."""

    name: str
    tensors: int = 0
    params: int = 0
    dtypes: list[str] = field(default_factory=list)
    norm: float = 0.0
    mean: float = 0.0
    std: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    zero_frac: float = 0.0
    nan: int = 0
    inf: int = 0
    untouched_params: int = 0
    checked_params: int = 0
    _parts: list[tuple[float, float, list[int]]] = field(default_factory=list)
    _total: float = 0.0
    _total_sq: float = 0.0
    _zeros: int = 0

    def add(self, t: TensorStats) -> None:
        self.tensors += 1
        self.params += t.numel
        if t.dtype not in self.dtypes:
            self.dtypes.append(t.dtype)
        self._total += t.total
        self._total_sq += t.total_sq
        self._zeros += t.zeros
        self.nan += t.nan
        self.inf += t.inf
        if math.isfinite(t.min):
            self.min, self.max = min(self.min, t.min), max(self.max, t.max)
            self._parts.append((t.min, t.max, t.hist))
        if t.untouched is not None:
            self.checked_params += t.numel
            self.untouched_params += t.numel if t.untouched else 0
        good = self.params - self.nan - self.inf
        self.norm = math.sqrt(self._total_sq)
        self.mean = self._total / good if good else 0.0
        self.std = math.sqrt(max(0.0, self._total_sq / good - self.mean**2)) if good else 0.0
        self.zero_frac = self._zeros / self.params if self.params else 0.0

    @property
    def hist(self) -> list[int]:
        """The group's histogram over [min, max]: each tensor's bins re-binned by their centres
        (exact for one tensor, close for a group)."""
        out = [0] * HIST_BINS
        if not self._parts or not math.isfinite(self.min):
            return out
        span = self.max - self.min
        for lo, hi, counts in self._parts:
            width = (hi - lo) / HIST_BINS
            for i, c in enumerate(counts):
                centre = lo + (i + 0.5) * width
                j = HIST_BINS - 1 if span <= 0 else min(HIST_BINS - 1, int((centre - self.min) / span * HIST_BINS))
                out[max(0, j)] += c
        return out

    @property
    def untouched(self) -> bool | None:
        """True when every checked parameter equals its initialisation (None: not checked)."""
        if not self.checked_params:
            return None
        return self.untouched_params == self.checked_params

    def public(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        data["untouched"] = self.untouched
        data["hist"] = self.hist
        return data


# ------------------------------------------------------------------------------- inspect
@dataclass
class CheckpointReport:
    path: str
    manifest_ok: bool
    manifest_error: str | None
    config: dict[str, Any]
    tokenizer_vocab: int | None
    lineage: list[dict[str, Any]]
    global_step: int | None
    seed: int | None
    init_check: str  # "done", or why it was not
    tensors: list[TensorStats]
    components: list[GroupStats]
    layers: list[GroupStats]
    aliases: dict[str, str]
    findings: list[str]
    parameter_names: set[str] = field(default_factory=set)  # empty when the config cannot build

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def verdict(self) -> str:
        """One line: nothing suspicious, or what is."""
        if not self.findings:
            return "ok: no NaN/Inf, no dead or exploding weights" + (
                ", no untouched groups" if self.init_check == "done" else "")
        return "suspicious: " + "; ".join(self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "manifest_ok": self.manifest_ok, "manifest_error": self.manifest_error,
            "config": self.config, "tokenizer_vocab": self.tokenizer_vocab, "lineage": self.lineage,
            "global_step": self.global_step, "seed": self.seed, "init_check": self.init_check,
            "params": self.params, "verdict": self.verdict, "findings": self.findings,
            "aliases": self.aliases,
            "components": [g.public() for g in self.components],
            "layers": [g.public() for g in self.layers],
            "tensors": [{k: v for k, v in asdict(t).items() if k not in ("total", "total_sq", "zeros")}
                        for t in self.tensors],
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from exc
    return data if isinstance(data, dict) else {}


def _safetensors(ckpt: Path) -> Any:
    from safetensors import safe_open

    path = ckpt / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no model.safetensors — is {ckpt} a checkpoint directory?")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def _aliases(handle: Any) -> dict[str, str]:
    meta = handle.metadata() or {}
    try:
        aliases = json.loads(meta.get("aeron_aliases") or "{}")
    except json.JSONDecodeError:
        return {}
    return aliases if isinstance(aliases, dict) else {}


def _init_state(config: dict[str, Any], seed: int) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The model's state right after the trainer built it (its seed, then the constructor)."""
    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = TransformerNeuralNetBackbone(NeuralNetConfig.from_dict(config))
    finally:
        torch.random.set_rng_state(state)
    return model.state_dict(), {name for name, _ in model.named_parameters()}


def model_tensor_kinds(config: dict[str, Any]) -> tuple[set[str], set[str]] | None:
    """``(parameter names, buffer names)`` of the model a config builds — built on the meta
    device, so no memory is allocated — or None when the config cannot be built."""
    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone

    try:
        with torch.device("meta"):
            model = TransformerNeuralNetBackbone(NeuralNetConfig.from_dict(config))
    except Exception:  # noqa: BLE001 - an old or foreign config: treat every tensor alike
        return None
    return ({n for n, _ in model.named_parameters()},
            {n for n, _ in model.named_buffers()})


def inspect_checkpoint(path: str | Path, init_check: bool | None = None) -> CheckpointReport:
    """Statistics of every tensor of a checkpoint, per layer and component, and its findings.

    ``init_check``: compare each tensor with the initialisation rebuilt from the run's seed
    (None: when the seed is known and the model has at most INIT_CHECK_MAX_PARAMS parameters).
    """
    ckpt = Path(path)
    manifest_ok, manifest_error = True, None
    try:
        manifest = verify_checkpoint(ckpt)
    except CheckpointError as exc:
        manifest_ok, manifest_error = False, str(exc)
        try:
            manifest = read_manifest(ckpt)
        except CheckpointError:
            manifest = {}
    config = _read_json(ckpt / CONFIG_FILE)
    state = _read_json(ckpt / TRAINER_STATE_FILE)
    seed = (state.get("data") or {}).get("seed") if isinstance(state.get("data"), dict) else None
    vocab = _tokenizer_vocab(ckpt / "tokenizer.json")

    handle = _safetensors(ckpt)
    keys = sorted(handle.keys())
    n_params = sum(_numel(handle, k) for k in keys)
    if init_check is None:
        init_check = seed is not None and bool(config) and n_params <= INIT_CHECK_MAX_PARAMS
        why_not = ("the trainer state records no seed" if seed is None else
                   f"{n_params / 1e9:.1f} B parameters (over {INIT_CHECK_MAX_PARAMS / 1e9:.0f} B; "
                   "--init-check forces it)")
    else:
        why_not = "turned off (--no-init-check)"
    init: dict[str, torch.Tensor] = {}
    kinds = model_tensor_kinds(config) if config else None
    parameter_names: set[str] = kinds[0] if kinds else set()
    init_status = why_not
    if init_check:
        if seed is None or not config:
            init_status = "the trainer state records no seed" if seed is None else "no config.json"
        else:
            try:
                init, _ = _init_state(config, int(seed))
                init_status = "done"
            except Exception as exc:  # noqa: BLE001 - an old or foreign config: say so, go on
                init_status = f"could not rebuild the initialisation ({type(exc).__name__}: {exc})"

    tensors: list[TensorStats] = []
    components: dict[str, GroupStats] = {}
    layers: dict[str, GroupStats] = {}
    for key in keys:
        t = handle.get_tensor(key)
        stats = tensor_stats(key, t)
        if (init_status == "done" and key in init and init[key].shape == t.shape
                and (not parameter_names or key in parameter_names)):
            stats.untouched = bool(torch.equal(init[key], t))
        del t
        tensors.append(stats)
        component, layer = group_of(key)
        components.setdefault(component, GroupStats(component)).add(stats)
        layers.setdefault(layer, GroupStats(layer)).add(stats)
    init.clear()
    report = CheckpointReport(
        path=str(ckpt), manifest_ok=manifest_ok, manifest_error=manifest_error, config=config,
        tokenizer_vocab=vocab, lineage=list(manifest.get("parents") or []),
        global_step=state.get("global_step") if isinstance(state.get("global_step"), int) else None,
        seed=int(seed) if isinstance(seed, int) else None, init_check=init_status, tensors=tensors,
        components=list(components.values()), layers=list(layers.values()),
        aliases=_aliases(handle), findings=[], parameter_names=parameter_names,
    )
    report.findings = findings(report)
    return report


def _tokenizer_vocab(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        return int(Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True))
    except Exception:  # noqa: BLE001 - a broken tokenizer file is reported as "none found"
        return None


def _numel(handle: Any, key: str) -> int:
    return math.prod(handle.get_slice(key).get_shape())


def findings(report: CheckpointReport) -> list[str]:
    """What looks wrong: NaN/Inf, dead (all-zero) or exploding weights, untouched groups."""
    out: list[str] = []
    bad = [t for t in report.tensors if t.nan or t.inf]
    if bad:
        out.append(f"{len(bad)} tensor(s) hold NaN/Inf ({_names(t.name for t in bad)})")
    weights = [t for t in report.tensors if len(t.shape) >= 2 and t.numel > 1
               and t.dtype.startswith(("float", "bfloat"))
               and (not report.parameter_names or t.name in report.parameter_names)]
    # All zeros is dead unless it was zero at initialisation and never trained (FiLM and
    # scratchpad state start at zero): that case is reported as untouched.
    dead = [t for t in weights if t.nan == 0 and t.zero_frac == 1.0 and t.untouched is not True]
    if dead:
        out.append(f"{len(dead)} weight(s) are all zeros ({_names(t.name for t in dead)})")
    rms = sorted(t.rms for t in weights if not (t.nan or t.inf))
    if rms:
        median = rms[len(rms) // 2]
        big = [t for t in weights if median > 0 and t.rms > EXPLODING_RMS_FACTOR * median]
        if big:
            out.append(f"{len(big)} weight(s) with an RMS over {EXPLODING_RMS_FACTOR:.0f}× the median "
                       f"{median:.3g} ({_names(f'{t.name} {t.rms:.3g}' for t in big)})")
    untouched = [c for c in report.components if c.untouched]
    partly = [lay for lay in report.layers if lay.untouched
              and not any(c.untouched and lay.name.startswith(c.name) for c in untouched)]
    if untouched or partly:
        groups = [c.name for c in untouched] + [lay.name for lay in partly]
        params = sum(g.params for g in untouched) + sum(g.params for g in partly)
        out.append(f"{_count(params)} of {_count(report.params)} parameters are bit-identical "
                   f"to their initialisation (seed {report.seed}): {_names(groups)}")
    return out


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,}"


def _names(names: Iterable[str], limit: int = 4) -> str:
    names = list(names)
    more = f", … {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------------------------- diff
@dataclass
class DiffStats:
    """How far B moved from A over a tensor or a group."""

    name: str
    params: int = 0
    delta_sq: float = 0.0
    a_sq: float = 0.0
    b_sq: float = 0.0
    dot: float = 0.0
    same_sign: int = 0

    def add(self, other: DiffStats) -> None:
        self.params += other.params
        self.delta_sq += other.delta_sq
        self.a_sq += other.a_sq
        self.b_sq += other.b_sq
        self.dot += other.dot
        self.same_sign += other.same_sign

    @property
    def rel_change(self) -> float:
        """‖B − A‖ / ‖A‖ (‖B‖ when A is zero, 0 when both are)."""
        if self.a_sq > 0:
            return math.sqrt(self.delta_sq / self.a_sq)
        return 0.0 if self.delta_sq == 0 else math.inf

    @property
    def cosine(self) -> float:
        if self.a_sq == 0 or self.b_sq == 0:
            return 1.0 if self.a_sq == self.b_sq else 0.0
        return self.dot / math.sqrt(self.a_sq * self.b_sq)

    @property
    def sign_agreement(self) -> float:
        return self.same_sign / self.params if self.params else 1.0

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "rel_change": self.rel_change,
                "cosine": self.cosine, "sign_agreement": self.sign_agreement}


def tensor_diff(name: str, a: torch.Tensor, b: torch.Tensor) -> DiffStats:
    d = DiffStats(name, params=a.numel())
    fa, fb = a.reshape(-1), b.reshape(-1)
    for start in range(0, fa.numel(), CHUNK):
        x = fa[start:start + CHUNK].to(torch.float64)
        y = fb[start:start + CHUNK].to(torch.float64)
        d.delta_sq += float(((y - x) ** 2).sum())
        d.a_sq += float((x * x).sum())
        d.b_sq += float((y * y).sum())
        d.dot += float((x * y).sum())
        d.same_sign += int((torch.sign(x) == torch.sign(y)).sum())
    return d


@dataclass
class DiffReport:
    a: str
    b: str
    tensors: list[DiffStats]
    layers: list[DiffStats]  # sorted: the layers that moved most first
    components: list[DiffStats]
    only_in_a: list[str]
    only_in_b: list[str]
    # Buffers (the memory bank, counters, scratchpad state): they change by running the model,
    # not by learning, so they are reported apart from the parameters.
    state: list[DiffStats] = field(default_factory=list)

    @property
    def total(self) -> DiffStats:
        total = DiffStats("all")
        for t in self.tensors:
            total.add(t)
        return total

    def summary(self) -> str:
        """One line: which components and layers moved, in words."""
        total = self.total
        if total.delta_sq == 0:
            return "identical: no parameter changed"
        parts: list[str] = []
        small: list[str] = []
        for comp in self.components:
            if comp.rel_change < 0.01:
                small.append(comp.name)
                continue
            layers = [lay for lay in self.layers if lay.name.startswith(comp.name + ".layers.")]
            if len(layers) >= 2:
                top = max(lay.rel_change for lay in layers)
                moved = sorted((lay for lay in layers if lay.rel_change >= 0.5 * top),
                               key=lambda lay: int(lay.name.rsplit(".", 1)[1]))
                indices = [int(lay.name.rsplit(".", 1)[1]) for lay in moved]
                rest = max((lay.rel_change for lay in layers if lay not in moved), default=None)
                text = (f"{comp.name} layers {_ranges(indices)} moved "
                        f"{_pct(min(lay.rel_change for lay in moved))}"
                        + (f"–{_pct(top)}" if len(moved) > 1 and top > min(lay.rel_change for lay in moved) * 1.05 else ""))
                if rest is not None:
                    text += f" (the others ≤ {_pct(rest)})"
                parts.append(text)
            else:
                parts.append(f"{comp.name} moved {_pct(comp.rel_change)}")
        if small:
            parts.append(f"{_names(small, 6)} < 1 %")
        return f"overall {_pct(total.rel_change)}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "summary": self.summary(),
                "total": self.total.public(),
                "components": [c.public() for c in self.components],
                "layers": [lay.public() for lay in self.layers],
                "tensors": [t.public() for t in self.tensors],
                "only_in_a": self.only_in_a, "only_in_b": self.only_in_b,
                "state": [t.public() for t in self.state]}


def _pct(x: float) -> str:
    if math.isinf(x):
        return "∞"
    pct = 100 * x
    return f"{pct:.2g} %" if pct < 10 else f"{pct:.0f} %"


def _ranges(indices: list[int]) -> str:
    out: list[str] = []
    start = prev = None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:  # type: ignore[operator]
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = prev = i
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}–{prev}")
    return ", ".join(out)


def diff_checkpoints(a: str | Path, b: str | Path) -> DiffReport:
    """Per parameter tensor, layer and component: relative change, cosine, sign agreement of B
    against A (buffers in ``state``).

    Refuses (CheckpointError) checkpoints whose architectures differ, naming the fields.
    """
    ca, cb = Path(a), Path(b)
    config_a, config_b = _read_json(ca / CONFIG_FILE), _read_json(cb / CONFIG_FILE)
    if config_a and config_b:
        differences = config_differences(config_a, config_b)
        if differences:
            raise CheckpointError(
                f"{ca} and {cb} have different architectures: {'; '.join(differences[:6])} — "
                "diff compares checkpoints of one model shape")
    ha, hb = _safetensors(ca), _safetensors(cb)
    keys_a, keys_b = set(ha.keys()), set(hb.keys())
    kinds = model_tensor_kinds(config_a) if config_a else None
    buffers = kinds[1] if kinds else set()
    tensors: list[DiffStats] = []
    state: list[DiffStats] = []
    for key in sorted(keys_a & keys_b):
        ta, tb = ha.get_tensor(key), hb.get_tensor(key)
        if ta.shape != tb.shape:
            raise CheckpointError(f"{key}: shape {tuple(ta.shape)} in {ca} but {tuple(tb.shape)} in "
                                  f"{cb} — diff compares checkpoints of one model shape")
        (state if key in buffers else tensors).append(tensor_diff(key, ta, tb))
        del ta, tb
    layers: dict[str, DiffStats] = {}
    components: dict[str, DiffStats] = {}
    for t in tensors:
        component, layer = group_of(t.name)
        layers.setdefault(layer, DiffStats(layer)).add(t)
        components.setdefault(component, DiffStats(component)).add(t)
    order = sorted(layers.values(), key=lambda d: d.rel_change, reverse=True)
    return DiffReport(
        a=str(ca), b=str(cb), tensors=sorted(tensors, key=lambda d: d.rel_change, reverse=True),
        layers=order, components=sorted(components.values(), key=lambda d: d.rel_change, reverse=True),
        only_in_a=sorted(keys_a - keys_b), only_in_b=sorted(keys_b - keys_a),
        state=sorted(state, key=lambda d: d.rel_change, reverse=True),
    )
