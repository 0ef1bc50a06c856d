"""Memory estimates for training and inference, calibrated against measurement.

``estimate = weights + gradients + optimizer + activations + logits + overhead`` (training.md §4).

* **Parameters** are exact: the model is built on the ``meta`` device (``core.model.model``). A
  profile stands for the model a run with it builds (``SizeProfile.run_model``): the
  knowledge-graph, vision and task modules exist only when the data feeds them, so every
  parameter gets a gradient and optimizer state — except the Tree of Thought's contradiction
  heads when one branch is kept (``NO_PAIR_HEADS``: they never run).
* **Optimizer.** Simple trainer: ``torch.optim.AdamW`` with fp32 moments, 8 bytes/parameter.
  Compressed trainer (``core.train.compressed``): its own per-component storage — computed
  exactly from ``component_of`` for every parameter: 8-bit bulk moments (2 bytes + block scales),
  12-bit reasoning moments (3 bytes), bf16 memory/KG moments (4 bytes), fp32 protected (8 bytes);
  weights and gradients stay fp32 in that trainer (a documented choice there), plus its step's fp32
  temporaries for the largest tensor.
* **Activations** are not guessed. Bytes autograd saves per block were measured on CPU with
  ``torch.autograd.graph.saved_tensors_hooks`` (deduplicated by storage) for a set of small
  configurations chosen so d, SwiGLU width, KV width and heads vary independently, and fitted
  per block as bytes per sample: ``Σ coef·feature`` (features such as ``S·d``, ``S·hidden``,
  ``T·kv``; :data:`ACTIVATION_COEFFS`). :func:`calibrate` re-runs that fit and prints the table.
* **Logits.** The ``B·T·V`` tensors (the logits, the fp32 log-softmax autograd keeps, and the two
  gradients alive when the backward pass starts) are fitted from the measured peak of live tensor
  bytes (``torch.distributed._tools.mem_tracker.MemTracker`` on CPU): :data:`LOGITS_BYTES`.
* **Checkpointing** (the model's ``use_gradient_checkpointing``): each encoder/decoder layer keeps
  only its fp32 input; one layer's full activations are rebuilt during the backward pass.
* **Overhead.** CUDA: context + cuBLAS workspaces (:data:`CUDA_CONTEXT_BYTES`) and allocator
  slack (:data:`CUDA_ALLOCATOR_SLACK` of tensor bytes). CPU: the torch runtime
  (:data:`CPU_RUNTIME_BYTES`).

The estimate is conservative for gradient accumulation: gradients from earlier micro-batches are
assumed alive during the next forward pass (true whenever ``grad_accum > 1``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.model.config import NeuralNetConfig

GiB = 1024**3
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZERS = ("adamw", "compressed")

# A run builds the knowledge-graph, vision and task modules only when its data feeds them
# (core.model.modules.resolve_enabled_modules), so every parameter of the model a run builds
# gets a gradient tensor. A config with those modules on is estimated as a run that feeds them.
# Only an older checkpoint's config without an input vocabulary had them unfed; the estimator
# is for planning runs, so it does not model that case.


# The Tree of Thought's contradiction heads run only on pairs of kept branches: with one kept
# branch (tot_keep_k 1, the tiny and small profiles) they never run, so they have no gradient
# tensor and no optimizer state (core.model.reasoning; core.model.modules.frozen_by_design).
NO_PAIR_HEADS = ("reasoning_engine.tree_of_thought.contra.",
                 "reasoning_engine.tree_of_thought.resolver.")


def _inactive_prefixes(config: NeuralNetConfig) -> tuple[str, ...]:
    """Parameter-name prefixes with no gradient tensor in training."""
    if config.enable_reasoning and config.effective_tot_keep_k == 1:
        return NO_PAIR_HEADS
    return ()

# ---------------------------------------------------------------------------- calibration
# Saved-activation bytes per sample, per block, as Σ coefficient × feature. Measured with
# `calibrate()` (`python -m profiles.estimate`: saved_tensors_hooks, dedup by storage, attributed
# to the block whose forward was running) on 6 configurations × 2 shapes, torch 2.13 CPU, SDPA
# attention; every fit's worst residual was under 3 %. "bf16" is CPU autocast (fp16 and the
# compressed trainer use the same table). Features: S/T encoder/decoder
# length, d model width, hid SwiGLU width, kv key/value width, H heads, N branches, P scratchpad
# slots, Hs scratchpad heads, m memory_dim, K memory slots + 1, Hm memory heads.
ACTIVATION_COEFFS: dict[str, dict[str, dict[str, float]]] = {
    "fp32": {
        "encoder_layer": {"S*d": 28.0, "S*hid": 16.0, "S*kv": 8.0, "S*H": 5.0, "shared:S*hd": 8.5},
        "decoder_layer": {"T*d": 40.5, "T*hid": 16.5, "T*kv": 8.0, "T*H": 1.5, "S*kv": 8.0, "shared:T*hd": 0.5},
        "head": {"S*d": 6.0, "T*d": 6.0},
        "reasoning": {"S*d": 33.5, "S*N*d": 13.5, "N*d": 85.0, "N*hid": 33.5, "S*Hs*P": 6.0, "P*d": 15.0, "shared:P*d": 3.0, "shared:N*d*d": 12.0},
        "memory": {"S*d": 24.0, "S*m": 8.0, "S*Hm*K": 0.0, "K*m": 8.0},
        "enhancements": {"S*d": 0.0, "d": 34.5},
    },
    "bf16": {
        "encoder_layer": {"S*d": 20.0, "S*hid": 8.0, "S*kv": 4.0, "S*H": 5.0, "shared:S*hd": 8.5},
        "decoder_layer": {"T*d": 26.5, "T*hid": 8.5, "T*kv": 4.0, "T*H": 1.5, "S*kv": 4.0, "shared:T*hd": 0.0},
        "head": {"S*d": 5.0, "T*d": 5.0},
        "reasoning": {"S*d": 18.5, "S*N*d": 9.0, "N*d": 109.0, "N*hid": 19.5, "S*Hs*P": 58.0, "P*d": -42.0, "shared:P*d": 72.5, "shared:N*d*d": 12.5},
        "memory": {"S*d": 14.0, "S*m": 4.0, "S*Hm*K": 0.0, "K*m": 4.0},
        "enhancements": {"S*d": 0.0, "d": 34.5},
    },
}
# Training on the CPU runs low-precision attention in fp32 (core.model.layers.sdpa: the CPU
# kernel's bf16 backward is slower), so autograd keeps fp32 q/k/v and output: +2 bytes per
# q/k/v element and +4 per output element (its bf16 copy feeds out_proj) over the bf16 table;
# the memory read attends over every slot's key/value per sample.
CPU_FP32_ATTENTION_EXTRA: dict[str, dict[str, float]] = {
    "encoder_layer": {"S*d": 6.0, "S*kv": 4.0},
    "decoder_layer": {"T*d": 12.0, "T*kv": 4.0, "S*kv": 4.0},
}
# On the CPU the memory read scores the bank once for the whole batch with plain products
# (core.model.memory: `_shared_bank_read`) and keeps its weights, (B·S, heads, K) of them, in
# the compute dtype; the bank's copy in that dtype is kept once, not per sample. Replaces the
# table's memory row there (fit on the calibration configs, worst residual 0.12 %).
CPU_MEMORY_COEFFS: dict[str, dict[str, float]] = {
    "fp32": {"S*d": 20.0, "S*m": 12.0, "S*Hm*K": 4.0, "shared:K*m": 8.0},
    "bf16": {"S*d": 10.0, "S*m": 6.0, "S*Hm*K": 2.0, "shared:K*m": 4.0},
}
# Sequence packing: the block-diagonal masks (bool, B·(S² + T² + T·S), built once per forward)
# and the gathers between packed rows and samples (int64 indices, a few per token); the
# rotary tables become per row (the ``shared:`` rotary features scale with the batch).
PACKING_INDEX_BYTES_PER_TOKEN = 24
# Bytes per logit element (B·T·V) at the peak: logits + saved fp32 log-softmax + the gradients
# alive when the backward pass starts. Fitted from MemTracker peaks (see `calibrate`).
LOGITS_BYTES: dict[str, float] = {"fp32": 16.0, "bf16": 14.0}
# The GPU's memory read (SDPA over the slot bank plus each sample's own slot) materialises
# per-sample key/value tensors; its backward pass allocates their gradients, (B, K+1,
# memory_dim) each, in the compute dtype. Measured on tiny (B 2, S 24): +9.4 MB over the peak
# without the stage, this term predicts 8.2 MB. The CPU's read instead holds two gradients of
# its weights, (B·S, heads, K) each, while its backward runs.
MEMORY_READ_GRAD_TENSORS = 2
# Autocast keeps a low-precision copy of each matrix weight from the forward until backward.
AUTOCAST_COPY_BYTES = 2
CUDA_CONTEXT_BYTES = 600 * 1024**2  # CUDA context + cuBLAS/cuDNN workspaces (300 MiB-2 GiB seen)
CUDA_ALLOCATOR_SLACK = 0.05  # caching-allocator rounding/fragmentation on top of tensor bytes
CPU_RUNTIME_BYTES = 400 * 1024**2  # resident torch runtime (libraries, thread pools)
# Temporaries while the optimizer steps (activations are gone by then, so the peak is the larger
# of the two). torch's fused AdamW updates in place: measured with MemTracker, no temporaries
# (the foreach implementation would add one fp32 copy of the moments). The compressed trainer
# decodes both moments to fp32 and builds fp32 denom/update, per tensor: about 20 bytes per
# value of the largest tensor.
ADAMW_STEP_TEMP_FACTOR = 0.0
COMPRESSED_STEP_TEMP_BYTES = 20


# ------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class MemoryEstimate:
    """A memory estimate in bytes, with the assumptions in ``notes``."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    overhead: int
    total: int
    notes: tuple[str, ...] = ()
    params: int = 0
    trainable_params: int = 0
    mode: str = "train"
    device: str = "cpu"
    precision: str = "fp32"
    trainer: str = "simple"
    micro_batch: int = 1
    seq_len: int = 0
    checkpointing: bool = False
    kv_cache: int = 0
    optimizer_step: int = 0  # temporaries of the optimizer step (not alive with activations)
    workspace: int = 0  # backward-pass temporaries alive together with the activations

    @property
    def total_gib(self) -> float:
        """Total in GiB."""
        return self.total / GiB

    @property
    def tensor_bytes(self) -> int:
        """Total without the runtime overhead (what a tensor-level measurement sees)."""
        return self.total - self.overhead

    def rows(self) -> list[tuple[str, int]]:
        """(label, bytes) rows for display, ending with the total."""
        rows = [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer state", self.optimizer),
            ("activations", self.activations),
        ]
        if self.kv_cache:
            rows.append(("KV cache", self.kv_cache))
        if self.workspace:
            rows.append(("backward workspace", self.workspace))
        if self.optimizer_step:
            rows.append(("optimizer step (peak instead of activations)", self.optimizer_step))
        rows += [("logits", self.logits), ("overhead", self.overhead), ("total", self.total)]
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plus ``total_gib``)."""
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        data["total_gib"] = round(self.total_gib, 3)
        return data


def _make(notes: list[str], **parts: Any) -> MemoryEstimate:
    """Build an estimate; total = state + max(activations + logits + KV + backward workspace,
    optimizer step) + overhead."""
    keys = ("weights", "gradients", "optimizer", "activations", "logits", "overhead", "kv_cache",
            "optimizer_step", "workspace")
    ints = {k: int(parts.get(k, 0)) for k in keys}
    working = max(ints["activations"] + ints["logits"] + ints["kv_cache"] + ints["workspace"],
                  ints["optimizer_step"])
    total = ints["weights"] + ints["gradients"] + ints["optimizer"] + working + ints["overhead"]
    rest = {k: v for k, v in parts.items() if k not in keys}
    return MemoryEstimate(total=total, notes=tuple(notes), **ints, **rest)


# -------------------------------------------------------------------------- parameter facts
@dataclass(frozen=True)
class ParameterFacts:
    """Exact parameter figures of a configuration, from a ``meta``-device model."""

    total: int
    by_component: dict[str, int]
    trainable_text: int  # parameters that receive a gradient in text-only training
    trainable_tensors: int  # how many tensors those are (optimizers keep a step counter each)
    matrix_text: int  # of those, ≥2-D (autocast keeps low-precision copies of these)
    largest_tensor: int
    largest_layer: int  # largest encoder/decoder layer (FSDP gathers one at a time)
    compressed_state: int  # CompressedAdamW state bytes for the trainable parameters


def parameter_facts(config: NeuralNetConfig) -> ParameterFacts:
    """Exact parameter figures for ``config`` (cached by configuration)."""
    return _facts_cached(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str))


_FACTS: dict[str, ParameterFacts] = {}


def _facts_cached(key: str) -> ParameterFacts:
    if key in _FACTS:
        return _FACTS[key]
    import torch

    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone

    config = NeuralNetConfig(**json.loads(key))
    with _INIT_LOCK, _skip_init(), torch.device("meta"):
        model = TransformerNeuralNetBackbone(config)
    counts = model.num_parameters(by_component=True)
    assert isinstance(counts, dict)
    trainable = matrix = largest = tensors = 0
    compressed = 0
    component_of = _compressed_component_fn()
    inactive = _inactive_prefixes(config)
    for name, p in model.named_parameters():
        if name.startswith(inactive):
            continue
        n = p.numel()
        trainable += n
        tensors += 1
        largest = max(largest, n)
        if p.ndim >= 2:
            matrix += n
        compressed += _compressed_state_bytes(component_of(name, p) if component_of else "bulk", n)
    layer_sizes = [
        sum(p.numel() for p in layer.parameters())
        for stack in (model.encoder, model.decoder)
        for layer in stack.layers
    ]
    facts = ParameterFacts(
        total=int(counts["total"]),
        by_component={k: int(v) for k, v in counts.items() if k != "total"},
        trainable_text=trainable,
        trainable_tensors=tensors,
        matrix_text=matrix,
        largest_tensor=largest,
        largest_layer=max(layer_sizes, default=0),
        compressed_state=compressed,
    )
    _FACTS[key] = facts
    return facts


_INIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Turn ``torch.nn.init`` functions into no-ops while a meta model is built.

    Initialising meta tensors does nothing useful but costs seconds per large model (each init
    call is decomposed in Python). Global while it lasts, hence the lock; only
    :func:`parameter_facts` uses it, and the project never builds real models in that process
    at the same moment (trainers run in child processes).
    """
    from torch.nn import init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(init, n) for n in names}
    try:
        for n in names:
            setattr(init, n, _identity)
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


def _identity(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


def _compressed_component_fn() -> Callable[[str, Any], str] | None:
    try:
        from core.train.compressed import component_of
    except ImportError:  # pragma: no cover - the compressed trainer ships with core
        return None
    return component_of


# Moment storage per compressed-trainer group: (bits, blockwise scales?) — training.md §6.
_COMPRESSED_BITS = {"protected": 32, "memory": 16, "knowledge_graph": 16, "reasoning": 12, "bulk": 8}


def _compressed_state_bytes(group: str, n: int) -> int:
    """CompressedAdamW bytes for one tensor of ``n`` values: two moments + step counter."""
    bits = _COMPRESSED_BITS.get(group, 8)
    if bits >= 16:
        return 2 * n * bits // 8 + 4
    blocks = math.ceil(n / 256)
    padded = blocks * 256
    codes = padded if bits == 8 else (padded * 3 + 1) // 2
    return 2 * (codes + 4 * blocks) + 4


# --------------------------------------------------------------------------- activations
def _features(config: NeuralNetConfig, s: int, t: int) -> dict[str, float]:
    d = config.d_model
    return {
        "S*d": s * d,
        "T*d": t * d,
        "S*hid": s * config.swiglu_hidden,
        "T*hid": t * config.swiglu_hidden,
        "S*kv": s * config.kv_dim,
        "T*kv": t * config.kv_dim,
        "S*H": s * config.nhead,
        "T*H": t * config.nhead,
        "S*N*d": s * config.num_tot_branches * d,
        "N*d": config.num_tot_branches * d,
        "N*hid": config.num_tot_branches * config.swiglu_hidden,
        "N*d*d": config.num_tot_branches * d * d,
        "d": d,
        "S*hd": s * config.head_dim,
        "T*hd": t * config.head_dim,
        "S*Hs*P": s * max(4, d // 64) * config.num_scratchpad_slots,
        "P*d": config.num_scratchpad_slots * d,
        "S*m": s * config.memory_dim,
        "S*Hm*K": s * config.memory_heads * (config.memory_slots + 1),
        "K*m": (config.memory_slots + 1) * config.memory_dim,
    }


def _present_blocks(config: NeuralNetConfig) -> dict[str, int]:
    """Block -> how many of it run in a text-only training forward."""
    facts = parameter_facts(config)
    comps = facts.by_component
    blocks = {
        "encoder_layer": config.num_encoder_layers,
        "decoder_layer": config.num_decoder_layers,
        "head": 1,
        "reasoning": 1 if comps.get("reasoning_engine") else 0,
        "memory": 1 if comps.get("neural_memory") else 0,
        "enhancements": 1 if comps.get("uncertainty") else 0,
    }
    return blocks


def block_activation_bytes(
    config: NeuralNetConfig, block: str, micro_batch: int, seq_len: int, dec_len: int,
    precision: str, device: str = "cpu", packing: bool = False,
) -> float:
    """Saved-activation bytes of one block for a micro-batch (calibrated coefficients).

    Features named ``shared:...`` (e.g. rotary tables, scratchpad slot keys) do not scale with
    the batch — except the rotary tables of a packed batch (``packing``), built per row.
    """
    table = dict(ACTIVATION_COEFFS["fp32" if precision == "fp32" else "bf16"][block])
    if block == "memory" and device == "cpu":
        table = dict(CPU_MEMORY_COEFFS["fp32" if precision == "fp32" else "bf16"])
    elif precision != "fp32" and device == "cpu":
        for name, extra in CPU_FP32_ATTENTION_EXTRA.get(block, {}).items():
            table[name] = table.get(name, 0.0) + extra
    feats = _features(config, seq_len, dec_len)
    total = 0.0
    for name, coef in table.items():
        feature = name.removeprefix("shared:")
        per_row = packing and feature in ("S*hd", "T*hd")
        if name.startswith("shared:") and not per_row:
            total += coef * feats[feature]
        else:
            total += coef * micro_batch * feats[feature]
    return total


def packing_bytes(micro_batch: int, seq_len: int, dec_len: int) -> int:
    """What a packed micro-batch adds: its block masks and the packed/sample index tensors."""
    s, t = seq_len, dec_len
    masks = micro_batch * (s * s + t * t + t * s)
    return int(masks + PACKING_INDEX_BYTES_PER_TOKEN * micro_batch * (s + t))


def activation_bytes(
    config: NeuralNetConfig,
    micro_batch: int,
    seq_len: int,
    precision: str = "fp32",
    checkpointing: bool = False,
    dec_len: int | None = None,
    device: str = "cpu",
    packing: bool = False,
) -> int:
    """Activation bytes autograd holds for one micro-batch (without the B·T·V logits terms).

    ``packing``: several samples per row (rows of ``seq_len``); the bound is the same
    ``micro_batch × seq_len`` tokens — packed rows are fuller, so a run sits nearer it — plus
    :func:`packing_bytes`.
    """
    t = seq_len if dec_len is None else dec_len
    blocks = _present_blocks(config)
    per = {
        b: block_activation_bytes(config, b, micro_batch, seq_len, t, precision, device, packing)
        for b in blocks
    }
    if checkpointing:
        d = config.d_model
        # Each checkpointed layer keeps its fp32 input; one layer is rebuilt at a time.
        kept = 4 * d * micro_batch * (seq_len * blocks["encoder_layer"] + t * blocks["decoder_layer"])
        layers = kept + max(per["encoder_layer"], per["decoder_layer"])
    else:
        layers = per["encoder_layer"] * blocks["encoder_layer"] + per["decoder_layer"] * blocks[
            "decoder_layer"
        ]
    rest = sum(per[b] * n for b, n in blocks.items() if b not in ("encoder_layer", "decoder_layer"))
    extra = packing_bytes(micro_batch, seq_len, t) if packing else 0
    return int(layers + rest + extra)


# ------------------------------------------------------------------------------ estimates
def _config_of(profile_or_config: Any, vocab_size: int | None) -> NeuralNetConfig:
    # A profile means the model a run with it builds (data-fed modules off for text data).
    config = getattr(profile_or_config, "run_model", profile_or_config)
    if vocab_size is not None and vocab_size != config.vocab_size:
        config = dataclasses.replace(config, vocab_size=int(vocab_size))
    return config


def _resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    if precision not in PRECISION_BYTES:
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    return precision


def estimate_training_memory(
    profile_or_config: Any,
    micro_batch: int,
    seq_len: int,
    precision: str = "fp32",
    optimizer: str = "adamw",
    checkpointing: bool = False,
    vocab_size: int | None = None,
    device: str = "cpu",
    trainer: str = "simple",
    packing: bool = False,
) -> MemoryEstimate:
    """Peak memory of one training step (bytes) for a profile or a NeuralNetConfig.

    ``seq_len`` is both the encoder and the decoder length. ``optimizer`` "adamw" (fp32 moments)
    or "compressed" (``trainer="compressed"`` implies it). ``precision`` "fp32", "bf16", "fp16"
    (mixed precision: fp32 master weights plus autocast copies) or "auto" (bf16 on CUDA, fp32 on
    CPU). ``device`` "cpu" or "cuda" decides the overhead term. ``packing``: sequence packing
    (several samples per row of ``seq_len``): the same token bound plus its masks and indices.
    """
    if micro_batch < 1 or seq_len < 1:
        raise ConfigError("micro_batch and seq_len must be >= 1")
    if trainer == "compressed":
        optimizer = "compressed"
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    config = _config_of(profile_or_config, vocab_size)
    precision = _resolve_precision(precision, device)
    facts = parameter_facts(config)
    notes: list[str] = []

    weights = 4 * facts.total
    if precision != "fp32":
        weights += AUTOCAST_COPY_BYTES * facts.matrix_text
        notes.append(f"{precision} autocast: fp32 master weights plus {precision} copies")
    gradients = 4 * facts.trainable_text
    if optimizer == "adamw":
        opt = 8 * facts.trainable_text + 4 * facts.trainable_tensors  # + a step counter each
        step = int(ADAMW_STEP_TEMP_FACTOR * gradients)
        notes.append("AdamW: two fp32 moments per trainable parameter")
    else:
        opt = facts.compressed_state
        step = COMPRESSED_STEP_TEMP_BYTES * facts.largest_tensor
        notes.append("compressed trainer: 8/12/16-bit moments per component, fp32 weights/grads")
    frozen = facts.total - facts.trainable_text
    if frozen:
        notes.append(
            f"{frozen / 1e6:.2f} M parameters get no gradient in training (the Tree of "
            "Thought's contradiction heads: one kept branch has no pair to assess)"
        )
    acts = activation_bytes(config, micro_batch, seq_len, precision, checkpointing,
                            device=device, packing=packing)
    if packing:
        notes.append("sequence packing: rows of seq_len tokens hold several samples (block masks "
                     "per row); packed rows are fuller, so a run sits nearer this estimate")
    if checkpointing:
        notes.append("gradient checkpointing: layer inputs kept, one layer rebuilt at a time")
    logits = int(LOGITS_BYTES["fp32" if precision == "fp32" else "bf16"] * micro_batch * seq_len * config.vocab_size)
    workspace = 0
    if _present_blocks(config)["memory"]:
        per_sample = (seq_len * config.memory_heads if device == "cpu"
                      else config.memory_dim) * (config.memory_slots + 1)
        workspace = MEMORY_READ_GRAD_TENSORS * PRECISION_BYTES[precision] * micro_batch * per_sample
    overhead = _overhead(device, weights + gradients + opt + max(acts + logits + workspace, step))
    return _make(
        notes,
        weights=weights,
        gradients=gradients,
        optimizer=opt,
        activations=acts,
        logits=logits,
        workspace=workspace,
        optimizer_step=step,
        overhead=overhead,
        params=facts.total,
        trainable_params=facts.trainable_text,
        mode="train",
        device=device,
        precision=precision,
        trainer=trainer if trainer == "compressed" or optimizer != "compressed" else "compressed",
        micro_batch=micro_batch,
        seq_len=seq_len,
        checkpointing=checkpointing,
    )


def estimate_inference_memory(
    profile_or_config: Any,
    batch: int = 1,
    prompt_len: int = 512,
    new_tokens: int = 256,
    precision: str = "bf16",
    vocab_size: int | None = None,
    device: str = "cpu",
) -> MemoryEstimate:
    """Memory for generation: weights + KV cache ``2·L_dec·2·G·hd·(T+S)·B`` + working set.

    The KV cache holds, per decoder layer, self-attention K/V for the ``T = new_tokens`` generated
    positions and cross-attention K/V for the ``S = prompt_len`` encoder positions, in the
    compute precision. The working set is the encoder forward over the prompt (one block's
    activations) and one step's logits.
    """
    config = _config_of(profile_or_config, vocab_size)
    precision = _resolve_precision(precision, device)
    nbytes = PRECISION_BYTES[precision]
    facts = parameter_facts(config)
    weights = nbytes * facts.total
    kv = 2 * config.num_decoder_layers * config.kv_dim * (new_tokens + prompt_len) * batch * nbytes
    # No autograd: only one block's tensors are alive at a time, about its saved set.
    scale = nbytes / 4
    working = max(
        block_activation_bytes(config, "encoder_layer", batch, prompt_len, 1, "fp32"),
        block_activation_bytes(config, "reasoning", batch, prompt_len, 1, "fp32")
        if _present_blocks(config)["reasoning"] else 0.0,
    ) * scale
    logits = 4 * batch * config.vocab_size * 2  # fp32 logits + sampling probabilities
    overhead = _overhead(device, weights + kv + int(working) + logits)
    notes = [f"{precision} weights, KV cache for {prompt_len}+{new_tokens} tokens × batch {batch}"]
    return _make(
        notes,
        weights=weights,
        kv_cache=kv,
        activations=int(working),
        logits=logits,
        overhead=overhead,
        params=facts.total,
        trainable_params=0,
        mode="infer",
        device=device,
        precision=precision,
        trainer="none",
        micro_batch=batch,
        seq_len=prompt_len,
    )


def _overhead(device: str, tensor_bytes: int) -> int:
    if device == "cuda":
        return int(CUDA_CONTEXT_BYTES + CUDA_ALLOCATOR_SLACK * tensor_bytes)
    return CPU_RUNTIME_BYTES


def shard_estimate(estimate: MemoryEstimate, num_devices: int, config: NeuralNetConfig) -> MemoryEstimate:
    """Per-device memory when weights, gradients and optimizer state are sharded (FSDP).

    Each device holds ``1/N`` of the model state plus the unsharded parameters of the largest
    layer (gathered for compute, twice for prefetch), and its own full activations and logits.
    """
    n = max(1, num_devices)
    facts = parameter_facts(config)
    gathered = 2 * 4 * facts.largest_layer
    weights = estimate.weights // n + gathered
    note = f"FSDP over {n} devices: model state split {n} ways, one layer gathered at a time"
    step = estimate.optimizer_step // n
    tensor = (weights + estimate.gradients // n + estimate.optimizer // n
              + max(estimate.activations + estimate.logits, step))
    return dataclasses.replace(
        estimate,
        weights=weights,
        gradients=estimate.gradients // n,
        optimizer=estimate.optimizer // n,
        optimizer_step=step,
        overhead=_overhead(estimate.device, tensor),
        total=tensor + _overhead(estimate.device, tensor),
        notes=estimate.notes + (note,),
    )


# ---------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class MeasuredMemory:
    """What one real training step used (bytes).

    ``saved_activations``: bytes autograd saved during the last micro-batch's forward
    (deduplicated by storage, autocast weight copies counted in ``autocast_copies``), per block
    in ``by_block``. ``peak``: the step's peak — live tensor bytes tracked by ``MemTracker`` on
    CPU (``track_peak=True``) or ``torch.cuda.max_memory_allocated`` on CUDA; None when not tracked.
    """

    weights: int
    gradients: int
    optimizer: int
    saved_activations: int
    autocast_copies: int
    peak: int | None
    device: str
    method: str
    by_block: dict[str, int] = field(default_factory=dict)

    @property
    def saved_total(self) -> int:
        """weights + gradients + optimizer + saved activations (+ autocast copies)."""
        return self.weights + self.gradients + self.optimizer + self.saved_activations + self.autocast_copies

    @property
    def total(self) -> int:
        """The peak when it was tracked, else :attr:`saved_total`."""
        return self.peak if self.peak is not None else self.saved_total


def _block_of(module_name: str) -> str | None:
    parts = module_name.split(".")
    if len(parts) == 3 and parts[1] == "layers" and parts[0] in ("encoder", "decoder"):
        return f"{parts[0]}_layer"
    if module_name == "reasoning_engine":
        return "reasoning"
    if module_name == "neural_memory":
        return "memory"
    if module_name in ("knowledge_graph", "continual_learning", "uncertainty", "active_learning"):
        return "enhancements"
    return None


class _SavedTensorCounter:
    """Counts bytes autograd saves, deduplicated by storage, attributed to the running block."""

    def __init__(self, model: Any) -> None:
        self.stack = ["head"]
        self.seen: set[tuple[int, int]] = set()
        self.by_block: dict[str, int] = {}
        self.autocast_copies = 0
        # Parameters and persistent state (rotary cos/sin caches) are not activations.
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
        rotary = getattr(model, "rotary", None)
        for t in (vars(rotary).values() if rotary is not None else ()):
            if hasattr(t, "untyped_storage"):
                self.param_ptrs.add(t.untyped_storage().data_ptr())
        self.handles: list[Any] = []
        for name, module in model.named_modules():
            block = _block_of(name)
            if block is not None:
                self.handles.append(module.register_forward_pre_hook(self._enter(block)))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, block: str) -> Callable[..., None]:
        def hook(module: Any, args: Any) -> None:
            self.stack.append(block)

        return hook

    def _leave(self, module: Any, args: Any, output: Any) -> None:
        self.stack.pop()

    def pack(self, t: Any) -> Any:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        key = (ptr, storage.nbytes())
        if ptr in self.param_ptrs or key in self.seen or storage.nbytes() == 0:
            return t
        self.seen.add(key)
        if _is_param_cast(t):
            self.autocast_copies += storage.nbytes()
        else:
            block = self.stack[-1]
            self.by_block[block] = self.by_block.get(block, 0) + storage.nbytes()
        return t

    def close(self) -> None:
        for h in self.handles:
            h.remove()


_VIEW_FUNCTIONS = {
    "TBackward0", "ViewBackward0", "TransposeBackward0", "PermuteBackward0", "ExpandBackward0",
    "UnsqueezeBackward0", "SliceBackward0", "AliasBackward0", "SelectBackward0",
}


def _is_param_cast(t: Any) -> bool:
    """True for autocast's low-precision copy of a parameter (or a view of it)."""
    fn = getattr(t, "grad_fn", None)
    for _ in range(4):
        if fn is None:
            return False
        name = type(fn).__name__
        nxt = fn.next_functions[0][0] if fn.next_functions else None
        if name == "ToCopyBackward0":
            return nxt is not None and type(nxt).__name__ == "AccumulateGrad"
        if name not in _VIEW_FUNCTIONS:
            return False
        fn = nxt
    return False


def measure_training_memory(
    config: NeuralNetConfig,
    micro_batch: int,
    seq_len: int,
    precision: str = "fp32",
    checkpointing: bool = False,
    *,
    optimizer: str = "adamw",
    vocab_size: int | None = None,
    device: str = "cpu",
    track_peak: bool = False,
    cuda: Any = None,
    seed: int = 0,
    packing: bool = False,
) -> MeasuredMemory:
    """Run one real training step (warm-up step first) and measure its memory.

    Two micro-batches are accumulated before the optimizer step, so gradients are alive during
    the measured forward (as in every run with ``grad_accum > 1``); the neural memory starts
    full, as after a long run, and the trainer-side uncertainty loss is added. On CPU the saved activations
    are counted with ``saved_tensors_hooks``; ``track_peak=True`` also tracks the peak of live
    tensor bytes with ``MemTracker`` (slow: a dispatch mode sees every op). On CUDA the peak is
    ``cuda.max_memory_allocated()`` after ``cuda.reset_peak_memory_stats()`` (``cuda`` defaults to
    ``torch.cuda``; tests pass a fake with the same methods, whose ``tensor_device`` says where
    the tensors live). ``packing``: the ``micro_batch`` samples are half as long and packed
    two per row (``micro_batch // 2`` full rows of ``seq_len``, segment ids 1 and 2 on both
    sides) — a micro-batch of short samples as sequence packing lays it out.
    """
    import torch

    precision = _resolve_precision(precision, device)
    config = dataclasses.replace(
        _config_of(config, vocab_size), use_gradient_checkpointing=bool(checkpointing)
    )
    cuda_api = cuda if cuda is not None else (torch.cuda if device == "cuda" else None)
    tensor_device = torch.device(getattr(cuda, "tensor_device", device) if cuda is not None else device)
    from core.model.model import TransformerNeuralNetBackbone

    torch.manual_seed(seed)
    model = TransformerNeuralNetBackbone(config).to(tensor_device).train()
    memory = getattr(model, "neural_memory", None)
    if memory is not None:  # steady state of a long run: every slot written (each read sees all)
        keys = torch.randn(config.memory_slots, config.memory_dim, device=tensor_device)
        memory.write(keys, torch.randn_like(keys))
    if optimizer == "compressed":
        from core.train.compressed import CompressedAdamW, compressed_param_groups

        opt: Any = CompressedAdamW(compressed_param_groups(model), lr=1e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=tensor_device.type in ("cpu", "cuda"))
    gen = torch.Generator().manual_seed(seed)

    rows = micro_batch // 2 if packing else micro_batch

    def batch() -> tuple[Any, Any]:
        shape = (rows, seq_len)
        ids = torch.randint(3, config.vocab_size, shape, generator=gen).to(tensor_device)
        dec = torch.randint(3, config.vocab_size, shape, generator=gen).to(tensor_device)
        return ids, dec

    packed: dict[str, Any] = {}
    if packing:
        if seq_len < 2 or micro_batch < 2 or micro_batch % 2:
            raise ConfigError("a packed measurement needs an even micro_batch and seq_len >= 2 "
                              "(two samples per row)")
        seg = (torch.arange(seq_len) >= seq_len // 2).long() + 1
        seg = seg.expand(rows, seq_len).contiguous().to(tensor_device)
        packed = {"segment_ids": seg, "decoder_segment_ids": seg}

    def autocast() -> Any:
        if precision == "fp32":
            return torch.autocast(tensor_device.type, enabled=False)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(tensor_device.type, dtype=dtype)

    def forward(ids: Any, dec: Any) -> Any:
        out = model(input_ids=ids, decoder_input_ids=dec, labels=dec, **packed)
        loss = out["loss"]
        estimates = out.get("uncertainty_estimates")
        if estimates:  # the trainer-side UQ loss (training.md §3), so the UQ heads train too
            from core.model.uncertainty import (
                auxiliary_loss,
                uncertainty_loss,
                uncertainty_targets,
            )

            if packed:  # one estimate per sample: the backbone's per-sample NLL is the target
                aux = auxiliary_loss(out, dec, 1)
                loss = loss + aux if aux is not None else loss
            else:
                targets = uncertainty_targets(out["logits"], dec, config.uq_num_bins)
                loss = loss + uncertainty_loss(estimates, targets, 1)
        return loss

    def micro(ids: Any, dec: Any, counter: _SavedTensorCounter | None = None) -> None:
        with autocast():
            if counter is None:
                loss = forward(ids, dec)
            else:
                with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
                    loss = forward(ids, dec)
        loss.backward()

    # Warm-up step: optimizer state exists and persistent buffers are written, as in a run.
    micro(*batch())
    opt.step()
    opt.zero_grad(set_to_none=True)
    first, second = batch(), batch()
    counter = _SavedTensorCounter(model)
    peak: int | None = None
    try:
        if cuda_api is not None:
            cuda_api.synchronize()
            cuda_api.reset_peak_memory_stats()
            micro(*first)
            micro(*second, counter)
            opt.step()
            cuda_api.synchronize()
            peak = int(cuda_api.max_memory_allocated())
            method = "torch.cuda.max_memory_allocated"
        elif track_peak:
            from torch.distributed._tools.mem_tracker import MemTracker

            tracker = MemTracker()
            tracker.track_external(model, opt)
            with tracker:
                micro(*first)
                tracker.reset_mod_stats()
                micro(*second, counter)
                opt.step()
            snap = tracker.get_tracker_snapshot("peak")
            peak = int(sum(v.get("Total", 0) for v in snap.values()))
            method = "MemTracker peak of live tensors"
        else:
            micro(*first)
            micro(*second, counter)
            opt.step()
            method = "saved_tensors_hooks + exact parameter/gradient/optimizer bytes"
        grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    finally:
        counter.close()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    state = sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if isinstance(t, torch.Tensor)
    )
    return MeasuredMemory(
        weights=weights,
        gradients=grads,
        optimizer=state,
        saved_activations=sum(counter.by_block.values()),
        autocast_copies=counter.autocast_copies,
        peak=peak,
        device=device,
        method=method,
        by_block=dict(counter.by_block),
    )


def measure_module_saved(config: NeuralNetConfig, block: str, micro_batch: int, seq_len: int,
                         precision: str = "fp32", seed: int = 0) -> int:
    """Bytes autograd saves in one enhancement stage run on its own (steady state).

    ``"memory"``: :class:`core.model.memory.NeuralMemoryNetwork` with every slot written (a long run
    fills the bank: each sample writes one slot per step); ``"enhancements"``:
    :class:`core.model.uncertainty.UncertaintyQuantification` in training mode.
    """
    import torch

    torch.manual_seed(seed)
    if block == "memory":
        from core.model.memory import NeuralMemoryNetwork

        module: Any = NeuralMemoryNetwork(config).train()
        m = config.memory_dim
        module.write(torch.randn(config.memory_slots, m), torch.randn(config.memory_slots, m))
    elif block == "enhancements":
        from core.model.uncertainty import UncertaintyQuantification

        module = UncertaintyQuantification(config).train()
    else:
        raise ValueError(f"no standalone measurement for block {block!r}")
    x = torch.randn(micro_batch, seq_len, config.d_model, requires_grad=True)
    counter = _SavedTensorCounter(module)
    counter.param_ptrs.add(x.untyped_storage().data_ptr())  # the stage's input is not its own
    counter.stack = [block]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    ctx = (torch.autocast("cpu", enabled=False) if precision == "fp32"
           else torch.autocast("cpu", dtype=dtype))
    try:
        with ctx, torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
            module(x)
    finally:
        counter.close()
    return sum(counter.by_block.values())


# ---------------------------------------------------------------------------- calibration
# Small configurations where d, SwiGLU width, KV width, heads, branches and slots vary
# independently, so the per-block fit is well determined.
CALIBRATION_CONFIGS: tuple[dict[str, int], ...] = (
    dict(d_model=128, nhead=4, num_kv_heads=2, dim_feedforward=256, num_tot_branches=2,
         num_scratchpad_slots=8, memory_dim=512, memory_heads=8, memory_slots=64),
    dict(d_model=128, nhead=8, num_kv_heads=8, dim_feedforward=512, num_tot_branches=3,
         num_scratchpad_slots=4, memory_dim=256, memory_heads=4, memory_slots=32),
    dict(d_model=192, nhead=6, num_kv_heads=1, dim_feedforward=384, num_tot_branches=2,
         num_scratchpad_slots=16, memory_dim=512, memory_heads=8, memory_slots=48),
    dict(d_model=256, nhead=4, num_kv_heads=4, dim_feedforward=1024, num_tot_branches=4,
         num_scratchpad_slots=8, memory_dim=384, memory_heads=8, memory_slots=64),
    dict(d_model=256, nhead=8, num_kv_heads=2, dim_feedforward=512, num_tot_branches=2,
         num_scratchpad_slots=32, memory_dim=256, memory_heads=4, memory_slots=96),
    dict(d_model=320, nhead=10, num_kv_heads=5, dim_feedforward=640, num_tot_branches=3,
         num_scratchpad_slots=8, memory_dim=512, memory_heads=8, memory_slots=32),
)
CALIBRATION_SHAPES = ((2, 24), (3, 40))  # (micro_batch, seq_len)


def _calibrated_names(block: str) -> list[str]:
    """The features a block's fit uses. Calibration runs on the CPU, where the memory read is
    the shared-bank one: its fit is :data:`CPU_MEMORY_COEFFS` (the GPU's fused-read row in
    :data:`ACTIVATION_COEFFS` was fit before that read existed and is kept as it was)."""
    if block == "memory":
        return list(CPU_MEMORY_COEFFS["fp32"])
    return list(ACTIVATION_COEFFS["fp32"][block])


def calibrate(
    precisions: Iterable[str] = ("fp32", "bf16"),
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, dict[str, float]]]:
    """Re-measure saved activations on the calibration configs and fit per-block coefficients.

    Returns a table shaped like :data:`ACTIVATION_COEFFS` (rounded to 0.5 byte) and logs it.
    """
    import torch

    from core.model.config import NeuralNetConfig

    base = dict(
        vocab_size=512, num_encoder_layers=1, num_decoder_layers=1, max_position_embeddings=256,
    )
    result: dict[str, dict[str, dict[str, float]]] = {}
    for precision in precisions:
        rows: dict[str, list[tuple[list[float], float]]] = {}
        for overrides in CALIBRATION_CONFIGS:
            config = NeuralNetConfig(**{**base, **overrides})
            for b, s in CALIBRATION_SHAPES:
                measured = measure_training_memory(config, b, s, precision)
                feats = _features(config, s, s)
                by_block = dict(measured.by_block)
                present = _present_blocks(config)
                # Stages not yet wired into the backbone are measured on their own module.
                for block in ("memory", "enhancements"):
                    if not present[block]:
                        present[block] = 1
                        by_block[block] = measure_module_saved(config, block, b, s, precision)
                for block, n in present.items():
                    if n == 0:
                        continue
                    value = by_block.get(block, 0)
                    if block == "head":  # the B·T·V log-softmax is modelled by LOGITS_BYTES
                        value -= 4 * b * s * config.vocab_size
                    names = _calibrated_names(block)
                    row = [
                        feats[name.removeprefix("shared:")] * (1 if name.startswith("shared:") else b)
                        for name in names
                    ]
                    rows.setdefault(block, []).append((row, value / n))
        table: dict[str, dict[str, float]] = {}
        for block, samples in rows.items():
            names = _calibrated_names(block)
            a = torch.tensor([r for r, _ in samples], dtype=torch.float64)
            y = torch.tensor([v for _, v in samples], dtype=torch.float64)
            coef = torch.linalg.lstsq(a, y.unsqueeze(1)).solution.squeeze(1)
            table[block] = {n: round(float(c) * 2) / 2 for n, c in zip(names, coef, strict=True)}
            fit = a @ coef
            worst = float(((fit - y).abs() / y.clamp_min(1)).max()) if len(y) else 0.0
            log(f"{precision} {block}: {table[block]}  (worst relative residual {worst:.3%})")
        result[precision] = table
    return result


if __name__ == "__main__":  # pragma: no cover - `python -m profiles.estimate` re-calibrates
    calibrate()
