"""The product's GPU promise, measured end to end in one run (issue 19).

"It picks the largest model that fits your GPU and trains it": this script checks that on a real
card and writes the evidence — ``gpu_report.json`` (every number, unedited) and ``gpu_report.md``
(the table, printed last) — into ``--out`` (default ``$OUT`` on the device machine, else
``bench/gpu/out``). Steps:

1. ``aeron-tui profile --json`` on the real driver, compared field by field with
   ``nvidia-smi --query-gpu=...`` read in the same run.
2. The pick: which profile ``pick_profile`` chooses for training and for inference, with reasons.
3. tiny, small, medium and the pick (when the pick is another profile it is measured in step 4):
   30 training steps in bf16 through the real CLI (``aeron-tui train simple --device cuda
   --precision bf16``) on a plain-text corpus whose windows are all full length (so the shapes are
   the ones the estimator assumes); tokens/s (median of the last 20 steps), MFU against a bf16
   matmul peak measured here (8192³, median of 10 after warm-up), ``max_memory_allocated`` and
   ``memory_reserved`` from the step events against ``estimate_training_memory`` for the run's own
   config (error %), and the loss after 30 steps (finite and falling). A torch.profiler CUDA table
   for one medium step.
4. The pick (the 3.7 B ``default`` profile on an H200): a few optimizer steps with the pick's
   micro-batch and gradient checkpointing, in process (a CLI run would also write a ~45 GB final
   checkpoint), peak memory against the estimate, steps/s.
5. Generation with the KV cache on small: tokens/s at batch 1 and 8, with and without the cache.
6. ``torchrun --nproc_per_node 1`` with NCCL: 10 steps of small that start and checkpoint.
7. The out-of-memory path for real: a micro-batch far beyond the card on medium is split and
   retried, and the run continues.

Without CUDA (this repository's CI machine) every step that needs the GPU is skipped with a line
saying so, and a CPU rehearsal of steps 3 to 6 runs at the tiny profile instead, so the
device minutes are spent only on the real run:

    .venv/bin/python bench/gpu_check.py                    # here: CPU rehearsal, ~3 min
    bash bench/gpu_check.sh                                # on the device machine (writes $OUT)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB = 1024**3
MiB = 1024**2
# nvidia-smi fields compared with NVML (units: MiB, %, °C, W).
SMI_FIELDS = ("name", "memory.total", "memory.used", "memory.free", "utilization.gpu",
              "temperature.gpu", "power.draw", "power.limit")


# ------------------------------------------------------------------------------- the report
@dataclass
class Section:
    """One step of the check: what was measured, whether it passed, and why."""

    name: str
    status: str = "ok"  # ok | fail | skipped | error
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Report:
    started: float = field(default_factory=time.time)
    env: dict[str, Any] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "env": self.env,
            "sections": [s.__dict__ for s in self.sections],
        }


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render_markdown(report: Report) -> str:
    """The report as Markdown: environment, one line per step, then each step's table."""
    env = report.env
    lines = [f"# GPU check — {time.strftime('%Y-%m-%d', time.gmtime(report.started))}", ""]
    lines.append(f"Device: {env.get('device', '?')}; torch {env.get('torch', '?')}, CUDA "
                 f"{env.get('cuda', '—')}, driver {env.get('driver', '—')}; Python "
                 f"{env.get('python', '?')}; {env.get('cpus', '?')} CPUs. Total "
                 f"{fmt(report.to_json()['seconds'])} s.")
    lines += ["", "| step | status | summary | s |", "|---|---|---|---|"]
    for s in report.sections:
        lines.append(f"| {s.name} | {s.status} | {s.summary.replace('|', '/')} | {s.seconds:.0f} |")
    for s in report.sections:
        if not s.rows:
            continue
        cols: list[str] = []
        for row in s.rows:
            cols += [c for c in row if c not in cols]
        lines += ["", f"## {s.name}", "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]
        for row in s.rows:
            lines.append("| " + " | ".join(fmt(row.get(c)).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def section(report: Report, name: str, deadline: float) -> Iterator[Section]:
    """Run one step; an exception becomes an ``error`` section with its last line, never a crash."""
    sec = Section(name)
    report.sections.append(sec)
    t0 = time.perf_counter()
    if time.monotonic() > deadline:
        sec.status, sec.summary = "skipped", "time budget spent"
        yield sec
        return
    try:
        yield sec
    except Exception as exc:  # noqa: BLE001 - the report must survive any one step
        sec.status = "error"
        sec.summary = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        sec.data["traceback"] = traceback.format_exc()[-4000:]
    finally:
        sec.seconds = time.perf_counter() - t0
        print(f"[gpu_check] {name}: {sec.status} — {sec.summary} ({sec.seconds:.0f} s)", flush=True)


# ------------------------------------------------------------------------------ helpers
def run_cli(args: list[str], env: dict[str, str], timeout: float, log: Path | None = None,
            launcher: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m aeron_tui ARGS`` (or ``launcher + ARGS``) with output kept for the report."""
    cmd = (launcher or [sys.executable, "-m", "aeron_tui"]) + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=str(ROOT))
    if log is not None:
        log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}\n")
    return proc


def tail(text: str, n: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[-n:])


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def parse_smi_csv(text: str) -> list[dict[str, Any]]:
    """``nvidia-smi --query-gpu=... --format=csv,noheader,nounits`` rows as dicts (numbers parsed;
    ``[N/A]``/``[Not Supported]`` become None)."""
    rows = []
    for line in text.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(SMI_FIELDS):
            continue
        row: dict[str, Any] = {}
        for key, value in zip(SMI_FIELDS, values, strict=True):
            if key == "name":
                row[key] = value
                continue
            try:
                row[key] = float(value)
            except ValueError:
                row[key] = None
        rows.append(row)
    return rows


def compare_nvml_smi(gpu: dict[str, Any], smi: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per field: what NVML (our probe) said, what nvidia-smi said, and whether they agree.

    Memory must agree to 1 % (both read the same counters a moment apart), temperature to 5 °C,
    power to 25 % (it moves between the two reads), utilisation is shown but not judged.
    """
    pairs = [
        ("name", gpu.get("name"), smi.get("name"), lambda a, b: a == b),
        ("memory total MiB", _mib(gpu.get("memory_total")), smi.get("memory.total"), _within(0.01)),
        ("memory used MiB", _mib(gpu.get("memory_used")), smi.get("memory.used"), _within(0.05, 64)),
        ("memory free MiB", _mib(gpu.get("memory_free")), smi.get("memory.free"), _within(0.01, 64)),
        ("temperature °C", gpu.get("temperature"), smi.get("temperature.gpu"),
         lambda a, b: abs(a - b) <= 5),
        ("power draw W", gpu.get("power_draw_w"), smi.get("power.draw"), _within(0.25, 15)),
        ("power limit W", gpu.get("power_limit_w"), smi.get("power.limit"), _within(0.01, 1)),
        ("utilisation %", gpu.get("gpu_util"), smi.get("utilization.gpu"), None),
    ]
    rows = []
    for name, ours, theirs, agree in pairs:
        if agree is None or ours is None or theirs is None:
            verdict = None if agree is None else (ours is None and theirs is None)
        else:
            verdict = bool(agree(ours, theirs))
        rows.append({"field": name, "aeron-tui profile": ours, "nvidia-smi": theirs,
                     "agree": verdict})
    return rows


def _mib(value: Any) -> float | None:
    return None if value is None else float(value) / MiB


def _within(rel: float, absolute: float = 0.0) -> Callable[[float, float], bool]:
    return lambda a, b: abs(a - b) <= max(absolute, rel * max(abs(a), abs(b)))


def error_pct(estimate: float, measured: float) -> float:
    """Signed error of an estimate against a measurement, in percent (+ = over-estimate)."""
    return 100.0 * (estimate - measured) / measured if measured else float("nan")


def median_tokens_per_s(steps: list[dict[str, Any]], last: int = 20) -> float | None:
    values = [e["tokens_per_s"] for e in steps[-last:] if e.get("tokens_per_s")]
    return statistics.median(values) if values else None


def loss_falls(steps: list[dict[str, Any]]) -> tuple[float | None, float | None, bool]:
    """(mean loss of the first 5 steps, of the last 5, finite and lower at the end)."""
    losses = [e.get("loss") for e in steps]
    if len(losses) < 6 or any(v is None or not math.isfinite(v) for v in losses):
        return None, None, False
    first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
    return first, last, last < first


def write_text_corpus(path: Path, n_words: int, seed: int = 0) -> None:
    """A plain-text corpus of long documents (made-up words, Zipf-distributed), so every text
    window is full length. No downloads: the device machine reaches nothing."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "da", "an", "or", "el", "is"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(4000)]
    weights = [1.0 / (i + 1) for i in range(len(words))]
    with path.open("w", encoding="utf-8") as fh:
        remaining = n_words
        while remaining > 0:
            doc = min(remaining, 2_500)  # many documents: the validation split is by document
            sent: list[str] = []
            for w in rng.choices(words, weights, k=doc):
                sent.append(w)
                if rng.random() < 0.08:
                    fh.write(" ".join(sent).capitalize() + ". ")
                    sent = []
            fh.write(" ".join(sent) + ".\n\n")
            remaining -= doc


# ------------------------------------------------------------------------ in-process model
def _with_vocab(config: Any, vocab: int) -> Any:
    import dataclasses

    return dataclasses.replace(config, vocab_size=vocab)


def synthetic_batch(vocab: int, batch: int, seq: int, device: str) -> dict[str, Any]:
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(12, vocab, (batch, seq), generator=g)
    dec = torch.randint(12, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    batch_ = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
              "decoder_attention_mask": mask, "labels": dec.clone()}
    return {k: v.to(device) for k, v in batch_.items()}


def build_model(config: Any, device: str, checkpointing: bool = False) -> Any:
    import dataclasses

    import torch

    from core.model.model import TransformerNeuralNetBackbone

    config = dataclasses.replace(config, use_gradient_checkpointing=checkpointing)
    torch.manual_seed(0)
    with torch.device(device):
        model = TransformerNeuralNetBackbone(config)
    return model.train()


def model_loss(model: Any, batch: dict[str, Any], device: str) -> Any:
    import torch

    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["decoder_input_ids"],
                     decoder_attention_mask=batch["decoder_attention_mask"],
                     labels=batch["labels"])["loss"]


def flops_per_token(config: Any, micro_batch: int, seq: int, device: str) -> float:
    """Model FLOPs of one forward + backward per (encoder + decoder) token, counted by torch's
    FlopCounterMode on a full-length synthetic batch of the run's shape."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(config, device)
    batch = synthetic_batch(config.vocab_size, micro_batch, seq, device)
    counter = FlopCounterMode(display=False)
    with counter:
        model_loss(model, batch, device).backward()
    flops = float(counter.get_total_flops())
    del model, batch
    free_device(device)
    return flops / (2 * micro_batch * seq)


def free_device(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int, reps: int = 10) -> float:
    """bf16 FLOP/s of an n×n×n product: median of ``reps`` after three warm-ups."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    del a, b
    free_device(device)
    return 2 * n**3 / statistics.median(times)


# ----------------------------------------------------------------------------- the steps
@dataclass
class Context:
    args: argparse.Namespace
    out: Path
    work: Path
    env: dict[str, str]
    cuda: bool
    device: str
    deadline: float
    hardware: dict[str, Any] = field(default_factory=dict)
    pick_train: dict[str, Any] = field(default_factory=dict)
    peak_flops: float | None = None
    corpus: Path | None = None
    tokenizer: Path | None = None
    vocab: int = 2048


def step_profile(ctx: Context, sec: Section) -> None:
    proc = run_cli(["profile", "--json"], ctx.env, 120, ctx.out / "profile.log")
    if proc.returncode != 0:
        raise RuntimeError(f"aeron-tui profile --json exited {proc.returncode}: {tail(proc.stderr)}")
    data = json.loads(proc.stdout)
    ctx.hardware = data["hardware"]
    ctx.pick_train = data["recommendation"]
    gpus = ctx.hardware.get("gpus") or []
    sec.data["profile_json"] = data
    smi_path = shutil.which("nvidia-smi")
    if not smi_path:
        sec.status = "skipped" if not ctx.cuda else "fail"
        sec.summary = (f"no nvidia-smi on this machine; NVML says: {ctx.hardware.get('gpu_status')}"
                       " (skipped: no CUDA)")
        return
    smi = subprocess.run([smi_path, f"--query-gpu={','.join(SMI_FIELDS)}",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=60)
    sec.data["nvidia_smi"] = smi.stdout
    smi_rows = parse_smi_csv(smi.stdout)
    if not gpus or not smi_rows:
        sec.status = "fail"
        sec.summary = f"NVML saw {len(gpus)} GPU(s), nvidia-smi {len(smi_rows)}: {ctx.hardware.get('gpu_status')}"
        return
    rows = compare_nvml_smi(gpus[0], smi_rows[0])
    sec.rows = rows
    bad = [r["field"] for r in rows if r["agree"] is False]
    g = gpus[0]
    sec.status = "fail" if bad else "ok"
    sec.summary = (f"{g['name']}: {_mib(g['memory_total']) / 1024:.1f} GiB, driver "
                   f"{ctx.hardware.get('driver_version')}, CUDA {ctx.hardware.get('cuda_driver_version')}, "
                   f"cc {g.get('compute_capability')}; NVML = nvidia-smi"
                   + (f" except {', '.join(bad)}" if bad else ""))


def step_pick(ctx: Context, sec: Section) -> None:
    proc = run_cli(["profile", "--json", "--mode", "infer"], ctx.env, 120, ctx.out / "pick_infer.log")
    infer = json.loads(proc.stdout)["recommendation"] if proc.returncode == 0 else {}
    train = ctx.pick_train
    for mode, rec in (("train", train), ("infer", infer)):
        for r in rec.get("reasons", []):
            sec.rows.append({"mode": mode, "profile": r["name"], "fits": r["fits"],
                             "GiB": round(r["estimate"]["total"] / GiB, 2) if r.get("estimate") else None,
                             "micro-batch": r.get("micro_batch"), "accum": r.get("grad_accum"),
                             "checkpointing": r.get("checkpointing"), "trainer": r.get("trainer"),
                             "why": r.get("detail")})
    sec.data = {"train": {k: v for k, v in train.items() if k != "reasons"},
                "infer": {k: v for k, v in infer.items() if k != "reasons"}}
    sec.summary = (f"train: {train.get('summary')}; infer: {infer.get('profile')} "
                   f"({infer.get('summary', '')})")
    if ctx.cuda and train.get("device") != "cuda":
        sec.status = "fail"
        sec.summary += " — CUDA is available but the pick is not on it"
    big = ctx.hardware.get("gpus") and max(g["memory_free"] for g in ctx.hardware["gpus"]) > 120 * GiB
    if big and train.get("profile") != "default":
        sec.status = "fail"
        sec.summary += " — over 120 GiB free but the 3.7 B default profile was not picked (see the table)"


def prepare_data(ctx: Context) -> None:
    """One text corpus and one tokenizer for every run (so runs differ only in what is measured)."""
    if ctx.corpus is not None:
        return
    ctx.corpus = ctx.work / "corpus.txt"
    write_text_corpus(ctx.corpus, n_words=ctx.args.corpus_words)
    tok_dir = ctx.work / "tokenizer"
    proc = run_cli(["tokenizer", "train", "--corpus", str(ctx.corpus), "--vocab-size",
                    str(ctx.vocab), "--out", str(tok_dir)], ctx.env, 300, ctx.out / "tokenizer.log")
    if proc.returncode != 0:
        raise RuntimeError(f"tokenizer train failed: {tail(proc.stderr)}")
    ctx.tokenizer = tok_dir


def train_args(ctx: Context, profile: str, run_dir: Path, steps: int, micro_batch: int | None,
               extra: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    args = ["train", "simple", "--profile", profile, "--data", str(ctx.corpus), "--run-dir",
            str(run_dir), "--steps", str(steps), "--device", ctx.device, "--precision", "bf16",
            "--grad-accum", "1", "--quiet",
            "--set", f"tokenizer={ctx.tokenizer}", "--set", "log_every=1",
            "--set", f"eval_every={steps}", "--set", "eval_max_batches=2",
            "--set", f"checkpoint_every={steps}"]
    if micro_batch:
        args += ["--micro-batch", str(micro_batch)]
    if ctx.args.seq_len:
        args += ["--seq-len", str(ctx.args.seq_len)]
    return args + list(extra)


def run_config(run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """The NeuralNetConfig the run built (its checkpoint's config.json) and the run's settings."""
    from core.model.config import NeuralNetConfig

    ckpts = sorted((run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").exists() \
        else sorted(run_dir.glob("**/step_*"))
    cfg_path = next((c / "config.json" for c in reversed(ckpts) if (c / "config.json").exists()), None)
    if cfg_path is None:
        raise RuntimeError(f"no checkpoint config.json under {run_dir}")
    raw = json.loads(cfg_path.read_text())
    model = raw.get("model", raw)
    known = {f for f in NeuralNetConfig.__dataclass_fields__}
    return NeuralNetConfig(**{k: v for k, v in model.items() if k in known}), raw


def step_train_profiles(ctx: Context, sec: Section) -> None:
    """Step 3: 30 bf16 steps per profile through the CLI; throughput, MFU, memory vs estimate."""
    from profiles.estimate import estimate_training_memory

    prepare_data(ctx)
    profiles = ctx.args.profiles.split(",")
    steps = ctx.args.steps
    if ctx.cuda and ctx.peak_flops is None:
        ctx.peak_flops = matmul_peak(ctx.device, 8192)
    elif ctx.peak_flops is None:
        ctx.peak_flops = matmul_peak(ctx.device, 1024, reps=5)
    sec.data["bf16_matmul_peak_tflops"] = ctx.peak_flops / 1e12
    worst = 0.0
    failures = []
    for name in profiles:
        run_dir = ctx.work / f"train-{name}"
        t0 = time.perf_counter()
        proc = run_cli(train_args(ctx, name, run_dir, steps, None), ctx.env, ctx.args.run_timeout,
                       ctx.out / f"train_{name}.log")
        wall = time.perf_counter() - t0
        events = read_events(run_dir)
        step_events = [e for e in events if e.get("type") == "step"]
        row: dict[str, Any] = {"profile": name, "exit": proc.returncode, "steps": len(step_events),
                               "wall s": round(wall, 1)}
        if proc.returncode != 0 or not step_events:
            row["error"] = tail(proc.stderr)
            failures.append(f"{name}: exit {proc.returncode}")
            sec.rows.append(row)
            continue
        started = next((e for e in events if e.get("type") == "run_started"), {})
        config, raw = run_config(run_dir)
        settings = started.get("config") or {}
        mb = int(step_events[-1].get("micro_batch") or settings.get("micro_batch") or 0)
        seq = int(settings.get("seq_len") or ctx.args.seq_len or 0)
        ckpt = bool(settings.get("gradient_checkpointing") or config.use_gradient_checkpointing)
        est = estimate_training_memory(config, mb, seq, precision="bf16", device="cuda" if ctx.cuda else "cpu",
                                       checkpointing=ckpt)
        peak = max(int((e.get("memory") or {}).get("peak") or 0) for e in step_events)
        reserved = max(int((e.get("memory") or {}).get("reserved") or 0) for e in step_events)
        # CUDA: the estimate's tensor bytes against max_memory_allocated, and its tensors plus
        # allocator slack (total less the CUDA context) against memory_reserved. CPU: step events
        # carry the process RSS, which the estimate's total (with the torch runtime) predicts.
        from profiles.estimate import CUDA_CONTEXT_BYTES

        tensor_estimate = est.total - est.overhead if ctx.cuda else est.total
        reserved_estimate = est.total - CUDA_CONTEXT_BYTES if ctx.cuda else est.total
        tps = median_tokens_per_s(step_events)
        fpt = flops_per_token(config, mb, seq, ctx.device)
        mfu = (fpt * tps / ctx.peak_flops) if tps else None
        first, last, falls = loss_falls(step_events)
        row.update({
            "params M": round(est.params / 1e6, 1),
            "micro-batch × seq": f"{mb}×{seq}", "checkpointing": ckpt,
            "tokens/s": round(tps) if tps else None,
            "MFU %": round(100 * mfu, 1) if mfu is not None else None,
            "peak alloc GiB": round(peak / GiB, 3), "reserved GiB": round(reserved / GiB, 3),
            "estimate (tensors) GiB": round(tensor_estimate / GiB, 3),
            "estimate error %": round(error_pct(tensor_estimate, peak), 1) if peak else None,
            "reserved estimate error %": round(error_pct(reserved_estimate, reserved), 1)
            if reserved else None,
            "estimate total GiB": round(est.total / GiB, 3),
            "loss first5→last5": f"{fmt(first)}→{fmt(last)}", "falls": falls,
        })
        if peak:
            worst = max(worst, abs(error_pct(tensor_estimate, peak)))
        if not falls:
            failures.append(f"{name}: loss not falling")
        sec.rows.append(row)
        sec.data[f"{name}_events_tail"] = step_events[-3:]
        sec.data[f"{name}_estimate"] = est.__dict__ if hasattr(est, "__dict__") else str(est)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    mfu_medium = next((r.get("MFU %") for r in sec.rows if r["profile"] == "medium"), None)
    sec.summary = (f"bf16 peak {ctx.peak_flops / 1e12:.3g} TFLOP/s; worst estimate error "
                   f"{worst:.1f} % (target ≤ 10); medium MFU {fmt(mfu_medium)} % (target ≥ 40)")
    if not ctx.cuda:
        sec.summary = "CPU rehearsal (no CUDA): " + sec.summary
    if failures:
        sec.status, sec.summary = "fail", sec.summary + "; " + "; ".join(failures)
    elif ctx.cuda and worst > 10:
        sec.status = "fail"


def step_profiler(ctx: Context, sec: Section) -> None:
    """One medium (CPU: tiny) step under torch.profiler: where the time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    name = "medium" if ctx.cuda else "tiny"
    from profiles.catalog import load_profile

    prof = load_profile(name)
    config = _with_vocab(prof.model, ctx.vocab)
    mb, seq = prof.train.micro_batch, ctx.args.seq_len or prof.train.seq_len
    model = build_model(config, ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    batch = synthetic_batch(ctx.vocab, mb, seq, ctx.device)

    def step() -> None:
        model_loss(model, batch, ctx.device).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    sync(ctx.device)
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        step()
    sync(ctx.device)
    step_s = (time.perf_counter() - t0) / reps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with profile(activities=activities) as p:
        step()
        sync(ctx.device)
    key = "self_cuda_time_total" if ctx.cuda else "self_cpu_time_total"
    events = sorted(p.key_averages(), key=lambda e: getattr(e, key.replace("cuda", "device"), 0)
                    or getattr(e, key, 0), reverse=True)
    total = sum((getattr(e, key.replace("cuda", "device"), 0) or getattr(e, key, 0)) for e in events) or 1
    for e in events[:15]:
        t = getattr(e, key.replace("cuda", "device"), 0) or getattr(e, key, 0)
        sec.rows.append({"op": e.key[:60], "calls": e.count, "self ms": round(t / 1000, 2),
                         "share %": round(100 * t / total, 1)})
    tokens = 2 * mb * seq
    fpt = flops_per_token(config, mb, seq, ctx.device)
    peak = ctx.peak_flops or matmul_peak(ctx.device, 8192 if ctx.cuda else 1024)
    mfu = fpt * tokens / step_s / peak
    sec.data.update({"profile": name, "step_s": step_s, "tokens_per_step": tokens, "mfu": mfu})
    sec.summary = (f"{name} synthetic full-length step {mb}×{seq}: {step_s * 1000:.1f} ms, "
                   f"{tokens / step_s:,.0f} tokens/s, MFU {100 * mfu:.1f} %")


def step_pick_trains(ctx: Context, sec: Section) -> None:
    """Step 4: the picked profile trains a few steps as the pick decides (in process)."""
    import torch

    from profiles.catalog import load_profile
    from profiles.estimate import estimate_training_memory

    pick = ctx.pick_train
    name = pick.get("profile") if ctx.cuda else "tiny"
    if not name:
        sec.status, sec.summary = "fail", "no profile was picked"
        return
    if not ctx.cuda and pick.get("profile") != "tiny":
        sec.data["real_pick"] = pick.get("profile")
    prof = load_profile(name)
    config = _with_vocab(prof.model, ctx.vocab)
    mb = int(pick.get("micro_batch") or prof.train.micro_batch) if ctx.cuda else 2
    ckpt = bool(pick.get("checkpointing")) if ctx.cuda else False
    seq = prof.train.seq_len if ctx.cuda else 64
    accum = 2
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = build_model(config, ctx.device, checkpointing=ckpt)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), fused=True)
    build_s = time.perf_counter() - t0
    batch = synthetic_batch(ctx.vocab, mb, seq, ctx.device)
    losses, times = [], []
    for _ in range(ctx.args.pick_steps):
        sync(ctx.device)
        t = time.perf_counter()
        for _ in range(accum):
            loss = model_loss(model, batch, ctx.device)
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(ctx.device)
        times.append(time.perf_counter() - t)
        losses.append(float(loss))
    peak = torch.cuda.max_memory_allocated() if ctx.cuda else None
    reserved = torch.cuda.memory_reserved() if ctx.cuda else None
    est = estimate_training_memory(config, mb, seq, precision="bf16",
                                   device="cuda" if ctx.cuda else "cpu", checkpointing=ckpt)
    tensor_est = est.total - est.overhead
    sec.rows.append({
        "profile": name, "params M": round(est.params / 1e6, 1), "micro-batch × seq × accum":
        f"{mb}×{seq}×{accum}", "checkpointing": ckpt, "build s": round(build_s, 1),
        "step s (median)": round(statistics.median(times), 3),
        "steps/s": round(1 / statistics.median(times), 3),
        "peak alloc GiB": round(peak / GiB, 2) if peak else None,
        "reserved GiB": round(reserved / GiB, 2) if reserved else None,
        "estimate (tensors) GiB": round(tensor_est / GiB, 2),
        "estimate error %": round(error_pct(tensor_est, peak), 1) if peak else None,
        "losses": ", ".join(f"{v:.3f}" for v in losses),
    })
    finite = all(math.isfinite(v) for v in losses)
    sec.summary = (f"{name} ({est.params / 1e9:.2f} B params) trains: {len(losses)} steps, "
                   f"{1 / statistics.median(times):.2f} steps/s, losses finite={finite}")
    if peak:
        sec.summary += f", peak {peak / GiB:.1f} GiB vs estimate {tensor_est / GiB:.1f} GiB ({error_pct(tensor_est, peak):+.1f} %)"
    if not ctx.cuda:
        sec.summary = "CPU rehearsal at tiny (no CUDA; the real pick is " \
                      f"{pick.get('profile')}): " + sec.summary
    if not finite:
        sec.status = "fail"
    del model, opt, batch
    free_device(ctx.device)


def step_generation(ctx: Context, sec: Section) -> None:
    """Step 5: KV-cache generation tokens/s on small (CPU: tiny) at batch 1 and 8."""
    import torch

    from core.infer.generation import GenerationConfig, generate_ids
    from profiles.catalog import load_profile

    name = "small" if ctx.cuda else "tiny"
    config = _with_vocab(load_profile(name).model, ctx.vocab)
    model = build_model(config, ctx.device).eval()
    new_tokens = 128 if ctx.cuda else 24
    for batch in (1, 8):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(12, ctx.vocab, (batch, 64), generator=g).to(ctx.device)
        mask = torch.ones_like(ids)
        row: dict[str, Any] = {"profile": name, "batch": batch, "new tokens": new_tokens}
        outs = {}
        for cache in (True, False):
            cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, stop_ids=(),
                                   use_cache=cache)
            generate_ids(model, ids, mask, GenerationConfig(max_new_tokens=4, do_sample=False,
                                                            stop_ids=(), use_cache=cache))
            sync(ctx.device)
            t = time.perf_counter()
            with torch.autocast(ctx.device.split(":")[0], dtype=torch.bfloat16):
                out = generate_ids(model, ids, mask, cfg)
            sync(ctx.device)
            dt = time.perf_counter() - t
            outs[cache] = out.tokens
            row[f"tokens/s {'cache' if cache else 'no cache'}"] = round(batch * new_tokens / dt, 1)
        row["speed-up"] = round(row["tokens/s cache"] / row["tokens/s no cache"], 2)
        row["same tokens"] = bool(torch.equal(outs[True].cpu(), outs[False].cpu()))
        sec.rows.append(row)
    sec.summary = "; ".join(f"batch {r['batch']}: {r['tokens/s cache']:,} tok/s with cache, "
                            f"{r['speed-up']}× without" for r in sec.rows)
    if not ctx.cuda:
        sec.summary = "CPU rehearsal at tiny: " + sec.summary
    del model
    free_device(ctx.device)


def step_torchrun(ctx: Context, sec: Section) -> None:
    """Step 6: torchrun --nproc_per_node 1 (NCCL on CUDA, gloo on CPU): steps and a checkpoint."""
    prepare_data(ctx)
    name = "small" if ctx.cuda else "tiny"
    steps = 10 if ctx.cuda else 4
    run_dir = ctx.work / "torchrun"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                "--master_port", str(29500 + os.getpid() % 1000), "-m", "aeron_tui"]
    proc = run_cli(train_args(ctx, name, run_dir, steps, None), ctx.env, ctx.args.run_timeout,
                   ctx.out / "torchrun.log", launcher=launcher)
    events = read_events(run_dir)
    started = next((e for e in events if e.get("type") == "run_started"), {})
    ckpts = [e for e in events if e.get("type") == "checkpoint"]
    finished = next((e for e in events if e.get("type") == "run_finished"), {})
    backend = (started.get("config") or {}).get("distributed_backend") or ("nccl" if ctx.cuda else "gloo")
    sec.rows.append({"profile": name, "exit": proc.returncode,
                     "steps": finished.get("global_step"), "checkpoints": len(ckpts),
                     "status": finished.get("status"), "backend": backend})
    ok = proc.returncode == 0 and finished.get("global_step") == steps and ckpts
    sec.status = "ok" if ok else "fail"
    sec.summary = (f"{name}: exit {proc.returncode}, {finished.get('global_step')} of {steps} steps, "
                   f"{len(ckpts)} checkpoint(s) ({backend})")
    if not ok:
        sec.summary += f": {tail(proc.stderr)}"
    shutil.rmtree(run_dir, ignore_errors=True)


def step_oom(ctx: Context, sec: Section) -> None:
    """Step 7: a micro-batch far beyond the device on medium (CUDA only)."""
    from profiles.catalog import load_profile
    from profiles.estimate import estimate_training_memory

    prepare_data(ctx)
    run_dir = ctx.work / "oom"
    if ctx.cuda:
        name = "medium"
        prof = load_profile(name)
        config = _with_vocab(prof.model, ctx.vocab)
        seq = ctx.args.seq_len or prof.train.seq_len
        free = max(g["memory_free"] for g in ctx.hardware["gpus"])
        per_sample = (estimate_training_memory(config, 8, seq, precision="bf16", device="cuda").activations
                      / 8)
        # Twice what would fit: the first try must fail, one split (÷2) may fit.
        mb = 1 << max(1, math.ceil(math.log2(2 * free / max(per_sample, 1))))
        extra: list[str] = ["--set", "oom_retries=4"]
    else:
        # A CPU with free RAM does not run out of memory on demand; the split-and-retry logic is
        # covered on CPU by tests/train/test_oom_retry.py (injected OOMs).
        sec.status = "skipped"
        sec.summary = "needs a real device out-of-memory (no CUDA here); CPU coverage: tests/train/test_oom_retry.py"
        return
    steps = 3
    proc = run_cli(train_args(ctx, name, run_dir, steps, mb, extra), ctx.env, ctx.args.run_timeout,
                   ctx.out / "oom.log")
    events = read_events(run_dir)
    changes = [e for e in events if e.get("type") == "batch_change"]
    finished = next((e for e in events if e.get("type") == "run_finished"), {})
    sec.rows.append({"profile": name, "asked micro-batch": mb,
                     "splits": " → ".join(f"{c['micro_batch']}×{c['grad_accum']}" for c in changes),
                     "exit": proc.returncode, "steps": finished.get("global_step"),
                     "status": finished.get("status")})
    ok = bool(changes) and proc.returncode == 0 and finished.get("global_step") == steps
    sec.status = "ok" if ok else "fail"
    sec.summary = (f"{name} micro-batch {mb}: {len(changes)} split(s) "
                   f"({', '.join(str(c['micro_batch']) for c in changes) or 'none'}), "
                   f"{finished.get('global_step')} of {steps} steps, exit {proc.returncode}")
    if not ok:
        sec.summary += f": {tail(proc.stderr)}"
    shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------------- main
def environment(cuda: bool) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cpus": os.cpu_count(), "platform": platform.platform()}
    if cuda:
        env.update(device=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))))
        with contextlib.suppress(Exception):
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
            pynvml.nvmlShutdown()
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}), no CUDA"
    return env


STEPS: dict[str, tuple[str, Callable[[Context, Section], None]]] = {
    "profile": ("1. profile --json vs nvidia-smi", step_profile),
    "pick": ("2. the pick", step_pick),
    "train": ("3. 30 bf16 steps per profile (CLI)", step_train_profiles),
    "profiler": ("3b. one step under torch.profiler", step_profiler),
    "pick-trains": ("4. the picked profile trains", step_pick_trains),
    "generate": ("5. KV-cache generation", step_generation),
    "torchrun": ("6. torchrun, 1 process", step_torchrun),
    "oom": ("7. out of memory: split and retry", step_oom),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench/gpu/out"))
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma list of {', '.join(STEPS)}")
    parser.add_argument("--profiles", default=None, help="step 3's profiles (default: tiny,small,medium on CUDA; tiny on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="step 3's steps (default 30; CPU 8)")
    parser.add_argument("--pick-steps", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=None, help="override every profile's seq_len")
    parser.add_argument("--corpus-words", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip remaining steps after this")
    parser.add_argument("--run-timeout", type=float, default=240.0)
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    args.profiles = args.profiles or ("tiny,small,medium" if cuda else "tiny")
    args.steps = args.steps or (30 if cuda else 8)
    args.corpus_words = args.corpus_words or (1_500_000 if cuda else 120_000)
    if not cuda:
        args.seq_len = args.seq_len or 64
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="aeron-gpu-check-"))
    env = {**os.environ, "AERON_TUI_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    report = Report(env=environment(cuda))
    ctx = Context(args, out, work, env, cuda, "cuda" if cuda else "cpu",
                  deadline=time.monotonic() + args.budget_s)
    if not cuda:
        print("[gpu_check] no CUDA here: GPU-only measurements are skipped; a CPU rehearsal of "
              "the same steps runs at the tiny profile", flush=True)
    for key in args.only.split(","):
        title, fn = STEPS[key]
        with section(report, title, ctx.deadline) as sec:
            if sec.status != "skipped":
                fn(ctx, sec)
        free_device(ctx.device)  # what a step built is unreachable once it returned
    (out / "gpu_report.json").write_text(json.dumps(report.to_json(), indent=1, default=str))
    markdown = render_markdown(report)
    (out / "gpu_report.md").write_text(markdown)
    shutil.rmtree(work, ignore_errors=True)
    print(markdown, flush=True)
    bad = [s.name for s in report.sections if s.status in ("fail", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
