"""The event schema every trainer emits: the one source of truth for every number shown.

Events are flat JSON objects, one per line, in ``RUN_DIR/events.jsonl`` (and on stdout with
``--events-stdout``). Every event carries ``v`` (schema version), ``type``, ``time`` (Unix
seconds) and ``seq`` (0, 1, 2, ... within one process). The console, the headless progress
display and ``aeron-tui watch`` are renderers of the same stream: they fold it into a
:class:`RunState` and draw that.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from core.errors import EventSchemaError

SCHEMA_VERSION = 1

# Required fields (name -> accepted types) per event type; other fields are optional.
_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
REQUIRED: dict[str, dict[str, tuple[type, ...]]] = {
    "run_started": {"run_id": (str,), "trainer": (str,), "total_steps": (int,)},
    # A non-finite loss is written as null (JSON has no NaN): the step still happened.
    "step": {"global_step": (int,), "loss": _OPT_NUM, "lr": _NUM},
    "eval": {"global_step": (int,), "loss": _OPT_NUM},
    "checkpoint": {"global_step": (int,), "path": (str,)},
    "phase_change": {"global_step": (int,), "phase": (str,)},
    "domain_change": {"global_step": (int,), "domain": (str,)},
    "batch_change": {"global_step": (int,), "micro_batch": (int,), "grad_accum": (int,)},
    "status": {"status": (str,)},
    # Informational lines ("resumed from ...") that are not warnings.
    "info": {"message": (str,)},
    "warning": {"message": (str,)},
    "error": {"message": (str,)},
    "run_finished": {"status": (str,), "global_step": (int,)},
    # The planned number of optimizer steps changed after run_started (LONPT's ACT, early
    # stopping): every renderer uses the newest total for %, ETA and the progress bar.
    "total_changed": {"global_step": (int,), "total_steps": (int,)},
    # What the trainer is doing outside training steps ("loading data", "building tokenizer",
    # "compiling", "training", "evaluating", "saving checkpoint"); optional done/of for progress.
    "activity": {"activity": (str,)},
    # Emitted at least every 2 s while the trainer is alive, so silence means a dead trainer.
    "heartbeat": {"global_step": (int,)},
    # Greedy continuations of fixed validation prompts at an evaluation (list of
    # {"prompt": str, "text": str} objects in "samples").
    "sample": {"global_step": (int,), "samples": (list,)},
    # The console went away (SIGHUP, "leave running") and the trainer goes on unattended.
    "detached": {"reason": (str,)},
}
EVENT_TYPES = tuple(REQUIRED)

# Known optional fields with their types; checked when present and not None.
OPTIONAL: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "lr_scale": _NUM,
    "phase": (str,),
    "domain": (str,),
    "cycle": (int,),
    "grad_norm": _NUM,
    "tokens_per_s": _NUM,
    "samples_per_s": _NUM,
    "micro_batch": (int,),
    "grad_accum": (int,),
    "memory": (dict,),
    "branch_scores_mean": (list,),
    "branch_keep_frac": (list,),
    "complexity_mean": _NUM,
    "reasoning_skipped_frac": _NUM,
    "scratchpad": (dict,),
    "memory_slots_used": (int,),
    "epistemic_mean": _NUM,
    "nonfinite_skipped": (int,),
    "metrics": (dict,),
    "perplexity": _NUM,
    "val_loss": _OPT_NUM,
    "best": (bool,),
    "size_bytes": (int,),
    "name": (str,),
    "elapsed_s": _NUM,
    "profile": (str,),
    "preset": (str,),
    "config": (dict,),
    "model_params": (int,),
    "device": (str,),
    "precision": (str,),
    "data": (str,),
    "code": (str,),
    "traceback": (str,),
    "reason": (str,),
    # LONPT curriculum context (domain_change / eval / run_finished; see lonpt/log.py).
    "cycles": (int,),
    "cycle_start": (bool,),
    "tokens": (int,),
    "epoch": (int,),
    "epochs": (int,),
    "best_loss": _OPT_NUM,
    "checkpoint_dir": (str,),
    # total_changed / activity / heartbeat
    "total_steps": (int,),
    "activity": (str,),
    "done": (int,),
    "of": (int,),
    # eval: bits per byte of the validation targets and the reference baselines (first eval)
    "bpb": _OPT_NUM,
    "baseline_bigram_bpb": _NUM,
    "baseline_unigram_bpb": _NUM,
    "pid": (int,),
    # eval / checkpoint: how long it took (the ETA times the evaluations and checkpoints to come)
    "duration_s": _NUM,
    # run_started / total_changed: the plan from this step on — evaluations still to come and
    # scheduled (periodic + final) checkpoints still to come; the validation batch count
    "evals_left": (int,),
    "checkpoints_left": (int,),
    "eval_batches": (int,),
    # eval: a new best of its own domain (LONPT), as opposed to ``best`` = the run's best
    "best_of_domain": (bool,),
}

RUN_STATUSES = ("starting", "running", "paused", "stopping", "stopped", "finished", "failed")


def make_event(type: str, **fields: Any) -> dict[str, Any]:
    """Build and validate an event (``time`` defaults to now)."""
    event: dict[str, Any] = {"v": SCHEMA_VERSION, "type": type, "time": time.time()}
    event.update(fields)
    return validate_event(event)


def validate_event(event: Any) -> dict[str, Any]:
    """Check an event against the schema and return it; raise EventSchemaError naming the field."""
    if not isinstance(event, dict):
        raise EventSchemaError(f"an event must be a JSON object, got {type(event).__name__}")
    version = event.get("v")
    if not isinstance(version, int):
        raise EventSchemaError("field 'v' (schema version) is missing or not an integer")
    if version > SCHEMA_VERSION:
        raise EventSchemaError(
            f"event schema version {version} is newer than this aeron-tui understands "
            f"({SCHEMA_VERSION}); upgrade aeron-tui to read this run"
        )
    kind = event.get("type")
    if kind not in REQUIRED:
        raise EventSchemaError(f"field 'type' is {kind!r}; expected one of {', '.join(EVENT_TYPES)}")
    if not isinstance(event.get("time"), _NUM):
        raise EventSchemaError(f"{kind} event: field 'time' is missing or not a number")
    for name, types in REQUIRED[kind].items():
        if name not in event:
            raise EventSchemaError(f"{kind} event: required field {name!r} is missing")
        _check_type(kind, name, event[name], types)
    for name, types in OPTIONAL.items():
        if name in event and event[name] is not None and name not in REQUIRED[kind]:
            _check_type(kind, name, event[name], types)
    if kind in ("status", "run_finished") and event["status"] not in RUN_STATUSES:
        raise EventSchemaError(
            f"{kind} event: status {event['status']!r} is not one of {', '.join(RUN_STATUSES)}"
        )
    return event


def _check_type(kind: str, name: str, value: Any, types: tuple[type, ...]) -> None:
    # bool is an int subclass; a boolean where a number is expected is a schema error.
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        expected = " or ".join(t.__name__ for t in types)
        raise EventSchemaError(
            f"{kind} event: field {name!r} should be {expected}, got {type(value).__name__}"
        )


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # tensors and numpy values
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} in an event")


def _finite(obj: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite floats become None (and the loss skip is counted)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def format_loss(loss: float | None, digits: int = 4) -> str:
    """A loss for display; a non-finite one (``None`` once written as JSON, or NaN) says so."""
    if loss is None or not math.isfinite(loss):
        return "not finite"
    return f"{loss:.{digits}f}"


def encode_event(event: dict[str, Any]) -> str:
    """One JSON line (no trailing newline), strict JSON."""
    return json.dumps(_finite(event), default=_json_default, allow_nan=False, separators=(",", ":"))


class EventWriter:
    """Appends events to ``events.jsonl`` (flushed per event) and optionally to stdout.

    Only rank 0 of a distributed run should own a writer; pass ``enabled=False`` elsewhere.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        stdout: bool = False,
        enabled: bool = True,
        stream: IO[str] | None = None,
        listeners: Iterable[Callable[[dict[str, Any]], None]] = (),
    ) -> None:
        self.path = Path(path) if path is not None else None
        # In-process renderers (the headless progress display) subscribe here.
        self.listeners: list[Callable[[dict[str, Any]], None]] = list(listeners)
        self.enabled = enabled
        self._seq = 0
        self._stream = (stream or sys.stdout) if stdout else None
        self._file: IO[str] | None = None
        self._lock = threading.RLock()
        if enabled and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._seq = _count_lines(self.path)

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        # One writer at a time (the training loop and the heartbeat thread): a line is never
        # torn, ``seq`` follows the file order and listeners see events in that order.
        with self._lock:
            event = make_event(type, seq=self._seq, **fields)
            self._seq += 1
            if self.enabled:
                line = encode_event(event) + "\n"
                if self._file is not None:
                    self._file.write(line)
                    self._file.flush()
                if self._stream is not None:
                    try:
                        self._stream.write(line)
                        self._stream.flush()
                    except (OSError, ValueError):
                        # Whoever read our stdout went away (a broken pipe, or EIO from a
                        # closed terminal). events.jsonl already has the line; go on writing
                        # to the file only.
                        self._stream = None
                for listener in self.listeners:
                    listener(event)
            return event

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


@dataclass
class ParseProblem:
    """A line of an event stream that could not be used, and why (shown, never fatal)."""

    line_no: int
    message: str
    text: str = ""


def parse_event_line(line: str, line_no: int = 0) -> dict[str, Any] | ParseProblem:
    line = line.strip()
    if not line:
        return ParseProblem(line_no, "empty line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return ParseProblem(line_no, f"not JSON ({exc.msg})", line[:200])
    try:
        return validate_event(obj)
    except EventSchemaError as exc:
        return ParseProblem(line_no, str(exc), line[:200])


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any] | ParseProblem]:
    """Read a whole events file, yielding events and problems (a partial last line is a problem)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if not line.endswith("\n"):
                # A writer may be in the middle of this line; report it as incomplete.
                yield ParseProblem(i, "incomplete last line (run still writing or truncated)")
                return
            yield parse_event_line(line, i)


class EventTail:
    """Follows a growing ``events.jsonl``: ``poll()`` returns what was appended since last time.

    Keeps a partial last line until its newline arrives, so a live writer is never misread.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._offset = 0
        self._buffer = b""
        self._line_no = 0

    def poll(self) -> list[dict[str, Any] | ParseProblem]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self._offset += len(chunk)
        data = self._buffer + chunk
        *lines, self._buffer = data.split(b"\n")
        out: list[dict[str, Any] | ParseProblem] = []
        for raw in lines:
            self._line_no += 1
            if raw.strip():
                out.append(parse_event_line(raw.decode("utf-8", errors="replace"), self._line_no))
        return out


# Event types whose ``global_step`` is where the trainer is now (warnings may name the step being
# taken, ``global_step + 1``, so they do not move the step).
_STEP_SOURCES = frozenset({"step", "heartbeat", "status", "checkpoint", "eval", "run_finished",
                           "total_changed", "run_started"})
# Checkpoints the plan counts (``checkpoints_left``); the others follow a new best or a request.
_PLANNED_CHECKPOINTS = frozenset({"scheduled", "final"})
# While nothing is known about a run's best-checkpoint rate, half its evaluations are assumed to
# save one.
_DEFAULT_BEST_RATE = 0.5


@dataclass
class RunState:
    """Everything a renderer shows about a run, folded from its events (nothing else).

    Time-dependent values take the renderer's clock: :meth:`elapsed_at` (never decreases, ticks
    without events) and :meth:`eta_at` (steps, evaluations and checkpoints still to come).
    """

    run_id: str = ""
    trainer: str = ""
    profile: str = ""
    preset: str = ""
    data: str = ""
    device: str = ""
    precision: str = ""
    model_params: int = 0
    total_steps: int = 0
    # Why the total last changed (``total_changed.reason``), None while it is the announced one.
    total_reason: str | None = None
    status: str = "starting"
    global_step: int = 0
    started_at: float | None = None
    last_time: float | None = None
    elapsed_s: float = 0.0
    loss: float | None = None
    lr: float | None = None
    lr_scale: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    phase: str | None = None
    domain: str | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    branch_scores: list[float] | None = None
    branch_keep: list[float] | None = None
    branch_history: list[list[float]] = field(default_factory=list)
    branch_scores_step: int | None = None  # the step event the branch scores came from
    # The reasoning engine's complexity gate over the latest step event's interval: the share of
    # samples it ran on (1 − reasoning_skipped_frac) and the mean complexity, and that event's step.
    reasoning_ran: float | None = None
    complexity_mean: float | None = None
    reasoning_step: int | None = None
    scratchpad: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    # The run's best validation loss over every evaluation, and the step it was reached at.
    best_val_loss: float | None = None
    best_val_step: int | None = None
    # Per-domain bests (LONPT validates each domain on its own split): never mixed with the above.
    domain_best: dict[str, float] = field(default_factory=dict)
    # Bits per byte of the validation evals, and the n-gram reference baselines (first eval).
    val_bpbs: list[tuple[int, float]] = field(default_factory=list)
    best_val_bpb: float | None = None
    baseline_bigram_bpb: float | None = None
    baseline_unigram_bpb: float | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    problems: list[ParseProblem] = field(default_factory=list)
    last_error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    events_seen: int = 0
    # What the trainer is doing ("loading data", "training", "evaluating", ...), its progress
    # (done of ``of``) and since when (event time).
    activity: str | None = None
    activity_done: int | None = None
    activity_of: int | None = None
    activity_since: float | None = None
    # Time of the newest event of any kind (heartbeats included) and of the newest heartbeat.
    last_event_time: float | None = None
    last_heartbeat_time: float | None = None
    # The newest validation samples ([{prompt, text}]) and a short history of (step, samples).
    samples: list[dict[str, Any]] = field(default_factory=list)
    sample_history: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    # The console went away and the trainer goes on unattended.
    detached: bool = False
    detached_reason: str | None = None
    # Path of the newest checkpoint (the final one once the run has finished).
    last_checkpoint: str | None = None
    # Measured durations of evaluations and checkpoints (seconds), newest last.
    eval_durations: list[float] = field(default_factory=list)
    checkpoint_durations: list[float] = field(default_factory=list)
    # The plan (run_started / total_changed): evaluations and scheduled checkpoints to come,
    # validation batches per evaluation.
    evals_left: int | None = None
    checkpoints_left: int | None = None
    eval_batches: int | None = None

    # Internals of the clock and the ETA (not for display).
    _elapsed_shown: float = field(default=0.0, repr=False)
    _phase_step: int = field(default=-1, repr=False)
    _domain_step: int = field(default=-1, repr=False)
    _segment_time: float | None = field(default=None, repr=False)
    _segment_step: int = field(default=0, repr=False)
    _overhead_s: float = field(default=0.0, repr=False)
    _step_s: float | None = field(default=None, repr=False)
    _progress_time: float | None = field(default=None, repr=False)
    _paused_since: float | None = field(default=None, repr=False)
    _evals_since_plan: int = field(default=0, repr=False)
    _planned_ckpts_since_plan: int = field(default=0, repr=False)
    _evals_seen: int = field(default=0, repr=False)
    _best_ckpts_seen: int = field(default=0, repr=False)

    # Cap on kept history so a week-long run does not grow the console without bound.
    MAX_POINTS = 20000
    MAX_LOG = 500
    MAX_SAMPLES = 20
    MAX_DURATIONS = 50

    # ------------------------------------------------------------------------------------------
    # Folding
    # ------------------------------------------------------------------------------------------

    def apply(self, event: dict[str, Any] | ParseProblem) -> None:
        if isinstance(event, ParseProblem):
            self.problems.append(event)
            self.problems = self.problems[-50:]
            return
        self.events_seen += 1
        kind = event["type"]
        t = float(event["time"])
        if self.finished and kind not in ("run_started", "run_finished", "detached"):
            if kind == "heartbeat":
                return  # a finished trainer's last beat says nothing new
            # A later segment (a resume appending to the same events.jsonl) is setting up:
            # the clock goes on from where the finished segment stopped.
            self._new_segment(t)
        if self.started_at is None:
            self.started_at = t
        self.last_time = t
        self.last_event_time = t
        step = event.get("global_step")
        if kind in _STEP_SOURCES and isinstance(step, int) and not isinstance(step, bool):
            self._move_to_step(step, t)
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event, t)
        if self.started_at is not None:
            self.elapsed_s = max(0.0, t - self.started_at)

    def _new_segment(self, t: float) -> None:
        self.started_at = t - self.elapsed_s
        self.status = "starting"
        self.detached = False
        self.detached_reason = None

    def _move_to_step(self, step: int, t: float) -> None:
        """The trainer is at ``step``: learn the step rate when it advanced while training."""
        if (step > self.global_step and self._segment_time is not None
                and step > self._segment_step and self._paused_since is None):
            train_s = t - self._segment_time - self._overhead_s
            if train_s > 0:
                self._step_s = train_s / (step - self._segment_step)
            self._progress_time = t
        self.global_step = step

    def _on_run_started(self, event: dict[str, Any], t: float) -> None:
        self.run_id = event["run_id"]
        self.trainer = event["trainer"]
        self.total_steps = event["total_steps"]
        self.total_reason = None
        for name in ("profile", "preset", "data", "device", "precision"):
            setattr(self, name, event.get(name) or getattr(self, name))
        self.model_params = event.get("model_params") or self.model_params
        self.config = event.get("config") or self.config
        # The trainer counts from run_started (setup excluded); the run began at its first event
        # (loading data, building the tokenizer): never move the start later, or a live clock
        # would stand still for the whole setup time.
        start = t - float(event.get("elapsed_s") or 0.0)
        self.started_at = start if self.started_at is None else min(self.started_at, start)
        self.status = "running"
        self.detached = False
        self.detached_reason = None
        if event.get("global_step") is None and isinstance(event.get("step"), int):
            self.global_step = event["step"]
        # A new segment (fresh or resumed): its own step rate, phase and plan.
        self._phase_step = self._domain_step = -1
        self._segment_time = self._progress_time = t
        self._segment_step = self.global_step
        self._overhead_s = 0.0
        self._step_s = None
        self._paused_since = None
        self.eval_batches = event.get("eval_batches", self.eval_batches)
        self._set_plan(event)

    def _set_plan(self, event: dict[str, Any]) -> None:
        if "evals_left" in event:
            self.evals_left = event["evals_left"]
            self._evals_since_plan = 0
        if "checkpoints_left" in event:
            self.checkpoints_left = event["checkpoints_left"]
            self._planned_ckpts_since_plan = 0

    def _on_step(self, event: dict[str, Any], t: float) -> None:
        step = event["global_step"]
        loss = event.get("loss")
        self.loss = loss
        if loss is not None:
            self._push(self.train_losses, (step, float(loss)))
        for name in ("lr", "grad_norm", "tokens_per_s", "samples_per_s", "micro_batch",
                     "grad_accum"):
            if event.get(name) is not None:
                setattr(self, name, event[name])
        # A step event describes the step it reports; a phase/domain change announced at or
        # after that step is newer and wins (LONPT logs the step after announcing the phase of
        # the next one).
        if step > self._phase_step:
            if event.get("phase") is not None:
                self.phase = event["phase"]
            if event.get("lr_scale") is not None:
                self.lr_scale = event["lr_scale"]
        if step > self._domain_step and event.get("domain") is not None:
            self.domain = event["domain"]
        if event.get("memory"):
            self.memory = event["memory"]
        if event.get("branch_scores_mean") is not None:
            self.branch_scores = event["branch_scores_mean"]
            self.branch_scores_step = step
            self._push(self.branch_history, list(event["branch_scores_mean"]))
        if event.get("reasoning_skipped_frac") is not None:
            self.reasoning_ran = 1.0 - float(event["reasoning_skipped_frac"])
            self.reasoning_step = step
            cm = event.get("complexity_mean")
            self.complexity_mean = None if cm is None else float(cm)
        if event.get("branch_keep_frac") is not None:
            self.branch_keep = event["branch_keep_frac"]
        if event.get("scratchpad"):
            self.scratchpad = event["scratchpad"]
        if event.get("metrics"):
            self.metrics.update(event["metrics"])
        if self.status == "starting":
            self.status = "running"

    def _on_eval(self, event: dict[str, Any], t: float) -> None:
        loss = event["loss"]
        if loss is not None:
            loss = float(loss)
            self._push(self.val_losses, (event["global_step"], loss))
            if self.best_val_loss is None or loss < self.best_val_loss:
                self.best_val_loss = loss
                self.best_val_step = event["global_step"]
            domain = event.get("domain")
            if domain and (domain not in self.domain_best or loss < self.domain_best[domain]):
                self.domain_best[domain] = loss
        if event.get("metrics"):
            self.metrics.update(event["metrics"])
        self._apply_bpb(event)
        self._finished_overhead(event, t, "evaluating", self.eval_durations)
        self._evals_since_plan += 1
        self._evals_seen += 1
        self._log(event)

    def _on_checkpoint(self, event: dict[str, Any], t: float) -> None:
        self.checkpoints.append(event)
        self.last_checkpoint = event["path"]
        self._finished_overhead(event, t, "saving checkpoint", self.checkpoint_durations)
        reason = event.get("reason")
        if reason in _PLANNED_CHECKPOINTS:
            self._planned_ckpts_since_plan += 1
        elif reason == "best":
            self._best_ckpts_seen += 1
        self._log(event)

    def _finished_overhead(self, event: dict[str, Any], t: float, activity: str,
                           durations: list[float]) -> None:
        """An evaluation/checkpoint ended: its time is not training time (step rate, ETA)."""
        duration = event.get("duration_s")
        if duration is None and self.activity == activity and self.activity_since is not None:
            duration = t - self.activity_since
        if duration is None:
            return
        duration = max(0.0, float(duration))
        durations.append(duration)
        del durations[: max(0, len(durations) - self.MAX_DURATIONS)]
        if self._paused_since is None:
            self._overhead_s += duration
        self._progress_time = t

    def _on_phase_change(self, event: dict[str, Any], t: float) -> None:
        self.phase = event["phase"]
        self._phase_step = event["global_step"]
        if event.get("lr_scale") is not None:
            self.lr_scale = event["lr_scale"]
        self._log(event)

    def _on_domain_change(self, event: dict[str, Any], t: float) -> None:
        self.domain = event["domain"]
        self._domain_step = event["global_step"]
        self._log(event)

    def _on_batch_change(self, event: dict[str, Any], t: float) -> None:
        self.micro_batch = event["micro_batch"]
        self.grad_accum = event["grad_accum"]
        self._log(event)

    def _on_warning(self, event: dict[str, Any], t: float) -> None:
        self._log(event)

    def _on_info(self, event: dict[str, Any], t: float) -> None:
        self._log(event)

    def _on_status(self, event: dict[str, Any], t: float) -> None:
        status = event["status"]
        if status == "paused" and self._paused_since is None:
            self._paused_since = t
        elif status != "paused" and self._paused_since is not None:
            self._overhead_s += t - self._paused_since
            self._paused_since = None
            self._progress_time = t
        self.status = status
        self._log(event)

    def _on_error(self, event: dict[str, Any], t: float) -> None:
        self.last_error = event["message"]
        self._log(event)

    def _on_run_finished(self, event: dict[str, Any], t: float) -> None:
        self.status = event["status"]
        self._paused_since = None
        self.activity = None
        self.activity_done = self.activity_of = None
        self.activity_since = t
        if self.status == "finished":
            # A finished run did all its steps: its total is the number it really took.
            if self.total_steps != self.global_step:
                self.total_reason = self.total_reason or "finished"
            self.total_steps = self.global_step
        self._log(event)

    def _on_total_changed(self, event: dict[str, Any], t: float) -> None:
        self.total_steps = event["total_steps"]
        self.total_reason = event.get("reason") or "revised"
        self._set_plan(event)
        self._log(event)

    def _on_activity(self, event: dict[str, Any], t: float) -> None:
        self._set_activity(event["activity"], event.get("done"), event.get("of"), t)

    def _on_heartbeat(self, event: dict[str, Any], t: float) -> None:
        self.last_heartbeat_time = t
        if event.get("activity"):
            self._set_activity(event["activity"], event.get("done"), event.get("of"), t)

    def _set_activity(self, name: str, done: int | None, of: int | None, t: float) -> None:
        if name != self.activity:
            self.activity = name
            self.activity_since = t
        self.activity_done, self.activity_of = done, of

    def _on_sample(self, event: dict[str, Any], t: float) -> None:
        samples = [s for s in event["samples"] if isinstance(s, dict)]
        self.samples = samples
        self.sample_history.append((event["global_step"], samples))
        del self.sample_history[: max(0, len(self.sample_history) - self.MAX_SAMPLES)]

    def _on_detached(self, event: dict[str, Any], t: float) -> None:
        self.detached = True
        self.detached_reason = event["reason"]
        self._log(event)

    def _apply_bpb(self, event: dict[str, Any]) -> None:
        bpb = event.get("bpb")
        if bpb is not None:
            self._push(self.val_bpbs, (event["global_step"], float(bpb)))
            if self.best_val_bpb is None or bpb < self.best_val_bpb:
                self.best_val_bpb = float(bpb)
        for name in ("baseline_bigram_bpb", "baseline_unigram_bpb"):
            if event.get(name) is not None:
                setattr(self, name, float(event[name]))

    def _push(self, seq: list[Any], item: Any) -> None:
        seq.append(item)
        if len(seq) > self.MAX_POINTS:
            del seq[: len(seq) - self.MAX_POINTS]

    def _log(self, event: dict[str, Any]) -> None:
        self.log.append(event)
        if len(self.log) > self.MAX_LOG:
            del self.log[: len(self.log) - self.MAX_LOG]

    # ------------------------------------------------------------------------------------------
    # What renderers show
    # ------------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.status in ("stopped", "finished", "failed")

    @property
    def progress(self) -> float:
        """0..1; a finished run is at 1.0 (its total is the steps it took)."""
        if self.status == "finished":
            return 1.0
        return min(1.0, self.global_step / self.total_steps) if self.total_steps else 0.0

    @property
    def paused(self) -> bool:
        return self.status == "paused"

    def elapsed_at(self, now: float) -> float:
        """Seconds since the run started (wall clock, pauses included) at the clock ``now``.

        Ticks without events while the run is live; a finished run keeps the time of its last
        event. Never smaller than a value this state returned before, so a renderer's clock never
        runs backwards (a late event, a resume, a slow reader).
        """
        if self.started_at is None:
            value = 0.0
        elif self.finished:
            value = self.elapsed_s
        else:
            value = max(self.elapsed_s, now - self.started_at)
        value = max(value, self._elapsed_shown)
        self._elapsed_shown = value
        return value

    def quiet_s(self, now: float) -> float | None:
        """Seconds since the last event of any kind (heartbeats included), None before any."""
        return None if self.last_event_time is None else max(0.0, now - self.last_event_time)

    @property
    def step_seconds(self) -> float | None:
        """Measured wall seconds per optimizer step, evaluations, checkpoints and pauses excluded."""
        return self._step_s

    def eval_seconds(self) -> float | None:
        """Expected seconds of one evaluation: the mean of the recent ones, or — before any —
        the validation batches at a third of a training micro-batch's time each (forward only)."""
        if self.eval_durations:
            recent = self.eval_durations[-5:]
            return sum(recent) / len(recent)
        if self.eval_batches and self._step_s is not None:
            return self.eval_batches * self._step_s / (3.0 * max(1, self.grad_accum or 1))
        return None

    def checkpoint_seconds(self) -> float | None:
        """Expected seconds of one checkpoint (mean of the recent ones), None before any."""
        if not self.checkpoint_durations:
            return None
        recent = self.checkpoint_durations[-5:]
        return sum(recent) / len(recent)

    def eta_at(self, now: float) -> float | None:
        """Seconds to the end of the run at the clock ``now``: the steps left at the measured
        step time, plus the evaluations and checkpoints still to come at their measured times
        (the current one partly done). Frozen while paused; None when unknown or finished."""
        if self.finished or self.total_steps <= 0 or self._step_s is None:
            return None
        if self._paused_since is not None:
            now = self._paused_since
        in_eval = self.activity == "evaluating"
        in_ckpt = self.activity == "saving checkpoint"
        # Steps: the time already spent in the current one counts (while training).
        steps_left = max(0, self.total_steps - self.global_step)
        steps_s = steps_left * self._step_s
        if steps_left and not (in_eval or in_ckpt) and self._progress_time is not None:
            steps_s -= min(self._step_s, max(0.0, now - self._progress_time))
        eval_s = self.eval_seconds() or 0.0
        evals = (max(0, self.evals_left - self._evals_since_plan)
                 if self.evals_left is not None else 0)
        total = max(0.0, steps_s) + evals * eval_s
        if in_eval and evals and eval_s:
            total -= min(eval_s, self._done_part(now, eval_s))
        ckpt_s = self.checkpoint_seconds() or 0.0
        if ckpt_s:
            planned = (max(0, self.checkpoints_left - self._planned_ckpts_since_plan)
                       if self.checkpoints_left is not None else 0)
            rate = (self._best_ckpts_seen / self._evals_seen if self._evals_seen
                    else _DEFAULT_BEST_RATE)
            total += (planned + evals * min(1.0, rate)) * ckpt_s
            if in_ckpt:
                total -= min(ckpt_s, self._done_part(now, ckpt_s))
        return max(0.0, total)

    def _done_part(self, now: float, expected: float) -> float:
        """Seconds of the current activity already done (from done/of, else its age)."""
        if self.activity_done is not None and self.activity_of:
            return expected * min(1.0, self.activity_done / self.activity_of)
        return max(0.0, now - (self.activity_since or now))

    @property
    def eta_s(self) -> float | None:
        """:meth:`eta_at` the time of the newest event (deterministic from the events alone)."""
        return self.eta_at(self.last_time) if self.last_time is not None else None


def fold(events: Iterable[dict[str, Any] | ParseProblem]) -> RunState:
    state = RunState()
    for event in events:
        state.apply(event)
    return state


def describe_activity(state: RunState) -> str:
    """``evaluating 12/50`` / ``loading data`` / ``paused at step 7`` / ``finished``: what the
    trainer is doing now, for the renderers' phase line."""
    if state.finished:
        return state.status
    if state.status in ("paused", "stopping"):
        return f"{state.status} at step {state.global_step}"
    name = state.activity or ("training" if state.status == "running" else state.status)
    if state.activity_done is not None and state.activity_of:
        return f"{name} {state.activity_done}/{state.activity_of}"
    return name


def describe_event(event: dict[str, Any]) -> str:
    """A one-line human description, used by the console's event log and headless output."""
    kind = event["type"]
    step = event.get("global_step")
    at = f"[{step}] " if step is not None else ""
    if kind == "eval":
        domain = event.get("domain")
        where = f" ({domain})" if domain else ""
        if event.get("best"):
            best = " ✓ best"
        elif event.get("best_of_domain") and domain:
            best = f" ✓ best of domain {domain}"
        else:
            best = ""
        metrics = event.get("metrics") or {}
        reward, loss = metrics.get("reward"), event["loss"]
        if isinstance(reward, (int, float)) and isinstance(loss, (int, float)) \
                and math.isclose(loss, -reward, rel_tol=1e-9, abs_tol=1e-12):
            # PPO/GRPO report the negated held-out reward as their "loss" (best = highest
            # reward); calling it a validation loss would mislead.
            kl = metrics.get("kl")
            kl_txt = f", KL {kl:.4f}" if isinstance(kl, (int, float)) else ""
            return f"{at}held-out reward {reward:.4f}{kl_txt}{where}{best}"
        return f"{at}validation loss {format_loss(loss)}{describe_bpb(event)}{where}{best}"
    if kind == "checkpoint":
        val = event.get("val_loss")
        val_txt = f" val_loss={val:.4f}" if isinstance(val, (int, float)) else ""
        return f"{at}checkpoint {event.get('name') or event['path']}{val_txt}"
    if kind == "phase_change":
        return f"{at}phase → {event['phase']} (lr×{event.get('lr_scale', 1.0):.2f})"
    if kind == "domain_change":
        cyc = f" cycle {event['cycle']}" if event.get("cycle") is not None else ""
        return f"{at}domain → {event['domain']}{cyc}"
    if kind == "batch_change":
        why = f" ({event['reason']})" if event.get("reason") else ""
        return f"{at}micro-batch {event['micro_batch']} × accum {event['grad_accum']}{why}"
    if kind == "total_changed":
        why = f" ({event['reason']})" if event.get("reason") else ""
        return f"{at}total steps → {event['total_steps']}{why}"
    if kind == "warning":
        return f"{at}warning: {event['message']}"
    if kind == "info":
        return f"{at}{event['message']}"
    if kind == "error":
        return f"{at}error: {event['message']}"
    if kind == "status":
        return f"{at}status → {event['status']}"
    if kind == "detached":
        return f"detached: {event['reason']} (the run goes on)"
    if kind == "activity":
        done = (f" {event['done']}/{event['of']}"
                if event.get("done") is not None and event.get("of") else "")
        return f"{event['activity']}{done}"
    if kind == "sample":
        return f"{at}{len(event['samples'])} sample(s)"
    if kind == "run_finished":
        reason = event.get("reason") if event["status"] != "failed" else None  # error said it
        if reason and reason.isidentifier():
            reason = reason.replace("_", " ")
        why = f" ({reason})" if reason else ""
        return f"{at}run {event['status']}{why}"
    if kind == "run_started":
        return f"run {event['run_id']} started ({event['trainer']}, {event['total_steps']} steps)"
    return f"{at}{kind}"


def describe_bpb(event: dict[str, Any]) -> str:
    """`` · 1.812 bpb (bigram 1.763, unigram 3.288)`` for an eval event ("" without bpb)."""
    parts = []
    if isinstance(event.get("bpb"), _NUM):
        parts.append(f" · {event['bpb']:.3f} bpb")
    refs = [f"{name} {event[key]:.3f}" for name, key in
            (("bigram", "baseline_bigram_bpb"), ("unigram", "baseline_unigram_bpb"))
            if isinstance(event.get(key), _NUM)]
    if refs:
        parts.append(f" ({', '.join(refs)})")
    return "".join(parts)


SAMPLE_PROMPT_CHARS = 60
SAMPLE_TEXT_CHARS = 160


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (line breaks shown as ⏎), cut to ``limit`` characters with …."""
    flat = text.replace("\r\n", "\n").replace("\n", "⏎").replace("\t", " ")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_samples(event: dict[str, Any]) -> list[str]:
    """One line per sample of a ``sample`` event: ``  [style] prompt → reply``."""
    lines = []
    for sample in event.get("samples") or []:
        if not isinstance(sample, dict):
            continue
        style = f"[{sample['style']}] " if sample.get("style") else ""
        prompt = one_line(str(sample.get("prompt", "")), SAMPLE_PROMPT_CHARS)
        text = one_line(str(sample.get("text", "")), SAMPLE_TEXT_CHARS)
        lines.append(f"  {style}{prompt} → {text or '(empty)'}")
    return lines
