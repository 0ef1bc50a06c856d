"""Pictures of runs people can keep: `aeron-tui runs plot RUN [RUN ...] --out FILE.png|svg`.

Everything drawn comes from each run's ``events.jsonl`` (the one source of truth the console and
``runs show`` read): train loss (raw, faint, and an EMA), validation loss, bits per byte with the
unigram/bigram reference lines where the run has them, learning rate, tokens/s and the
Tree-of-Thought branch scores. Several runs are overlaid, one colour each (LONPT against simple,
say). matplotlib is the optional ``plot`` extra; it is imported here, never at CLI start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError

FORMATS = (".png", ".svg", ".pdf")


@dataclass
class RunSeries:
    """The series of one run, keyed by optimizer step (and by tokens seen, where known)."""

    name: str
    steps: list[int] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    loss: list[float | None] = field(default_factory=list)
    lr: list[float | None] = field(default_factory=list)
    tokens_per_s: list[float | None] = field(default_factory=list)
    branch_scores: list[list[float] | None] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_tokens: list[float] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_bpb: list[float | None] = field(default_factory=list)
    baselines: dict[str, float] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.steps and not self.eval_steps


def read_run_series(run_dir: Path) -> RunSeries:
    """Fold a run's events into plottable series. Tokens seen are summed from each step event's
    ``tokens_per_s`` × the time since the previous one (the interval that rate was measured over)."""
    from core.runs.events import ParseProblem, read_events

    path = run_dir / "events.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no events.jsonl — not a run directory")
    series = RunSeries(run_dir.name)
    seen = 0.0
    last_elapsed: float | None = None
    for event in read_events(path):
        if isinstance(event, ParseProblem):
            continue
        kind = event["type"]
        if kind == "run_started":
            last_elapsed = float(event.get("elapsed_s") or 0.0)
        elif kind == "step":
            elapsed = event.get("elapsed_s")
            rate = event.get("tokens_per_s")
            if isinstance(elapsed, (int, float)) and isinstance(rate, (int, float)):
                if last_elapsed is not None and elapsed > last_elapsed:
                    seen += rate * (elapsed - last_elapsed)
                last_elapsed = float(elapsed)
            series.steps.append(int(event["global_step"]))
            series.tokens.append(seen)
            series.loss.append(_finite(event.get("loss")))
            series.lr.append(_finite(event.get("lr")))
            series.tokens_per_s.append(_finite(rate))
            scores = event.get("branch_scores_mean")
            series.branch_scores.append(list(scores) if isinstance(scores, list) else None)
        elif kind == "eval":
            series.eval_steps.append(int(event["global_step"]))
            series.eval_tokens.append(seen)
            series.val_loss.append(_finite(event.get("loss")))
            series.val_bpb.append(_finite(event.get("bpb")))
            for key in ("baseline_unigram_bpb", "baseline_bigram_bpb"):
                if _finite(event.get(key)) is not None:
                    series.baselines[key.removeprefix("baseline_").removesuffix("_bpb")] = float(event[key])
    return series


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def ema(values: list[float | None], alpha: float | None = None) -> list[float | None]:
    """Exponential moving average; by default the newest point weighs 10 / number of points
    (clamped to 0.02–0.5), so a short run is smoothed as visibly as a long one."""
    if alpha is None:
        alpha = min(0.5, max(0.02, 10 / max(1, len(values))))
    out: list[float | None] = []
    avg: float | None = None
    for v in values:
        if v is not None:
            avg = v if avg is None else alpha * v + (1 - alpha) * avg
        out.append(avg if v is not None else None)
    return out


def _require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("runs plot needs matplotlib: pip install 'aeron-tui[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_runs(run_dirs: list[Path], out: Path, x_axis: str = "step") -> Path:
    """Draw one or several runs into ``out`` (.png, .svg or .pdf) and return its path."""
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {out}: the file name must end in {', '.join(FORMATS)}")
    if x_axis not in ("step", "tokens"):
        raise ConfigError(f"--x {x_axis!r}: choose step or tokens")
    runs = [read_run_series(Path(d)) for d in run_dirs]
    empty = [r.name for r in runs if r.empty]
    if len(empty) == len(runs):
        raise ConfigError(f"{', '.join(empty)}: no step or eval events to plot yet")
    plt = _require_matplotlib()
    panels = [("loss", "loss (nats/token)"), ("bpb", "validation bits per byte"),
              ("lr", "learning rate"), ("tps", "tokens/s"), ("branch", "ToT branch score")]
    if not any(any(v is not None for v in r.val_bpb) for r in runs):
        panels.remove(("bpb", "validation bits per byte"))
    if not any(any(b for b in r.branch_scores) for r in runs):
        panels.remove(("branch", "ToT branch score"))
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xlabel = "optimizer step" if x_axis == "step" else "tokens seen (encoder + decoder)"
    for ax, (_key, title) in zip(axes.flat, panels, strict=False):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for i, run in enumerate(runs):
        colour = colours[i % len(colours)]
        xs = run.steps if x_axis == "step" else run.tokens
        ex = run.eval_steps if x_axis == "step" else run.eval_tokens
        label = run.name
        for ax, (key, _) in zip(axes.flat, panels, strict=False):
            if key == "loss":
                ax.plot(xs, run.loss, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(xs, ema(run.loss), color=colour, linewidth=1.6, label=f"{label} train (EMA)")
                if run.eval_steps:
                    ax.plot(ex, run.val_loss, "o--", color=colour, markersize=4, label=f"{label} validation")
            elif key == "bpb":
                ax.plot(ex, run.val_bpb, "o-", color=colour, markersize=4, label=label)
                for j, (name, value) in enumerate(sorted(run.baselines.items())):
                    ax.axhline(value, color=colour, linestyle=(":", "-.")[j % 2], linewidth=1,
                               label=f"{label} {name} baseline {value:.2f}")
            elif key == "lr":
                ax.plot(xs, run.lr, color=colour, label=label)
            elif key == "tps":
                ax.plot(xs, run.tokens_per_s, color=colour, label=label)
            elif key == "branch":
                width = max((len(b) for b in run.branch_scores if b), default=0)
                for b in range(width):
                    ys = [s[b] if s and b < len(s) else None for s in run.branch_scores]
                    style = ("-", "--", ":", "-.")[b % 4]
                    ax.plot(xs, ys, style, color=colour, linewidth=1,
                            label=f"{label} branch {b}" if len(runs) == 1 or b == 0 else None)
    for ax, _ in zip(axes.flat, panels, strict=False):
        handles, _labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    names = ", ".join(r.name for r in runs)
    fig.suptitle(f"aeron-tui runs: {names}" if len(runs) > 1 else f"aeron-tui run {names}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    try:
        fig.savefig(tmp)
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"--out {out}: cannot write ({exc.strerror or exc})") from exc
    finally:
        plt.close(fig)
    return out
