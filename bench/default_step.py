"""A profile's default training step as `make run` trains it: what its parts cost, paired.

`make run` trains the tiny profile on the bundled corpus at 16 sequences a step. Its samples are
short (about 35 encoder and 26 decoder tokens), so the step is small and every fixed cost shows.
This bench builds the real trainer (`aeron-tui train simple --profile P`, the CLI's own run
config), takes ten real batches and replays them with the neural memory's bank full (1,000
slots: a run fills it within its first 1000 / batch steps, and the read scores every written
slot, so a step costs more as the bank fills; the bench fills it directly). Variants, timed
interleaved round after round, median process CPU time per optimizer step, one thread:

* ``default``: the profile as it trains;
* ``reasoning off``: ``--set model.enable_reasoning=false`` — the reasoning engine's share is
  (default − off) / default;
* ``memory off``: ``--set model.enable_memory=false``;
* ``fused memory read``: the memory read on SDPA with the bank copied per sample (the read
  before this bench; the GPU's) — the CPU's shared-bank read is paired against it;
* ``catalog bank``: the memory bank of the model catalog (1,000 slots × 512, 8 heads) instead of
  the profile's own.

    .venv/bin/python bench/default_step.py [--profile tiny] [--rounds 6] [--steps 10] [--set K=V ...]

The replay starts from a fresh model, whose reasoning engine runs on every sample. In a real run
the engine's complexity gate learns to skip samples, and when it skips a whole micro-batch the
engine costs nothing that step (spec §5 step 1). ``--whole-run N`` measures that: the real
default run for N steps, reasoning engine on and off, the two arms at the same time (one thread
each, so the box's load falls on both alike), per seed; it reports the training steps' total
CPU time of each arm, the engine's share of it and the share of samples the engine reasoned on.

    .venv/bin/python bench/default_step.py --whole-run 600 --seeds 0 1

Figures: bench/RESULTS.md, ## default_step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("default", "reasoning off", "memory off", "fused memory read", "catalog bank")
# The model catalog's neural memory bank (NeuralNetConfig's defaults), for profiles that size
# their own (tiny: 256 x 256 in 4 heads).
CATALOG_BANK = {"model.memory_slots": "1000", "model.memory_dim": "512", "model.memory_heads": "8"}


def make_trainer(variant: str, profile: str, seed: int, sets: dict[str, str]) -> Any:
    from recipe_search import run_config_for

    from core.train.simple import SimpleTrainer

    spec: dict[str, Any] = {"profile": profile, "seed": seed,
                            "set": {**sets, **(CATALOG_BANK if variant == "catalog bank" else {})}}
    if variant == "reasoning off":
        spec["reasoning"] = False
    cfg, model_cfg = run_config_for(spec, Path(tempfile.mkdtemp(prefix="default-step-")) / "run", 10**6)
    if variant == "memory off":
        from dataclasses import replace

        model_cfg = replace(model_cfg, enable_memory=False)
    trainer = SimpleTrainer(cfg, model_cfg, listeners=[])
    trainer.setup()
    memory = getattr(trainer.model, "neural_memory", None)
    if variant == "fused memory read":
        assert memory is not None
        memory._shared_bank_read = memory._fused_read  # the instance reads as the GPU does
    return trainer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per variant per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a run-config override as `aeron-tui train --set` takes it, e.g. "
                         "model.memory_slots=1000")
    ap.add_argument("--whole-run", type=int, default=0, metavar="STEPS",
                    help="time whole default runs of STEPS steps, reasoning on and off")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="with --whole-run")
    ap.add_argument("--one-run", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sets = dict(item.split("=", 1) for item in args.set)
    if args.one_run:
        print("RESULT " + json.dumps(one_run(json.loads(args.one_run))), flush=True)
        return 0
    if args.whole_run:
        return whole_runs(args.profile, args.whole_run, args.seeds, sets)

    import torch

    torch.set_num_threads(1)
    trainers = {v: make_trainer(v, args.profile, args.seed, sets) for v in VARIANTS}
    batches = [trainers["default"].next_batch() for _ in range(10)]
    shape = {k: tuple(v.shape) for k, v in batches[0].items() if k.endswith("input_ids")}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for trainer in trainers.values():
        replay = itertools.cycle(batches)
        trainer.next_batch = lambda replay=replay: next(replay)
        memory = getattr(trainer.model, "neural_memory", None)
        if memory is not None:
            gen = torch.Generator().manual_seed(args.seed)
            bank = torch.randn(2, memory.num_slots, memory.memory_dim, generator=gen)
            memory.write(bank[0], bank[1])
        for _ in range(3):  # warm-up
            trainer.train_step()
    for _ in range(args.rounds):
        for variant, trainer in trainers.items():
            for _ in range(args.steps):
                t = time.process_time()
                trainer.train_step()
                cpu[variant].append(time.process_time() - t)
    med = {v: statistics.median(x) * 1e3 for v, x in cpu.items()}
    iqr = {v: (statistics.quantiles(x, n=4)[2] - statistics.quantiles(x, n=4)[0]) * 1e3
           for v, x in cpu.items()}
    params = {v: sum(p.numel() for p in t.model.parameters()) for v, t in trainers.items()}
    print(f"{args.profile} default step{' with ' + ', '.join(args.set) if args.set else ''}, "
          f"batch shapes {shape}, {args.rounds} rounds x {args.steps} steps, 1 thread, "
          "memory bank full")
    print("| variant | params | CPU ms / step | IQR ms | vs default |")
    print("|---|---|---|---|---|")
    for v in VARIANTS:
        print(f"| {v} | {params[v]:,} | {med[v]:.1f} | {iqr[v]:.1f} | "
              f"{med[v] / med['default']:.2f}× |")
    share = (med["default"] - med["reasoning off"]) / med["default"]
    mem_share = (med["default"] - med["memory off"]) / med["default"]
    print(f"reasoning engine share of the step: {share:.1%}; neural memory share: {mem_share:.1%}; "
          f"shared-bank memory read vs fused: step {med['fused memory read'] / med['default']:.2f}× "
          f"cheaper; the catalog's bank costs {med['catalog bank'] / med['default']:.2f}× the "
          "profile's")
    return 0


def one_run(spec: dict[str, Any]) -> dict[str, Any]:
    """One default run of ``spec["steps"]`` steps: CPU time of its training steps and the share of
    samples the reasoning engine ran on (step events: 1 − ``reasoning_skipped_frac``)."""
    import torch
    from recipe_search import _trainer_class, run_config_for

    torch.set_num_threads(1)
    run_spec: dict[str, Any] = {"profile": spec["profile"], "seed": spec["seed"],
                                "set": spec["set"]}
    if not spec["reasoning"]:
        run_spec["reasoning"] = False
    run_dir = Path(tempfile.mkdtemp(prefix="default-run-")) / "run"
    cfg, model_cfg = run_config_for(run_spec, run_dir, spec["steps"])
    skipped: list[float] = []

    def listen(event: dict[str, Any]) -> None:
        if event["type"] == "step" and event.get("reasoning_skipped_frac") is not None:
            skipped.append(float(event["reasoning_skipped_frac"]))

    trainer = _trainer_class()(cfg, model_cfg, listeners=[listen])
    trainer.step_cpu = []
    trainer.run()
    return {"steps": len(trainer.step_cpu), "step_cpu_s": sum(trainer.step_cpu),
            "reasoned": 1.0 - statistics.fmean(skipped) if skipped else None}


def whole_runs(profile: str, steps: int, seeds: list[int], overrides: dict[str, str]) -> int:
    print(f"{profile} default run, {steps} steps, reasoning on and off at the same time, 1 thread each")
    print("| seed | on: step CPU-s | off: step CPU-s | engine share | samples reasoned on |")
    print("|---|---|---|---|---|")
    for seed in seeds:
        procs = {}
        for reasoning in (True, False):
            spec = {"profile": profile, "seed": seed, "steps": steps, "set": overrides,
                    "reasoning": reasoning}
            procs[reasoning] = subprocess.Popen(
                [sys.executable, __file__, "--one-run", json.dumps(spec)],
                stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        got = {}
        for reasoning, proc in procs.items():
            out, _ = proc.communicate()
            line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"seed {seed}: the run with reasoning {'on' if reasoning else 'off'} failed",
                      file=sys.stderr)
                return 1
            got[reasoning] = json.loads(line[7:])
        on, off = got[True], got[False]
        share = (on["step_cpu_s"] - off["step_cpu_s"]) / on["step_cpu_s"]
        reasoned = "—" if on["reasoned"] is None else f"{on['reasoned']:.0%}"
        print(f"| {seed} | {on['step_cpu_s']:.1f} | {off['step_cpu_s']:.1f} | {share:.1%} | "
              f"{reasoned} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
