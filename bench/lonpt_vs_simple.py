"""LONPT vs. the simple trainer at the same token budget and seed (issue 6's experiment).

    .venv/bin/python bench/lonpt_vs_simple.py [--seeds 0 1 2] [--steps-per-domain 20]
        [--cycles 2] [--seq-len 64] [--ablate auto|always|never] [--threads 1]

The tiny profile on the bundled sample corpus. For each seed: a LONPT run (the ``light`` preset
with the tiny profile's learning rate 3e-4, all data, batch 4 that ACT may grow), then a simple
run (engine defaults: warmup + cosine, micro-batch 8) with as many samples as LONPT consumed.
Both final models are scored on the same held-out set (the corpus's hash validation split,
``--val-batches`` batches of 8), so the numbers are comparable. Training throughput is
tokens / time spent inside optimizer steps (validation and checkpoints excluded); the wall time
of the whole run is shown too. If LONPT's mean validation loss is worse, each module (PNCEC,
ACT, HPF, AKAP) is switched off in turn (``--ablate auto``) to see which one costs.

Every figure comes from the runs themselves; the machine is shared, so timings are noisy.
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

# Keeping freed memory (GUIDE "Measured on this kind of machine") removes most step-time noise.
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"

# Each variant keeps the token budget: without ACT the micro-batch stays at 4, so twice the
# steps; without AKAP there is one domain, so three times the steps per (single) domain.
ABLATIONS = {
    "no PNCEC": ({"pncec_enable": False}, 1),
    "no ACT": ({"act_enable": False}, 2),
    "no HPF": ({"hpf_enable": False}, 1),
    "no AKAP": ({"akap_enable": False}, 3),
}


class _Counting:
    """Mixin: counts training tokens/samples and the time spent in optimizer steps."""

    tokens_seen = 0
    samples_seen = 0
    step_time = 0.0

    def next_batch(self) -> Any:
        batch = super().next_batch()  # type: ignore[misc]
        self.tokens_seen += int(batch["attention_mask"].sum()) + int(
            batch["decoder_attention_mask"].sum())
        self.samples_seen += int(batch["input_ids"].shape[0])
        return batch

    def train_step(self) -> None:
        t0 = time.perf_counter()
        super().train_step()  # type: ignore[misc]
        self.step_time += time.perf_counter() - t0


def _classes() -> tuple[type, type]:
    from core.train.simple import SimpleTrainer
    from lonpt.trainer import LonptTrainer

    class CountingLonpt(_Counting, LonptTrainer):
        pass

    class CountingSimple(_Counting, SimpleTrainer):
        pass

    return CountingLonpt, CountingSimple


def _common_val_batches(trainer: Any, styles: Path, n_batches: int) -> list[Any]:
    """The corpus's hash validation split, length-spread, ``n_batches`` batches of 8."""
    from core.data.formatting import encode_styles_sample
    from core.data.loader import collate
    from core.data.styles import read_styles, split_samples

    _, val = split_samples(read_styles(styles))
    pairs = sorted((encode_styles_sample(s, trainer.tokenizer, trainer.seq_len) for s in val), key=len)
    limit = n_batches * 8
    if len(pairs) > limit:
        stride = len(pairs) / limit
        pairs = sorted((pairs[int(i * stride)] for i in range(limit)), key=len)
    return [collate(pairs[i:i + 8]) for i in range(0, len(pairs), 8)]


def _run(cls: type, cfg: Any, model_cfg: Any, styles: Path, val_batches: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    trainer = cls(cfg, model_cfg)
    status = trainer.run()
    wall = time.perf_counter() - t0
    if status != "finished":
        raise RuntimeError(f"{cfg.trainer} run ended {status}")
    result = trainer.evaluate(_common_val_batches(trainer, styles, val_batches))
    return {
        "val_loss": result["loss"],
        "tokens": trainer.tokens_seen,
        "samples": trainer.samples_seen,
        "steps": trainer.global_step,
        "tok_s": trainer.tokens_seen / max(1e-9, trainer.step_time),
        "wall_s": wall,
        "params": sum(p.numel() for p in trainer.model.parameters()),
    }


def _lonpt_cfg(run_dir: Path, styles: Path, seed: int, args: argparse.Namespace,
               extra: dict[str, Any]) -> Any:
    from core.train.config import RunConfig

    options: dict[str, Any] = {
        "preset": "light", "dataset_fraction": 1.0, "domain_cycles": args.cycles,
        "steps_per_domain": args.steps_per_domain, "val_max_batches": 10, "log_every": 10,
        **extra,
    }
    return RunConfig(trainer="lonpt", profile="tiny", run_dir=str(run_dir), data=str(styles),
                     seed=seed, seq_len=args.seq_len, learning_rate=3e-4, precision="fp32",
                     device="cpu", tokenizer_vocab_size=2048, options=options)


def _simple_cfg(run_dir: Path, styles: Path, seed: int, steps: int, args: argparse.Namespace) -> Any:
    from core.train.config import RunConfig

    return RunConfig(trainer="simple", profile="tiny", run_dir=str(run_dir), data=str(styles),
                     seed=seed, steps=steps, micro_batch=8, seq_len=args.seq_len,
                     learning_rate=3e-4, precision="fp32", device="cpu",
                     tokenizer_vocab_size=2048, eval_every=10_000, checkpoint_every=10_000,
                     keep_last=1, log_every=10)


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps-per-domain", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--val-batches", type=int, default=40)
    parser.add_argument("--ablate", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--ablation-seeds", type=int, default=2,
                        help="seeds (the first N of --seeds) per ablation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--home", type=Path, default=None,
                        help="AERON_TUI_HOME for the corpus/tokenizer cache (default: a temp dir)")
    args = parser.parse_args()

    if os.environ.get("GLIBC_TUNABLES") is None:
        os.environ["GLIBC_TUNABLES"] = TUNABLES
        os.execv(sys.executable, [sys.executable, *sys.argv])  # the allocator reads it at start

    home = args.home or Path(tempfile.mkdtemp(prefix="lonpt-bench-"))
    os.environ["AERON_TUI_HOME"] = str(home)
    import shutil

    import torch

    from core.data.sample import ensure_sample_corpus
    from profiles.catalog import load_profile

    torch.set_num_threads(args.threads)
    styles = ensure_sample_corpus().styles
    model_cfg = load_profile("tiny").model
    lonpt_cls, simple_cls = _classes()
    work = Path(tempfile.mkdtemp(prefix="lonpt-bench-runs-"))
    t_start = time.perf_counter()

    def lonpt_run(seed: int, extra: dict[str, Any], tag: str) -> dict[str, Any]:
        run_dir = work / f"lonpt-{tag}-{seed}"
        out = _run(lonpt_cls, _lonpt_cfg(run_dir, styles, seed, args, extra), model_cfg, styles,
                   args.val_batches)
        shutil.rmtree(run_dir, ignore_errors=True)
        return out

    print(f"tiny profile, sample corpus {styles}, seq_len {args.seq_len}, seeds {args.seeds}, "
          f"{args.threads} thread(s)")
    rows: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    for seed in args.seeds:
        lon = lonpt_run(seed, {}, "full")
        steps = max(1, round(lon["samples"] / 8))
        run_dir = work / f"simple-{seed}"
        sim = _run(simple_cls, _simple_cfg(run_dir, styles, seed, steps, args), model_cfg, styles,
                   args.val_batches)
        shutil.rmtree(run_dir, ignore_errors=True)
        rows.append((seed, lon, sim))
        print(f"seed {seed}: LONPT val {lon['val_loss']:.4f} ({lon['steps']} steps, "
              f"{lon['tokens']:,} tok, {lon['tok_s']:,.0f} tok/s, {lon['wall_s']:.0f}s wall) | "
              f"simple val {sim['val_loss']:.4f} ({sim['steps']} steps, {sim['tokens']:,} tok, "
              f"{sim['tok_s']:,.0f} tok/s, {sim['wall_s']:.0f}s wall)", flush=True)

    lon_loss = [r[1]["val_loss"] for r in rows]
    sim_loss = [r[2]["val_loss"] for r in rows]
    lon_tps = statistics.mean(r[1]["tok_s"] for r in rows)
    sim_tps = statistics.mean(r[2]["tok_s"] for r in rows)
    lon_tok = statistics.mean(r[1]["tokens"] for r in rows)
    sim_tok = statistics.mean(r[2]["tokens"] for r in rows)
    print()
    print("| trainer | params | steps | train tokens | final val loss (mean ± sd) | tokens/s (steps only) | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, idx in (("LONPT (light, tiny)", 1), ("simple", 2)):
        runs = [r[idx] for r in rows]
        print(f"| {name} | {runs[0]['params']:,} | {statistics.mean(x['steps'] for x in runs):.0f} | "
              f"{statistics.mean(x['tokens'] for x in runs):,.0f} | "
              f"{_mean_spread([x['val_loss'] for x in runs])} | "
              f"{statistics.mean(x['tok_s'] for x in runs):,.0f} | "
              f"{statistics.mean(x['wall_s'] for x in runs):.0f} |")
    print()
    print(f"val loss LONPT − simple: {statistics.mean(lon_loss) - statistics.mean(sim_loss):+.4f} "
          f"(per seed: {', '.join(f'{a - b:+.4f}' for a, b in zip(lon_loss, sim_loss, strict=True))})")
    print(f"tokens/s ratio LONPT / simple: {lon_tps / sim_tps:.3f} "
          f"(overhead {100 * (1 - lon_tps / sim_tps):+.1f} %); "
          f"token budget ratio {lon_tok / sim_tok:.3f}")

    lonpt_loses = statistics.mean(lon_loss) > statistics.mean(sim_loss)
    if args.ablate == "always" or (args.ablate == "auto" and lonpt_loses):
        seeds = args.seeds[: max(1, args.ablation_seeds)]
        base = [r[1]["val_loss"] for r in rows if r[0] in seeds]
        print()
        print(f"Ablations (each module off, seeds {seeds}; LONPT full on these seeds: "
              f"{_mean_spread(base)}):")
        print("| variant | final val loss | Δ vs LONPT full | train tokens | tokens/s | steps |")
        print("|---|---|---|---|---|---|")
        for name, (extra, factor) in ABLATIONS.items():
            extra = {**extra, "steps_per_domain": args.steps_per_domain * factor}
            runs = [lonpt_run(seed, extra, name.replace(" ", "_")) for seed in seeds]
            losses = [x["val_loss"] for x in runs]
            print(f"| {name} | {_mean_spread(losses)} | "
                  f"{statistics.mean(losses) - statistics.mean(base):+.4f} | "
                  f"{statistics.mean(x['tokens'] for x in runs):,.0f} | "
                  f"{statistics.mean(x['tok_s'] for x in runs):,.0f} | "
                  f"{statistics.mean(x['steps'] for x in runs):.0f} |", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
