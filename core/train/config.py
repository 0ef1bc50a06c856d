"""`RunConfig`: everything that defines a training run, saved as ``RUN_DIR/run.toml``.

A run is reproducible from its ``run.toml`` (plus the data and the size catalog). Values left
``None`` are resolved at setup time (from the size profile, then the trainer's defaults) and the
resolved values are what the saved ``run.toml`` records.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.fileio import write_bytes_atomically
from core.train.schedule import SCHEDULES
from core.typecheck import coerce, type_name, type_ok

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
# Sequence packing (several short samples per row): on, off, or on where it cuts padding.
PACKING = ("auto", "on", "off")


@dataclass
class RunConfig:
    """One training run. ``options`` holds trainer-specific settings (the TOML ``[options]`` table).

    ``resume`` is ``None`` (fresh run), ``"latest"`` (newest valid checkpoint in ``run_dir``) or a
    checkpoint / run directory path; ``overwrite`` lets a fresh run start in a directory that
    holds one (the old run is moved aside, see :mod:`core.runs.lock`). ``model`` overrides fields of the profile's NeuralNetConfig.
    """

    trainer: str = "simple"
    profile: str | None = None
    preset: str | None = None
    data: str | None = None
    # Force the data format (styles, alpaca, sharegpt, messages, prompt_completion, preferences,
    # prompts, text); None detects it from the records (core.data.formats).
    data_format: str | None = None
    run_dir: str | None = None
    steps: int = 1000
    seed: int = 42
    learning_rate: float | None = None
    warmup_steps: int | None = None
    lr_schedule: str = "cosine"
    lr_decay_fraction: float = 0.2
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    micro_batch: int | None = None
    grad_accum: int | None = None
    seq_len: int | None = None
    precision: str = "auto"
    device: str = "auto"
    gradient_checkpointing: bool | None = None
    compile: bool = False
    packing: str = "auto"
    eval_every: int = 200
    # None: sized by the engine (a sample count with a stable estimate, capped so validating
    # costs at most ~10 % of the training between evaluations); an int fixes the batch count.
    eval_max_batches: int | None = None
    # Live samples: greedy continuations of fixed validation prompts at evaluations. An int is
    # how many validation prompts to take (0 = off); a list gives the prompt texts themselves.
    sample_prompts: int | list[str] = 3
    sample_every: int | None = None  # steps between samples (default: every evaluation; 0 = off)
    sample_max_tokens: int = 32
    checkpoint_every: int = 200
    keep_last: int = 3
    # Stop after this many evaluations without the validation metric improving by more than
    # early_stop_min_delta (None = off); metric "loss" or "bpb" (when the trainer reports it).
    early_stop_patience: int | None = None
    early_stop_min_delta: float = 0.0
    early_stop_metric: str = "loss"
    # Experiment trackers fed by the event stream: "tensorboard[:DIR]", "csv[:FILE]",
    # "wandb[:DIR]" (core.runs.trackers).
    trackers: list[str] = field(default_factory=list)
    oom_retries: int = 3
    log_every: int = 10
    resume: str | None = None
    # Start afresh in a run directory that holds a run, moving the old run into
    # RUN_DIR/previous-<date>/ (core.runs.lock); never saved in run.toml.
    overwrite: bool = False
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 2048
    max_samples: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------

    def validate(self, source: str = "run config") -> RunConfig:
        """Check types and ranges; raise ConfigError naming ``source`` and the key."""
        hints = _hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not type_ok(value, hints[f.name]):
                raise ConfigError(
                    f"{source}: key {f.name!r} should be {type_name(hints[f.name])}, "
                    f"got {type(value).__name__} {value!r}"
                )
        positive = ("steps", "eval_every", "checkpoint_every", "log_every",
                    "tokenizer_vocab_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{source}: key {name!r} must be >= 1, got {getattr(self, name)}")
        for name in ("micro_batch", "grad_accum", "seq_len", "max_samples", "eval_max_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{source}: key {name!r} must be >= 1, got {value}")
        if isinstance(self.sample_prompts, int) and self.sample_prompts < 0:
            raise ConfigError(f"{source}: key 'sample_prompts' must be >= 0 (0 = off) or a list "
                              "of prompt texts")
        if self.sample_every is not None and self.sample_every < 0:
            raise ConfigError(f"{source}: key 'sample_every' must be >= 0 (0 = off)")
        if self.sample_max_tokens < 1:
            raise ConfigError(f"{source}: key 'sample_max_tokens' must be >= 1")
        if self.keep_last < 1:
            raise ConfigError(f"{source}: key 'keep_last' must be >= 1, got {self.keep_last}")
        if self.oom_retries < 0:
            raise ConfigError(f"{source}: key 'oom_retries' must be >= 0, got {self.oom_retries}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"{source}: key 'warmup_steps' must be >= 0")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"{source}: key 'learning_rate' must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{source}: key 'min_lr_ratio' must be in [0, 1]")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(
                f"{source}: key 'lr_schedule' is {self.lr_schedule!r}; expected one of "
                f"{', '.join(SCHEDULES)}"
            )
        if not 0.0 < self.lr_decay_fraction <= 1.0:
            raise ConfigError(f"{source}: key 'lr_decay_fraction' must be in (0, 1]")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError(f"{source}: 'weight_decay' and 'grad_clip' must be >= 0")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            raise ConfigError(f"{source}: key 'early_stop_patience' must be >= 1, got "
                              f"{self.early_stop_patience}")
        if self.early_stop_min_delta < 0:
            raise ConfigError(f"{source}: key 'early_stop_min_delta' must be >= 0")
        if self.early_stop_metric not in ("loss", "bpb"):
            raise ConfigError(f"{source}: key 'early_stop_metric' is {self.early_stop_metric!r}; "
                              "expected loss or bpb")
        if self.trackers:
            from core.runs.trackers import parse_tracker_spec

            for spec in self.trackers:
                parse_tracker_spec(spec)
        if self.data_format is not None:
            from core.data.formats import FORMATS

            if self.data_format not in FORMATS:
                raise ConfigError(
                    f"{source}: key 'data_format' is {self.data_format!r}; expected one of "
                    f"{', '.join(FORMATS)}"
                )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"{source}: key 'precision' is {self.precision!r}; expected one of "
                f"{', '.join(PRECISIONS)}"
            )
        if self.resume and self.overwrite:
            raise ConfigError(
                f"{source}: --resume continues the run in the directory and --overwrite moves it "
                "aside; give one of them"
            )
        if self.packing not in PACKING:
            raise ConfigError(
                f"{source}: key 'packing' is {self.packing!r}; expected one of {', '.join(PACKING)}"
            )
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(
                f"{source}: key 'device' is {self.device!r}; expected auto, cpu, cuda or cuda:N"
            )
        return self

    # -- dict / TOML ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON/TOML-friendly; ``None`` values kept)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "run config") -> RunConfig:
        """Build from a dict; unknown keys and wrong types raise ConfigError naming the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a table of settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}"
            )
        hints = _hints()
        values: dict[str, Any] = {}
        for name, value in data.items():
            value = coerce(value, hints[name])
            if not type_ok(value, hints[name]):
                raise ConfigError(
                    f"{source}: key {name!r} should be {type_name(hints[name])}, "
                    f"got {type(value).__name__} {value!r}"
                )
            values[name] = value
        try:
            obj = cls.__new__(cls)
            for f in dataclasses.fields(cls):
                if f.name in values:
                    setattr(obj, f.name, values[f.name])
                elif f.default_factory is not dataclasses.MISSING:
                    setattr(obj, f.name, f.default_factory())
                else:
                    setattr(obj, f.name, f.default)
        except TypeError as exc:  # pragma: no cover - defensive
            raise ConfigError(f"{source}: {exc}") from exc
        return obj.validate(source)

    def to_toml(self) -> str:
        """TOML text; ``None`` values are omitted (TOML has no null) and read back as defaults."""
        import tomli_w

        data = {k: v for k, v in self.to_dict().items() if v is not None}
        # Tables go last so scalar keys stay at the top level of the file.
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        tables = {k: _drop_none(v) for k, v in data.items() if isinstance(v, dict)}
        return tomli_w.dumps({**scalars, **tables})

    @classmethod
    def from_toml(cls, text: str, source: str = "run config") -> RunConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from exc
        return cls.from_dict(data, source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file in the same directory, then rename)."""
        return write_bytes_atomically(path, self.to_toml().encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: run config file not found") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read run config ({exc})") from exc
        return cls.from_toml(text, str(path))

    def with_overrides(self, source: str = "command line", **overrides: Any) -> RunConfig:
        """A copy with the given non-None values replaced (CLI flags override the TOML)."""
        data = self.to_dict()
        for name, value in overrides.items():
            if value is None:
                continue
            if name in ("model", "options"):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return RunConfig.from_dict(data, source)


# Positions a sequence needs beyond its tokens (the decoder's start and end markers).
SEQ_LEN_MARGIN = 2


def seq_len_problem(seq_len: int | None, max_positions: int, profile: str | None,
                    longer: str = "") -> str | None:
    """Why ``seq_len`` does not fit a model with ``max_positions`` positions, or None.

    ``longer`` names profiles with a longer context (the CLI knows the catalog; core does not).
    """
    limit = int(max_positions) - SEQ_LEN_MARGIN
    if seq_len is None or seq_len <= limit:
        return None
    which = f"the {profile} profile's" if profile else "the model's"
    other = f"a profile with a longer context ({longer})" if longer else "a larger profile"
    return (f"--seq-len {seq_len} does not fit {which} context of {max_positions} positions "
            f"(seq_len at most {limit}); use --seq-len {limit} or less, {other}, or set "
            "model.max_position_embeddings explicitly")


def parse_set_option(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` from ``--set``: the value is read as a TOML value, else a string.

    ``key`` may be dotted (``model.d_model=64``) to reach the ``model`` table.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_drop_none(v) if isinstance(v, dict) else v) for k, v in d.items() if v is not None}


_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(RunConfig)
    return _HINTS


