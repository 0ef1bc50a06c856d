"""Where Aeron TUI keeps its per-user state, and the saved hardware choice (the wizard's output).

The saved choice is a small TOML file, ``$AERON_TUI_HOME/choice.toml``. Later runs read it with
:func:`load_saved_choice` and use it unless a flag says otherwise. Writes are atomic: a temp file
in the same directory, then ``os.replace``, so a failed write never clobbers the existing file.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from core.errors import ConfigError
from core.paths import aeron_home

__all__ = [
    "SavedChoice",
    "aeron_home",
    "atomic_write_text",
    "choice_from_dict",
    "choice_path",
    "load_saved_choice",
    "save_choice",
]

CHOICE_FILE = "choice.toml"
DEVICES = ("cpu", "cuda")
TRAINERS = ("simple", "compressed")
PLANS = ("single", "ddp", "fsdp")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def choice_path() -> Path:
    """The saved choice file inside :func:`aeron_home`."""
    return aeron_home() / CHOICE_FILE


@dataclass(frozen=True)
class SavedChoice:
    """What the user (or ``wizard --yes``) chose: the defaults for later runs.

    ``device`` is ``"cpu"`` or ``"cuda"``; ``gpus`` the CUDA device indices used (empty on CPU);
    ``plan`` ``"single"``, ``"ddp"`` (one replica per GPU) or ``"fsdp"`` (state sharded).
    """

    device: str
    profile: str
    trainer: str = "simple"
    micro_batch: int = 1
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    precision: str = "auto"
    plan: str = "single"
    gpus: tuple[int, ...] = ()
    estimated_bytes: int = 0
    reason: str = ""

    def __post_init__(self) -> None:
        _check_choice(self, "SavedChoice")

    def to_dict(self) -> dict[str, Any]:
        """Plain TOML/JSON-ready dict (``gpus`` as a list)."""
        data = asdict(self)
        data["gpus"] = list(self.gpus)
        return data


def _check_choice(choice: SavedChoice, where: str) -> None:
    def bad(key: str, message: str) -> ConfigError:
        return ConfigError(f"{where}: key '{key}': {message}")

    if choice.device not in DEVICES:
        raise bad("device", f"must be one of {', '.join(DEVICES)}, got {choice.device!r}")
    if not choice.profile:
        raise bad("profile", "must name a size profile (see `aeron-tui profile`)")
    if choice.trainer not in TRAINERS:
        raise bad("trainer", f"must be one of {', '.join(TRAINERS)}, got {choice.trainer!r}")
    if choice.plan not in PLANS:
        raise bad("plan", f"must be one of {', '.join(PLANS)}, got {choice.plan!r}")
    if choice.precision not in PRECISIONS:
        raise bad("precision", f"must be one of {', '.join(PRECISIONS)}, got {choice.precision!r}")
    for key in ("micro_batch", "grad_accum"):
        if getattr(choice, key) < 1:
            raise bad(key, "must be >= 1")


# Expected TOML types per key (bool is checked before int because bool is an int in Python).
_TYPES: dict[str, tuple[type, ...]] = {
    "device": (str,),
    "profile": (str,),
    "trainer": (str,),
    "micro_batch": (int,),
    "grad_accum": (int,),
    "gradient_checkpointing": (bool,),
    "precision": (str,),
    "plan": (str,),
    "gpus": (list,),
    "estimated_bytes": (int,),
    "reason": (str,),
}


def choice_from_dict(data: dict[str, Any], source: str) -> SavedChoice:
    """Validate a parsed TOML table into a :class:`SavedChoice`; errors name ``source`` and key."""
    known = {f.name for f in fields(SavedChoice)}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key '{key}' (known: {', '.join(sorted(known))}); "
                "delete the file or run `aeron-tui wizard` again"
            )
        expected = _TYPES[key]
        wrong = isinstance(value, bool) and bool not in expected or not isinstance(value, expected)
        if wrong:
            raise ConfigError(
                f"{source}: key '{key}' must be {expected[0].__name__}, got {type(value).__name__}"
            )
    for key in ("device", "profile"):
        if key not in data:
            raise ConfigError(f"{source}: missing key '{key}'; run `aeron-tui wizard` again")
    gpus = data.get("gpus", [])
    if not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus):
        raise ConfigError(f"{source}: key 'gpus' must be a list of GPU indices")
    values = dict(data)
    values["gpus"] = tuple(gpus)
    try:
        choice = SavedChoice(**values)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("SavedChoice", source, 1)) from None
    return choice


def load_saved_choice(path: Path | None = None) -> SavedChoice | None:
    """The saved choice, or None when there is none yet.

    Raises ConfigError naming the file (and key) when it is unreadable, not TOML or invalid.
    """
    path = path or choice_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}; fix its permissions or set AERON_TUI_HOME"
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); delete it or run `aeron-tui wizard`") from None
    return choice_from_dict(data, str(path))


def save_choice(choice: SavedChoice, path: Path | None = None) -> Path:
    """Write the choice atomically; on any failure the previous file is left untouched."""
    import tomli_w

    path = path or choice_path()
    header = "# Saved by `aeron-tui wizard`; later runs use these unless told otherwise.\n"
    text = header + tomli_w.dumps(choice.to_dict())
    atomic_write_text(path, text)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:mod:`core.fileio`).

    Raises ConfigError naming the path when the directory cannot be created or written.
    """
    from core.fileio import atomic_write_text as write

    write(path, text, error=ConfigError,
          hint="Fix the directory's permissions or set AERON_TUI_HOME to a writable directory")


def choice_run_values(choice: SavedChoice | None, profile: str | None) -> dict[str, Any]:
    """The RunConfig values a saved choice sets for a new run of ``profile``.

    The device always; the batch layout, gradient checkpointing and precision only when
    ``profile`` is the profile they were fitted for (another profile has its own). Flags,
    ``--config`` files and a trainer's own defaults (LONPT's presets own its batch) still win:
    callers layer these below them. One rule for ``train``, ``launch`` and the console.
    """
    if choice is None:
        return {}
    values: dict[str, Any] = {"device": choice.device}
    if profile == choice.profile:
        values.update(micro_batch=choice.micro_batch, grad_accum=choice.grad_accum,
                      gradient_checkpointing=choice.gradient_checkpointing,
                      precision=choice.precision)
    return values


def describe_choice(choice: SavedChoice) -> str:
    """One line: ``tiny on cpu, simple trainer, micro-batch 8 × 1``."""
    return (f"{choice.profile} on {choice.device}, {choice.trainer} trainer, "
            f"micro-batch {choice.micro_batch} × {choice.grad_accum}"
            + (", checkpointing" if choice.gradient_checkpointing else ""))
