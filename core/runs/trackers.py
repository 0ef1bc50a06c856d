"""Experiment trackers: TensorBoard, CSV and (offline) Weights & Biases, fed by the event stream.

A tracker is one more listener on the events a trainer emits — the same stream the console,
the headless display and ``watch`` read — so what TensorBoard shows is what the console shows.
``aeron-tui runs export RUN --to tensorboard|csv`` replays a finished run's ``events.jsonl``
through the same code. Every number comes from :func:`event_scalars`, one mapping for all.

Specs (``--log``, the run config's ``trackers``): ``tensorboard[:DIR]`` (default
``RUN_DIR/tb``), ``csv[:FILE]`` (default ``RUN_DIR/metrics.csv``), ``wandb[:DIR]`` (offline
mode, default ``RUN_DIR``; ``wandb sync`` uploads later if you want). ``tensorboard`` and
``wandb`` are optional packages; a missing one is one line saying how to install it.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from core.errors import ConfigError

TRACKERS = ("tensorboard", "csv", "wandb")
TENSORBOARD_HINT = ("--log tensorboard needs the tensorboard package: pip install "
                    "'aeron-tui[tensorboard]' (or pip install tensorboard)")
WANDB_HINT = "--log wandb needs the wandb package: pip install wandb (it runs offline)"
CSV_FILE = "metrics.csv"
TB_DIR = "tb"


def parse_tracker_spec(spec: str) -> tuple[str, str | None]:
    """``"tensorboard:runs/tb"`` → ``("tensorboard", "runs/tb")``; ConfigError for an unknown name."""
    name, _, where = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in TRACKERS:
        raise ConfigError(f"--log {spec!r}: unknown tracker {name!r}; choose "
                          f"{', '.join(TRACKERS)} (optionally NAME:PATH)")
    return name, (where.strip() or None)


def check_available(specs: Iterable[str]) -> None:
    """Parse every spec and make sure its package is installed (before any training starts)."""
    import importlib.util

    for spec in specs:
        name, _ = parse_tracker_spec(spec)
        if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(TENSORBOARD_HINT)
        if name == "wandb" and importlib.util.find_spec("wandb") is None:
            raise ConfigError(WANDB_HINT)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def event_scalars(event: dict[str, Any]) -> list[tuple[str, float]]:
    """The scalars of one event as ``(tag, value)``: what every tracker records.

    ``step`` events: loss, lr, grad norm, tokens/s, memory, the ToT branch scores and keep
    fractions, scratchpad use, the model's enhancement statistics and the trainer's metrics
    (reward, KL, accuracy... for RLHF). ``eval`` events: validation loss, perplexity, bpb and
    baselines, the trainer's eval metrics; LONPT's per-domain evals also under ``val_domain/``.
    """
    kind = event.get("type")
    out: list[tuple[str, float]] = []

    def add(tag: str, value: Any) -> None:
        v = _num(value)
        if v is not None:
            out.append((tag, v))

    if kind == "step":
        for name, tag in (("loss", "train/loss"), ("lr", "train/lr"),
                          ("lr_scale", "train/lr_scale"), ("grad_norm", "train/grad_norm"),
                          ("tokens_per_s", "perf/tokens_per_s"),
                          ("samples_per_s", "perf/samples_per_s"),
                          ("micro_batch", "train/micro_batch"), ("grad_accum", "train/grad_accum"),
                          ("nonfinite_skipped", "train/nonfinite_skipped"),
                          ("complexity_mean", "reasoning/complexity_mean"),
                          ("reasoning_skipped_frac", "reasoning/skipped_frac"),
                          ("memory_slots_used", "reasoning/memory_slots_used"),
                          ("epistemic_mean", "uncertainty/epistemic_mean")):
            add(tag, event.get(name))
        for key, value in sorted((event.get("memory") or {}).items()):
            add(f"memory/{key}", value)
        for i, value in enumerate(event.get("branch_scores_mean") or []):
            add(f"reasoning/branch_score_{i}", value)
        for i, value in enumerate(event.get("branch_keep_frac") or []):
            add(f"reasoning/branch_keep_{i}", value)
        pad = event.get("scratchpad") or {}
        used, total = _num(pad.get("used_slots")), _num(pad.get("total_slots"))
        if used is not None:
            add("reasoning/scratchpad_used_slots", used)
            if total:
                add("reasoning/scratchpad_use", used / total)
        for key, value in sorted((event.get("metrics") or {}).items()):
            add(f"train/{key}", value)
    elif kind == "eval":
        for name in ("loss", "perplexity", "bpb", "baseline_bigram_bpb", "baseline_unigram_bpb"):
            add(f"val/{name}", event.get(name))
        for key, value in sorted((event.get("metrics") or {}).items()):
            add(f"val/{key}", value)
        if event.get("domain"):
            add(f"val_domain/{event['domain']}/loss", event.get("loss"))
    return out


class TensorBoardTracker:
    """Scalars (and sample/warning text) through ``torch.utils.tensorboard.SummaryWriter``.

    Opened at the first event; a resumed run (``run_started`` with a step > 0) opens with
    ``purge_step`` so TensorBoard drops the old points past the checkpoint it resumed from.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        check_available(["tensorboard"])
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def _open(self, purge_step: int | None) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step or None)
        return self._writer

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "run_started":
            step = int(event.get("global_step") or event.get("step") or 0)
            if self._writer is not None and step > 0:  # a resume inside one replayed stream
                self._writer.close()
                self._writer = None
            self._open(step)
            return
        step = event.get("global_step")
        walltime = _num(event.get("time"))
        scalars = event_scalars(event)
        if scalars:
            writer = self._open(None)
            for tag, value in scalars:
                writer.add_scalar(tag, value, global_step=step, walltime=walltime)
        elif kind == "sample" and event.get("samples"):
            text = "\n\n".join(f"**{s.get('prompt', '')}** → {s.get('text', '')}"
                               for s in event["samples"] if isinstance(s, dict))
            self._open(None).add_text("samples", text, global_step=step, walltime=walltime)
        elif kind in ("warning", "error", "info"):
            self._open(None).add_text(f"events/{kind}", str(event.get("message", "")),
                                      global_step=step, walltime=walltime)
        if kind in ("eval", "checkpoint", "run_finished") and self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class CsvTracker:
    """One row per step and per evaluation: ``type, global_step, time, elapsed_s`` and a column
    per scalar tag. A tag first seen later rewrites the file once with the wider header (a
    temp file renamed into place); a resumed run drops the rows past its checkpoint's step."""

    BASE = ("type", "global_step", "time", "elapsed_s")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.columns: list[str] = []
        self._fh: Any = None
        self._writer: Any = None

    def _load(self, keep_until: int | None) -> None:
        rows: list[dict[str, str]] = []
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.columns = [c for c in (reader.fieldnames or []) if c]
                rows = list(reader)
            if keep_until is not None:
                rows = [r for r in rows if _int(r.get("global_step")) <= keep_until]
        if not self.columns:
            self.columns = list(self.BASE)
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        from core.fileio import write_bytes_atomically

        if self._fh is not None:
            self._fh.close()
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(self.path, buf.getvalue().encode("utf-8"))
        self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.DictWriter(self._fh, self.columns, lineterminator="\n")

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "run_started":
            step = int(event.get("global_step") or event.get("step") or 0)
            self._load(step if step > 0 else None)
            return
        if kind not in ("step", "eval"):
            return
        scalars = event_scalars(event)
        if not scalars:
            return
        if self._writer is None:
            self._load(None)
        new = [tag for tag, _ in scalars if tag not in self.columns]
        if new:
            self._fh.close()
            with open(self.path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            self.columns += new
            self._rewrite(rows)
        row = {"type": kind, "global_step": event.get("global_step"),
               "time": event.get("time"), "elapsed_s": event.get("elapsed_s")}
        row.update({tag: repr(value) for tag, value in scalars})
        self._writer.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._writer = None


def _int(text: Any) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return -1


class WandbTracker:
    """Weights & Biases in offline mode (never online unless you ``wandb sync`` the run)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        check_available(["wandb"])
        self.directory = Path(directory)
        self._run: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "run_started" and self._run is None:
            import wandb

            self.directory.mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                mode="offline", dir=str(self.directory), project="aeron-tui",
                name=str(event.get("run_id") or "run"), config=event.get("config") or {},
                resume="allow", id=str(event.get("run_id") or "run"),
                # Quiet and hands off stdout: with --events-stdout, stdout is the event stream.
                settings=wandb.Settings(silent=True, console="off"),
            )
            return
        scalars = event_scalars(event)
        if scalars and self._run is not None:
            self._run.log(dict(scalars), step=int(event.get("global_step") or 0))

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def make_tracker(spec: str, run_dir: str | os.PathLike[str]) -> Any:
    """The tracker a spec names, writing under ``run_dir`` unless the spec gives a path."""
    name, where = parse_tracker_spec(spec)
    base = Path(run_dir)
    if name == "tensorboard":
        return TensorBoardTracker(Path(where).expanduser() if where else base / TB_DIR)
    if name == "csv":
        return CsvTracker(Path(where).expanduser() if where else base / CSV_FILE)
    return WandbTracker(Path(where).expanduser() if where else base)


def export_events(events_path: str | os.PathLike[str], tracker: Any) -> int:
    """Replay a run's ``events.jsonl`` through ``tracker`` (then close it); returns the events
    fed. Lines that do not parse are skipped (they are not events)."""
    from core.runs.events import ParseProblem, read_events

    n = 0
    try:
        for event in read_events(events_path):
            if isinstance(event, ParseProblem):
                continue
            tracker(event)
            n += 1
    finally:
        tracker.close()
    return n
