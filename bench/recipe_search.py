"""Choose a profile's default training recipe by measurement, at a fixed CPU-time budget per run.

    .venv/bin/python bench/recipe_search.py --profile tiny --stage all
    .venv/bin/python bench/recipe_search.py --profile tiny --stage report

Every run trains the ``simple`` trainer exactly as ``aeron-tui train simple --profile P`` would
(the profile's settings through the CLI's own ``build_run_config``), on the bundled sample corpus,
with one torch thread, for as many optimizer steps as fit the run's CPU-time budget (measured
per batch shape by a short calibration run, so every learning-rate schedule ends where the run
ends). Each run is scored afterwards on the same validation set (the corpus's hash validation
split; a length-spread subset in the sweep stages, all of it in the final stage): mean loss per
target token (nats) and bits per byte. CPU time is ``time.process_time`` inside optimizer steps
(setup, validation and checkpoints excluded); it is what the budget fixes, so a loaded machine
changes the wall time, not the comparison.

Coarse to fine, each stage at the best setting of the ones before (lowest mean validation loss
over the seeds; the first seed ranks every candidate and only those within ``--margin`` nats of
the best get the second): ``lr`` (peak learning rate, today's warmup and cosine) → ``schedule`` (cosine vs
constant-then-decay at 5 % warmup, then warmup length for the better one) → ``shape`` (micro-batch
× sequence length at equal tokens per step) → ``reasoning`` (the reasoning engine on/off) →
``final`` (the chosen recipe on 3 seeds at the final budget, and against today's default on the
same 3 seeds at the sweep budget). Results are
appended to a JSON-lines file, one line per run, and a run already there is not repeated, so a
stage can be interrupted and restarted. At most ``--jobs`` runs go at a time (separate processes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
STAGES = ("lr", "schedule", "shape", "reasoning", "final")
# 60 timed steps: a step's cost follows its batch's sample lengths, and 20 steps missed the mean by
# up to 16 % (a run then used that much more or less CPU than its budget).
CALIBRATION_WARM, CALIBRATION_STEPS = 4, 60
SWEEP_VAL_SAMPLES = 640
# Every run is scored on the validation pairs encoded at this length (the tiny profile's; 99.8 %
# of the bundled corpus's samples fit whole), whatever length it trained at.
SCORE_SEQ_LEN = 128
# Each profile's recipe before this search (its batch shape and schedule written out, so a spec
# means the same run after the profile's defaults change): the chain starts here and the final
# stage compares against it.
BEFORE: dict[str, dict[str, Any]] = {
    "tiny": {"lr": 3e-4, "schedule": "cosine", "micro_batch": 8, "seq_len": 128},
    "small": {"lr": 3e-4, "schedule": "cosine", "micro_batch": 8, "seq_len": 256},
}


# ==============================================================================================
# One run (in a child process)
# ==============================================================================================


def run_config_for(spec: dict[str, Any], run_dir: Path, steps: int) -> tuple[Any, Any]:
    """(RunConfig, model config) through the CLI's layering: profile → flags → --set."""
    from aeron_tui.commands.train import build_run_config

    if spec.get("trainer") == "lonpt":
        # A LONPT preset at its own length (its curriculum sets the steps), only the lr changed.
        flags = {"run_dir": str(run_dir), "preset": spec["preset"], "seed": spec["seed"],
                 "learning_rate": spec["lr"]}
        sets = [f"checkpoint_every={10**9}", "keep_last=1", "sample_prompts=0"]
        return build_run_config("lonpt", profile=spec["profile"], flags=flags, sets=sets)

    flags: dict[str, Any] = {"run_dir": str(run_dir), "steps": steps, "seed": spec["seed"]}
    if spec.get("lr") is not None:
        flags["learning_rate"] = spec["lr"]
    if spec.get("micro_batch") is not None:
        flags["micro_batch"] = spec["micro_batch"]
    if spec.get("seq_len") is not None:
        flags["seq_len"] = spec["seq_len"]
    sets = [f"eval_every={10**9}", f"checkpoint_every={10**9}", "keep_last=1", "log_every=10",
            "eval_max_batches=1", "sample_prompts=0"]
    if spec.get("schedule") is not None:
        sets.append(f"lr_schedule=\"{spec['schedule']}\"")
    if spec.get("warmup_frac") is not None:
        sets.append(f"warmup_steps={max(0, round(spec['warmup_frac'] * steps))}")
    if spec.get("reasoning") is False:
        sets.append("model.enable_reasoning=false")
    sets.extend(f"{key}={value}" for key, value in spec.get("set", {}).items())
    return build_run_config("simple", profile=spec["profile"], flags=flags, sets=sets)


def cli_command(spec: dict[str, Any], steps: int) -> str:
    """The ``aeron-tui train`` command line that trains this recipe (for the record)."""
    parts = ["aeron-tui train simple", f"--profile {spec['profile']}", f"--steps {steps}",
             f"--seed {spec['seed']}"]
    if spec.get("lr") is not None:
        parts.append(f"--lr {spec['lr']:g}")
    if spec.get("micro_batch") is not None:
        parts.append(f"--micro-batch {spec['micro_batch']}")
    if spec.get("seq_len") is not None:
        parts.append(f"--seq-len {spec['seq_len']}")
    if spec.get("schedule") is not None:
        parts.append(f"--set lr_schedule={spec['schedule']}")
    if spec.get("warmup_frac") is not None:
        parts.append(f"--set warmup_steps={max(0, round(spec['warmup_frac'] * steps))}")
    if spec.get("reasoning") is False:
        parts.append("--set model.enable_reasoning=false")
    parts.extend(f"--set {key}={value}" for key, value in spec.get("set", {}).items())
    return " ".join(parts)


def _trainer_class(name: str = "simple") -> type:
    from core.train.simple import SimpleTrainer
    from lonpt.trainer import LonptTrainer

    base: type = LonptTrainer if name == "lonpt" else SimpleTrainer

    class CPUTimedTrainer(base):  # type: ignore[valid-type,misc]
        """Counts process CPU time and tokens inside optimizer steps; records step losses."""

        cpu_s = 0.0
        step_cpu: list[float]
        tokens_seen = 0

        def train_step(self) -> None:
            t0 = time.process_time()
            super().train_step()
            dt = time.process_time() - t0
            self.cpu_s += dt
            self.step_cpu.append(dt)

        def next_batch(self) -> Any:
            batch = super().next_batch()
            self.tokens_seen += int(batch["attention_mask"].sum()) + int(
                batch["decoder_attention_mask"].sum())
            return batch

    return CPUTimedTrainer


def corpus_val_pairs(trainer: Any, seq_len: int) -> list[Any]:
    """The corpus's hash validation split encoded with the run's tokenizer at ``seq_len``: every
    run is scored on the same pairs whatever length it trained at (a run at 64 would otherwise
    be scored on truncated samples), LONPT runs too (they validate only their fraction)."""
    from core.data.formatting import encode_styles_sample
    from core.data.styles import read_styles, split_samples

    _, val = split_samples(read_styles(Path(trainer.data_path)))
    return [encode_styles_sample(s, trainer.tokenizer, seq_len) for s in val]


def score(trainer: Any, max_samples: int | None, pairs: list[Any] | None = None
          ) -> dict[str, float]:
    """Loss per target token and bits per byte on the validation split (length-spread subset)."""
    import torch

    from core.data.loader import collate

    pairs = sorted(trainer.val_pairs if pairs is None else pairs, key=len)
    if max_samples is not None and len(pairs) > max_samples:
        stride = len(pairs) / max_samples
        pairs = [pairs[int(i * stride)] for i in range(max_samples)]
    nats = tokens = nbytes = 0.0
    trainer.train_model.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), 16):
            chunk = pairs[i:i + 16]
            batch = collate(chunk)
            with trainer.autocast():
                loss, _, n = trainer.compute_loss(batch)
            nats += float(loss.double()) * float(n)
            tokens += float(n)
            nbytes += sum(p.target_bytes for p in chunk)
    return {"val_loss": nats / tokens, "val_bpb": nats / math.log(2) / nbytes,
            "val_samples": len(pairs), "val_tokens": tokens, "val_bytes": nbytes}


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="recipe-run-"))
    steps = int(spec.get("steps") or CALIBRATION_WARM + CALIBRATION_STEPS)
    cfg, model_cfg = run_config_for(spec, work / "run", steps)
    warm = CALIBRATION_WARM
    if spec.get("calibrate") and model_cfg.enable_memory:
        # A step's cost grows while the neural memory's bank fills (one slot per sample and
        # step, and the read scores every written slot); time it once the bank is full, as it
        # is for most of a run.
        warm += math.ceil(model_cfg.memory_slots / cfg.micro_batch)
        steps = warm + CALIBRATION_STEPS
        cfg, model_cfg = run_config_for(spec, work / "run", steps)
    step_losses: list[float | None] = []

    def listen(event: dict[str, Any]) -> None:
        if event["type"] == "step":
            step_losses.append(event.get("loss"))

    cls = _trainer_class(spec.get("trainer", "simple"))
    trainer = cls(cfg, model_cfg, listeners=[listen])
    trainer.step_cpu = []
    t0 = time.perf_counter()
    status = trainer.run()
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"status": status, "steps": trainer.global_step, "cpu_s": trainer.cpu_s,
                           "wall_s": wall, "tokens": trainer.tokens_seen,
                           "nonfinite_skipped": trainer.nonfinite_skipped,
                           "params": sum(p.numel() for p in trainer.model.parameters()),
                           "precision": trainer.precision,
                           "lr": trainer.base_lr, "warmup_steps": trainer.warmup_steps,
                           "schedule": trainer.config.lr_schedule,
                           "micro_batch": trainer.micro_batch, "seq_len": trainer.seq_len}
    if spec.get("calibrate"):
        timed = trainer.step_cpu[warm:]
        out["cpu_per_step"] = sum(timed) / len(timed)
    else:
        lonpt = spec.get("trainer") == "lonpt"
        out.update(score(trainer, spec.get("val_samples"),
                         corpus_val_pairs(trainer, SCORE_SEQ_LEN)))
        finite = [x for x in step_losses if x is not None]
        out["first_logged_loss"] = finite[0] if finite else None
        out["last_logged_loss"] = finite[-1] if finite else None
        # A divergence shows as a logged training loss well above the best one seen before it.
        worst, best = 0.0, math.inf
        for x in finite:
            best = min(best, x)
            worst = max(worst, x - best)
        out["max_loss_rise"] = worst
        out["command"] = (f"aeron-tui train lonpt --profile {spec['profile']} --preset "
                          f"{spec['preset']} --lr {spec['lr']:g} --seed {spec['seed']}"
                          if lonpt else cli_command(spec, steps))
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return out


# ==============================================================================================
# The sweep (parent process)
# ==============================================================================================


def crossing(profile: str, seed: int, steps: int, every: int) -> dict[str, Any]:
    """The profile's default run (only the length and the evaluation set are fixed) evaluated
    every ``every`` steps on 512 validation pairs: the first step whose validation bpb is below
    the run's own bigram baseline (scored on the same pairs), and the training CPU time to it."""
    import torch

    from aeron_tui.commands.train import build_run_config

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="recipe-crossing-"))
    evals: list[dict[str, Any]] = []
    cfg, model_cfg = build_run_config(
        "simple", profile=profile,
        flags={"run_dir": str(work / "run"), "steps": steps, "seed": seed},
        sets=[f"eval_every={every}", f"checkpoint_every={10**9}", "keep_last=1",
              "sample_prompts=0"])
    cfg = cfg.with_overrides(eval_max_batches=max(1, 512 // (cfg.micro_batch or 1)))
    trainer = _trainer_class()(cfg, model_cfg,
                               listeners=[lambda e: evals.append(e) if e["type"] == "eval" else None])
    trainer.step_cpu = []
    trainer.run()
    bigram = evals[0]["baseline_bigram_bpb"]
    below = next((e["global_step"] for e in evals if e["bpb"] < bigram), None)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return {"seed": seed, "bigram_bpb": bigram, "unigram_bpb": evals[0]["baseline_unigram_bpb"],
            "crossing_step": below,
            "crossing_cpu_s": sum(trainer.step_cpu[:below]) if below else None,
            "curve": [(e["global_step"], round(e["bpb"], 4)) for e in evals],
            "lr": cfg.learning_rate, "schedule": cfg.lr_schedule, "micro_batch": cfg.micro_batch}


def spec_key(spec: dict[str, Any]) -> str:
    return json.dumps({k: spec[k] for k in sorted(spec) if k != "steps"}, sort_keys=True)


class Sweep:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.path: Path = args.results
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.done[row["key"]] = row

    # -- running ------------------------------------------------------------------------------
    def run_all(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run the specs not done yet, ``--jobs`` at a time; return every spec's result row."""
        todo = [s for s in specs if spec_key(s) not in self.done]
        env = dict(os.environ, GLIBC_TUNABLES=TUNABLES, OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        running: list[tuple[subprocess.Popen[str], dict[str, Any], float]] = []
        while todo or running:
            while todo and len(running) < self.args.jobs:
                spec = todo.pop(0)
                proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                running.append((proc, spec, time.time()))
            time.sleep(1.0)
            for item in list(running):
                proc, spec, t0 = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                out, err = proc.communicate()
                result = next((json.loads(line[7:]) for line in out.splitlines()
                               if line.startswith("RESULT ")), None)
                if result is None:
                    print(f"run failed: {spec}\n{err[-2000:]}", flush=True)
                    continue
                row = {"key": spec_key(spec), "spec": spec, **result}
                with open(self.path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                self.done[row["key"]] = row
                print(_describe(row), f"[{time.time() - t0:.0f}s wall]", flush=True)
        return [self.done[spec_key(s)] for s in specs if spec_key(s) in self.done]

    def cpu_per_step(self, shape: dict[str, Any]) -> float:
        spec = {"profile": self.args.profile, "seed": 0, "calibrate": "memory full", **shape}
        [row] = self.run_all([spec])
        return float(row["cpu_per_step"])

    def specs(self, recipe: dict[str, Any], seeds: list[int], budget: float,
              val_samples: int | None) -> list[dict[str, Any]]:
        # What changes a step's cost: the batch shape and the model (`set` holds --set overrides).
        shape = {k: recipe[k] for k in ("micro_batch", "seq_len", "reasoning", "set") if k in recipe}
        per_step = self.cpu_per_step(shape)
        steps = max(10, round(budget / per_step))
        # Runs at the profile's length were always scored at SCORE_SEQ_LEN; others say so.
        scored = ({} if recipe.get("seq_len") in (None, SCORE_SEQ_LEN)
                  else {"score_seq_len": SCORE_SEQ_LEN})
        return [{"profile": self.args.profile, **recipe, "seed": s, "budget": budget,
                 "steps": steps, "val_samples": val_samples, **scored} for s in seeds]

    def measure(self, recipes: list[dict[str, Any]], final: bool = False
                ) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        a = self.args
        seeds = a.final_seeds if final else a.seeds
        budget = a.final_budget if final else a.budget
        val = None if final else SWEEP_VAL_SAMPLES
        batches = [self.specs(r, seeds, budget, val) for r in recipes]
        if not final and len(seeds) > 1:
            # The first seed ranks every candidate; only those within --margin nats of the best
            # get the other seeds (a candidate far behind stays behind on any seed).
            first = self.run_all([b[0] for b in batches])
            by_key = {r["key"]: r for r in first}
            losses = [by_key[spec_key(b[0])]["val_loss"] if spec_key(b[0]) in by_key
                      else math.inf for b in batches]
            best = min(x for x in losses if x == x)
            batches = [b if loss <= best + a.margin else b[:1]
                       for b, loss in zip(batches, losses, strict=True)]
        rows = self.run_all([s for b in batches for s in b])
        by_key = {r["key"]: r for r in rows}
        return [(r, [by_key[spec_key(s)] for s in b if spec_key(s) in by_key])
                for r, b in zip(recipes, batches, strict=True)]

    # -- stages ---------------------------------------------------------------------------------
    def best(self, measured: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> dict[str, Any]:
        ok = [(r, rows) for r, rows in measured if rows and all(
            x["val_loss"] == x["val_loss"] for x in rows)]
        return min(ok, key=lambda m: statistics.mean(x["val_loss"] for x in m[1]))[0]

    def stage_lr(self) -> dict[str, Any]:
        base = BEFORE.get(self.args.profile, {})
        recipes = [{**base, "lr": lr} for lr in self.args.lrs]
        return self.best(self.measure(recipes))

    def stage_schedule(self, base: dict[str, Any]) -> dict[str, Any]:
        first = [base, {**base, "schedule": "constant_decay", "warmup_frac": 0.05}]
        chosen = self.best(self.measure(first))
        schedule = chosen.get("schedule", "cosine")
        warm = [{**base, "schedule": schedule, "warmup_frac": w} for w in (0.01, 0.05, 0.1)]
        if schedule == "cosine":
            warm[1] = chosen  # today's warmup is min(100, 5 %): the same run for these lengths
        return self.best(self.measure([*first, *warm]))

    def stage_shape(self, base: dict[str, Any]) -> dict[str, Any]:
        shapes = [{}, {"micro_batch": 16, "seq_len": 64}, {"micro_batch": 4, "seq_len": 256}]
        return self.best(self.measure([{**base, **s} for s in shapes]))

    def stage_reasoning(self, base: dict[str, Any]) -> dict[str, Any]:
        return self.best(self.measure([base, {**base, "reasoning": False}]))

    def stage_lonpt(self) -> None:
        """Each LONPT preset this machine can run (``--lonpt-presets``) at its own length on the
        tiny profile, over ``--lonpt-lrs``: is the preset's learning rate the best one?"""
        from lonpt.config import load_config

        a = self.args
        specs = []
        for preset in a.lonpt_presets:
            own = load_config(preset).learning_rate  # the preset's lr is always measured too
            for lr in sorted({own, *a.lonpt_lrs}):
                specs += [{"trainer": "lonpt", "profile": "tiny", "preset": preset, "lr": lr,
                           "seed": seed, "budget": 0.0, "val_samples": SWEEP_VAL_SAMPLES,
                           "score_seq_len": SCORE_SEQ_LEN} for seed in a.seeds]
        self.run_all(specs)

    def stage_final(self, chosen: dict[str, Any]) -> None:
        """The chosen recipe at the final budget on every final seed (the 5-CPU-minute claims:
        below the bigram, no divergence), and both it and today's default (lr stage, first
        ``--lrs`` value) on every final seed at the sweep budget (the equal-CPU comparison)."""
        a = self.args
        self.measure([chosen], final=True)
        today = {**BEFORE.get(a.profile, {}), "lr": a.lrs[0]}
        batches = [self.specs(r, a.final_seeds, a.budget, SWEEP_VAL_SAMPLES)
                   for r in (today, chosen)]
        self.run_all([s for b in batches for s in b])


def _describe(row: dict[str, Any]) -> str:
    spec = row["spec"]
    if spec.get("trainer") == "lonpt":
        return (f"LONPT {spec['preset']} lr {spec['lr']:g} seed {spec['seed']}: val "
                f"{row['val_loss']:.4f} nats, {row['val_bpb']:.4f} bpb, {row['steps']} steps, "
                f"{row['cpu_s']:.0f} CPU-s")
    if spec.get("calibrate"):
        return (f"calibration {spec}: {row['cpu_per_step'] * 1000:.0f} CPU-ms/step "
                f"({row['precision']})")
    return (f"{_label(spec, row)} seed {spec['seed']}: val {row['val_loss']:.4f} nats, "
            f"{row['val_bpb']:.4f} bpb, {row['steps']} steps, {row['cpu_s']:.0f} CPU-s")


def _label(spec: dict[str, Any], row: dict[str, Any] | None = None) -> str:
    """The recipe in words; with a result ``row``, what the run actually trained with (the
    schedule, warmup and batch shape it got from the profile where the spec left them out)."""
    if spec.get("trainer") == "lonpt":
        return f"LONPT {spec['preset']}, lr {spec['lr']:g}"
    got = row or {}
    parts = [f"lr {spec['lr']:g}" if spec.get("lr") is not None else "lr default"]
    parts.append(got.get("schedule") or spec.get("schedule") or "default schedule")
    if got.get("warmup_steps") is not None and got.get("steps"):
        parts.append(f"warmup {got['warmup_steps'] / got['steps']:.0%}")
    elif spec.get("warmup_frac") is not None:
        parts.append(f"warmup {spec['warmup_frac']:.0%}")
    if got.get("micro_batch") is not None:
        parts.append(f"{got['micro_batch']}×{got['seq_len']}")
    elif spec.get("micro_batch") is not None:
        parts.append(f"{spec['micro_batch']}×{spec['seq_len']}")
    if spec.get("reasoning") is False:
        parts.append("reasoning off")
    parts.extend(f"{key.removeprefix('model.')} {value}" for key, value in spec.get("set", {}).items())
    return ", ".join(parts)


# ==============================================================================================
# Report
# ==============================================================================================


def report(path: Path, profile: str, lonpt: bool = False) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        spec = row["spec"]
        if spec.get("calibrate") or spec["profile"] != profile or (
                spec.get("trainer") == "lonpt") != lonpt:
            continue
        if spec.get("seq_len") not in (None, SCORE_SEQ_LEN) and "score_seq_len" not in spec:
            continue  # an early run scored on its own (truncated) lengths: superseded
        label = _label(spec, row)
        groups.setdefault((label, spec["budget"]), []).append(row)
    lines = ["| recipe | CPU-s budget | steps | seeds | val loss (nats) | val bpb | "
             "CPU-s used | max train-loss rise |",
             "|---|---|---|---|---|---|---|---|"]
    for (label, budget), rs in sorted(groups.items(), key=lambda g: (g[0][1], _mean(g[1]))):
        lines.append(
            f"| {label} | {budget:.0f} | {rs[0]['steps']} | {len(rs)} | "
            f"{_spread([r['val_loss'] for r in rs])} | {_spread([r['val_bpb'] for r in rs])} | "
            f"{statistics.mean(r['cpu_s'] for r in rs):.0f} | "
            f"{max(r['max_loss_rise'] for r in rs):.2f} |")
    return "\n".join(lines)


def reference_lines(seq_len: int, val_samples: int | None) -> str:
    """The bigram and unigram baselines (core.data.ngram) on the very pairs the runs were scored
    on: the training split of the bundled corpus counted, the same validation subset scored."""
    from core.data.ngram import ngram_baselines
    from core.data.sample import ensure_sample_corpus
    from core.train.engine import cached_corpus_tokenizer, load_pairs

    path = ensure_sample_corpus().styles
    tok = cached_corpus_tokenizer(path, 2048)
    train, val = load_pairs(path, tok, seq_len)
    pairs = sorted(val, key=len)
    if val_samples is not None and len(pairs) > val_samples:
        stride = len(pairs) / val_samples
        pairs = [pairs[int(i * stride)] for i in range(val_samples)]
    found = ngram_baselines(train, pairs, tok.vocab_size)
    return (f"reference models on the same {len(pairs)} validation pairs (seq_len {seq_len}): "
            f"bigram {found.bigram_loss:.4f} nats / {found.bigram_bpb:.4f} bpb (k "
            f"{found.bigram_k:g}), unigram {found.unigram_loss:.4f} nats / "
            f"{found.unigram_bpb:.4f} bpb (k {found.unigram_k:g})")


def _mean(rs: list[dict[str, Any]]) -> float:
    return statistics.mean(r["val_loss"] for r in rs)


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


# ==============================================================================================


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--stage", choices=(*STAGES, "all", "lonpt", "extra", "crossing",
                                            "report"), default="all")
    parser.add_argument("--crossing-steps", type=int, default=500,
                        help="--stage crossing: length of the default run evaluated every 25 steps")
    parser.add_argument("--budget", type=float, default=120.0,
                        help="CPU seconds of training per sweep run")
    parser.add_argument("--final-budget", type=float, default=300.0,
                        help="CPU seconds of training per final run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--final-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+",
                        default=[3e-4, 1e-3, 2e-3, 4e-3, 1e-2],
                        help="the first one is today's default (the equal-CPU comparison)")
    parser.add_argument("--lonpt-presets", nargs="+", default=["smoke", "light"])
    parser.add_argument("--lonpt-lrs", type=float, nargs="+", default=[3e-4, 1e-3, 2e-3, 4e-3])
    parser.add_argument("--margin", type=float, default=0.1,
                        help="nats: sweep candidates this close to the best get every seed")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path,
                        default=Path(tempfile.gettempdir()) / "recipe-search" / "results.jsonl")
    parser.add_argument("--home", type=Path, default=None,
                        help="AERON_TUI_HOME (corpus and tokenizer cache; default: a temp dir)")
    parser.add_argument("--recipe", help="JSON recipe for the final stage instead of the sweep's "
                        "choice, e.g. '{\"lr\": 0.002, \"schedule\": \"constant_decay\"}' "
                        "(for --stage extra: a JSON list of recipes)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_one(json.loads(args.one))), flush=True)
        return 0
    if args.stage == "report":
        if args.home is not None:
            os.environ["AERON_TUI_HOME"] = str(args.home)
        print(report(args.results, args.profile))
        for val in (SWEEP_VAL_SAMPLES, None):
            print(reference_lines(128, val))
        print()
        print(report(args.results, args.profile, lonpt=True))
        return 0
    home = args.home or Path(tempfile.gettempdir()) / "recipe-search" / "home"
    os.environ["AERON_TUI_HOME"] = str(home)
    from core.data.sample import ensure_sample_corpus

    ensure_sample_corpus()  # built once here, before the children race to build it
    sweep = Sweep(args)
    if args.stage == "lonpt":
        sweep.stage_lonpt()
        print(report(args.results, args.profile, lonpt=True))
        return 0
    if args.stage == "crossing":
        for seed in args.seeds:
            print(json.dumps(crossing(args.profile, seed, args.crossing_steps, 25)), flush=True)
        return 0
    if args.stage == "extra":
        # One more recipe at the sweep budget on every --seeds seed (a check outside the chain).
        for recipe in json.loads(args.recipe):
            sweep.run_all(sweep.specs(recipe, args.seeds, args.budget, SWEEP_VAL_SAMPLES))
        print(report(args.results, args.profile))
        return 0
    last = STAGES.index("final" if args.stage == "all" else args.stage)
    recipe: dict[str, Any] = {}
    # Every stage up to the asked one runs in order (results already in the file are reused),
    # each starting from the best recipe of the stages before it.
    for stage in STAGES[: last + 1]:
        if stage == "lr":
            recipe = sweep.stage_lr()
        elif stage == "schedule":
            recipe = sweep.stage_schedule(recipe)
        elif stage == "shape":
            recipe = sweep.stage_shape(recipe)
        elif stage == "reasoning":
            recipe = sweep.stage_reasoning(recipe)
        else:
            recipe = json.loads(args.recipe) if args.recipe else recipe
            sweep.stage_final(recipe)
        print(f"after {stage}: {_label(recipe)}", flush=True)
    print(report(args.results, args.profile))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
