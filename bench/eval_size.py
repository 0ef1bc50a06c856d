"""How big the default evaluation must be, and what it costs (issue 16, "Default eval_max_batches").

    .venv/bin/python bench/eval_size.py [--profile tiny] [--steps 150] [--lr 2e-3]

Trains the profile briefly on the bundled corpus (1 thread), then

* scores every validation sample on its own and reports the standard error of the
  token-weighted validation loss estimated from n samples — by the ratio-estimator formula and
  over 400 random subsets — and the bias of the engine's length-spread subset of n samples
  against the whole split;
* times, in paired rounds in one process (CPU time), a training step and the forward pass of
  validation batches of the same size: the forward cost the engine's evaluation sizing uses.

Re-executes itself with the launcher's glibc malloc tunables.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_common import MALLOC_TUNABLES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    if os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        os.execv(sys.executable, [sys.executable, *sys.argv])
    os.environ.setdefault("AERON_TUI_HOME", tempfile.mkdtemp(prefix="eval-size-"))

    import torch

    from aeron_tui.commands.train import build_run_config
    from core.data.loader import collate
    from core.train.simple import SimpleTrainer

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="eval-size-run-"))
    cfg, model = build_run_config(
        "simple", profile=args.profile,
        flags={"run_dir": str(work / "run"), "steps": args.steps, "seed": args.seed,
               "learning_rate": args.lr},
        sets=[f"eval_every={10**9}", f"checkpoint_every={10**9}", "eval_max_batches=1",
              "sample_prompts=0"])
    trainer = SimpleTrainer(cfg, model)
    trainer.run()
    pairs = trainer.val_pairs
    nats: list[float] = []
    toks: list[int] = []
    trainer.train_model.eval()
    with torch.no_grad():
        for p in pairs:
            with trainer.autocast():
                loss, _, n = trainer.compute_loss(collate([p]))
            nats.append(float(loss) * int(n))
            toks.append(int(n))
    size = len(pairs)
    full = sum(nats) / sum(toks)
    print(f"{args.profile}, {args.steps} steps at lr {args.lr:g} (seed {args.seed}): "
          f"{size} validation samples, loss over all of them {full:.4f} nats")
    tbar = statistics.mean(toks)
    sd = statistics.pstdev([x - full * t for x, t in zip(nats, toks, strict=True)]) / tbar
    order = sorted(range(size), key=lambda i: len(pairs[i]))
    rng = random.Random(0)
    print("| samples | SE (formula) | SE (400 random subsets) | length-spread subset | its bias |")
    print("|---|---|---|---|---|")
    for n in (32, 64, 128, 256, 512, 800):
        if n >= size:
            break
        se = sd / math.sqrt(n) * math.sqrt((size - n) / (size - 1))
        stride = size / n
        idx = [order[int(i * stride)] for i in range(n)]
        spread = sum(nats[i] for i in idx) / sum(toks[i] for i in idx)
        draws = []
        for _ in range(400):
            pick = rng.sample(range(size), n)
            draws.append(sum(nats[i] for i in pick) / sum(toks[i] for i in pick))
        print(f"| {n} | {se:.4f} | {statistics.pstdev(draws):.4f} | {spread:.4f} | "
              f"{spread - full:+.4f} |")

    mb = trainer.micro_batch
    batches = [collate(pairs[i:i + mb]) for i in range(0, min(size, 40 * mb), mb)]
    ratios = []
    for rnd in range(args.rounds):
        t0 = time.process_time()
        trainer.train_step()
        t_train = time.process_time() - t0
        t0 = time.process_time()
        for _ in range(trainer.grad_accum):
            trainer.evaluate([batches[rnd % len(batches)]])
        t_eval = time.process_time() - t0
        if rnd >= 2:  # the first rounds warm the allocator and caches
            ratios.append(t_eval / t_train)
    print(f"forward pass of a validation batch / training step on as many samples (CPU time, "
          f"paired, {len(ratios)} rounds): median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
