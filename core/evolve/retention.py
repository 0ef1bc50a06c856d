"""Retention metrics for continual training (spec ``continual.md`` §5).

* bits per byte on the old and new validation splits (comparable across tokenizers), and the
  retained fraction ``(BPB_fresh − BPB_after) / (BPB_fresh − BPB_before)`` on the old corpus;
* vocabulary retention: words seen ≥ 5 times in the old corpus, each word's mean per-byte NLL
  of its tokens in held-out contexts, retained if ``after ≤ 1.1 × before``;
* representation drift: mean cosine between old and new pooled encoder states.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from core.data.formatting import IGNORE_INDEX, EncodedPair
from core.evolve.evaluation import evaluation_subset

WORD = re.compile(rb"[A-Za-z][A-Za-z']+")


@torch.no_grad()
def token_nlls(
    model: Any, pairs: Sequence[EncodedPair], batch_size: int = 16
) -> list[tuple[list[int], list[float]]]:
    """Per pair: the scored target ids and their NLLs (nats) under ``model`` (eval mode)."""
    from core.data.extras import forward_batch, image_shape_of
    from core.data.loader import collate

    shape = image_shape_of(getattr(model, "config", None))
    was_training = model.training
    model.eval()
    out: list[tuple[list[int], list[float]]] = []
    with torch.random.fork_rng():
        for i in range(0, len(pairs), batch_size):
            batch = collate(pairs[i : i + batch_size], image_shape=shape)
            labels = batch.pop("labels")
            logits = model(**forward_batch(batch))["logits"].float()
            nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
            for row_labels, row_nll in zip(labels, nll, strict=True):
                keep = row_labels != IGNORE_INDEX
                out.append((row_labels[keep].tolist(), row_nll[keep].tolist()))
    if was_training:
        model.train()
    return out


def word_counts(texts: Iterable[str]) -> Counter[bytes]:
    counts: Counter[bytes] = Counter()
    for text in texts:
        counts.update(m.group().lower() for m in WORD.finditer(text.encode("utf-8")))
    return counts


def per_word_nll(
    nlls: Sequence[tuple[list[int], list[float]]], tokenizer: Any, words: set[bytes]
) -> dict[bytes, tuple[float, int]]:
    """word → (summed NLL of the tokens overlapping its occurrences, their byte count)."""
    totals: dict[bytes, list[float]] = {}
    for ids, values in nlls:
        spans = []
        text = bytearray()
        for token_id in ids:
            data = tokenizer.token_bytes(token_id)
            spans.append((len(text), len(text) + len(data)))
            text.extend(data)
        for match in WORD.finditer(bytes(text)):
            word = match.group().lower()
            if word not in words:
                continue
            start, end = match.span()
            nll = nbytes = 0.0
            for (a, b), value in zip(spans, values, strict=True):
                if a < end and b > start and b > a:
                    nll += value
                    nbytes += b - a
            if nbytes:
                acc = totals.setdefault(word, [0.0, 0])
                acc[0] += nll
                acc[1] += int(nbytes)
    return {w: (v[0], int(v[1])) for w, v in totals.items()}


@dataclass
class VocabularyRetention:
    retained: int
    total: int
    tolerance: float
    lost_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"retained": self.retained, "total": self.total, "tolerance": self.tolerance,
                "lost_examples": self.lost_examples}

    def __str__(self) -> str:
        return f"retains {self.retained} of {self.total} words"


def vocabulary_retention(
    before: dict[bytes, tuple[float, int]],
    after: dict[bytes, tuple[float, int]],
    tolerance: float = 1.1,
) -> VocabularyRetention:
    """A word is retained when its per-byte NLL after is at most ``tolerance`` × before."""
    words = sorted(set(before) & set(after))
    lost = []
    kept = 0
    for w in words:
        b = before[w][0] / before[w][1]
        a = after[w][0] / after[w][1]
        if a <= tolerance * b:
            kept += 1
        else:
            lost.append((a / max(b, 1e-12), w.decode("utf-8", "replace")))
    lost.sort(reverse=True)
    return VocabularyRetention(kept, len(words), tolerance, [w for _, w in lost[:10]])


@torch.no_grad()
def pooled_encoder_states(model: Any, pairs: Sequence[EncodedPair], batch_size: int = 32) -> torch.Tensor:
    """Mean-pooled states the decoder reads (after the enhancement pipeline), one row per pair."""
    from core.data.extras import image_shape_of, model_inputs
    from core.data.loader import collate

    shape = image_shape_of(getattr(model, "config", None))
    was_training = model.training
    model.eval()
    rows = []
    with torch.random.fork_rng():
        for i in range(0, len(pairs), batch_size):
            batch = collate(pairs[i : i + batch_size], image_shape=shape)
            enc = model.encode(batch["input_ids"], batch["attention_mask"], **model_inputs(batch))
            mask = batch["attention_mask"].unsqueeze(-1).to(enc.memory.dtype)
            rows.append(((enc.memory * mask).sum(1) / mask.sum(1).clamp(min=1)).float())
    if was_training:
        model.train()
    return torch.cat(rows)


def representation_drift(old: Any, new: Any, pairs: Sequence[EncodedPair], samples: int = 256) -> float:
    """Mean cosine similarity of old and new pooled encoder states (1.0 = no drift)."""
    subset = evaluation_subset(pairs, samples)
    a, b = pooled_encoder_states(old, subset), pooled_encoder_states(new, subset)
    return float(F.cosine_similarity(a, b, dim=-1).mean().item())


def retained_fraction(bpb_fresh: float, bpb_before: float, bpb_after: float) -> float:
    """Share of what the old model had learned (over a fresh model) that is still there."""
    gained = bpb_fresh - bpb_before
    return (bpb_fresh - bpb_after) / gained if abs(gained) > 1e-12 else float("nan")
