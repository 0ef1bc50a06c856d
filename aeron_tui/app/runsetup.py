"""The run the console will start: the setup choice, and turning it into a launched command.

No Textual here. :func:`prepare_launch` resolves what "auto" and defaults mean (profile from
``pick_profile``, data from the bundled sample corpus, a fresh run directory), writes the run's
``run.toml`` and returns the :class:`~aeron_tui.launcher.LaunchSpec` for the headless command.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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


def resolve_profile(profile: str, hardware: Any, trainer: str) -> tuple[str, str]:
    """(profile name, why): "auto" asks ``pick_profile`` for the hardware, else the name as is."""
    if profile != AUTO:
        return profile, "chosen"
    from profiles.pick import pick_profile

    if hardware is None:
        from profiles.hardware import probe

        hardware = probe(with_torch=False)
    pick = pick_profile(hardware, mode="compressed" if trainer == "compressed" else "train")
    return pick.profile, getattr(pick, "reason", "") or "picked for this hardware"


def prepare_launch(setup: RunSetup, hardware: Any = None,
                   runs_root: Path | None = None) -> LaunchSpec:
    """Resolve defaults, create the run directory with its run.toml, and return the command."""
    from core.data.sample import ensure_sample_corpus
    from core.runs import RUN_CONFIG_FILE, default_runs_root, new_run_dir
    from core.train.config import RunConfig

    trainer, preset = setup.trainer, setup.preset
    if trainer is None:
        trainer, default_preset = default_trainer_and_preset()
        preset = preset or default_preset
    problem = validate_data_path(setup.data)
    if problem:
        raise DataError(f"data path {problem}")
    data = str(Path(setup.data).expanduser()) if setup.data else str(ensure_sample_corpus().styles)
    profile, _why = resolve_profile(setup.profile, hardware, trainer)
    run_dir = Path(setup.run_dir) if setup.run_dir else new_run_dir(
        runs_root or default_runs_root(), trainer, profile)
    fields: dict[str, Any] = {"trainer": trainer, "profile": profile, "data": data,
                              "run_dir": str(run_dir)}
    if preset:
        fields["preset"] = preset
    if setup.steps is not None:
        fields["steps"] = setup.steps
    if setup.seed is not None:
        fields["seed"] = setup.seed
    try:
        config = RunConfig.from_dict(fields, "run setup")
    except ConfigError:
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = config.save(run_dir / RUN_CONFIG_FILE)
    return LaunchSpec(trainer=trainer, run_dir=run_dir, config=config_path)
