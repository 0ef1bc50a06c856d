"""The run the console will start: the setup choice, and turning it into a launched command.

No Textual here. :func:`prepare_launch` resolves what "auto" and defaults mean (a fresh run
directory; "auto" profile and data left out are resolved by the trainer itself), writes the
run's
``run.toml`` and returns the :class:`~aeron_tui.launcher.LaunchSpec` for the headless command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aeron_tui.launcher import LaunchSpec
from core.errors import ConfigError, DataError

AUTO = "auto"


@dataclass(frozen=True)
class RunSetup:
    """What the user chose. ``None`` means "the default" (resolved by :func:`prepare_launch`)."""

    trainer: str | None = None
    profile: str = AUTO
    preset: str | None = None
    data: str | None = None
    steps: int | None = None
    seed: int | None = None
    run_dir: str | None = None
    # Extra RunConfig keys (e.g. {"model": {"d_model": 64}, "log_every": 1}) — tests, power users.
    overrides: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def describe(self) -> str:
        parts = [self.trainer or "default trainer", f"profile {self.profile}"]
        if self.preset:
            parts.append(f"preset {self.preset}")
        if self.steps:
            parts.append(f"{self.steps} steps")
        return ", ".join(parts)

    def with_(self, **changes: Any) -> RunSetup:
        return replace(self, **changes)


def default_trainer_and_preset() -> tuple[str, str | None]:
    """LONPT with its smoke preset when the registry has it, else the simple trainer."""
    from aeron_tui.trainers import TRAINERS

    if "lonpt" in TRAINERS:
        return "lonpt", "smoke"
    return "simple", None


def trainer_presets(trainer: str) -> list[str]:
    """Presets the registry entry offers (``presets`` attribute or ``options["presets"]``)."""
    from aeron_tui.trainers import TRAINERS

    entry = TRAINERS.get(trainer)
    if entry is None:
        return []
    presets = getattr(entry, "presets", None) or entry.options.get("presets") or ()
    return [str(p) for p in presets]


def preset_problem(trainer: str, preset: str | None) -> str | None:
    """Why ``preset`` is not usable with ``trainer`` (one line), or None when it is (or blank).

    A preset is one of the trainer's named presets, or a path to a preset TOML file.
    """
    text = (preset or "").strip()
    if not text:
        return None
    if text.endswith(".toml"):
        return None if Path(text).expanduser().is_file() else f"{text}: no such preset file"
    presets = trainer_presets(trainer)
    if presets and text not in presets:
        return f"{trainer} has no preset {text!r} (known: {', '.join(presets)})"
    if not presets:
        return f"{trainer} has no named presets (leave it blank or give a preset TOML path)"
    return None


@dataclass(frozen=True)
class ProfileRow:
    """One line of the setup screen's profile picker."""

    name: str
    params: int | None
    estimate_bytes: int | None
    fits: bool
    detail: str


def _estimate_bytes(estimate: Any) -> int | None:
    if estimate is None:
        return None
    if isinstance(estimate, (int, float)):
        return int(estimate)
    for attr in ("total_bytes", "total", "bytes"):
        value = getattr(estimate, attr, None)
        if isinstance(value, (int, float)):
            return int(value)
    return None


def profile_rows(hardware: Any, trainer: str) -> tuple[str | None, list[ProfileRow], list[str]]:
    """(auto choice or None when nothing fits, one row per catalog profile, the picker's notes).

    Imports torch (parameter counts, estimates): the console runs it via ``offload.in_child``.
    """
    from profiles.pick import pick_profile

    if hardware is None:
        from profiles.hardware import probe

        hardware = probe(with_torch=False)
    pick = pick_profile(hardware, mode="train", trainer_options=pick_trainers(trainer))
    rows = [
        ProfileRow(
            name=v.name,
            params=v.params or None,
            estimate_bytes=_estimate_bytes(v.estimate),
            fits=bool(v.fits),
            detail=str(v.detail),
        )
        for v in pick.reasons
    ]
    auto = _picked_name(pick) if getattr(pick, "fits", True) else None
    return auto, rows, [str(n) for n in getattr(pick, "notes", [])]


def _picked_name(pick: Any) -> str | None:
    for attr in ("profile", "name"):
        value = getattr(pick, attr, None)
        if isinstance(value, str):
            return value
        if value is not None and isinstance(getattr(value, "name", None), str):
            return str(value.name)
    return None


def pick_trainers(trainer: str) -> tuple[str, ...]:
    """Which memory rules the estimate uses: the compressed trainer's 8-bit state, else AdamW's."""
    return ("compressed",) if trainer == "compressed" else ("simple",)


def validate_data_path(text: str | None) -> str | None:
    """An error message for a data path, or None when it is usable (None/empty = sample corpus)."""
    if text is None or not text.strip():
        return None
    path = Path(text).expanduser()
    if not path.exists():
        return f"{path}: no such file or directory"
    if path.is_dir():
        if not any(path.glob("*.jsonl")) and not any(path.glob("*.txt")):
            return f"{path}: directory holds no .jsonl or .txt files"
        return None
    if not path.is_file():
        return f"{path}: not a regular file"
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"{path}: cannot read ({exc.strerror or exc})"
    return None


def used_run_dir_problem(run_dir: Path) -> str | None:
    """Why a new run cannot go into ``run_dir``, or None.

    The trainer's own rule (:mod:`core.runs.lock`): a directory a live trainer owns, or one that
    already holds a run (events or checkpoints), is not reused — two runs in one directory would
    interleave their events and overwrite checkpoints. A directory with only a saved run.toml
    (set up, not started) is fine.
    """
    from core.runs.lock import busy_message, existing_run, lock_owner

    if run_dir.exists() and not run_dir.is_dir():
        return f"run directory {run_dir} exists and is not a directory"
    owner = lock_owner(run_dir)
    if owner is not None:
        return busy_message(run_dir, owner or None)
    what = existing_run(run_dir)
    if what is not None:
        return (f"run directory {run_dir} already holds a run ({what}); choose a new "
                f"directory, open it with `aeron-tui watch {run_dir}`, or continue it with "
                f"`aeron-tui train TRAINER --resume --run-dir {run_dir}`")
    return None


def prepare_launch(setup: RunSetup, runs_root: Path | None = None) -> LaunchSpec:
    """Resolve defaults, create the run directory with its run.toml, and return the command."""
    config_path = write_run_config(setup, runs_root)
    from core.train.config import RunConfig

    trainer = RunConfig.load(config_path).trainer
    return LaunchSpec(trainer=trainer, run_dir=config_path.parent, config=config_path)


def write_run_config(setup: RunSetup, runs_root: Path | None = None) -> Path:
    """Resolve the setup and write RUN_DIR/run.toml (a new run dir unless one is set)."""
    from core.runs.registry import RUN_CONFIG_FILE, default_runs_root, new_run_dir
    from core.train.config import RunConfig

    trainer, preset = setup.trainer, setup.preset
    if trainer is None:
        trainer, default_preset = default_trainer_and_preset()
        preset = preset or default_preset
    problem = validate_data_path(setup.data)
    if problem:
        raise DataError(f"data path {problem}")
    # "auto" goes through as is: the trainer resolves it with pick_profile in its own process
    # (it imports torch anyway) and records the profile it used in run.toml and run_started.
    profile = setup.profile
    if setup.run_dir:
        run_dir = Path(setup.run_dir).expanduser()
        problem = used_run_dir_problem(run_dir)
        if problem:
            raise ConfigError(problem)
    else:
        run_dir = new_run_dir(runs_root or default_runs_root(), trainer, profile)
    fields: dict[str, Any] = {"trainer": trainer, "profile": profile, "run_dir": str(run_dir)}
    if setup.data:
        # Left out, the trainer picks its own default data (the bundled sample corpus file
        # that fits it: styles for supervised trainers, preferences for RLHF ones).
        fields["data"] = str(Path(setup.data).expanduser().resolve())
    if preset:
        fields["preset"] = preset
    if setup.steps is not None:
        fields["steps"] = setup.steps
    if setup.seed is not None:
        fields["seed"] = setup.seed
    fields.update(setup.overrides)
    RunConfig.from_dict(fields, "run setup")  # validate now: errors name the key
    # Only the chosen keys are written: everything left out keeps the profile's / preset's /
    # trainer's default (a full dump would pin e.g. steps=1000 over a preset's own length).
    run_dir.mkdir(parents=True, exist_ok=True)
    return _write_toml(run_dir / RUN_CONFIG_FILE, fields)


def _write_toml(path: Path, data: dict[str, Any]) -> Path:
    import tomli_w

    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(tomli_w.dumps({**scalars, **tables}), encoding="utf-8")
    os.replace(tmp, path)
    return path
