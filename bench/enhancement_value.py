"""Do the knowledge graph and the images carry information the model uses? (issue 17)

Two bundled corpora whose answers are only in the extra input (``core.data.enhanced_samples``):

* ``facts``: questions about invented places, answers only in the record's ``triples``;
  validation places never appear in training. Compared: the same tiny model trained and
  evaluated with the knowledge graph fed, and with it withheld (the triples removed from every
  batch; same architecture, same steps, same seed).
* ``captions``: captions of drawn shapes, the question is always "Describe the image.".
  Compared: images fed vs images blanked (all-zero), same model, steps and seed.

Reported per seed, on the whole validation split: loss per answer/caption token and exact match
(every answer token the argmax of the teacher-forced decoder — the same as a greedy decode
matching exactly) for the model trained with the input, evaluated with it and with it withheld,
and for the model trained and evaluated without it.

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


def strip_input(batch: dict[str, Any], withhold: str) -> dict[str, Any]:
    """The batch without its knowledge graph ("kg") or with blank images ("images")."""
    if withhold == "kg":
        return {k: v for k, v in batch.items() if k not in KG_KEYS}
    if withhold == "images" and "vision_inputs" in batch:
        return {**batch, "vision_inputs": batch["vision_inputs"].new_zeros(
            batch["vision_inputs"].shape)}
    return batch


def withholding_trainer(withhold: str) -> type:
    """A SimpleTrainer whose training and validation batches lose the knowledge graph ("kg") or
    have blank images ("images"); "" changes nothing."""
    from core.train.simple import SimpleTrainer

    class Withholding(SimpleTrainer):
        def next_batch(self) -> dict[str, Any]:
            return strip_input(super().next_batch(), withhold)

    return Withholding


def answer_metrics(trainer: Any, withhold: str) -> dict[str, float]:
    """Loss per answer token (the reply and its </s>; the fixed <|assistant|> prefix is not
    scored) and exact match (every answer token the teacher-forced argmax — what a greedy decode
    matching exactly means) over the whole validation split, with ``withhold`` applied."""
    import torch
    import torch.nn.functional as F

    from core.data.extras import model_inputs

    model = trainer.model.eval()
    nll = tokens = hits = total = 0.0
    with torch.no_grad():
        for raw in trainer.validation_batches():
            batch = strip_input(raw, withhold)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        decoder_input_ids=batch["decoder_input_ids"],
                        decoder_attention_mask=batch["decoder_attention_mask"],
                        **model_inputs(batch))
            labels = batch["labels"].clone()
            labels[:, 0] = -100
            logits = out["logits"].float()
            nll += float(F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100,
                                         reduction="sum"))
            scored = labels != -100
            tokens += int(scored.sum())
            right = (logits.argmax(-1) == labels) | ~scored
            hits += int(right.all(dim=1).sum())
            total += labels.shape[0]
    return {"loss": nll / max(1.0, tokens), "exact": hits / max(1.0, total)}


def run_one(data: Path, withhold: str, seed: int, steps: int, lr: float, work: Path,
            micro_batch: int) -> dict[str, Any]:
    """Train the tiny profile with ``withhold`` applied to every training batch; evaluate with
    the input fed and withheld."""
    from core.train.config import RunConfig
    from profiles.catalog import load_profile

    profile = load_profile("tiny")
    cfg = RunConfig(
        profile="tiny", data=str(data), run_dir=str(work / f"{withhold or 'fed'}-{seed}"),
        steps=steps, seed=seed, learning_rate=lr, micro_batch=micro_batch, seq_len=48,
        precision="fp32", device="cpu", eval_every=10 * steps, checkpoint_every=10 * steps,
        log_every=steps, tokenizer_vocab_size=512,
    )
    trainer = withholding_trainer(withhold)(cfg, profile.model)
    t0 = time.process_time()
    trainer.setup()
    trainer.train()
    cpu = time.process_time() - t0
    kind = "kg" if trainer.model_config.enable_knowledge_graph else "images"
    result = {"fed": answer_metrics(trainer, ""), "withheld": answer_metrics(trainer, kind),
              "cpu_s": cpu, "params": sum(p.numel() for p in trainer.model.parameters())}
    trainer.cleanup()
    return result


def fmt(m: dict[str, float]) -> str:
    return f"{m['loss']:.3f} / {m['exact']:.1%}"


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
                print(f"{kind:8} seed {seed}: {what} fed {fmt(fed['fed'])}; same model, "
                      f"withheld at eval {fmt(fed['withheld'])}; trained and evaluated withheld "
                      f"{fmt(held['withheld'])}; {fed['params']:,} params; cpu "
                      f"{fed['cpu_s']:.0f}+{held['cpu_s']:.0f} s", flush=True)
    print()
    print(f"tiny profile, {args.steps} steps, micro-batch {args.micro_batch}, lr {args.lr:g}, "
          "fp32, 1 thread; loss per answer token, exact match of the whole answer")
    print("| corpus | input | seed | fed: loss / exact | same model, withheld at eval | "
          "trained and evaluated withheld |")
    print("|---|---|---|---|---|---|")
    for kind, what, seed, fed, held in rows:
        print(f"| {kind} | {what} | {seed} | {fmt(fed['fed'])} | {fmt(fed['withheld'])} | "
              f"{fmt(held['withheld'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
