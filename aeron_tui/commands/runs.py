"""`aeron-tui runs list|show|lineage|export`: the runs on this machine, their status and
scalars, from their events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    """Add ``runs list`` and ``runs show``."""
    runs_app = typer.Typer(help="List training runs and show one run's state.",
                           no_args_is_help=True)

    @runs_app.command("list")
    def list_cmd(
        root: Path | None = typer.Option(
            None, "--root", help="Directory holding run directories (default: "
            "$AERON_TUI_HOME/runs)."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per run."),
    ) -> None:
        """Runs with trainer, profile, status, steps, best validation loss and start time."""
        import json

        from rich.console import Console
        from rich.table import Table

        from core.runs.registry import default_runs_root, list_runs

        base = root or default_runs_root()
        runs = list_runs(base)
        if as_json:
            for run in runs:
                typer.echo(json.dumps(run.to_dict()))
            return
        console = Console()
        if not runs:
            console.print(f"no runs under {base}", highlight=False, markup=False)
            return
        columns = ("run", "trainer", "profile", "status", "steps", "best val", "started")
        rows = [
            (run.path.name, run.trainer, run.profile, run.status_label,
             f"{run.global_step}/{run.total_steps}",
             f"{run.best_val_loss:.4f}" if run.best_val_loss is not None else "-",
             _when(run.started_at))
            for run in runs
        ]
        if not console.is_terminal:
            # Piped or logged: full names in plain aligned columns (a table squeezed to 80
            # columns cut names until two runs looked identical).
            typer.echo(f"runs in {base}")
            for line in _plain_columns([columns, *rows], right=(4, 5)):
                typer.echo(line)
            return
        table = Table(title=f"runs in {base}")
        for col in columns:
            table.add_column(col, justify="right" if col in ("steps", "best val") else "left")
        table.columns[0].overflow = "fold"  # wrap a long name on a narrow terminal, never cut it
        table.columns[0].no_wrap = False
        for row in rows:
            table.add_row(row[0], row[1], row[2], _status_markup(row[3]), *row[4:])
        console.print(table)

    @runs_app.command("show")
    def show_cmd(
        run_dir: Path = typer.Argument(
            ..., help="A run directory, or a run name as `runs list` prints it."),
        root: Path | None = typer.Option(
            None, "--root", help="Where run names are looked up (default: $AERON_TUI_HOME/runs)."),
    ) -> None:
        """Status, progress, losses, checkpoints and the last error of one run."""
        from rich.console import Console

        from core.runs.checkpoint import list_checkpoints
        from core.runs.registry import summarize_run

        run_dir = resolve_run(run_dir, root)
        run = summarize_run(run_dir)
        s = run.state
        console = Console()
        console.print(f"[bold]{run.path}[/]")
        rows = [
            ("trainer", run.trainer), ("profile", run.profile), ("status", run.status_label),
            ("step", f"{run.global_step}/{run.total_steps}"),
            ("device", f"{s.device} {s.precision}".strip() or "-"),
            ("parameters", f"{s.model_params:,}" if s.model_params else "-"),
            ("data", s.data or "-"),
            ("last loss", f"{run.last_loss:.4f}" if run.last_loss is not None else "-"),
            ("best val loss", f"{run.best_val_loss:.4f}" if run.best_val_loss is not None else "-"),
            ("best val bpb", _bpb_row(s)),
            ("started", _when(run.started_at)),
            ("elapsed", f"{s.elapsed_at(time.time()):.0f}s"),
        ]
        for key, value in rows:
            console.print(f"  {key:>14}  {value}", highlight=False, markup=False)
        ckpts = list_checkpoints(run.path)
        if ckpts:
            console.print("  checkpoints:", highlight=False)
            for c in ckpts:
                console.print(f"    {c.name}", highlight=False, markup=False)
        if run.error:
            from rich.text import Text

            console.print(Text.assemble(("  last error:", "red"), f" {run.error}"),
                          highlight=False)
        unreadable = _unreadable_event_lines(run.path)
        if unreadable:
            first = unreadable[0]
            console.print(
                f"  unreadable lines in events.jsonl: {len(unreadable)} (first: line "
                f"{first.line_no}, {first.message}); the numbers above leave them out",
                highlight=False, markup=False)

    @runs_app.command("plot")
    def plot_cmd(
        runs: list[Path] = typer.Argument(..., help="Run directories (or run names under "
                                          "$AERON_TUI_HOME/runs); several are overlaid."),
        out: Path = typer.Option(..., "--out", "-o", help="Picture to write: .png, .svg or .pdf."),
        x_axis: str = typer.Option("step", "--x", help="x axis: step or tokens."),
    ) -> None:
        """Train/validation loss (and bits per byte with its baselines), learning rate, tokens/s
        and branch scores over steps or tokens, for one run or several overlaid. Needs
        matplotlib (pip install 'aeron-tui\\[plot]')."""
        from aeron_tui.plots import plot_runs

        written = plot_runs([resolve_run(r) for r in runs], out, x_axis)
        typer.echo(f"wrote {written}")

    @runs_app.command("control")
    def control_cmd(
        run_dir: Path = typer.Argument(
            ..., help="A live run's directory, or its name as `runs list` prints it."),
        command: str = typer.Argument(..., help="pause, resume, checkpoint or stop."),
        wait: float = typer.Option(
            0.0, "--wait", min=0.0, metavar="SECONDS",
            help="Wait up to SECONDS for the trainer to act (it does between steps)."),
        root: Path | None = typer.Option(
            None, "--root", help="Where run names are looked up (default: $AERON_TUI_HOME/runs)."),
    ) -> None:
        """Pause, resume, checkpoint or stop a live run, whoever started it (your runs only).

        The command goes into RUN_DIR/control.jsonl, which the trainer follows; it acts between
        optimizer steps and records what it did in events.jsonl.
        """
        from core.train.control import send_control, wait_for_effect

        run_dir = resolve_run(run_dir, root)

        sent_at = time.time()
        pid = send_control(run_dir, command)
        cmd = command.strip().lower()
        if wait <= 0:
            typer.echo(f"{cmd} sent to the trainer of {run_dir} (pid {pid}); "
                       "it acts after the current step")
            return
        event = wait_for_effect(run_dir, cmd, sent_at, wait)
        if event is None:
            from aeron_tui.commands.common import fail

            fail(f"{run_dir}: the trainer (pid {pid}) did not {cmd} within {wait:g}s "
                 "(a long step or evaluation?); the command stays queued")
        typer.echo(f"{cmd}: done at step {event.get('global_step')}")

    @runs_app.command("lineage")
    def lineage_cmd(
        checkpoint: Path = typer.Argument(..., help="A checkpoint directory."),
        search: list[Path] = typer.Option(
            [], "--search", help="Extra directories to look for parent checkpoints in."),
        as_json: bool = typer.Option(False, "--json", help="Print the tree as JSON."),
    ) -> None:
        """The checkpoint's ancestry: resumed, continued, merged and upgraded from."""
        import json

        from rich.console import Console
        from rich.tree import Tree

        from core.runs.lineage import default_roots, lineage_tree

        roots = [*default_roots(checkpoint.resolve()), *search]
        root = lineage_tree(checkpoint, roots)
        if as_json:
            typer.echo(json.dumps(root.to_dict(), indent=2))
            return

        def label(n: Any) -> str:
            parts = [f"[bold]{n.name or n.version[:8]}[/]"]
            if n.relation:
                parts.insert(0, f"[cyan]{n.relation} from[/]")
            if n.global_step is not None:
                parts.append(f"step {n.global_step}")
            if n.val_loss is not None:
                parts.append(f"val {n.val_loss:.4f}")
            if n.detail:
                parts.append(f"({n.detail})")
            parts.append(f"[dim]{n.path or n.version}[/]")
            return " ".join(parts)

        def grow(tree: Any, n: Any) -> None:
            for p in n.parents:
                grow(tree.add(label(p)), p)

        tree = Tree(label(root))
        grow(tree, root)
        Console().print(tree, highlight=False)

    @runs_app.command("export")
    def export_cmd(
        run_dir: Path = typer.Argument(..., help="A run directory (live or finished)."),
        to: str = typer.Option(..., "--to", help="tensorboard or csv (wandb: offline, when "
                               "installed)."),
        out: Path | None = typer.Option(
            None, "--out", help="Where to write (default: RUN_DIR/tb, RUN_DIR/metrics.csv, "
            "RUN_DIR for wandb)."),
    ) -> None:
        """Write a run's scalars to TensorBoard or CSV from its events.jsonl — the same numbers
        `--log` writes live (loss, val loss, bpb, lr, grad norm, tokens/s, memory, branch
        scores, scratchpad use, RLHF reward/KL...)."""
        from rich.console import Console

        from core.errors import ConfigError
        from core.runs.registry import EVENTS_FILE
        from core.runs.trackers import (
            CSV_FILE,
            TB_DIR,
            TRACKERS,
            check_available,
            export_events,
            make_tracker,
        )

        if to not in TRACKERS:
            raise ConfigError(f"--to {to!r}: choose one of {', '.join(TRACKERS)}")
        events = run_dir / EVENTS_FILE
        if not events.is_file():
            raise ConfigError(f"{run_dir}: no {EVENTS_FILE} here; give a run directory")
        check_available([to])
        default = {"tensorboard": run_dir / TB_DIR, "csv": run_dir / CSV_FILE,
                   "wandb": run_dir}[to]
        target = out or default
        if to == "tensorboard" and target.is_dir() and any(target.glob("events.out.tfevents*")):
            raise ConfigError(f"{target}: already holds TensorBoard event files (logged live "
                              "with --log, or exported before); give --out DIR")
        if to == "csv" and target.exists():
            raise ConfigError(f"{target}: already exists; give --out FILE")
        n = export_events(events, make_tracker(f"{to}:{target}", run_dir))
        Console().print(f"exported {n:,} events of {run_dir} to {target}", highlight=False,
                        markup=False, soft_wrap=True)

    app.add_typer(runs_app, name="runs")


def _bpb_row(state: Any) -> str:
    """``1.7120 (bigram 1.7631, unigram 3.2878)``: bits per byte beside the reference models."""
    if state.best_val_bpb is None:
        return "-"
    refs = [f"{name} {value:.4f}" for name, value in
            (("bigram", state.baseline_bigram_bpb), ("unigram", state.baseline_unigram_bpb))
            if value is not None]
    return f"{state.best_val_bpb:.4f}" + (f" ({', '.join(refs)})" if refs else "")


def resolve_run(run: Path, root: Path | None = None) -> Path:
    """A run directory given as a path, or as a name under the runs root (``runs list`` prints
    names); ConfigError saying where it looked otherwise."""
    from core.errors import ConfigError
    from core.runs.registry import default_runs_root, is_run_dir

    if is_run_dir(run):
        return run
    base = root or default_runs_root()
    if len(run.parts) == 1 and is_run_dir(base / run):
        return base / run
    raise ConfigError(
        f"{run}: not a run directory (no run.toml or events.jsonl) and no run of that name in "
        f"{base}; `aeron-tui runs list` shows the runs")


def _unreadable_event_lines(run_dir: Path) -> list[Any]:
    """The lines of ``events.jsonl`` that are not events (a partial last line of a live run
    excepted): ``runs show`` counts them instead of folding over them silently."""
    from core.runs.events import ParseProblem, read_events
    from core.runs.registry import EVENTS_FILE, trainer_alive

    path = run_dir / EVENTS_FILE
    if not path.is_file():
        return []
    problems = [e for e in read_events(path) if isinstance(e, ParseProblem)]
    if problems and problems[-1].message.startswith("incomplete") and trainer_alive(run_dir):
        problems.pop()
    return problems


def _plain_columns(rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]


def _status_markup(status: str) -> str:
    color = {"running": "cyan", "paused": "yellow", "finished": "green", "stopped": "yellow",
             "failed": "red", "crashed": "red"}.get(status.split(" ")[0], "white")
    return f"[{color}]{status}[/]"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"
