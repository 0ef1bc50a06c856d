"""`aeron-tui rlhf reward|dpo|ppo`: the RLHF trainers with the same run flags as `train`.

Each command is the registry trainer of the same name (``aeron-tui train reward`` runs the same
code; the console launches that form) plus the RLHF inputs as flags: ``--from CHECKPOINT`` (start
from a trained model; without it a fresh model of the profile), ``--prefs PATH`` (reward, DPO)
or ``--prompts PATH`` (PPO), default the bundled sample sets. The flags land in the run config's
``[options]`` table, so ``run.toml`` records them and ``--resume`` reuses them. Heavy imports
happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from aeron_tui.commands.train import _OptionalResumeCommand

PROFILE_HELP = "Size profile (ignored for the model with --from: the checkpoint decides)."
FROM_HELP = "Checkpoint (or run directory) to start from; default: a fresh model of the profile."
RESUME_HELP = ("Resume: alone = the latest valid checkpoint of --run-dir; PATH = a checkpoint or "
               "run directory.")


def register(app: typer.Typer) -> None:
    """Add ``rlhf`` with ``reward``, ``dpo``, ``ppo`` and ``reward-eval``."""
    rlhf_app = typer.Typer(
        help="RLHF: reward model, DPO, PPO/GRPO (same run flags as `train`).",
        no_args_is_help=True,
    )
    rlhf_app.command("reward", cls=_OptionalResumeCommand)(reward)
    rlhf_app.command("dpo", cls=_OptionalResumeCommand)(dpo)
    rlhf_app.command("ppo", cls=_OptionalResumeCommand)(ppo)
    rlhf_app.command("reward-eval")(reward_eval)
    app.add_typer(rlhf_app, name="rlhf")


def _run(trainer: str, common: dict[str, Any], options: dict[str, Any]) -> None:
    """Build the RunConfig exactly as ``train`` does, add the RLHF options, run headless."""
    from aeron_tui.commands.train import build_run_config, execute

    flags = {
        "run_dir": str(common["run_dir"]) if common["run_dir"] else None,
        "steps": common["steps"], "seed": common["seed"], "micro_batch": common["micro_batch"],
        "seq_len": common["seq_len"], "learning_rate": common["lr"],
        "precision": common["precision"], "device": common["device"],
    }
    run_config, model_config = build_run_config(
        trainer, profile=common["profile"], config_path=common["config"],
        resume=common["resume"], flags=flags, sets=list(common["sets"]),
        overwrite=common["overwrite"], options=options,
    )
    status = execute(trainer, run_config, model_config, events_stdout=common["events_stdout"],
                     control_stdin=common["control_stdin"], quiet=common["quiet"])
    if status not in ("finished", "stopped"):
        raise typer.Exit(1)


def _path(value: Path | None) -> str | None:
    return str(value.expanduser()) if value is not None else None


def _reward_option(paths: list[Path]) -> str | list[str] | None:
    """One ``--reward`` → a path; several → a list (the trainer builds a reward ensemble)."""
    if not paths:
        return None
    values = [str(p.expanduser()) for p in paths]
    return values[0] if len(values) == 1 else values


# Shared option declarations (typer reads them from the signatures below).
_PROFILE = typer.Option(None, "--profile", help=PROFILE_HELP)
_CONFIG = typer.Option(None, "--config", help="A run.toml to start from.")
_RUN_DIR = typer.Option(None, "--run-dir", help="Run directory (default: $AERON_TUI_HOME/runs/...).")
_STEPS = typer.Option(None, "--steps", help="Optimizer steps (PPO: rollout iterations).")
_SEED = typer.Option(None, "--seed")
_RESUME = typer.Option(None, "--resume", metavar="[PATH]", help=RESUME_HELP)
_OVERWRITE = typer.Option(
    False, "--overwrite", help="Start afresh in a --run-dir that already holds a run: the old "
    "run is moved into RUN_DIR/previous-<date>/ (nothing is deleted).")
_FROM = typer.Option(None, "--from", help=FROM_HELP)
_MICRO = typer.Option(None, "--micro-batch", help="Pairs (reward/DPO) or prompts (PPO) per step.")
_SEQ = typer.Option(None, "--seq-len", help="Longest prompt / response in tokens.")
_LR = typer.Option(None, "--lr", help="Peak learning rate.")
_PRECISION = typer.Option(None, "--precision", help="auto, bf16, fp16 or fp32.")
_DEVICE = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N.")
_SET = typer.Option([], "--set", help="key=value (repeatable): run-config key, model.KEY or option.")
_EVENTS = typer.Option(False, "--events-stdout", help="Write the JSON-lines events to stdout.")
_CONTROL = typer.Option(False, "--control-stdin", help="Read JSON control commands from stdin.")
_QUIET = typer.Option(False, "--quiet", help="No progress display.")
_PREFS = typer.Option(None, "--prefs", help="Preference JSONL (default: the bundled sample set).")


def reward(
    profile: str | None = _PROFILE, config: Path | None = _CONFIG, run_dir: Path | None = _RUN_DIR,
    steps: int | None = _STEPS, seed: int | None = _SEED, resume: str | None = _RESUME,
    overwrite: bool = _OVERWRITE,
    from_: Path | None = _FROM, prefs: Path | None = _PREFS,
    margin: float | None = typer.Option(None, "--margin", help="Bradley-Terry margin m (0)."),
    label_smoothing: float | None = typer.Option(None, "--label-smoothing", help="ε (0)."),
    micro_batch: int | None = _MICRO, seq_len: int | None = _SEQ, lr: float | None = _LR,
    precision: str | None = _PRECISION, device: str | None = _DEVICE, sets: list[str] = _SET,
    events_stdout: bool = _EVENTS, control_stdin: bool = _CONTROL, quiet: bool = _QUIET,
) -> None:
    """Train a reward model (Bradley-Terry; held-out pairwise accuracy and margin)."""
    _run("reward", dict(locals()), {
        "from": _path(from_), "prefs": _path(prefs), "margin": margin,
        "label_smoothing": label_smoothing,
    })


def dpo(
    profile: str | None = _PROFILE, config: Path | None = _CONFIG, run_dir: Path | None = _RUN_DIR,
    steps: int | None = _STEPS, seed: int | None = _SEED, resume: str | None = _RESUME,
    overwrite: bool = _OVERWRITE,
    from_: Path | None = _FROM, prefs: Path | None = _PREFS,
    beta: float | None = typer.Option(None, "--beta", help="β (0.1; SimPO 2.0)."),
    loss: str | None = typer.Option(None, "--loss", help="dpo (default), hinge, ipo or simpo."),
    reference: str | None = typer.Option(
        None, "--reference", help="precompute (default: reference log-probs once) or model."),
    micro_batch: int | None = _MICRO, seq_len: int | None = _SEQ, lr: float | None = _LR,
    precision: str | None = _PRECISION, device: str | None = _DEVICE, sets: list[str] = _SET,
    events_stdout: bool = _EVENTS, control_stdin: bool = _CONTROL, quiet: bool = _QUIET,
) -> None:
    """Direct preference optimisation against the starting model (implicit rewards, margin)."""
    _run("dpo", dict(locals()), {
        "from": _path(from_), "prefs": _path(prefs), "beta": beta, "loss": loss,
        "reference": reference,
    })


def ppo(
    profile: str | None = _PROFILE, config: Path | None = _CONFIG, run_dir: Path | None = _RUN_DIR,
    steps: int | None = _STEPS, seed: int | None = _SEED, resume: str | None = _RESUME,
    overwrite: bool = _OVERWRITE,
    from_: Path | None = _FROM,
    prompts: Path | None = typer.Option(
        None, "--prompts", help="Prompt JSONL (default: the bundled sample prompts)."),
    reward_ckpt: list[Path] = typer.Option(
        [], "--reward", help="Reward-model checkpoint; repeat for an ensemble (mean score, std "
        "reported as reward_std); default: the verifiable reward (the reply's 'Answer: ...' "
        "against the prompt's answer)."),
    grpo: bool = typer.Option(False, "--grpo", help="GRPO: group-relative advantages, no value head."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Rollout length (128)."),
    micro_batch: int | None = _MICRO, seq_len: int | None = _SEQ, lr: float | None = _LR,
    precision: str | None = _PRECISION, device: str | None = _DEVICE, sets: list[str] = _SET,
    events_stdout: bool = _EVENTS, control_stdin: bool = _CONTROL, quiet: bool = _QUIET,
) -> None:
    """PPO (or GRPO with --grpo) with KV-cache rollouts, adaptive KL and GAE."""
    _run("ppo", dict(locals()), {
        "from": _path(from_), "prompts": _path(prompts), "reward_model": _reward_option(reward_ckpt),
        "grpo": True if grpo else None, "max_new_tokens": max_new_tokens,
    })


def reward_eval(
    reward_ckpt: list[Path] = typer.Option(
        ..., "--reward", help="Reward-model checkpoint; repeat for an ensemble (mean score, std)."),
    prefs: Path | None = _PREFS,
    split: str = typer.Option("val", "--split", help="val (held-out, default), train or all."),
    batch_size: int = typer.Option(16, "--batch-size", help="Pairs per forward pass."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
) -> None:
    """Score preference pairs with one reward model or an ensemble: pairwise accuracy, margin,
    ensemble std (uncertainty), overall and per source."""
    import json

    from core.data.preferences import read_preferences, split_records
    from core.errors import ConfigError, DataError
    from core.train.rlhf.ensemble import evaluate_reward_scorer, load_reward_scorer

    if split not in ("val", "train", "all"):
        raise ConfigError(f"--split must be val, train or all, got {split!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if prefs is None:
        from core.data.sample import ensure_sample_corpus

        prefs = ensure_sample_corpus().preferences
    records = read_preferences(prefs)
    train, val = split_records(records)
    chosen = {"val": val, "train": train, "all": records}[split]
    if not chosen:
        raise DataError(f"{prefs}: no preference pairs in the {split!r} split")
    scorer, tokenizer, _ = load_reward_scorer(list(reward_ckpt), device)
    report = evaluate_reward_scorer(scorer, tokenizer, chosen, batch_size)
    report.update(prefs=str(prefs), split=split)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"{report['pairs']} {split} pairs of {prefs}, {report['members']} reward model(s)")
    typer.echo(f"accuracy {report['accuracy']:.3f}  margin {report['margin']:+.3f}  "
               f"ensemble std {report['reward_std']:.3f}")
    for name, row in (report["per_group"] or report["per_source"]).items():
        typer.echo(f"  {name:<22} {int(row['pairs']):>5} pairs  accuracy {row['accuracy']:.3f}  "
                   f"margin {row['margin']:+.3f}")
