"""`aeron-tui merge`: combine checkpoints (soup, greedy soup, task arithmetic, TIES, DARE, SLERP,
layer-wise, Fisher)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand

# Options that take a list: `--models A B C` is `--models A --models B --models C`.
LIST_OPTIONS = {"--models": "--models", "-m": "--models", "--weights": "--weights", "--alphas": "--alphas"}
NUMERIC_LISTS = {"--weights", "--alphas"}


def expand_list_options(args: list[str]) -> list[str]:
    """Rewrite ``--models A B`` (a list after one flag) as ``--models A --models B``.

    Values are collected up to the next token that starts with ``-`` (a negative number still
    counts as a value of ``--weights``/``--alphas``) or ``--``; the order is kept, so the
    first model stays the first (SLERP and layer-wise interpolate from it).
    """
    out: list[str] = []
    current: str | None = None  # the list option whose values are being collected
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out.extend(args[i:])
            break
        if current is not None and not _is_option(token, current):
            out += [current, token]
            i += 1
            continue
        current = None
        flag, sep, _ = token.partition("=")
        if flag in LIST_OPTIONS and flag.startswith("--"):
            current = LIST_OPTIONS[flag]
            out.append(token)
            if not sep and i + 1 < len(args):  # the first value belongs to the flag itself
                out.append(args[i + 1])
                i += 1
        elif token in LIST_OPTIONS:  # -m
            current = LIST_OPTIONS[token]
            out.append(token)
            if i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        else:
            out.append(token)
        i += 1
    return out


def _is_option(token: str, current: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    if current in NUMERIC_LISTS:
        try:
            float(token)
        except ValueError:
            return True
        return False
    return True


class ListOptionsCommand(TyperCommand):
    """A command whose list options also take several values after one flag."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_list_options(list(args)))


def register(app: typer.Typer) -> None:
    app.command("merge", cls=ListOptionsCommand,
                help="Merge checkpoints into a new checkpoint with a merge report.")(merge)


_METHODS_HELP = (
    "soup, greedy_soup, task_arithmetic, ties, dare_linear, dare_ties, slerp, layerwise or fisher."
)


def merge(
    models: list[Path] = typer.Option(
        ..., "--models", "-m",
        help="Checkpoints or run directories to merge, as a list (--models A B C) or repeated "
        "(--models A --models B). A run directory stands for its newest complete checkpoint, as "
        "in `generate`."),
    out: Path = typer.Option(..., "--out", "-o", help="New checkpoint directory (must not exist)."),
    method: str = typer.Option("soup", "--method", help=_METHODS_HELP),
    base: Path | None = typer.Option(
        None, "--base", help="Base checkpoint or run directory (task vectors are θ − θ_base)."),
    weights: list[float] | None = typer.Option(
        None, "--weights", help="One weight per model, as a list (--weights 0.7 0.3) or repeated."),
    density: float = typer.Option(0.6, "--density", help="TIES/DARE: fraction of each task vector kept."),
    lam: float = typer.Option(1.0, "--lambda", help="Scale of the merged task vector."),
    t: float = typer.Option(0.5, "--t", help="SLERP position between the two models."),
    alphas: list[float] | None = typer.Option(
        None, "--alphas", help="Layer-wise: α per layer index, as a list or repeated."),
    seed: int = typer.Option(42, "--seed", help="DARE drop masks."),
    data: Path | None = typer.Option(
        None, "--data", help="styles.jsonl for the sanity check and for computing Fishers "
        "(default: the sample corpus)."),
    fisher: str = typer.Option(
        "auto", "--fisher",
        help="Fisher merge: where each model's Fisher comes from — stored (the EWC Fisher of a "
        "`continue` run), data (computed on --samples samples of --data) or auto (stored when "
        "the checkpoint has one, else computed)."),
    sanity: bool = typer.Option(True, "--sanity/--no-sanity", help="Measure validation loss of inputs and result."),
    samples: int = typer.Option(
        128, "--samples", help="Validation samples in the sanity check; samples per computed Fisher."),
) -> None:
    """Streams tensor by tensor; refuses different configs or tokenizers before writing anything.

    Merging a checkpoint with itself gives it back unchanged with every method (task
    arithmetic/TIES/DARE: with itself as --base). Fisher merging weighs each model's entries by
    its Fisher divided by that model's mean Fisher; entries no model has Fisher information
    about (a module that never got a gradient) get the plain average.
    """
    from rich.console import Console
    from rich.table import Table

    from core.evolve.merge import (
        CLI_METHODS,
        FISHER_SOURCES,
        MergeError,
        MergeParams,
        greedy_soup_checkpoints,
        merge_checkpoints,
    )

    # Refusals are project errors: the CLI prints them as one red line and exits 1.
    if method not in CLI_METHODS:
        raise MergeError(f"--method {method!r} is not a merge method; choose one of {', '.join(CLI_METHODS)}")
    if fisher not in FISHER_SOURCES:
        raise MergeError(f"--fisher {fisher!r}; choose one of {', '.join(FISHER_SOURCES)}")
    if samples < 1:
        raise MergeError(f"--samples must be at least 1, got {samples}")
    console = Console(highlight=False, soft_wrap=True)
    models = [_checkpoint_of(m, "--models") for m in models]
    base = _checkpoint_of(base, "--base") if base is not None else None
    needs_data = sanity or method == "greedy_soup" or (method == "fisher" and fisher != "stored")
    if needs_data and data is None:
        from core.data.sample import ensure_sample_corpus

        data = ensure_sample_corpus().styles
    sanity_data = data if sanity or method == "greedy_soup" else None
    params = MergeParams(
        method=method if method != "greedy_soup" else "soup",
        weights=list(weights) if weights else None,
        density=density, lam=lam, t=t, seed=seed,
        alphas=list(alphas) if alphas else None,
    )
    if method == "greedy_soup":
        assert sanity_data is not None
        result = greedy_soup_checkpoints(models, out, data=sanity_data, samples=samples)
    else:
        result = merge_checkpoints(
            models, params, out, base=base, sanity_data=sanity_data, sanity_samples=samples,
            fisher_data=data, fisher_samples=samples, fisher_source=fisher,
            progress=lambda line: _note(line),
        )
    summary = result.report.summary()
    console.print(f"[bold green]merged[/] {len(result.report.models)} checkpoints with "
                  f"{method} → {result.path}")
    console.print(
        f"  {summary['tensors_merged']} tensors merged, {summary['tensors_copied']} copied; "
        f"mean relative change {summary['mean_relative_change']:.4f}, "
        f"trimmed {summary['mean_trimmed_frac']:.1%}, dropped {summary['mean_dropped_frac']:.1%}, "
        f"sign conflicts {summary['mean_sign_conflict_frac']:.1%}"
    )
    for row in result.report.params.get("fisher", []):
        where = ("its stored EWC Fisher" if row["source"] == "stored"
                 else f"a Fisher computed on {row['samples']} samples of {row['data']}")
        console.print(f"  Fisher of {row['checkpoint']}: {where}")
    if "tensors_plain_average" in summary:
        console.print(f"  {summary['tensors_plain_average']} tensors had no Fisher information in "
                      "any model and were averaged plainly")
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


def _checkpoint_of(path: Path, option: str) -> Path:
    """A checkpoint directory as given, or a run directory's newest complete checkpoint (as
    ``generate`` takes it), said on stderr."""
    from core.errors import CheckpointError
    from core.infer.inference import resolve_checkpoint

    try:
        found = resolve_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{option}: {exc}") from None
    if found != path.expanduser():
        _note(f"{option} {path}: a run directory; using its newest complete checkpoint {found.name}")
    return found


def _note(message: str) -> None:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(message, style="dim"))
