"""`aeron-tui train <trainer>`: headless training, one sub-command per registry entry.

Every trainer shares the same options; trainer-specific settings go through ``--set key=value``
or the ``[options]`` table of ``--config run.toml``. Precedence, lowest first: RunConfig
defaults → the profile's ``[train]`` settings (and the wizard's saved batch choice) → the
trainer's registry defaults → ``--config`` (or the resumed run's ``run.toml``) → flags → ``--set``.
Heavy imports (torch, the engine) happen inside the command only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

RUN_FIELDS_FROM_PROFILE = {
    "seq_len": "seq_len", "micro_batch": "micro_batch", "grad_accum": "grad_accum",
    "precision": "precision", "gradient_checkpointing": "gradient_checkpointing",
    "learning_rate": "learning_rate", "lr_schedule": "lr_schedule", "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay", "grad_clip": "grad_clip", "max_steps": "steps",
    "eval_every": "eval_every",
}


class _OptionalResumeCommand(TyperCommand):
    """Lets ``--resume`` stand alone (= latest checkpoint) or take a PATH."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        fixed: list[str] = []
        for i, arg in enumerate(args):
            fixed.append(arg)
            if arg == "--resume" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                fixed.append("latest")
        return super().parse_args(ctx, fixed)


def register(app: typer.Typer) -> None:
    """Add ``train`` with one sub-command per trainer in :mod:`aeron_tui.trainers`."""
    from aeron_tui.trainers import TRAINERS

    train_app = typer.Typer(
        help="Train headless with a Rich progress display (one sub-command per trainer).",
        no_args_is_help=True,
    )
    for entry in TRAINERS.values():
        train_app.command(entry.name, help=entry.description, cls=_OptionalResumeCommand)(
            _make_command(entry.name)
        )
    app.add_typer(train_app, name="train")


def _make_command(trainer: str) -> Any:
    def command(
        profile: str | None = typer.Option(
            None, "--profile", help="Size profile name, or 'auto' to pick for this hardware "
            "(default: the wizard's saved choice, else auto)."),
        config: Path | None = typer.Option(None, "--config", help="A run.toml to start from."),
        preset: str | None = typer.Option(
            None, "--preset", help="Trainer preset (LONPT: smoke, light, standard, heavy, or a "
            "TOML path); it also suggests the profile when --profile is not given."),
        data: str | None = typer.Option(
            None, "--data", help="Data file or directory in any format `aeron-tui data --help` "
            "lists (styles.jsonl, Alpaca, ShareGPT, messages, CSV, Parquet, .txt/.md, ...; "
            "default: the sample corpus)."),
        data_format: str | None = typer.Option(
            None, "--data-format", help="Force the data format instead of detecting it."),
        run_dir: Path | None = typer.Option(
            None, "--run-dir", help="Run directory (default: $AERON_TUI_HOME/runs/<name>)."),
        steps: int | None = typer.Option(None, "--steps", help="Optimizer steps in total."),
        seed: int | None = typer.Option(None, "--seed"),
        resume: str | None = typer.Option(
            None, "--resume", metavar="[PATH]",
            help="Resume: alone = the latest valid checkpoint of --run-dir (or of the newest run "
            "of this trainer); PATH = a checkpoint or run directory."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Start afresh in a --run-dir that already holds a run: the "
            "old run is moved into RUN_DIR/previous-<date>/ (nothing is deleted)."),
        micro_batch: int | None = typer.Option(None, "--micro-batch"),
        grad_accum: int | None = typer.Option(None, "--grad-accum"),
        seq_len: int | None = typer.Option(None, "--seq-len"),
        lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
        precision: str | None = typer.Option(None, "--precision", help="auto, bf16, fp16 or fp32."),
        gradient_checkpointing: bool | None = typer.Option(
            None, "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Recompute activations in backward (less memory, ~30 % slower)."),
        eval_every: int | None = typer.Option(
            None, "--eval-every", help="Evaluate every N optimizer steps."),
        checkpoint_every: int | None = typer.Option(
            None, "--checkpoint-every", help="Write a checkpoint every N optimizer steps."),
        keep_last: int | None = typer.Option(
            None, "--keep-last", help="Keep the N newest step checkpoints (the best is always "
            "kept)."),
        warmup: int | None = typer.Option(
            None, "--warmup", help="Linear learning-rate warmup steps."),
        weight_decay: float | None = typer.Option(
            None, "--weight-decay", help="AdamW weight decay (on >= 2-D weights)."),
        early_stop: str | None = typer.Option(
            None, "--early-stop", metavar="PATIENCE[:MIN_DELTA]",
            help="Stop after PATIENCE evaluations without the validation loss improving by more "
            "than MIN_DELTA (default 0); the best checkpoint is kept. --set "
            "early_stop_metric=bpb to watch bits per byte."),
        log: list[str] = typer.Option(
            [], "--log", metavar="TRACKER[:PATH]",
            help="Also log to a tracker (repeatable): tensorboard[:DIR] (default RUN_DIR/tb), "
            "csv[:FILE] (default RUN_DIR/metrics.csv), wandb (offline)."),
        device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
        packing: str | None = typer.Option(
            None, "--packing", help="Sequence packing: auto (on where it cuts padding), on or off."),
        shard: bool = typer.Option(
            False, "--shard", help="Under torchrun: shard parameters/optimizer with FSDP."),
        sets: list[str] = typer.Option(
            [], "--set", help="key=value (repeatable): a run-config key, model.KEY or an option."),
        events_stdout: bool = typer.Option(
            False, "--events-stdout", help="Write the JSON-lines events to stdout."),
        control_stdin: bool = typer.Option(
            False, "--control-stdin", help="Read JSON control commands from stdin."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
    ) -> None:
        flags = {
            "data": data, "preset": preset, "run_dir": str(run_dir) if run_dir else None,
            "steps": steps,
            "seed": seed, "micro_batch": micro_batch, "grad_accum": grad_accum,
            "seq_len": seq_len, "learning_rate": lr, "precision": precision, "device": device,
            "packing": packing,
            "data_format": data_format, "gradient_checkpointing": gradient_checkpointing,
            "eval_every": eval_every, "checkpoint_every": checkpoint_every,
            "keep_last": keep_last, "warmup_steps": warmup, "weight_decay": weight_decay,
            "trackers": list(log) or None, **parse_early_stop(early_stop),
        }
        run_config, model_config = build_run_config(
            trainer, profile=profile, config_path=config, resume=resume, flags=flags,
            sets=list(sets), shard=shard, overwrite=overwrite,
        )
        from core.runs.trackers import check_available

        check_available(run_config.trackers)  # a missing package is one line, before any work
        status = execute(trainer, run_config, model_config, events_stdout=events_stdout,
                         control_stdin=control_stdin, quiet=quiet)
        if status not in ("finished", "stopped"):
            raise typer.Exit(1)

    command.__doc__ = f"Train with the {trainer!r} trainer."
    return command


def parse_early_stop(text: str | None) -> dict[str, Any]:
    """``"3"`` / ``"3:0.01"`` → the run-config keys (empty when not given)."""
    if text is None:
        return {}
    from core.errors import ConfigError

    patience, _, delta = text.partition(":")
    try:
        values: dict[str, Any] = {"early_stop_patience": int(patience)}
        if delta:
            values["early_stop_min_delta"] = float(delta)
    except ValueError:
        raise ConfigError(f"--early-stop {text!r}: expected PATIENCE[:MIN_DELTA], e.g. 3 or "
                          "3:0.01") from None
    if values["early_stop_patience"] < 1 or values.get("early_stop_min_delta", 0.0) < 0:
        raise ConfigError(f"--early-stop {text!r}: PATIENCE must be >= 1 and MIN_DELTA >= 0")
    return values


# ----------------------------------------------------------------------------------------------
# Building the run config
# ----------------------------------------------------------------------------------------------


def build_run_config(
    trainer: str,
    *,
    profile: str | None = None,
    config_path: Path | None = None,
    resume: str | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    shard: bool = False,
    overwrite: bool = False,
    options: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(RunConfig, the profile's NeuralNetConfig) from the layers described in the module doc.

    ``options`` are trainer options given as dedicated flags (``rlhf --from``): they win over
    ``--set``."""
    from aeron_tui.trainers import get_trainer
    from core.errors import ConfigError
    from core.train.config import RunConfig, parse_set_option

    entry = get_trainer(trainer)
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    file_values: dict[str, Any] = {}
    source = "run config"
    run_dir = flags.get("run_dir")
    if config_path is not None:
        file_values = _read_toml_table(config_path)
        source = str(config_path)
    elif resume:
        run_dir = run_dir or _resume_run_dir(resume, trainer)
        if run_dir and (Path(run_dir) / "run.toml").is_file():
            file_values = _read_toml_table(Path(run_dir) / "run.toml")
            source = str(Path(run_dir) / "run.toml")
    if run_dir:
        flags["run_dir"] = str(run_dir)

    requested = profile or file_values.get("profile") or _preset_profile(
        trainer, flags.get("preset") or file_values.get("preset"))
    profile_name, saved = _choose_profile(requested, trainer, {**file_values, **flags})
    size = _load_size_profile(profile_name)

    layered: dict[str, Any] = {}
    for src, dst in RUN_FIELDS_FROM_PROFILE.items():
        layered[dst] = getattr(size.train, src)
    if saved is not None:
        layered.update(saved)
    layered.update(entry.defaults)
    layered["options"] = dict(entry.options)
    layered.update({k: v for k, v in file_values.items() if k not in ("model", "options")})
    layered["model"] = dict(file_values.get("model") or {})
    layered["options"].update(file_values.get("options") or {})
    layered.update(flags)
    layered["trainer"] = trainer
    layered["profile"] = profile_name
    if resume:
        layered["resume"] = resume
    else:
        layered.pop("resume", None)
    if shard:
        layered["options"]["shard"] = True
    if overwrite:
        layered["overwrite"] = True
    fields = set(RunConfig.__dataclass_fields__)
    for item in sets or []:
        key, value = parse_set_option(item)
        if key == "tokenizer" and resume:
            raise ConfigError(
                f"--set {item}: a resumed run keeps its checkpoint's tokenizer; drop --set "
                "tokenizer, or move the model to a new vocabulary with `aeron-tui tokenizer "
                "upgrade` and continue from that checkpoint")
        if key.startswith("model."):
            layered["model"][key[len("model."):]] = value
        elif key.startswith("options."):
            layered["options"][key[len("options."):]] = value
        elif key in fields and key not in ("model", "options"):
            layered[key] = value
        else:
            layered["options"][key] = value
    layered["options"].update({k: v for k, v in (options or {}).items() if v is not None})
    run_config = RunConfig.from_dict(layered, source)
    _check_seq_len(run_config, size)
    return run_config, size.model


def _check_seq_len(run_config: Any, size: Any) -> None:
    """Refuse a sequence length the profile's model cannot hold, before anything starts (the
    trainer checks again against the final model config)."""
    from core.errors import ConfigError
    from core.train.config import SEQ_LEN_MARGIN, seq_len_problem

    if run_config.seq_len is None or run_config.options.get("from"):
        return  # the preset decides, or the starting checkpoint's architecture does
    limit = int(run_config.model.get("max_position_embeddings",
                                     size.model.max_position_embeddings))
    if run_config.seq_len + SEQ_LEN_MARGIN <= limit:
        return
    from profiles.catalog import list_profiles

    longer = [f"{p.name}: {p.model.max_position_embeddings - SEQ_LEN_MARGIN}"
              for p in list_profiles()
              if p.model.max_position_embeddings - SEQ_LEN_MARGIN >= run_config.seq_len]
    problem = seq_len_problem(run_config.seq_len, limit, run_config.profile, ", ".join(longer))
    raise ConfigError(problem or "")


def _read_toml_table(path: Path) -> dict[str, Any]:
    """The raw TOML table, validated as a RunConfig (errors name the file and the key)."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    from core.errors import ConfigError
    from core.train.config import RunConfig

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: run config file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read run config ({exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    RunConfig.from_dict(data, str(path))  # full validation with the file's name
    return data


def _resume_run_dir(resume: str, trainer: str) -> str | None:
    """The run a bare ``--resume`` (or ``--resume PATH``) refers to."""
    from core.errors import CheckpointError
    from core.runs.registry import is_run_dir, latest_run

    if resume == "latest":
        found = latest_run(trainer=trainer)
        if found is None:
            raise CheckpointError(
                f"--resume: no earlier {trainer} run found; give --run-dir or --resume PATH")
        return str(found)
    path = Path(resume).expanduser()
    if is_run_dir(path):
        return str(path)
    # RUN_DIR/checkpoints/<name>
    if path.parent.name == "checkpoints" and is_run_dir(path.parent.parent):
        return str(path.parent.parent)
    return None


def _preset_profile(trainer: str, preset: str | None) -> str | None:
    """The profile a trainer preset suggests (LONPT ``smoke`` → ``tiny``), or None."""
    if trainer != "lonpt" or not preset:
        return None
    from lonpt.config import preset_profile

    return preset_profile(preset)


def _choose_profile(requested: str | None, trainer: str, values: dict[str, Any] | None = None,
                    ) -> tuple[str, dict[str, Any] | None]:
    """(profile name, run settings that came with the choice).

    No profile given: the wizard's saved choice. ``auto`` (or nothing saved): ``pick_profile``
    for this trainer at the run's vocabulary. Whatever the profile, the saved choice's device
    applies, and its batch layout when the profile is the one it was fitted for
    (``profiles.settings.choice_run_values``); the layers above (trainer defaults, files, flags)
    still win.
    """
    from profiles.settings import choice_run_values, load_saved_choice

    saved = load_saved_choice()
    if requested and requested != "auto":
        return requested, choice_run_values(saved, requested) or None
    if requested is None and saved is not None:
        return saved.profile, choice_run_values(saved, saved.profile)
    name, fitted = _auto_profile(trainer, values or {})
    return name, {**choice_run_values(saved, None), **(fitted or {})} or None


def _auto_profile(trainer: str, values: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    from core.errors import ConfigError
    from profiles.hardware import probe
    from profiles.runplan import profile_pick, run_vocabulary

    vocab = run_vocabulary(values.get("data"), values.get("tokenizer"),
                           values.get("tokenizer_vocab_size"))
    pick = profile_pick(probe(with_torch=False), trainer, vocab)
    if not pick.fits:
        raise ConfigError("--profile auto: no size profile fits this machine's free memory; "
                          "give --profile NAME (see `aeron-tui profile`)")
    return pick.profile.name, {
        "micro_batch": pick.micro_batch, "grad_accum": pick.grad_accum,
        "gradient_checkpointing": pick.checkpointing,
    }


def _load_size_profile(name: str) -> Any:
    from profiles.catalog import load_profile

    return load_profile(name)


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def execute(
    trainer: str,
    run_config: Any,
    model_config: Any,
    *,
    events_stdout: bool = False,
    control_stdin: bool = False,
    quiet: bool = False,
) -> str:
    """Run the trainer in this process with the headless display; returns the final status."""
    from aeron_tui.headless import HeadlessDisplay, choose_mode
    from aeron_tui.trainers import get_trainer
    from core.train.control import ControlChannel

    cls = get_trainer(trainer).load()
    if run_config.run_dir:
        from core.runs.registry import remember_run_dir

        remember_run_dir(run_config.run_dir)  # listed by `runs list` and the console, anywhere
    mode, stream = choose_mode(events_stdout, quiet)
    display = HeadlessDisplay(mode, stream)
    control = ControlChannel()
    if control_stdin:
        control.start_stdin_reader()
    dist = _distributed_context(run_config)
    try:
        instance = cls(run_config, model_config, events_stdout=events_stdout and
                       (dist is None or dist.is_main), listeners=[display], control=control,
                       dist=dist)
        return str(instance.run())
    finally:
        display.close()
        if dist is not None:
            from core.train.distributed import cleanup

            cleanup()


def _distributed_context(run_config: Any) -> Any:
    """A DistContext under torchrun, else None (single process)."""
    from core.train.distributed import launched_by_torchrun, setup_distributed

    if not launched_by_torchrun():
        return None
    return setup_distributed(run_config.device)
