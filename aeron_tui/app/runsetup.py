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
    # Resume the run in this directory from its latest checkpoint instead of starting a new one
    # (its run.toml says what it is; the other fields are ignored).
    resume_dir: str | None = None
    # Extra RunConfig keys (e.g. {"model": {"d_model": 64}, "log_every": 1}) — tests, power users.
    overrides: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # Where each default came from, per field ("trainer" -> "the wizard's saved choice (…)"):
    # the setup screen shows it next to the field.
    origins: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def describe(self) -> str:
        if self.resume_dir:
            return f"resume {Path(self.resume_dir).name}"
        parts = [self.trainer or "default trainer", f"profile {self.profile}"]
        if self.preset:
            parts.append(f"preset {self.preset}")
        if self.steps:
            parts.append(f"{self.steps} steps")
        return ", ".join(parts)

    def with_(self, **changes: Any) -> RunSetup:
        return replace(self, **changes)


MAX_STEPS = 10_000_000  # more optimizer steps than any run here could take: a typo, not a plan


def default_setup(**given: Any) -> RunSetup:
    """The setup a new run starts from: the wizard's saved choice, unless ``given`` (flags)
    says otherwise; each field's origin is recorded for the screen.

    The same defaults ``aeron-tui train`` uses (``profiles.settings.choice_run_values``): the
    child trainer applies the saved device and batch layout itself, so they are not repeated
    here.
    """
    from profiles.settings import choice_path, describe_choice, load_saved_choice

    values = {k: v for k, v in given.items() if v is not None}
    origins = {k: "the command line" for k in values
               if k in ("trainer", "profile", "preset", "data", "steps", "run_dir")}
    unreadable = ""
    try:
        saved = load_saved_choice()
    except ConfigError as exc:  # the console still opens (and watches); the screen says why
        saved, unreadable = None, f"; the saved choice was not used: {exc}"
    if saved is not None:
        where = f"the wizard's saved choice ({choice_path()}: {describe_choice(saved)})"
        if "trainer" not in values:
            values["trainer"] = saved.trainer
            origins["trainer"] = where
        if "profile" not in values:
            values["profile"] = saved.profile
            origins["profile"] = where
    if "trainer" not in values:
        trainer, preset = default_trainer_and_preset()
        values["trainer"] = trainer
        origins["trainer"] = ("built-in default (no saved choice yet: w runs the wizard)"
                              if not unreadable else f"built-in default{unreadable}")
        if preset and "preset" not in values:
            values["preset"] = preset
            origins["preset"] = f"built-in default for {trainer}"
    if "profile" not in values:
        values["profile"] = AUTO
        origins["profile"] = "built-in default (auto: the largest that fits this hardware)"
    return RunSetup(**values, origins=origins)


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


def profile_rows(hardware: Any, trainer: str | None, data: str | None = None,
                 ) -> tuple[str | None, list[ProfileRow], list[str]]:
    """(auto choice or None when nothing fits, one row per catalog profile, notes).

    The rows are :func:`profiles.runplan.profile_pick` for ``trainer`` at the run's vocabulary —
    the figures the wizard and ``aeron-tui profile --trainer`` show. The first note says which
    vocabulary the parameter counts assume. Imports torch (parameter counts, estimates): the
    console runs it via ``offload.in_child``.
    """
    from profiles.runplan import profile_pick, run_vocabulary

    if hardware is None:
        from profiles.hardware import probe

        hardware = probe(with_torch=False)
    vocab = run_vocabulary(data)
    pick = profile_pick(hardware, trainer, vocab)
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
    return auto, rows, [vocab.note, *(str(n) for n in getattr(pick, "notes", []))]


def _picked_name(pick: Any) -> str | None:
    for attr in ("profile", "name"):
        value = getattr(pick, attr, None)
        if isinstance(value, str):
            return value
        if value is not None and isinstance(getattr(value, "name", None), str):
            return str(value.name)
    return None


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


HEAD_RECORDS = 20  # records the setup screen reads to check a data file (like `data stats`)
HEAD_TEXT_BYTES = 64 * 1024
# Which record kind each trainer reads; the others read styles records (or plain text).
TRAINER_DATA_KIND = {"reward": "preferences", "dpo": "preferences", "ppo": "prompts"}


@dataclass(frozen=True)
class DataCheck:
    """What reading the head of a data path found: a problem (one line) or a summary."""

    problem: str | None
    summary: str = ""


def check_data(text: str | None, trainer: str | None = None) -> DataCheck:
    """Read the first records of the data a run would train on, as the trainers will.

    Catches what a path check cannot: a ``.jsonl`` that is not JSON, records missing the fields
    the trainer reads, a text file that is not UTF-8 — each as one line naming the file and
    line. Blank means the bundled sample corpus (always valid).
    """
    problem = validate_data_path(text)
    if problem:
        return DataCheck(problem)
    if text is None or not text.strip():
        return DataCheck(None, "the bundled sample corpus (built on first use)")
    path = Path(text).expanduser()
    if path.is_dir():
        styles = path / "styles.jsonl"
        if styles.is_file():
            path = styles
        else:
            files = sorted(f for f in path.rglob("*.txt") if f.is_file())
            if not files:
                return DataCheck(f"{path}: directory holds no styles.jsonl and no .txt files")
            found = _check_text_head(files[0])
            if found.problem:
                return found
            return DataCheck(None, f"text corpus · {len(files)} .txt file(s)")
    try:
        size = path.stat().st_size
    except OSError as exc:
        return DataCheck(f"{path}: cannot read ({exc.strerror or exc})")
    if path.suffix != ".jsonl":  # the trainers read anything but .jsonl as plain text
        found = _check_text_head(path)
        return found if found.problem else DataCheck(None, f"text · {_size(size)}")
    return _check_jsonl_head(path, size, TRAINER_DATA_KIND.get(trainer or "", "styles"))


def _size(n: int) -> str:
    from aeron_tui.app.format import fmt_bytes

    return fmt_bytes(n)


def _check_text_head(path: Path) -> DataCheck:
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_TEXT_BYTES)
    except OSError as exc:
        return DataCheck(f"{path}: cannot read ({exc.strerror or exc})")
    try:
        # A multi-byte character cut at the end of the head is not an error.
        head.decode("utf-8") if len(head) < HEAD_TEXT_BYTES else \
            head[:-4].decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        line = head[: exc.start].count(b"\n") + 1
        return DataCheck(f"{path}:{line}: invalid UTF-8; re-save the file as UTF-8")
    if not head.strip():
        return DataCheck(f"{path}: empty (no text to train on)")
    return DataCheck(None)


def _check_jsonl_head(path: Path, size: int, kind: str) -> DataCheck:
    from core.data.jsonl import iter_jsonl, require_str
    from core.errors import DataError

    fields = {"styles": ("provider", "style_label", "user_input", "assistant_reply"),
              "preferences": ("prompt", "chosen", "rejected"),
              "prompts": ("prompt",)}[kind]
    n = 0
    try:
        for line_no, obj in iter_jsonl(path):
            for key in fields:
                require_str(obj, key, path, line_no)
            n += 1
            if n >= HEAD_RECORDS:
                break
    except DataError as exc:
        hint = f" ({kind} records need {', '.join(fields)})" if "missing field" in str(exc) \
            else ""
        return DataCheck(f"{exc}{hint}")
    return DataCheck(None, f"{kind} records · {_size(size)} (first {n} read)")


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
    """Resolve defaults, create the run directory with its run.toml, and return the command.

    With ``resume_dir``: the command that resumes that run from its latest checkpoint (the
    same ``train <trainer> --run-dir DIR --resume`` as on the command line).
    """
    if setup.resume_dir:
        return resume_launch(Path(setup.resume_dir))
    config_path = write_run_config(setup, runs_root)
    from core.train.config import RunConfig

    trainer = RunConfig.load(config_path).trainer
    return LaunchSpec(trainer=trainer, run_dir=config_path.parent, config=config_path)


def resume_problem(run_dir: Path) -> str | None:
    """Why the run in ``run_dir`` cannot be resumed (one line), or None.

    Cheap (no checksums): the trainer verifies the checkpoints when it resumes, skips a broken
    one with a warning and says so in one line when none is usable.
    """
    from core.runs.checkpoint import list_checkpoints
    from core.runs.registry import RUN_CONFIG_FILE, trainer_alive

    if not (run_dir / RUN_CONFIG_FILE).is_file():
        return f"{run_dir} has no {RUN_CONFIG_FILE}: it was not started from a run config"
    if trainer_alive(run_dir):
        return f"{run_dir.name} is still running: watch it instead"
    if not list_checkpoints(run_dir):
        return f"{run_dir.name} has no checkpoint to resume from"
    return None


def resume_launch(run_dir: Path) -> LaunchSpec:
    """The command that resumes ``run_dir`` from its latest checkpoint."""
    from core.runs.registry import RUN_CONFIG_FILE
    from core.train.config import RunConfig

    problem = resume_problem(run_dir)
    if problem:
        raise ConfigError(problem)
    trainer = RunConfig.load(run_dir / RUN_CONFIG_FILE).trainer
    return LaunchSpec(trainer=trainer, run_dir=run_dir, extra_args=("--resume",))


def write_run_config(setup: RunSetup, runs_root: Path | None = None) -> Path:
    """Resolve the setup and write RUN_DIR/run.toml (a new run dir unless one is set)."""
    from core.runs.registry import RUN_CONFIG_FILE, default_runs_root, new_run_dir
    from core.train.config import RunConfig

    trainer, preset = setup.trainer, setup.preset
    if trainer is None:
        trainer, default_preset = default_trainer_and_preset()
        preset = preset or default_preset
    problem = check_data(setup.data, trainer).problem
    if problem:
        raise DataError(f"data: {problem}")
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
