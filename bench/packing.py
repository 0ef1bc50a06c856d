"""Sequence packing: padding and training throughput, packed vs unpacked (issue 16).

For a corpus (default: the bundled sample corpus; ``--data`` takes a styles.jsonl, a .txt file
or a directory of .txt files, encoded as training encodes it) this prints

* the share of padding among all encoder + decoder positions over one epoch of the training
  loader's batches, unpacked and packed at each ``--pack-lengths`` row length;
* target tokens per CPU-second of real training steps (the profile's model with every stage
  the trainer builds, AdamW, the run's precision) on the same batches of samples, unpacked vs
  packed, in paired interleaved rounds (CPU time of this process: the machine is shared).

    .venv/bin/python bench/packing.py                                  # bundled corpus, tiny
    .venv/bin/python bench/packing.py --data /usr/share/vim/vim90/doc/usr_05.txt
    .venv/bin/python bench/packing.py --profile small --batches 4 --rounds 3

One thread (``torch.set_num_threads(1)``), like the other CPU figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import MALLOC_TUNABLES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="corpus path (default: the bundled corpus)")
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--seq-len", type=int, default=None, help="default: the profile's")
    ap.add_argument("--batch", type=int, default=None, help="samples per micro-batch "
                    "(default: the profile's)")
    ap.add_argument("--pack-lengths", default="", help="comma-separated row lengths to compare "
                    "(default: the seq len)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--batches", type=int, default=30, help="batches per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=2048, help="tokenizer vocabulary (as a run)")
    ap.add_argument("--backbone-only", action="store_true",
                    help="switch the enhancement stages and the reasoning engine off")
    ap.add_argument("--reasoning-share", action="store_true",
                    help="also time the unpacked batches with the reasoning engine off")
    ap.add_argument("--keep-malloc", action="store_true")
    args = ap.parse_args(argv)
    if not args.rounds:
        ap.error("--rounds must be >= 1")
    if not args.keep_malloc and os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import torch

    from core.data.loader import BatchLoader, collate, collate_packed, padding_fraction
    from core.data.sample import ensure_sample_corpus
    from core.model.model import TransformerNeuralNetBackbone
    from core.model.precision import default_precision
    from core.train.engine import cached_corpus_tokenizer, load_pairs
    from profiles.catalog import load_profile

    torch.set_num_threads(1)
    profile = load_profile(args.profile)
    seq_len = args.seq_len or profile.train.seq_len
    batch = args.batch or profile.train.micro_batch
    lengths = [int(x) for x in args.pack_lengths.split(",") if x] or [seq_len]
    path = Path(args.data) if args.data else ensure_sample_corpus().styles
    tok = cached_corpus_tokenizer(path, args.vocab)
    train, _ = load_pairs(path, tok, seq_len)
    precision = default_precision("cpu") if args.precision == "auto" else args.precision
    print(f"corpus {path}: {len(train)} training samples, seq_len {seq_len}, batch {batch}, "
          f"profile {args.profile}, {precision}, torch {torch.__version__}, 1 thread")

    def epoch(pack: int | None) -> list[dict[str, torch.Tensor]]:
        loader = BatchLoader(train, batch, seed=1, pack_length=pack)
        return [next(loader) for _ in range(loader.batches_per_epoch)]

    base = epoch(None)
    print(f"\npadding share of encoder+decoder positions, one epoch ({len(base)} batches)")
    print(f"  unpacked (length-bucketed): {padding_fraction(base) * 100:5.1f} %  "
          f"rows/batch {statistics.mean(b['input_ids'].shape[0] for b in base):.2f}")
    for n in lengths:
        packed = epoch(n)
        rows = statistics.mean(b["input_ids"].shape[0] for b in packed)
        print(f"  packed, rows of {n:4d}:     {padding_fraction(packed) * 100:5.1f} %  "
              f"rows/batch {rows:.2f}")

    # Throughput: the same samples, unpacked vs packed, each variant on its own model copy.
    loader = BatchLoader(train, batch, seed=1)
    sample_batches = [loader.next_pairs() for _ in range(args.batches)]
    config = profile.model.replace(vocab_size=tok.vocab_size,
                                   max_position_embeddings=max(seq_len + 2, 64))
    if args.backbone_only:
        config = config.replace(**dict.fromkeys(
            ("enable_multimodal", "enable_knowledge_graph", "enable_memory", "enable_continual",
             "enable_uncertainty", "enable_active_learning", "enable_reasoning"), False))
    torch.manual_seed(0)
    model = TransformerNeuralNetBackbone(config).train()
    variants: dict[str, list[dict[str, torch.Tensor]]] = {
        "unpacked": [collate(p) for p in sample_batches]}
    for n in lengths:
        variants[f"packed {n}"] = [collate_packed(p, n) for p in sample_batches]
    models = {name: copy.deepcopy(model) for name in variants}
    if args.reasoning_share:
        torch.manual_seed(0)
        variants["unpacked, no reasoning"] = variants["unpacked"]
        models["unpacked, no reasoning"] = TransformerNeuralNetBackbone(
            config.replace(enable_reasoning=False)).train()
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
            for name, m in models.items()}
    targets = sum(int((b["labels"] != -100).sum()) for b in variants["unpacked"])
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else torch.autocast("cpu", enabled=False))
    keys = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask",
            "labels", "segment_ids", "decoder_segment_ids")

    def run(name: str) -> float:
        model, opt = models[name], opts[name]
        start = time.process_time()
        for b in variants[name]:
            with autocast:
                loss = model(**{k: b[k] for k in keys if k in b})["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.process_time() - start

    for name in variants:  # warm-up
        run(name)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name in variants:
            times[name].append(run(name))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()),
              file=sys.stderr, flush=True)
    ref = statistics.median(times["unpacked"])
    print(f"\ntarget tokens per CPU-second ({args.batches} batches = {targets} target tokens per "
          f"round, median of {args.rounds} paired rounds)")
    for name, t in times.items():
        med = statistics.median(t)
        positions = sum(b["input_ids"].numel() + b["decoder_input_ids"].numel()
                        for b in variants[name])
        print(f"  {name:14} {targets / med:8.0f} tok/s  ({med:.2f} CPU-s/round, "
              f"{ref / med:.2f}x unpacked; {positions} positions, "
              f"{padding_fraction(variants[name]) * 100:.1f} % padding)")
    if args.reasoning_share:
        off = statistics.median(times["unpacked, no reasoning"])
        print(f"reasoning engine share of the unpacked step: {(ref - off) / ref * 100:.1f} % "
              "CPU (paired rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
