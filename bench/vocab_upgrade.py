"""Vocabulary upgrade: old-corpus bits per byte before and right after moving a model to a new
tokenizer (issue 10, continual.md §3).

A tiny model is trained with tokenizer A (byte-level BPE, ``--old-vocab`` tokens, trained on the
bundled sample corpus by the trainer) until it is far better than chance; a larger tokenizer B
(``--new-vocab``) is trained on the same corpus; ``upgrade_checkpoint`` moves the model to B
(shared tokens copied, new ones composed from A's pieces) and ``compare_upgrade`` measures
validation bits per byte — comparable across tokenizers — for the old model, the upgraded one
and the upgraded one with a random-initialised embedding instead (the baseline). The acceptance
is that the upgraded figure is far closer to the old model's than the random one. Also shown:
untrained models on either tokenizer (chance; a longer-token vocabulary has a lower chance
figure in bits per byte) and the upgrade with only the copied rows kept (composed rows random),
which isolates what composing the new tokens' rows adds.

    .venv/bin/python bench/vocab_upgrade.py                  # ≈ 3-6 min on the shared 2-core box
    .venv/bin/python bench/vocab_upgrade.py --steps 400 --new-vocab 2048
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# A tiny backbone (d 96, one encoder and two decoder layers), enhancement stages off so
# the figures are about the embedding transfer alone.
MODEL = dict(
    d_model=96, nhead=4, num_kv_heads=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=256,
    max_position_embeddings=160, num_tot_branches=2, num_scratchpad_slots=4, enable_multimodal=False,
    enable_knowledge_graph=False, enable_memory=False, enable_uncertainty=False, enable_active_learning=False,
    enable_reasoning=False, enable_continual=False,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800, help="training steps of the old model")
    parser.add_argument("--old-vocab", type=int, default=512)
    parser.add_argument("--new-vocab", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--samples", type=int, default=256, help="validation samples measured")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temp dir)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from aeron_tui.commands.tokenizer import corpus_texts
    from core.data.sample import ensure_sample_corpus
    from core.data.tokenizer import AeronTokenizer
    from core.evolve.vocab_transfer import compare_upgrade, upgrade_checkpoint
    from core.model.config import NeuralNetConfig
    from core.runs.checkpoint import build_model_from_checkpoint, latest_checkpoint
    from core.train.config import RunConfig
    from core.train.simple import SimpleTrainer

    tmp = tempfile.TemporaryDirectory(prefix="aeron-vocab-") if args.workdir is None else None
    root = args.workdir or Path(tmp.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    data = ensure_sample_corpus().styles
    load_start = os.getloadavg()[0]

    t0 = time.process_time()
    run_dir = root / "old"
    if latest_checkpoint(run_dir) is None:
        cfg = RunConfig(
            run_dir=str(run_dir), data=str(data), steps=args.steps, micro_batch=args.micro_batch,
            seq_len=args.seq_len, precision="fp32", device="cpu", log_every=50, eval_every=10**9,
            checkpoint_every=10**9, keep_last=1, tokenizer_vocab_size=args.old_vocab, seed=0,
            learning_rate=args.lr, warmup_steps=20,
        )
        status = SimpleTrainer(cfg, NeuralNetConfig(**MODEL)).run()
        if status != "finished":
            raise SystemExit(f"training the old model ended with status {status}")
    train_cpu = time.process_time() - t0
    old_ckpt = latest_checkpoint(run_dir)
    assert old_ckpt is not None

    new_tok_dir = root / f"tokenizer-{args.new_vocab}"
    if not new_tok_dir.exists():
        AeronTokenizer.train(corpus_texts([data]), vocab_size=args.new_vocab).save(new_tok_dir)
    upgraded = root / "upgraded"
    if upgraded.exists():
        import shutil

        shutil.rmtree(upgraded)
    t0 = time.process_time()
    _, report = upgrade_checkpoint(old_ckpt, new_tok_dir, upgraded)
    upgrade_cpu = time.process_time() - t0
    bpb = compare_upgrade(old_ckpt, upgraded, data, samples=args.samples)

    # Chance: the same architecture untrained, on either tokenizer.
    from core.data.formatting import encode_styles_sample
    from core.data.styles import read_styles, split_samples
    from core.evolve.evaluation import evaluate_pairs
    from core.model.model import TransformerNeuralNetBackbone

    _, val = split_samples(read_styles(data))
    chance = {}
    for name, ckpt in (("A", old_ckpt), ("B", upgraded)):
        _, tok, model_cfg = build_model_from_checkpoint(ckpt)
        torch.manual_seed(0)
        fresh = TransformerNeuralNetBackbone(model_cfg)
        pairs = [encode_styles_sample(s, tok, min(256, model_cfg.max_position_embeddings - 1)) for s in val]
        chance[name] = evaluate_pairs(fresh, pairs, max_samples=args.samples).bpb

    gap_up = bpb["upgraded"] - bpb["old"]
    gap_rand = bpb["random_embedding"] - bpb["old"]
    print(f"sample corpus ({data.name}); old model: {args.steps} steps, micro-batch {args.micro_batch}, "
          f"seq_len {args.seq_len}, lr {args.lr}, {train_cpu:.0f} s CPU; tokenizer {report.old_vocab_size} → "
          f"{report.new_vocab_size}: {report.copied} copied, {report.composed} composed, {report.random} random "
          f"(upgrade {upgrade_cpu:.1f} s CPU); {args.samples} validation samples; {args.threads} thread(s), "
          f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    print("| model | old-corpus bits/byte | gap to old model |")
    print("|---|---|---|")
    print(f"| untrained (chance, tokenizer A) | {chance['A']:.3f} | {chance['A'] - bpb['old']:+.3f} |")
    print(f"| untrained (chance, tokenizer B) | {chance['B']:.3f} | {chance['B'] - bpb['old']:+.3f} |")
    print(f"| old model (tokenizer A) | {bpb['old']:.3f} | 0 |")
    print(f"| upgraded (tokenizer B, transferred embedding) | {bpb['upgraded']:.3f} | {gap_up:+.3f} |")
    print(f"| upgraded, copied rows only, composed rows random (tokenizer B) | {bpb['copied_only']:.3f} | "
          f"{bpb['copied_only'] - bpb['old']:+.3f} |")
    print(f"| upgraded, random new embedding (tokenizer B) | {bpb['random_embedding']:.3f} | {gap_rand:+.3f} |")
    ratio = abs(gap_up) / abs(gap_rand) if gap_rand else float("nan")
    print(f"|upgraded − old| / |random − old| = {ratio:.3f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
