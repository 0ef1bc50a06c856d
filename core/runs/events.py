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
        if enabled and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._seq = _count_lines(self.path)

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
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
                except BrokenPipeError:
                    # Whoever read our stdout went away. events.jsonl already has the line;
                    # go on writing to the file only.
                    self._stream = None
            for listener in self.listeners:
                listener(event)
        return event

    def close(self) -> None:
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


@dataclass
class RunState:
    """Everything a renderer shows about a run, folded from its events (nothing else)."""

    run_id: str = ""
    trainer: str = ""
    profile: str = ""
    preset: str = ""
    data: str = ""
    device: str = ""
    precision: str = ""
    model_params: int = 0
    total_steps: int = 0
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
    scratchpad: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    best_val_loss: float | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)
    problems: list[ParseProblem] = field(default_factory=list)
    last_error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    events_seen: int = 0

    # Cap on kept history so a week-long run does not grow the console without bound.
    MAX_POINTS = 20000
    MAX_LOG = 500

    def apply(self, event: dict[str, Any] | ParseProblem) -> None:
        if isinstance(event, ParseProblem):
            self.problems.append(event)
            self.problems = self.problems[-50:]
            return
        self.events_seen += 1
        kind = event["type"]
        t = float(event["time"])
        if self.started_at is None:
            self.started_at = t
        self.last_time = t
        if kind == "run_started":
            self.run_id = event["run_id"]
            self.trainer = event["trainer"]
            self.total_steps = event["total_steps"]
            for name in ("profile", "preset", "data", "device", "precision"):
                setattr(self, name, event.get(name) or getattr(self, name))
            self.model_params = event.get("model_params") or self.model_params
            self.config = event.get("config") or self.config
            self.started_at = t - float(event.get("elapsed_s") or 0.0)
            self.status = "running"
        elif kind == "step":
            self.global_step = event["global_step"]
            loss = event.get("loss")
            self.loss = loss
            if loss is not None:
                self._push(self.train_losses, (self.global_step, float(loss)))
            for name in ("lr", "lr_scale", "grad_norm", "tokens_per_s", "samples_per_s",
                         "phase", "domain", "micro_batch", "grad_accum"):
                if event.get(name) is not None:
                    setattr(self, name, event[name])
            if event.get("memory"):
                self.memory = event["memory"]
            if event.get("branch_scores_mean") is not None:
                self.branch_scores = event["branch_scores_mean"]
                self._push(self.branch_history, list(event["branch_scores_mean"]))
            if event.get("branch_keep_frac") is not None:
                self.branch_keep = event["branch_keep_frac"]
            if event.get("scratchpad"):
                self.scratchpad = event["scratchpad"]
            if event.get("metrics"):
                self.metrics.update(event["metrics"])
            if self.status in ("starting",):
                self.status = "running"
        elif kind == "eval":
            loss = event["loss"]
            if loss is not None:
                self._push(self.val_losses, (event["global_step"], float(loss)))
                if self.best_val_loss is None or loss < self.best_val_loss:
                    self.best_val_loss = float(loss)
            if event.get("metrics"):
                self.metrics.update(event["metrics"])
            self._log(event)
        elif kind == "checkpoint":
            self.checkpoints.append(event)
            self._log(event)
        elif kind in ("phase_change", "domain_change", "batch_change", "warning", "info"):
            if kind == "phase_change":
                self.phase = event["phase"]
            elif kind == "domain_change":
                self.domain = event["domain"]
            elif kind == "batch_change":
                self.micro_batch = event["micro_batch"]
                self.grad_accum = event["grad_accum"]
            self._log(event)
        elif kind == "status":
            self.status = event["status"]
            self._log(event)
        elif kind == "error":
            self.last_error = event["message"]
            self._log(event)
        elif kind == "run_finished":
            self.status = event["status"]
            self.global_step = event["global_step"]
            self._log(event)
        if self.started_at is not None:
            self.elapsed_s = t - self.started_at

    def _push(self, seq: list[Any], item: Any) -> None:
        seq.append(item)
        if len(seq) > self.MAX_POINTS:
            del seq[: len(seq) - self.MAX_POINTS]

    def _log(self, event: dict[str, Any]) -> None:
        self.log.append(event)
        if len(self.log) > self.MAX_LOG:
            del self.log[: len(self.log) - self.MAX_LOG]

    @property
    def finished(self) -> bool:
        return self.status in ("stopped", "finished", "failed")

    @property
    def progress(self) -> float:
        return min(1.0, self.global_step / self.total_steps) if self.total_steps else 0.0

    @property
    def eta_s(self) -> float | None:
        """Remaining time from the observed step rate (None until two steps are seen)."""
        if not self.train_losses or self.total_steps <= 0 or self.finished:
            return None
        first_step = self.train_losses[0][0]
        done = self.global_step - first_step
        if done <= 0 or self.elapsed_s <= 0:
            return None
        return (self.total_steps - self.global_step) * self.elapsed_s / max(1, self.global_step)


def fold(events: Iterable[dict[str, Any] | ParseProblem]) -> RunState:
    state = RunState()
    for event in events:
        state.apply(event)
    return state


def describe_event(event: dict[str, Any]) -> str:
    """A one-line human description, used by the console's event log and headless output."""
    kind = event["type"]
    step = event.get("global_step")
    at = f"[{step}] " if step is not None else ""
    if kind == "eval":
        where = f" ({event['domain']})" if event.get("domain") else ""
        best = " ✓ best" if event.get("best") else ""
        metrics = event.get("metrics") or {}
        reward, loss = metrics.get("reward"), event["loss"]
        if isinstance(reward, (int, float)) and isinstance(loss, (int, float)) \
                and math.isclose(loss, -reward, rel_tol=1e-9, abs_tol=1e-12):
            # PPO/GRPO report the negated held-out reward as their "loss" (best = highest
            # reward); calling it a validation loss would mislead.
            kl = metrics.get("kl")
            kl_txt = f", KL {kl:.4f}" if isinstance(kl, (int, float)) else ""
            return f"{at}held-out reward {reward:.4f}{kl_txt}{where}{best}"
        return f"{at}validation loss {format_loss(loss)}{where}{best}"
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
    if kind == "warning":
        return f"{at}warning: {event['message']}"
    if kind == "info":
        return f"{at}{event['message']}"
    if kind == "error":
        return f"{at}error: {event['message']}"
    if kind == "status":
        return f"status → {event['status']}"
    if kind == "run_finished":
        reason = event.get("reason") if event["status"] != "failed" else None  # error said it
        if reason and reason.isidentifier():
            reason = reason.replace("_", " ")
        why = f" ({reason})" if reason else ""
        return f"{at}run {event['status']}{why}"
    if kind == "run_started":
        return f"run {event['run_id']} started ({event['trainer']}, {event['total_steps']} steps)"
    return f"{at}{kind}"
