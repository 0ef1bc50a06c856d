"""Held-out evaluation outside a training loop: loss, perplexity and bits per byte.

Used by merging (sanity perplexity of the result against its inputs), continual training
(retention on the old and new corpora) and the vocabulary upgrade (bits per byte is comparable
across tokenizers, token loss is not). Spec: ``continual.md`` §5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.data.formatting import IGNORE_INDEX, EncodedPair


@dataclass
class EvalResult:
    """``loss`` is nats per target token; ``bpb`` is bits per UTF-8 byte of the targets."""

    loss: float
    tokens: int
    nll_sum: float
    target_bytes: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if math.isfinite(self.loss) and self.loss < 700 else float("inf")

    @property
    def bpb(self) -> float:
        return self.nll_sum / (math.log(2) * self.target_bytes) if self.target_bytes else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"loss": self.loss, "perplexity": self.perplexity, "bpb": self.bpb, "tokens": float(self.tokens)}


def evaluation_subset(pairs: Sequence[EncodedPair], limit: int | None) -> list[EncodedPair]:
    """A deterministic subset spread over the whole length range (not only the shortest)."""
    ordered = sorted(pairs, key=len)
    if limit is None or len(ordered) <= limit:
        return ordered
    stride = len(ordered) / limit
    return [ordered[int(i * stride)] for i in range(limit)]


@torch.no_grad()
def evaluate_pairs(
    model: Any,
    pairs: Sequence[EncodedPair],
    batch_size: int = 16,
    max_samples: int | None = 512,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Token-summed NLL of ``pairs`` under ``model`` (eval mode, fp32, RNG untouched)."""
    from core.data.extras import forward_batch, image_shape_of
    from core.data.loader import collate

    shape = image_shape_of(getattr(model, "config", None))
    subset = evaluation_subset(pairs, max_samples)
    if not subset:
        raise ValueError("nothing to evaluate: the validation split is empty")
    was_training = model.training
    model.eval()
    nll = 0.0
    tokens = 0
    nbytes = 0
    with torch.random.fork_rng():
        for i in range(0, len(subset), batch_size):
            chunk = subset[i : i + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, image_shape=shape).items()}
            labels = batch.pop("labels")
            out = model(**forward_batch(batch))
            logits = out["logits"].float()
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            nll += float(loss.item())
            tokens += int((labels != IGNORE_INDEX).sum().item())
            nbytes += sum(p.target_bytes for p in chunk)
    if was_training:
        model.train()
    return EvalResult(loss=nll / max(1, tokens), tokens=tokens, nll_sum=nll, target_bytes=nbytes)
