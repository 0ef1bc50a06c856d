"""Size profiles: a model configuration plus the training settings that go with it.

Built-in profiles live in ``profiles/catalog/*.toml``; users add or override profiles in
``$AERON_TUI_HOME/profiles/*.toml`` (a user profile with the same name wins). A profile file::

    name = "mine"                 # optional, defaults to the file name
    description = "..."           # optional
    base = "small"                # optional: start from another profile, override below
    [model]                       # NeuralNetConfig fields (spec model.md §1)
    d_model = 512
    [train]                       # TrainSettings fields
    seq_len = 256

Every problem is a :class:`core.errors.ConfigError` naming the file and the key (and the line for
TOML syntax errors). Profile models keep NeuralNetConfig's default vocabulary (50000, the spec's
parameter counts use it); trainers replace ``vocab_size`` with the tokenizer's size.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from core.errors import ConfigError
from profiles.settings import PRECISIONS, aeron_home

if TYPE_CHECKING:
    from core.model.config import NeuralNetConfig

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
TOP_LEVEL_KEYS = ("name", "description", "base", "model", "train")


@dataclass(frozen=True)
class TrainSettings:
    """Training settings that go with a model size (the simple trainer's defaults, spec §7).

    ``seq_len`` is both the encoder length S and the decoder length T. ``precision`` "auto" means
    bf16 where the device runs it natively, else fp16 (CUDA) or fp32.
    """

    seq_len: int = 256
    micro_batch: int = 8
    grad_accum: int = 1
    precision: str = "auto"
    gradient_checkpointing: bool = False
    learning_rate: float = 3e-4
    # "cosine" or "constant_decay" (core.train.schedule); warmup None = min(100, 5 %) of the run
    lr_schedule: str = "cosine"
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 1000
    eval_every: int = 200

    def __post_init__(self) -> None:
        for key in ("seq_len", "micro_batch", "grad_accum", "max_steps", "eval_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        from core.train.schedule import SCHEDULES

        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("weight_decay must be >= 0 and grad_clip > 0")

    @property
    def effective_batch(self) -> int:
        """Sequences per optimizer step (micro_batch × grad_accum)."""
        return self.micro_batch * self.grad_accum


@dataclass(frozen=True)
class SizeProfile:
    """A named model size: the model config, its training settings, and the file it came from."""

    name: str
    description: str
    model: NeuralNetConfig
    train: TrainSettings
    source: Path
    builtin: bool = field(default=True, compare=False)

    @property
    def run_model(self) -> NeuralNetConfig:
        """The model a run with this profile builds on text data (the bundled sample corpus):
        the knowledge-graph, vision and task modules are built only when the data feeds them
        (:func:`run_model_config` with the data's coverage)."""
        return run_model_config(self.model)

    @property
    def parameter_count(self) -> int:
        """Exact parameter count of :attr:`run_model`, computed on the ``meta`` device."""
        return parameter_count(self.run_model)


def run_model_config(
    config: NeuralNetConfig, coverage: Any = None, model_overrides: dict[str, Any] | None = None
) -> NeuralNetConfig:
    """The model config a run builds from ``config``: ``model_overrides`` (the run's ``[model]``
    table / ``--set model.x=...``) applied, then the data-fed modules switched on exactly when
    ``coverage`` (``core.data.extras.InputCoverage`` of the run's data; None = text only) feeds
    them, unless the overrides set them. The trainer resolves the same way at run start."""
    from core.data.extras import InputCoverage
    from core.model.modules import resolve_enabled_modules

    overrides = dict(model_overrides or {})
    if overrides:
        config = config.replace(**overrides)
    fed = (coverage or InputCoverage()).fed_inputs()
    return resolve_enabled_modules(config, fed, set(overrides))[0]


def run_parameter_count(
    profile: str | SizeProfile,
    data: str | Path | None = None,
    model_overrides: dict[str, Any] | None = None,
    vocab_size: int | None = None,
) -> int:
    """Parameters of "the model this run will build": ``profile`` (name or SizeProfile) on
    ``data`` (a corpus path; None = the bundled text corpus) with the run's ``[model]``
    overrides, at ``vocab_size`` (the tokenizer's; None = the profile's). For setup screens."""
    from core.data.extras import scan_data_inputs

    prof = load_profile(profile) if isinstance(profile, str) else profile
    coverage = scan_data_inputs(data) if data is not None else None
    config = run_model_config(prof.model, coverage, model_overrides)
    if vocab_size is not None:
        config = config.replace(vocab_size=int(vocab_size))
    return parameter_count(config)


def parameter_count(config: NeuralNetConfig) -> int:
    """Exact parameter count of ``config`` (a ``meta``-device model; cached per configuration)."""
    from profiles.estimate import parameter_facts

    return parameter_facts(config).total


# ----------------------------------------------------------------------------------- loading


def load_profile(name: str) -> SizeProfile:
    """The profile called ``name`` (user profiles override built-in ones), or a path to a TOML.

    Raises ConfigError listing the known names when there is no such profile.
    """
    if name.endswith(".toml"):
        return load_profile_file(Path(name))
    files = _profile_files()
    if name not in files:
        known = ", ".join(sorted(files)) or "none"
        raise ConfigError(f"unknown size profile {name!r} (known: {known})")
    return load_profile_file(files[name][0], builtin=files[name][1])


def list_profiles() -> list[SizeProfile]:
    """Every profile (built-in plus user, user winning by name), smallest parameter count first."""
    profiles = [load_profile_file(path, builtin=b) for path, b in _profile_files().values()]
    return sorted(profiles, key=lambda p: (p.parameter_count, p.name))


def user_profile_dir() -> Path:
    """Where users put their own profiles: ``$AERON_TUI_HOME/profiles``."""
    return aeron_home() / "profiles"


def _profile_files() -> dict[str, tuple[Path, bool]]:
    """name -> (file, is_builtin). The name is the file's ``name`` key, else its stem."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(CATALOG_DIR.glob("*.toml")):
        found[_declared_name(path)] = (path, True)
    user_dir = user_profile_dir()
    try:
        user_files = sorted(user_dir.glob("*.toml")) if user_dir.is_dir() else []
    except OSError as exc:
        raise ConfigError(f"cannot read {user_dir}: {exc.strerror or exc}") from None
    for path in user_files:
        found[_declared_name(path)] = (path, False)
    return found


def _declared_name(path: Path) -> str:
    name = _read_toml(path).get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: key 'name' must be a non-empty string")
    return name


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_profile_file(path: Path, builtin: bool = False, _seen: tuple[str, ...] = ()) -> SizeProfile:
    """Load and validate one profile file (``base`` profiles are resolved recursively)."""
    from core.model.config import NeuralNetConfig

    path = Path(path)
    data = _read_toml(path)
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                f"{path}: unknown key '{key}' (allowed at the top: {', '.join(TOP_LEVEL_KEYS)})"
            )
    name = data.get("name", path.stem)
    description = data.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise ConfigError(f"{path}: key '{key}' must be a string, got {type(value).__name__}")
    model_table = _table(data, "model", path)
    train_table = _table(data, "train", path)

    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    if "base" in data:
        base = data["base"]
        if not isinstance(base, str):
            raise ConfigError(f"{path}: key 'base' must be a profile name (string)")
        if base in _seen or base == name:
            raise ConfigError(f"{path}: key 'base': profile {base!r} inherits from itself")
        files = _profile_files()
        if base not in files:
            raise ConfigError(f"{path}: key 'base': unknown profile {base!r} (known: {', '.join(sorted(files))})")
        parent = load_profile_file(files[base][0], files[base][1], _seen + (name,))
        model_values = dataclasses.asdict(parent.model)
        train_values = dataclasses.asdict(parent.train)

    _check_types(NeuralNetConfig, model_table, path, "model")
    _check_types(TrainSettings, train_table, path, "train")
    model_values.update(model_table)
    train_values.update(train_table)

    try:
        train = TrainSettings(**train_values)
    except ValueError as exc:
        raise ConfigError(f"{path}: [train] {exc}") from None

    # The model's checkpointing switch follows the training settings unless set explicitly.
    if "use_gradient_checkpointing" in model_table:
        if model_table["use_gradient_checkpointing"] != train.gradient_checkpointing and "gradient_checkpointing" in train_table:
            raise ConfigError(
                f"{path}: key 'model.use_gradient_checkpointing' contradicts 'train.gradient_checkpointing'; keep one"
            )
        train = dataclasses.replace(train, gradient_checkpointing=bool(model_table["use_gradient_checkpointing"]))
    model_values["use_gradient_checkpointing"] = train.gradient_checkpointing

    _check_heads(model_values, NeuralNetConfig, path)
    try:
        model = NeuralNetConfig(**model_values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: [model] {exc}") from None
    return SizeProfile(name=name, description=description, model=model, train=train, source=path, builtin=builtin)


def _table(data: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: key '{key}' must be a table ([{key}]), got {type(value).__name__}")
    return value


def _check_types(cls: type, table: dict[str, Any], path: Path, section: str) -> None:
    """Unknown keys and wrong TOML types, named as ``section.key``."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    for key, value in table.items():
        if key not in known:
            close = [k for k in sorted(known) if k.split("_")[0] == key.split("_")[0]][:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{path}: unknown key '{section}.{key}'{hint}")
        expected = hints.get(key)
        if expected is not None and not _matches(value, expected):
            raise ConfigError(
                f"{path}: key '{section}.{key}' must be {_type_name(expected)}, "
                f"got {type(value).__name__} {value!r}"
            )


def _matches(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is typing.Any:
        return True
    base = origin or expected
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base in (dict, typing.Mapping) or base is getattr(typing, "Dict", None):
        return isinstance(value, dict)
    if base in (list, tuple):
        return isinstance(value, list)
    if isinstance(base, type):
        return isinstance(value, base)
    return True


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(expected) if a is not type(None))
    base = origin or expected
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    return names.get(base, getattr(base, "__name__", str(base)))


def _check_heads(values: dict[str, Any], cls: type, path: Path) -> None:
    """Impossible head counts, named by key before the config's own validation runs."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    merged = {**defaults, **values}
    d, h, g = merged.get("d_model"), merged.get("nhead"), merged.get("num_kv_heads")
    if not all(isinstance(v, int) for v in (d, h, g)):
        return
    for key, v in (("d_model", d), ("nhead", h), ("num_kv_heads", g)):
        if v <= 0:
            raise ConfigError(f"{path}: key 'model.{key}' must be > 0, got {v}")
    if d % h:
        raise ConfigError(f"{path}: key 'model.nhead': d_model {d} is not divisible by nhead {h}")
    if h % g:
        raise ConfigError(f"{path}: key 'model.num_kv_heads': nhead {h} is not divisible by num_kv_heads {g}")
    if (d // h) % 2:
        raise ConfigError(
            f"{path}: key 'model.nhead': head_dim d_model/nhead = {d // h} must be even (rotary embedding)"
        )
