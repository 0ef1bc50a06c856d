"""`aeron-tui continue`: continual training from a checkpoint, with a retention report.

`--compare` runs plain fine-tuning, EWC, replay and the full recipe at the same budget and seed
and prints the retention table (continual.md §2, §5). The trainer itself is the ``continual``
registry entry, so `aeron-tui train continual --set from=...` and the console run the same code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

COMPARE_RECIPES = ("plain", "ewc", "replay", "full")


def register(app: typer.Typer) -> None:
    app.command(
        "continue",
        help="Continue a checkpoint on a new corpus without forgetting the old one (replay, EWC, distillation).",
    )(continue_training)


def continue_training(
    source: Path = typer.Option(..., "--from", help="The checkpoint to continue from (θ_old)."),
    data: str | None = typer.Option(None, "--data", help="The new corpus (styles.jsonl, .txt or directory)."),
    old_data: str | None = typer.Option(
        None, "--old-data", help="The old corpus for replay, EWC and retention (default: the sample corpus)."),
    recipe: str = typer.Option("full", "--recipe", help="plain, ewc, replay, mirror or full."),
    compare: bool = typer.Option(False, "--compare", help="Run plain, ewc, replay and full; print the table."),
    profile: str | None = typer.Option(
        None, "--profile", help="Training settings (batch, length) from this profile (default: the checkpoint's run)."),
    steps: int | None = typer.Option(None, "--steps"),
    seed: int | None = typer.Option(None, "--seed"),
    run_dir: Path | None = typer.Option(None, "--run-dir"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start afresh in a --run-dir that already holds a run: the old "
        "run is moved into RUN_DIR/previous-<date>/ (nothing is deleted)."),
    micro_batch: int | None = typer.Option(None, "--micro-batch"),
    seq_len: int | None = typer.Option(None, "--seq-len"),
    lr: float | None = typer.Option(None, "--lr"),
    sets: list[str] = typer.Option([], "--set", help="key=value: replay_ratio, ewc_lambda, ewc_normalize, mirror_lambda, ..."),
    events_stdout: bool = typer.Option(False, "--events-stdout"),
    control_stdin: bool = typer.Option(False, "--control-stdin"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Continue training; the retention report lands in RUN_DIR/retention.json."""
    from aeron_tui.commands.train import build_run_config, execute
    from core.runs.checkpoint import load_checkpoint
    from core.runs.registry import default_runs_root, run_dir_name

    base = load_checkpoint(source, load_optimizer=False)  # fails early, naming the file
    profile = profile or (base.trainer_state.get("run_config") or {}).get("profile") or "auto"
    root = run_dir or default_runs_root() / run_dir_name("continual", profile)
    recipes = COMPARE_RECIPES if compare else (recipe,)
    results: dict[str, dict[str, Any]] = {}
    for name in recipes:
        target = root / name if compare else root
        flags = {"data": data, "run_dir": str(target), "steps": steps, "seed": seed,
                 "micro_batch": micro_batch, "seq_len": seq_len, "learning_rate": lr}
        options = [f"from={source}", f"recipe={name}"] + ([f"old_data={old_data}"] if old_data else [])
        run_config, model_config = build_run_config(
            "continual", profile=profile, flags=flags, sets=[*options, *sets],
            overwrite=overwrite)
        status = execute("continual", run_config, model_config, events_stdout=events_stdout,
                         control_stdin=control_stdin, quiet=quiet)
        if status not in ("finished", "stopped"):
            raise typer.Exit(1)
        results[name] = json.loads((target / "retention.json").read_text(encoding="utf-8"))
    print_retention_table(results)
    if compare:
        out = root / "retention_compare.json"
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(results, indent=2), encoding="utf-8")
        tmp.replace(out)


def print_retention_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Retention (bits per byte; lower is better)")
    for col in ("recipe", "old before", "old after", "new before", "new after", "retained",
                "words kept", "cosine"):
        table.add_column(col, justify="left" if col == "recipe" else "right")
    for name, r in results.items():
        vocab = r["vocabulary"]
        table.add_row(
            name,
            f"{r['before']['old']['bpb']:.4f}", f"{r['after']['old']['bpb']:.4f}",
            f"{r['before']['new']['bpb']:.4f}", f"{r['after']['new']['bpb']:.4f}",
            f"{r['retained_fraction']:.1%}", f"{vocab['retained']}/{vocab['total']}",
            f"{r['representation_cosine']:.3f}",
        )
    Console().print(table)
