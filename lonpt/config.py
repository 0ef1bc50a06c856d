"""`LonptConfig`: every LONPT adapter key of training.md §5.1, with defaults and validation.

A configuration comes from a preset TOML file (``lonpt/presets/<name>.toml`` or any path a user
copied and edited), then the run's ``[options]`` table / ``--set key=value`` on top. Every key is
checked before training starts; a bad value raises :class:`~core.errors.ConfigError` naming the
source and the key and saying what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.fileio import write_bytes_atomically
from core.typecheck import coerce, type_name, type_ok

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"

DOMAIN_NAMES = ("syntactic", "semantic", "reasoning")
# training.md §5.3: labels not listed here fall to ``akap_default_domain``.
DEFAULT_STYLE_MAP: dict[str, str] = {
    "code": "syntactic",
    "format": "syntactic",
    "rewrite": "syntactic",
    "translation": "syntactic",
    "reasoning": "reasoning",
    "math": "reasoning",
    "analysis": "reasoning",
    "planning": "reasoning",
}
# training.md §5.6: the SwiGLU projections of every encoder and decoder layer.
DEFAULT_HPF_TARGETS = (r"^(encoder|decoder)\.layers\.\d+\.ffn\.(gate_proj|up_proj|down_proj)$",)

AKAP_ASSIGNMENTS = ("style_map", "equal")
AKAP_ORDERS = ("tokens_asc", "declared", "loss_desc")
HPF_INITS = ("auto", "fresh", "svd")
FORMATTERS = ("styles",)


@dataclass
class LonptConfig:
    """The LONPT adapter keys. Defaults are the values of the log's ``heavy`` run (§5.1)."""

    # -- data ----------------------------------------------------------------------------------
    dataset_path: str | None = None  # None: the run's data (--data), else the sample corpus
    formatter_key: str = "styles"
    dataset_fraction: float = 0.6
    dataset_cap: int | None = None
    max_length: int = 896
    num_workers: int | str = "auto"  # seed key, validated; data is pre-tokenized, no workers run
    # -- loop ----------------------------------------------------------------------------------
    profile: str | None = None  # size profile the preset suggests; --profile overrides it
    batch_size: int = 4
    seed: int = 42
    epochs_per_domain: int = 1
    domain_cycles: int = 6
    steps_per_domain: int = 150
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    gradient_clip: float = 1.0
    device: str = "auto"
    log_every: int = 25
    val_max_batches: int = 50
    checkpoint_dir: str | None = None  # None: RUN_DIR/checkpoints
    keep_per_domain: int | None = None  # None: keep every best checkpoint of every domain
    init_from: str | None = None  # start from a checkpoint's weights (HPF: SVD of dense ones)
    # -- HPF -----------------------------------------------------------------------------------
    hpf_enable: bool = True
    hpf_lowrank_ratio: float = 0.15
    hpf_targets: list[str] = field(default_factory=lambda: list(DEFAULT_HPF_TARGETS))
    hpf_init: str = "auto"  # auto: SVD when init_from gives weights, else fresh factors
    # -- PNCEC ---------------------------------------------------------------------------------
    pncec_enable: bool = True
    pncec_cycle_length: int = 100
    pncec_compression_scale: float = 0.75
    pncec_expansion_scale: float = 1.25
    # -- AKAP ----------------------------------------------------------------------------------
    akap_enable: bool = True
    domain_names: list[str] = field(default_factory=lambda: list(DOMAIN_NAMES))
    akap_assignment: str = "style_map"
    akap_style_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_STYLE_MAP))
    akap_default_domain: str = "semantic"
    akap_order: str = "tokens_asc"
    # -- ACT -----------------------------------------------------------------------------------
    act_enable: bool = True
    target_memory_utilization: float = 0.7
    act_probe_steps: int = 2
    act_max_growth: float = 2.0
    act_keep_effective_batch: bool = False
    # -- rails ---------------------------------------------------------------------------------
    rail_spike_factor: float = 3.0
    rail_max_nonfinite: int = 3
    rail_update_ratio: float = 0.1

    def validate(self, source: str = "LONPT config") -> LonptConfig:
        """Check every key; raise ConfigError naming ``source`` and the key."""
        hints = _hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not type_ok(value, hints[f.name]):
                raise ConfigError(
                    f"{source}: key {f.name!r} should be {type_name(hints[f.name])}, "
                    f"got {type(value).__name__} {value!r}"
                )

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: key {key!r} {why} (got {getattr(self, key)!r})")

        if self.formatter_key not in FORMATTERS:
            raise bad("formatter_key", f"must be one of {', '.join(FORMATTERS)}")
        for key in ("dataset_fraction", "hpf_lowrank_ratio", "target_memory_utilization"):
            value = getattr(self, key)
            if not (0.0 < value <= 1.0) or not math.isfinite(value):
                raise bad(key, "must be in (0, 1]")
        for key in ("max_length", "batch_size", "epochs_per_domain", "domain_cycles",
                    "steps_per_domain", "log_every", "val_max_batches", "act_probe_steps",
                    "rail_max_nonfinite"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        for key in ("dataset_cap", "keep_per_domain"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise bad(key, "must be >= 1 or left out")
        if self.max_length < 4:
            raise bad("max_length", "must be >= 4 (room for the special tokens)")
        if isinstance(self.num_workers, str) and self.num_workers != "auto":
            raise bad("num_workers", "must be 'auto' or an integer >= 0")
        if isinstance(self.num_workers, int) and self.num_workers < 0:
            raise bad("num_workers", "must be 'auto' or an integer >= 0")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise bad("learning_rate", "must be > 0")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if self.gradient_clip < 0:
            raise bad("gradient_clip", "must be >= 0 (0 turns clipping off)")
        if self.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", self.device):
            raise bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.pncec_cycle_length < 4:
            raise bad("pncec_cycle_length", "must be >= 4 (four phases per cycle)")
        for key in ("pncec_compression_scale", "pncec_expansion_scale"):
            value = getattr(self, key)
            if not (0.0 < value <= 10.0):
                raise bad(key, "must be in (0, 10]")
        if self.act_max_growth < 1.0:
            raise bad("act_max_growth", "must be >= 1.0")
        if self.rail_spike_factor <= 1.0:
            raise bad("rail_spike_factor", "must be > 1.0 (a multiple of the running loss)")
        if not self.rail_update_ratio > 0:
            raise bad("rail_update_ratio", "must be > 0")
        if self.hpf_init not in HPF_INITS:
            raise bad("hpf_init", f"must be one of {', '.join(HPF_INITS)}")
        if self.akap_assignment not in AKAP_ASSIGNMENTS:
            raise bad("akap_assignment", f"must be one of {', '.join(AKAP_ASSIGNMENTS)}")
        if self.akap_order not in AKAP_ORDERS:
            raise bad("akap_order", f"must be one of {', '.join(AKAP_ORDERS)}")
        self._validate_domains(source)
        if self.hpf_enable:
            if not self.hpf_targets:
                raise bad("hpf_targets", "must name at least one module pattern when HPF is on")
            for pattern in self.hpf_targets:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(
                        f"{source}: key 'hpf_targets' has an invalid pattern {pattern!r} ({exc})"
                    ) from exc
        return self

    def _validate_domains(self, source: str) -> None:
        names = self.domain_names
        if not names:
            raise ConfigError(f"{source}: key 'domain_names' must list at least one domain")
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: key 'domain_names' has a repeated name: {names}")
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ConfigError(
                    f"{source}: domain name {name!r} in 'domain_names' may only use letters, "
                    "digits, '_' and '-' (it becomes part of checkpoint names)"
                )
        if self.akap_assignment != "style_map":
            return  # the table is unused under ``equal``; it is checked when switched on
        if self.akap_default_domain not in names:
            raise ConfigError(
                f"{source}: key 'akap_default_domain' is {self.akap_default_domain!r}, "
                f"which is not in domain_names ({', '.join(names)})"
            )
        for label, domain in self.akap_style_map.items():
            if domain not in names:
                raise ConfigError(
                    f"{source}: akap_style_map sends {label!r} to {domain!r}, which is not in "
                    f"domain_names ({', '.join(names)})"
                )

    # -- derived -------------------------------------------------------------------------------

    def resolved_num_workers(self) -> int:
        """``auto`` = min(8, cores − 1), at least 0."""
        if isinstance(self.num_workers, int):
            return self.num_workers
        return max(0, min(8, (os.cpu_count() or 1) - 1))

    # -- dict / TOML ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (``None`` values kept)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "LONPT config",
                  base: LonptConfig | None = None) -> LonptConfig:
        """Build from ``data`` on top of ``base`` (default: the defaults); unknown keys are errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table of LONPT settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            close = _closest(unknown[0], known)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown LONPT key {unknown[0]!r}{hint}; known keys: "
                f"{', '.join(sorted(known))}"
            )
        values = (base or cls()).to_dict()
        hints = _hints()
        for name, value in data.items():
            values[name] = coerce(value, hints[name])
        obj = cls(**values)
        return obj.validate(source)

    def to_toml(self) -> str:
        """TOML text a user can copy and edit (``None`` keys are omitted: TOML has no null)."""
        import tomli_w

        data = {k: v for k, v in self.to_dict().items() if v is not None}
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in data.items() if isinstance(v, dict)}
        return tomli_w.dumps({**scalars, **tables})


def available_presets() -> list[str]:
    """Names of the bundled presets (``lonpt/presets/*.toml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def preset_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a preset name (``smoke``) or a TOML path to a file; ConfigError when unknown."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    looks_like_path = text.endswith(".toml") or os.sep in text or "/" in text
    if looks_like_path:
        if not candidate.is_file():
            raise ConfigError(f"LONPT preset file {candidate} not found; check the path")
        return candidate
    bundled = PRESET_DIR / f"{text}.toml"
    if bundled.is_file():
        return bundled
    raise ConfigError(
        f"unknown LONPT preset {text!r}; available presets: {', '.join(available_presets())} "
        "(or give the path of a preset TOML file)"
    )


def read_preset(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw key/value table of a preset (not yet validated)."""
    path = preset_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read LONPT preset ({exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    # A copied run.toml-style file may keep the keys under [options] or [lonpt].
    for table in ("lonpt", "options"):
        if isinstance(data.get(table), dict) and len(data) == 1:
            data = data[table]
    return data


def preset_profile(name_or_path: str | os.PathLike[str] | None) -> str | None:
    """The size profile a preset suggests (``smoke`` → ``tiny``), for a CLI with no --profile."""
    if name_or_path is None:
        return None
    value = read_preset(name_or_path).get("profile")
    return value if isinstance(value, str) else None


def load_config(
    preset: str | os.PathLike[str] | None = "standard",
    overrides: dict[str, Any] | None = None,
    source: str = "options",
) -> LonptConfig:
    """Preset (name or path; None = built-in defaults) with ``overrides`` on top, validated."""
    if preset is None:
        base = LonptConfig().validate("LONPT defaults")
    else:
        path = preset_path(preset)
        base = LonptConfig.from_dict(read_preset(path), source=str(path))
    if overrides:
        return LonptConfig.from_dict(dict(overrides), source=source, base=base)
    return base


def save_config(config: LonptConfig, path: str | os.PathLike[str]) -> Path:
    """Write a config as a preset TOML atomically (temp file in the same directory, rename)."""
    return write_bytes_atomically(path, config.to_toml().encode("utf-8"))


# -- typing helpers (the rules themselves: core.typecheck) ---------------------------------------

_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(LonptConfig)
    return _HINTS


def _closest(word: str, choices: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None
