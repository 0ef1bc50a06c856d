"""`aeron-tui ckpt inspect|diff`: look inside a checkpoint, and see what moved between two."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

BARS = "▁▂▃▄▅▆▇█"


def sparkline(counts: list[int]) -> str:
    """A histogram as one line of block characters (empty bins as spaces)."""
    top = max(counts, default=0)
    if top == 0:
        return ""
    return "".join(" " if c == 0 else BARS[min(len(BARS) - 1, (c * len(BARS) - 1) // top)]
                   for c in counts)


def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.3e}"


def register(app: typer.Typer) -> None:
    """Add ``ckpt inspect`` and ``ckpt diff``."""
    ckpt_app = typer.Typer(help="Look inside checkpoints: statistics per layer, and what moved "
                           "between two.", no_args_is_help=True)

    @ckpt_app.command("inspect")
    def inspect_cmd(
        checkpoint: Path = typer.Argument(..., help="A checkpoint directory, or a run directory "
                                          "(its newest complete checkpoint)."),
        as_json: bool = typer.Option(False, "--json", help="Everything as one JSON object."),
        init_check: bool | None = typer.Option(
            None, "--init-check/--no-init-check",
            help="Compare every tensor with the initialisation rebuilt from the run's seed "
            "(default: on up to 1 B parameters)."),
        tensors: bool = typer.Option(False, "--tensors", help="Also list every tensor."),
    ) -> None:
        """Config, tokenizer, lineage, manifest check; per component and per layer: parameters,
        dtype, norm, mean/std, min/max, zeros and a histogram; NaN/Inf in red; one verdict line."""
        import json

        from core.infer.inference import resolve_checkpoint
        from core.runs.analysis import inspect_checkpoint

        report = inspect_checkpoint(resolve_checkpoint(checkpoint), init_check=init_check)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), default=_json_default))
            return
        _render_inspect(report, tensors)

    @ckpt_app.command("diff")
    def diff_cmd(
        a: Path = typer.Argument(..., help="Checkpoint (or run directory) A, the reference."),
        b: Path = typer.Argument(..., help="Checkpoint (or run directory) B."),
        as_json: bool = typer.Option(False, "--json", help="Everything as one JSON object."),
        top: int = typer.Option(20, "--top", min=1, help="Layers to list (most moved first)."),
    ) -> None:
        """Per component and layer: relative change ‖B−A‖/‖A‖, cosine similarity and sign
        agreement, the layers that moved most first, and a one-line summary."""
        import json

        from core.infer.inference import resolve_checkpoint
        from core.runs.analysis import diff_checkpoints

        report = diff_checkpoints(resolve_checkpoint(a), resolve_checkpoint(b))
        if as_json:
            typer.echo(json.dumps(report.to_dict(), default=_json_default))
            return
        _render_diff(report, top)

    app.add_typer(ckpt_app, name="ckpt")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    raise TypeError(type(obj).__name__)


def _console() -> Any:
    """Rich console for the reports: never narrower than the tables when output is piped."""
    import sys

    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _group_table(title: str, groups: list[Any], init_checked: bool) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    cols = ["name", "params", "dtype", "norm", "mean ± std", "min … max", "zeros", "histogram"]
    if init_checked:
        cols.append("init")
    for col in cols:
        left = col in ("name", "dtype", "histogram", "init")
        table.add_column(col, justify="left" if left else "right",
                         no_wrap=True, overflow="ellipsis",
                         min_width=16 if col == "histogram" else None)
    for g in groups:
        bad = g.nan or g.inf
        row = [
            f"[red]{g.name}[/]" if bad else g.name,
            f"{g.params:,}", ",".join(g.dtypes),
            _num(g.norm), f"{_num(g.mean)} ± {_num(g.std)}", f"{_num(g.min)} … {_num(g.max)}",
            f"{100 * g.zero_frac:.1f} %",
            f"[red]NaN {g.nan} Inf {g.inf}[/]" if bad else sparkline(g.hist),
        ]
        if init_checked:
            untouched = g.untouched
            row.append("-" if untouched is None else ("[yellow]untouched[/]" if untouched else "trained"))
        table.add_row(*row)
    return table


def _render_inspect(report: Any, with_tensors: bool) -> None:
    console = _console()
    cfg = report.config
    console.print(f"[bold]{report.path}[/]" + (f"  step {report.global_step}"
                                               if report.global_step is not None else ""))
    if cfg:
        console.print(
            f"model: d_model {cfg.get('d_model')}, {cfg.get('num_encoder_layers')}+"
            f"{cfg.get('num_decoder_layers')} layers, {cfg.get('nhead')} heads "
            f"({cfg.get('num_kv_heads')} KV), vocabulary {cfg.get('vocab_size')}; "
            f"{report.params:,} values in model.safetensors")
        enabled = [k.removeprefix("enable_") for k, v in cfg.items() if k.startswith("enable_") and v]
        console.print(f"modules on: {', '.join(enabled) or 'none'}")
    console.print(f"tokenizer: {report.tokenizer_vocab if report.tokenizer_vocab else 'none found'}"
                  + ("" if not report.tokenizer_vocab or not cfg or report.tokenizer_vocab ==
                     cfg.get("vocab_size") else
                     f" [red](model has {cfg.get('vocab_size')} embedding rows)[/]"))
    if report.lineage:
        console.print("lineage: " + ", ".join(f"{p.get('relation')} from {p.get('id')}"
                                              for p in report.lineage))
    console.print("manifest: [green]every file matches its SHA-256[/]" if report.manifest_ok
                  else f"manifest: [red]{report.manifest_error}[/]")
    if report.aliases:
        console.print(f"tied tensors (stored once): {len(report.aliases)}")
    checked = report.init_check == "done"
    console.print(_group_table("components", report.components, checked))
    console.print(_group_table("layers", report.layers, checked))
    if with_tensors:
        from rich.table import Table

        table = Table(title="tensors", title_justify="left")
        for col in ("name", "shape", "dtype", "norm", "mean ± std", "min … max", "zeros",
                    "histogram"):
            table.add_column(col, no_wrap=True, overflow="ellipsis")
        for t in report.tensors:
            bad = t.nan or t.inf
            table.add_row(f"[red]{t.name}[/]" if bad else t.name, "×".join(map(str, t.shape)),
                          t.dtype, _num(t.norm), f"{_num(t.mean)} ± {_num(t.std)}",
                          f"{_num(t.min)} … {_num(t.max)}", f"{100 * t.zero_frac:.1f} %",
                          f"[red]NaN {t.nan} Inf {t.inf}[/]" if bad else sparkline(t.hist))
        console.print(table)
    if not checked:
        console.print(f"initialisation check: not done ({report.init_check})")
    colour = "green" if not report.findings else "red"
    console.print(f"[{colour}]verdict: {report.verdict}[/]", soft_wrap=True)


def _render_diff(report: Any, top: int) -> None:
    from rich.table import Table

    console = _console()
    console.print(f"[bold]A[/] {report.a}\n[bold]B[/] {report.b}")

    def table(title: str, rows: list[Any]) -> Table:
        t = Table(title=title, title_justify="left")
        for col in ("name", "params", "‖B−A‖/‖A‖", "cosine", "same sign"):
            t.add_column(col, justify="left" if col == "name" else "right", no_wrap=True,
                         overflow="ellipsis")
        for r in rows:
            t.add_row(r.name, f"{r.params:,}", f"{100 * r.rel_change:.3g} %", f"{r.cosine:.5f}",
                      f"{100 * r.sign_agreement:.1f} %")
        return t

    console.print(table("components (most moved first)", report.components))
    console.print(table(f"layers (top {min(top, len(report.layers))} of {len(report.layers)})",
                        report.layers[:top]))
    changed = [t for t in report.state if t.delta_sq > 0]
    if report.state:
        console.print(f"state buffers (memory bank, counters; they change by use, not learning): "
                      f"{len(changed)} of {len(report.state)} differ"
                      + (f", e.g. {', '.join(t.name for t in changed[:3])}" if changed else ""),
                      soft_wrap=True)
    for side, names in (("A", report.only_in_a), ("B", report.only_in_b)):
        if names:
            console.print(f"only in {side}: {len(names)} tensor(s), e.g. {', '.join(names[:3])}")
    console.print(f"[bold]{report.summary()}[/]", soft_wrap=True)
