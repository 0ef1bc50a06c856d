"""Do the knowledge graph and the images carry information the model uses? (issue 17)

Two bundled corpora whose answers are only in the extra input (``core.data.enhanced_samples``):

* ``facts``: questions about invented places, answers only in the record's ``triples``;
  validation places never appear in training. Compared: the same tiny model trained and
  evaluated with the knowledge graph fed, and with it withheld (the triples removed from every
  batch; same architecture, same steps, same seed).
* ``captions``: captions of drawn shapes, the question is always "Describe the image.".
  Compared: images fed vs images blanked (all-zero), same model, steps and seed.

Reported per seed: validation loss on the answer/caption tokens and exact match (every answer
token the argmax of the teacher-forced decoder — the same as a greedy decode matching exactly).

    .venv/bin/python bench/enhancement_value.py [--seeds 1 2] [--steps 300] [--only facts]

Everything runs on one CPU thread; figures and the command go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KG_KEYS = ("input_entities", "kg_triples", "kg_triple_mask")


def withholding_trainer(withhold: str) -> type:
    """A SimpleTrainer whose batches lose the knowledge graph ("kg") or have blank images
    ("images"); "" changes nothing."""
    from core.train.simple import SimpleTrainer

    def strip(batch: dict[str, Any]) -> dict[str, Any]:
        if withhold == "kg":
            return {k: v for k, v in batch.items() if k not in KG_KEYS}
        if withhold == "images" and "vision_inputs" in batch:
            return {**batch, "vision_inputs": batch["vision_inputs"].new_zeros(
                batch["vision_inputs"].shape)}
        return batch

    class Withholding(SimpleTrainer):
        def next_batch(self) -> dict[str, Any]:
            return strip(super().next_batch())

        def validation_batches(self) -> list[dict[str, Any]]:
            return [strip(b) for b in super().validation_batches()]

    return Withholding


def exact_match(trainer: Any) -> float:
    """Fraction of validation records whose every target token is the decoder's argmax."""
    import torch

    from core.data.extras import model_inputs

    model = trainer.model.eval()
    hits = total = 0
    with torch.no_grad():
        for batch in trainer.validation_batches():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        decoder_input_ids=batch["decoder_input_ids"],
                        decoder_attention_mask=batch["decoder_attention_mask"],
                        **model_inputs(batch))
            labels = batch["labels"]
            # labels[:, 0] is <|assistant|>, the fixed prefix: score the answer and </s>.
            scored = labels.clone()
            scored[:, 0] = -100
            right = (out["logits"].argmax(-1) == labels) | (scored == -100)
            hits += int(right.all(dim=1).sum())
            total += labels.shape[0]
    return hits / max(1, total)


def run_one(data: Path, withhold: str, seed: int, steps: int, lr: float, work: Path,
            micro_batch: int) -> dict[str, float]:
    from core.train.config import RunConfig
    from profiles.catalog import load_profile

    profile = load_profile("tiny")
    cfg = RunConfig(
        profile="tiny", data=str(data), run_dir=str(work / f"{withhold or 'fed'}-{seed}"),
        steps=steps, seed=seed, learning_rate=lr, micro_batch=micro_batch, seq_len=48,
        precision="fp32", device="cpu", eval_every=steps, checkpoint_every=10 * steps,
        eval_max_batches=1000, log_every=steps, tokenizer_vocab_size=512,
    )
    trainer = withholding_trainer(withhold)(cfg, profile.model)
    t0 = time.process_time()
    trainer.setup()
    trainer.train()
    cpu = time.process_time() - t0
    result = {"val_loss": float(trainer.last_val_loss or float("nan")),
              "exact_match": exact_match(trainer), "cpu_s": cpu,
              "params": sum(p.numel() for p in trainer.model.parameters())}
    trainer.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--only", choices=["facts", "captions"], default=None)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from core.data.enhanced_samples import ensure_enhanced_corpus

    cases = [("facts", "kg", "knowledge graph"), ("captions", "images", "images")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="aeron-enh-value-") as tmp:
        work = Path(tmp)
        for kind, withheld, what in cases:
            if args.only and kind != args.only:
                continue
            corpus = ensure_enhanced_corpus(kind, work / kind)
            for seed in args.seeds:
                fed = run_one(corpus.styles, "", seed, args.steps, args.lr, work / kind,
                              args.micro_batch)
                held = run_one(corpus.styles, withheld, seed, args.steps, args.lr, work / kind,
                               args.micro_batch)
                rows.append((kind, what, seed, fed, held))
                print(f"{kind:8} seed {seed}: {what} fed val loss {fed['val_loss']:.3f} "
                      f"(exact {fed['exact_match']:.1%}) vs withheld {held['val_loss']:.3f} "
                      f"(exact {held['exact_match']:.1%}); {fed['params']:,} params; "
                      f"cpu {fed['cpu_s']:.0f}+{held['cpu_s']:.0f} s", flush=True)
    print()
    print(f"tiny profile, {args.steps} steps, micro-batch {args.micro_batch}, lr {args.lr:g}, "
          "fp32, 1 thread")
    print("| corpus | input | seed | val loss fed | val loss withheld | exact match fed | "
          "exact match withheld |")
    print("|---|---|---|---|---|---|---|")
    for kind, what, seed, fed, held in rows:
        print(f"| {kind} | {what} | {seed} | {fed['val_loss']:.3f} | {held['val_loss']:.3f} | "
              f"{fed['exact_match']:.1%} | {held['exact_match']:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
