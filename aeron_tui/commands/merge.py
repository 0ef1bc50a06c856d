"""`aeron-tui merge`: combine checkpoints (soup, task arithmetic, TIES, DARE, SLERP, layer-wise, Fisher)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("merge", help="Merge checkpoints into a new checkpoint with a merge report.")(merge)


def merge(
    models: list[Path] = typer.Option(..., "--models", "-m", help="Checkpoint directories to merge (repeat or list)."),
    out: Path = typer.Option(..., "--out", "-o", help="New checkpoint directory (must not exist)."),
    method: str = typer.Option(
        "soup", "--method",
        help="soup, task_arithmetic, ties, dare_linear, dare_ties, slerp, layerwise, fisher or greedy_soup."),
    base: Path | None = typer.Option(None, "--base", help="Base checkpoint (task vectors are θ − θ_base)."),
    weights: list[float] | None = typer.Option(None, "--weights", help="One weight per model."),
    density: float = typer.Option(0.6, "--density", help="TIES/DARE: fraction of each task vector kept."),
    lam: float = typer.Option(1.0, "--lambda", help="Scale of the merged task vector."),
    t: float = typer.Option(0.5, "--t", help="SLERP position between the two models."),
    alphas: list[float] | None = typer.Option(None, "--alphas", help="Layer-wise: α per layer index."),
    seed: int = typer.Option(42, "--seed", help="DARE drop masks."),
    data: Path | None = typer.Option(
        None, "--data", help="styles.jsonl for the sanity check (default: the sample corpus)."),
    sanity: bool = typer.Option(True, "--sanity/--no-sanity", help="Measure validation loss of inputs and result."),
    samples: int = typer.Option(128, "--samples", help="Validation samples in the sanity check."),
) -> None:
    """Streams tensor by tensor; refuses different configs or tokenizers before writing anything."""
    from rich.console import Console
    from rich.table import Table

    from core.evolve.merge import MergeParams, greedy_soup_checkpoints, merge_checkpoints

    console = Console()
    sanity_data = None
    if sanity or method == "greedy_soup":
        if data is None:
            from core.data.sample import ensure_sample_corpus

            data = ensure_sample_corpus().styles
        sanity_data = data
    params = MergeParams(
        method=method if method != "greedy_soup" else "soup",
        weights=list(weights) if weights else None,
        density=density, lam=lam, t=t, seed=seed,
        alphas=list(alphas) if alphas else None,
    )
    if method == "greedy_soup":
        result = greedy_soup_checkpoints(models, out, data=sanity_data, samples=samples)
    else:
        result = merge_checkpoints(models, params, out, base=base, sanity_data=sanity_data, sanity_samples=samples)
    summary = result.report.summary()
    console.print(f"[bold green]merged[/] {len(result.report.models)} checkpoints with {result.report.method} → {result.path}")
    console.print(
        f"  {summary['tensors_merged']} tensors merged, {summary['tensors_copied']} copied; "
        f"mean relative change {summary['mean_relative_change']:.4f}, "
        f"trimmed {summary['mean_trimmed_frac']:.1%}, dropped {summary['mean_dropped_frac']:.1%}, "
        f"sign conflicts {summary['mean_sign_conflict_frac']:.1%}"
    )
    if result.sanity:
        table = Table(title="Sanity check (validation split)")
        for col in ("checkpoint", "loss", "perplexity", "bits/byte"):
            table.add_column(col, justify="right" if col != "checkpoint" else "left")
        for name, row in result.sanity.items():
            table.add_row(name, f"{row['loss']:.4f}", f"{row['perplexity']:.2f}", f"{row['bpb']:.4f}")
        console.print(table)
        merged = result.sanity[str(result.path)]["loss"]
        best_input = min(v["loss"] for k, v in result.sanity.items() if k != str(result.path))
        if merged > best_input * 1.25:
            console.print(
                f"[yellow]warning:[/] the merged model's loss {merged:.3f} is well above the best "
                f"input's {best_input:.3f}; try a lower λ, another method, or fewer models"
            )
    console.print(f"report: {result.path / 'merge_report.json'}")
