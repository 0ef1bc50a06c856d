"""Two "same model in, same model out" checks on a trained checkpoint (issue 17).

1. Fisher self-merge: the checkpoint's model gets an EWC Fisher (consolidated on ``--samples``
   samples of the data, as ``aeron-tui continue`` stores one), is saved, and is merged with
   itself by Fisher weighting. Printed: the mean and largest relative change of the merged
   tensors and how many came out zeroed. The identity is 0. Run it once more with
   ``core/evolve/merge.py`` of commit 35692aa to see the old formula's figures.
2. ONNX: the largest logit difference between the model ``generate`` runs (eval mode) and the
   plain backbone an older export wrote (export mode: no memory, no reasoning) — the error the
   old graph carried; ``aeron-tui model export`` prints the new graph's own difference.

    AERON_TUI_HOME=/tmp/h .venv/bin/aeron-tui train simple --profile tiny --steps 20 --run-dir /tmp/runA --seed 1
    .venv/bin/python bench/merge_export_identity.py /tmp/runA
    .venv/bin/aeron-tui model export --checkpoint /tmp/runA --out /tmp/runA.onnx
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="checkpoint or run directory")
    parser.add_argument("--data", type=Path, default=None, help="styles.jsonl (default: the sample corpus)")
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()

    import torch

    from core.data.formatting import encode_styles_sample
    from core.data.loader import collate
    from core.data.styles import read_styles
    from core.evolve.merge import MergeParams, merge_safetensors
    from core.infer.export import example_inputs
    from core.infer.inference import load_policy, resolve_checkpoint
    from core.runs.checkpoint import TOKENIZER_FILE, build_model_from_checkpoint, save_checkpoint

    ckpt = resolve_checkpoint(args.run)
    if args.data is None:
        from core.data.sample import ensure_sample_corpus

        args.data = ensure_sample_corpus().styles
    model, tok, cfg = build_model_from_checkpoint(ckpt)
    if model.continual_learning is None:
        raise SystemExit("the checkpoint has no continual-learning module to hold an EWC Fisher")
    pairs = [encode_styles_sample(s, tok, 255) for s in read_styles(args.data)[: args.samples]]
    model.continual_learning.consolidate(model, [collate(pairs[i : i + 8]) for i in range(0, len(pairs), 8)])
    with tempfile.TemporaryDirectory() as tmp:
        ewc = save_checkpoint(Path(tmp) / "ewc", model=model, config=cfg, tokenizer=ckpt / TOKENIZER_FILE,
                              trainer_state={"global_step": 0})
        weights = ewc / "model.safetensors"
        report = merge_safetensors([weights, weights], MergeParams("fisher"), Path(tmp) / "self.safetensors")
    merged = [t for t in report.tensors if not t.copied]
    zeroed = sum(1 for t in merged if t.relative_change > 0.999)
    print(f"Fisher self-merge of {ckpt}: mean relative change {report.summary()['mean_relative_change']:.4f}, "
          f"largest {max(t.relative_change for t in merged):.4f}, zeroed tensors {zeroed} of {len(merged)}")

    policy, _, _ = load_policy(ckpt)
    ids, mask, dec = example_inputs(policy.config, batch=3, length=5)
    with torch.no_grad():
        full = policy(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)["logits"]
        policy.set_export_mode(True)
        plain = policy(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)["logits"]
    print(f"generate's model vs the plain backbone the old ONNX graph held: max |logit difference| "
          f"{float((full - plain).abs().max()):.4f}")


if __name__ == "__main__":
    main()
