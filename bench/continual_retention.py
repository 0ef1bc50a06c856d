"""Continual-training retention on the bundled sample corpus (issue 10, continual.md §2, §5).

A tiny model is trained on the *old* corpus — the sample corpus's standard-library docstrings
and signatures (style labels ``qa`` and ``code``) — and then continued on the *new* corpus —
its arithmetic and word problems (``math`` and ``reasoning``) — with each recipe at the same
token budget and seed: plain fine-tuning, EWC (Fisher of the old model on the old corpus,
mean-normalised, the continual trainer's default λ unless ``--ewc-lambda``), replay (20 % old
samples) and the full recipe. The table gives validation bits per byte on both corpora before and after, the retained
fraction ``(BPB_fresh − BPB_after)/(BPB_fresh − BPB_before)`` and the CPU time of each run.

    .venv/bin/python bench/continual_retention.py                      # ≈ 3-5 min on 2 cores
    .venv/bin/python bench/continual_retention.py --recipes plain,ewc --ewc-lambda 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OLD_LABELS = ("qa", "code")
NEW_LABELS = ("math", "reasoning")

# A tiny backbone (d 64, one encoder and one decoder layer): trains in a few minutes on
# a shared CPU, big enough to fit the old corpus well before it is asked to forget it.
MODEL = dict(
    d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=128,
    max_position_embeddings=160, num_tot_branches=2, num_scratchpad_slots=4, memory_slots=16, memory_dim=32,
    memory_heads=4, kg_num_entities=32, kg_dim=16, num_tasks=4, enable_multimodal=False,
)


def split_corpus(styles: Path, out: Path) -> tuple[Path, Path]:
    """Write ``old.jsonl`` (docs) and ``new.jsonl`` (math, reasoning) from the sample corpus."""
    old_rows, new_rows = [], []
    for line in styles.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["style_label"] in OLD_LABELS:
            old_rows.append(line)
        elif row["style_label"] in NEW_LABELS:
            new_rows.append(line)
    old, new = out / "old.jsonl", out / "new.jsonl"
    old.write_text("\n".join(old_rows) + "\n", encoding="utf-8")
    new.write_text("\n".join(new_rows) + "\n", encoding="utf-8")
    return old, new


def run_config(run_dir: Path, data: Path, trainer: str, steps: int, args: argparse.Namespace,
               **options: Any) -> Any:
    from core.train.config import RunConfig

    return RunConfig(
        trainer=trainer, run_dir=str(run_dir), data=str(data), steps=steps, micro_batch=args.micro_batch,
        seq_len=args.seq_len, precision="fp32", device="cpu", log_every=50, eval_every=10**9,
        eval_max_batches=4, checkpoint_every=10**9, keep_last=1, tokenizer_vocab_size=512, seed=5,
        learning_rate=args.lr, warmup_steps=10, options=options,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-steps", type=int, default=600, help="training steps on the old corpus")
    parser.add_argument("--steps", type=int, default=150, help="continual steps on the new corpus (each recipe)")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--recipes", default="plain,ewc,replay,full")
    parser.add_argument("--ewc-lambda", type=float, default=None, help="default: the model config's")
    parser.add_argument("--ewc-batches", type=int, default=50)
    parser.add_argument("--retention-samples", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temp dir)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from core.data.sample import ensure_sample_corpus
    from core.model.config import NeuralNetConfig
    from core.runs.checkpoint import latest_checkpoint
    from core.train.continual_trainer import ContinualTrainer
    from core.train.simple import SimpleTrainer

    tmp = tempfile.TemporaryDirectory(prefix="aeron-continual-") if args.workdir is None else None
    root = args.workdir or Path(tmp.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    old, new = split_corpus(ensure_sample_corpus().styles, root)
    load = os.getloadavg()[0]

    t0 = time.process_time()
    base_dir = root / "base"
    if latest_checkpoint(base_dir) is None:
        status = SimpleTrainer(run_config(base_dir, old, "simple", args.base_steps, args),
                               NeuralNetConfig(**MODEL)).run()
        if status != "finished":
            raise SystemExit(f"base training ended with status {status}")
    base_cpu = time.process_time() - t0
    ckpt = latest_checkpoint(base_dir)
    assert ckpt is not None

    rows: dict[str, dict[str, Any]] = {}
    for recipe in args.recipes.split(","):
        options: dict[str, Any] = {"from": str(ckpt), "old_data": str(old), "recipe": recipe,
                                   "ewc_batches": args.ewc_batches, "retention_samples": args.retention_samples}
        if args.ewc_lambda is not None:
            options["ewc_lambda"] = args.ewc_lambda
        t0 = time.process_time()
        status = ContinualTrainer(run_config(root / recipe, new, "continual", args.steps, args, **options)).run()
        if status != "finished":
            raise SystemExit(f"{recipe}: continual run ended with status {status}")
        report = json.loads((root / recipe / "retention.json").read_text(encoding="utf-8"))
        report["cpu_s"] = time.process_time() - t0
        rows[recipe] = report

    from core.train.continual_trainer import NORMALIZED_EWC_LAMBDA

    lam = args.ewc_lambda if args.ewc_lambda is not None else NORMALIZED_EWC_LAMBDA
    print(f"old corpus: sample {'+'.join(OLD_LABELS)}; new corpus: sample {'+'.join(NEW_LABELS)}; "
          f"base {args.base_steps} steps ({base_cpu:.0f} s CPU), continual {args.steps} steps each, "
          f"micro-batch {args.micro_batch}, seq_len {args.seq_len}, lr {args.lr}, ewc_lambda {lam:g} on F/mean(F) "
          f"({args.ewc_batches} Fisher batches), "
          f"{args.threads} thread(s), load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print(f"fresh (untrained) old-corpus bpb: {next(iter(rows.values()))['fresh_old_bpb']:.3f}")
    plain = rows.get("plain")
    print("| recipe | old bpb before | old bpb after | new bpb before | new bpb after | retained | "
          "old after vs plain | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        ratio = r["after"]["old"]["bpb"] / plain["after"]["old"]["bpb"] if plain else float("nan")
        print(f"| {name} | {r['before']['old']['bpb']:.3f} | {r['after']['old']['bpb']:.3f} | "
              f"{r['before']['new']['bpb']:.3f} | {r['after']['new']['bpb']:.3f} | "
              f"{r['retained_fraction']:.1%} | {ratio:.2f} | {r['cpu_s']:.0f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
