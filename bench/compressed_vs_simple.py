"""Compressed vs. simple trainer: optimizer-state memory and validation loss at an equal budget.

    .venv/bin/python bench/compressed_vs_simple.py [--steps 300] [--seeds 0] [--profile tiny]
        [--seq-len 64] [--threads 2]

Both trainers run the same size profile on the bundled sample corpus with the same seed, data
order, steps, micro-batch, learning-rate schedule and precision; they differ only in the
optimizer (torch AdamW with fp32 moments vs. CompressedAdamW with per-component quantised
moments). Reported per run:

* optimizer-state bytes, counted from the optimizers' actual state tensors after training
  (AdamW: fp32 ``exp_avg``/``exp_avg_sq``/``step``; compressed: codes + per-block scales +
  step counters, per component group) — target: compressed ≥ 3× smaller;
* the final validation loss (token-weighted CE over the same validation batches) — target:
  compressed within 3 % of simple;
* seconds per optimizer step (the machine is shared, so timings are noisy).

Nothing is estimated: every number comes from the runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor in the optimizer's state (what a checkpoint's optimizer.pt holds)."""
    import torch

    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


def run_one(trainer: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from aeron_tui.commands.train import build_run_config
    from aeron_tui.trainers import get_trainer

    sets = [f"seed={seed}", f"eval_every={args.steps}", f"checkpoint_every={args.steps}",
            f"eval_max_batches={args.val_batches}", "log_every=10", "device='cpu'"]
    if args.seq_len:
        sets.append(f"seq_len={args.seq_len}")
    flags = {"run_dir": str(root / f"{trainer}-{seed}"), "steps": args.steps}
    cfg, model_cfg = build_run_config(trainer, profile=args.profile, flags=flags, sets=sets)
    instance = get_trainer(trainer).load()(cfg, model_cfg)
    t0 = time.perf_counter()
    status = instance.run()
    wall = time.perf_counter() - t0
    assert status == "finished", status
    result: dict[str, Any] = {
        "trainer": trainer,
        "seed": seed,
        "val_loss": float(instance.best_val_loss if instance.last_val_loss is None
                          else instance.last_val_loss),
        "state_bytes": optimizer_state_bytes(instance.optimizer),
        "s_per_step": wall / args.steps,
        "precision": instance.precision,
        "params": sum(p.numel() for p in instance.model.parameters()),
        "trained_params": sum(p.numel() for p in instance.optimizer.state),
    }
    if hasattr(instance.optimizer, "state_bytes"):
        result["groups"] = instance.optimizer.state_bytes()
        result["bits"] = instance.optimizer.components()
        result["promotions"] = list(getattr(instance, "promotions", []))
        result["rollbacks"] = int(getattr(instance, "rollbacks", 0))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--val-batches", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("AERON_TUI_HOME", tempfile.mkdtemp(prefix="aeron-bench-home-"))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aeron-bench-cvs-") as tmp:
        for seed in args.seeds:
            for trainer in ("simple", "compressed"):
                row = run_one(trainer, seed, args, Path(tmp))
                rows.append(row)
                print(f"  done: {trainer} seed {seed}: val {row['val_loss']:.4f}, "
                      f"state {row['state_bytes'] / 2**20:.2f} MiB", flush=True)

    print(f"\ncompressed vs simple — profile {args.profile}, {args.steps} steps, "
          f"seq_len {args.seq_len}, seeds {args.seeds}, precision {rows[0]['precision']}, "
          f"{rows[0]['params']:,} parameters ({rows[0]['trained_params']:,} with gradients)")
    print(f"{'trainer':<11} {'seed':>4} {'opt state MiB':>14} {'val loss':>9} {'s/step':>7}")
    for r in rows:
        print(f"{r['trainer']:<11} {r['seed']:>4} {r['state_bytes'] / 2**20:>14.3f} "
              f"{r['val_loss']:>9.4f} {r['s_per_step']:>7.3f}")
    ratios, gaps = [], []
    for seed in args.seeds:
        simple = next(r for r in rows if r["seed"] == seed and r["trainer"] == "simple")
        comp = next(r for r in rows if r["seed"] == seed and r["trainer"] == "compressed")
        ratio = simple["state_bytes"] / comp["state_bytes"]
        gap = (comp["val_loss"] - simple["val_loss"]) / simple["val_loss"]
        ratios.append(ratio)
        gaps.append(gap)
        groups = ", ".join(
            f"{g} {comp['bits'][g]}-bit {b / 2**20:.3f} MiB" for g, b in comp["groups"].items()
        )
        print(f"seed {seed}: state ratio {ratio:.2f}x (target >= 3), val loss gap "
              f"{100 * gap:+.2f} % (target within 3 %); groups: {groups}; promotions "
              f"{comp['promotions'] or 'none'}, rollbacks {comp['rollbacks']}")
    print(f"mean: state ratio {statistics.mean(ratios):.2f}x, val loss gap "
          f"{100 * statistics.mean(gaps):+.2f} %")


if __name__ == "__main__":
    main()
