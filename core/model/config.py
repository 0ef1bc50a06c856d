"""`NeuralNetConfig`: every hyper-parameter of the Aeron model (spec model.md §1).

A plain dataclass with the v4.0.1 defaults, validated on construction, with a JSON round-trip.
Validation errors are :class:`core.errors.ConfigError` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.typecheck import type_name, type_ok

MEMORY_WRITE_MODES = ("train", "always", "never")
ACTIVATIONS = ("silu", "gelu")
# Attention kernels (spec rlhf.md §6, core.model.layers.attention); "auto": FlashAttention-2 when usable.
ATTENTION_BACKENDS = ("auto", "flash2", "sdpa", "manual")
ENABLE_SWITCHES = (
    "enable_multimodal",
    "enable_knowledge_graph",
    "enable_memory",
    "enable_continual",
    "enable_uncertainty",
    "enable_active_learning",
    "enable_reasoning",
)


@dataclass
class NeuralNetConfig:
    """Hyper-parameters of the Aeron encoder-decoder (defaults = Aeron v4.0.1, ~3.7 B)."""

    vocab_size: int = 50000
    d_model: int = 2048
    nhead: int = 32
    num_kv_heads: int = 8
    num_encoder_layers: int = 32
    num_decoder_layers: int = 32
    dim_feedforward: int = 8192
    ffn_multiple_of: int = 1
    dropout: float = 0.0
    activation: str = "silu"
    rms_norm_eps: float = 1e-6
    layer_norm_eps: float = 1e-5  # legacy, unused (kept for checkpoint compatibility)
    rope_theta: float = 500000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    use_gradient_checkpointing: bool = False
    attention_backend: str = "auto"
    initializer_range: float = 0.02
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    # Multimodal path
    num_multimodal_layers: int = 6
    patch_size: int = 16
    num_channels: int = 3
    vision_d_model: int = 768
    vision_max_patches: int = 1024
    # Side of the square images are resized to; None: the largest multiple of patch_size that
    # fits vision_max_patches, at most 224 (see effective_image_size).
    image_size: int | None = None
    # Reasoning engine
    num_tot_branches: int = 4
    num_scratchpad_slots: int = 64
    tot_keep_k: int | None = None  # None -> ceil(num_tot_branches / 2)
    tot_contradiction_threshold: float = 0.5
    max_reasoning_steps: int = 3
    reasoning_complexity_threshold: float = 0.3
    # Knowledge graph
    kg_dim: int = 128
    kg_num_entities: int = 100000
    kg_num_relations: int = 50
    kg_cache_size: int = 4096
    # Neural memory
    memory_slots: int = 1000
    memory_dim: int = 512
    memory_heads: int = 8
    memory_write_mode: str = "train"
    # Continual learning
    num_tasks: int = 100
    ewc_lambda: float = 1000.0
    # Uncertainty quantification
    uq_mc_samples: int = 10
    uq_ensemble_size: int = 5
    uq_num_bins: int = 15
    uq_mc_dropout: float = 0.1
    # Active learning
    al_proj_dim: int = 16
    # Module switches
    enable_multimodal: bool = True
    enable_knowledge_graph: bool = True
    enable_memory: bool = True
    enable_continual: bool = True
    enable_uncertainty: bool = True
    enable_active_learning: bool = True
    enable_reasoning: bool = True
    strict_modules: bool = False

    def __post_init__(self) -> None:
        self.validate()
        # Whole numbers given for float fields (TOML/JSON `1` for `1.0`) are stored as floats.
        for name, tp in _field_types().items():
            value = getattr(self, name)
            if tp is float and isinstance(value, int):
                setattr(self, name, float(value))

    # ----------------------------------------------------------------- derived sizes
    @property
    def head_dim(self) -> int:
        """Per-head width ``d_model // nhead``."""
        return self.d_model // self.nhead

    @property
    def num_kv_groups(self) -> int:
        """Query heads per key/value head (``nhead // num_kv_heads``)."""
        return self.nhead // self.num_kv_heads

    @property
    def kv_dim(self) -> int:
        """Width of the key/value projections (``num_kv_heads * head_dim``)."""
        return self.num_kv_heads * self.head_dim

    @property
    def swiglu_hidden(self) -> int:
        """SwiGLU hidden width: ``int(2*dim_feedforward/3)`` rounded up to ``ffn_multiple_of``."""
        hidden = int(2 * self.dim_feedforward / 3)
        m = self.ffn_multiple_of
        return ((hidden + m - 1) // m) * m

    @property
    def effective_image_size(self) -> int:
        """Image side in pixels: ``image_size`` or the default described at the field."""
        if self.image_size is not None:
            return self.image_size
        per_side = min(math.isqrt(self.vision_max_patches), max(1, 224 // self.patch_size))
        return per_side * self.patch_size

    @property
    def effective_tot_keep_k(self) -> int:
        """Branches kept after pruning: ``tot_keep_k`` or, when None, ``ceil(N/2)``."""
        if self.tot_keep_k is None:
            return math.ceil(self.num_tot_branches / 2)
        return self.tot_keep_k

    # -------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        self._check_types()
        positive = (
            "vocab_size", "d_model", "nhead", "num_kv_heads", "num_encoder_layers",
            "num_decoder_layers", "dim_feedforward", "ffn_multiple_of", "max_position_embeddings",
            "num_multimodal_layers", "patch_size", "num_channels", "vision_d_model",
            "vision_max_patches", "num_tot_branches", "num_scratchpad_slots",
            "max_reasoning_steps", "kg_dim", "kg_num_entities", "kg_num_relations",
            "kg_cache_size", "memory_slots", "memory_dim", "memory_heads", "num_tasks",
            "uq_mc_samples", "uq_ensemble_size", "uq_num_bins", "al_proj_dim",
            "rms_norm_eps", "layer_norm_eps", "rope_theta", "initializer_range",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.d_model % self.nhead:
            raise ConfigError(
                f"d_model ({self.d_model}) must be divisible by nhead ({self.nhead})"
            )
        if self.nhead % self.num_kv_heads:
            raise ConfigError(
                f"nhead ({self.nhead}) must be divisible by num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"head_dim = d_model/nhead = {self.head_dim} must be even for rotary embeddings "
                "(change d_model or nhead)"
            )
        if self.swiglu_hidden <= 0:
            raise ConfigError(
                f"dim_feedforward ({self.dim_feedforward}) gives an empty SwiGLU hidden layer"
            )
        if self.image_size is not None:
            side, rest = divmod(self.image_size, self.patch_size)
            if self.image_size <= 0 or rest or side * side > self.vision_max_patches:
                raise ConfigError(
                    f"image_size ({self.image_size}) must be a positive multiple of patch_size "
                    f"({self.patch_size}) giving at most vision_max_patches "
                    f"({self.vision_max_patches}) patches"
                )
        if self.memory_dim % self.memory_heads:
            raise ConfigError(
                f"memory_dim ({self.memory_dim}) must be divisible by memory_heads "
                f"({self.memory_heads})"
            )
        for name in ("dropout", "uq_mc_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        for name in ("reasoning_complexity_threshold", "tot_contradiction_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value!r}")
        if self.ewc_lambda < 0:
            raise ConfigError(f"ewc_lambda must be >= 0, got {self.ewc_lambda!r}")
        k = self.effective_tot_keep_k
        if not 1 <= k <= self.num_tot_branches:
            raise ConfigError(
                f"tot_keep_k must be in [1, num_tot_branches={self.num_tot_branches}], got {k}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, "
                f"got {self.attention_backend!r}"
            )
        if self.memory_write_mode not in MEMORY_WRITE_MODES:
            raise ConfigError(
                f"memory_write_mode must be one of {MEMORY_WRITE_MODES}, "
                f"got {self.memory_write_mode!r}"
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name} must be in [0, vocab_size={self.vocab_size}), got {value}")
        self._check_rope_scaling()

    def _check_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        if set(rs) != {"type", "factor"} or rs.get("type") != "linear":
            raise ConfigError(
                'rope_scaling must be None or {"type": "linear", "factor": f}, '
                f"got {rs!r}"
            )
        factor = rs["factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
            raise ConfigError(f"rope_scaling factor must be a number > 0, got {factor!r}")

    def _check_types(self) -> None:
        hints = _field_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not type_ok(value, hints[f.name]):
                raise ConfigError(
                    f"{f.name} must be of type {type_name(hints[f.name], absent='None')}, "
                    f"got {type(value).__name__} {value!r}"
                )

    # ------------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-compatible dict (``rope_scaling`` copied)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, dict) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NeuralNetConfig:
        """Build from a dict; unknown keys and wrong types raise :class:`ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown model config key {key!r}{hint}")
        return cls(**data)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON atomically (temp file in the same directory, then rename)."""
        from core.fileio import write_bytes_atomically

        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        write_bytes_atomically(path, text.encode("utf-8"))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> NeuralNetConfig:
        """Read a config written by :meth:`to_json`; errors name the file."""
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from None

    def replace(self, **changes: Any) -> NeuralNetConfig:
        """A validated copy with some fields changed (unknown names raise ConfigError)."""
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data)


@typing.no_type_check
def _field_types() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(NeuralNetConfig)
    return _HINTS


_HINTS: dict[str, Any] | None = None
