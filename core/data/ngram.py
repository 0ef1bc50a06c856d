"""Count-based reference models: what "learned something" means for a run's validation loss.

A unigram (word frequencies) and a bigram (pairs of tokens) model with add-k smoothing over the
whole vocabulary, counted on a run's own tokenized training split and scored on its validation
split — the same target tokens the network is scored on (the decoder labels, each predicted from
the decoder input at its position), so the numbers sit on the same chart as the validation loss.
Scores are in bits per byte of the targets (``bpb``), which compares across tokenizers.

``k`` is chosen per model from :data:`K_GRID` on a held-out tenth of the training split (never on
the validation split), then the counts are redone on the whole training split. Counting is numpy
over the id stream: a fraction of a second for the bundled corpus, linear in its size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from core.data.formatting import IGNORE_INDEX, EncodedPair

K_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
LN2 = math.log(2.0)


def bits_per_byte(nats: float, nbytes: float) -> float | None:
    """Summed nats over target tokens ÷ ln 2 ÷ UTF-8 bytes of the targets (None without bytes)."""
    if nbytes <= 0 or not math.isfinite(nats):
        return None
    return nats / LN2 / nbytes


def target_stream(pairs: Sequence[EncodedPair]) -> tuple[np.ndarray, np.ndarray, int]:
    """(context id, target id) of every scored decoder position, and the targets' UTF-8 bytes.

    The context of label ``t`` is decoder input ``t`` (the previous token of the target sequence,
    ``<s>`` or ``<|assistant|>`` at the start), exactly what the decoder sees last.
    """
    prev: list[int] = []
    nxt: list[int] = []
    nbytes = 0
    for p in pairs:
        for a, b in zip(p.decoder_input_ids, p.labels, strict=True):
            if b != IGNORE_INDEX:
                prev.append(a)
                nxt.append(b)
        nbytes += p.target_bytes
    return np.asarray(prev, dtype=np.int64), np.asarray(nxt, dtype=np.int64), nbytes


def unigram_nats(train_next: np.ndarray, eval_next: np.ndarray, vocab: int, k: float) -> float:
    """Summed −ln p(b) with p(b) = (c(b) + k) / (N + k·V)."""
    counts = np.bincount(train_next, minlength=vocab).astype(np.float64)
    probs = (counts[eval_next] + k) / (len(train_next) + k * vocab)
    return float(-np.log(probs).sum())


def bigram_nats(train_prev: np.ndarray, train_next: np.ndarray, eval_prev: np.ndarray,
                eval_next: np.ndarray, vocab: int, k: float) -> float:
    """Summed −ln p(b | a) with p(b | a) = (c(a, b) + k) / (c(a) + k·V)."""
    codes, pair_counts = np.unique(train_prev * vocab + train_next, return_counts=True)
    context = np.bincount(train_prev, minlength=vocab).astype(np.float64)
    wanted = eval_prev * vocab + eval_next
    where = np.searchsorted(codes, wanted)
    where = np.minimum(where, max(0, len(codes) - 1))
    found = (codes[where] == wanted) if len(codes) else np.zeros(len(wanted), dtype=bool)
    c_ab = np.where(found, pair_counts[where] if len(codes) else 0, 0).astype(np.float64)
    probs = (c_ab + k) / (context[eval_prev] + k * vocab)
    return float(-np.log(probs).sum())


@dataclass(frozen=True)
class NgramBaselines:
    """Validation scores of the two reference models (nats per token and bits per byte)."""

    unigram_bpb: float | None
    bigram_bpb: float | None
    unigram_loss: float
    bigram_loss: float
    unigram_k: float
    bigram_k: float
    train_tokens: int
    val_tokens: int
    val_bytes: int

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _best_k(score: object, ks: Sequence[float]) -> float:
    results = [(score(k), k) for k in ks]  # type: ignore[operator]
    return min(results)[1]


def ngram_baselines(train_pairs: Sequence[EncodedPair], val_pairs: Sequence[EncodedPair],
                    vocab_size: int, k: float | tuple[float, float] | None = None
                    ) -> NgramBaselines:
    """Unigram and bigram baselines counted on ``train_pairs``, scored on ``val_pairs``.

    ``k`` fixes the add-k constant (one for both, or (unigram, bigram)); by default each is
    chosen from :data:`K_GRID` on every tenth training pair held out from the counts.
    """
    tp, tn, _ = target_stream(train_pairs)
    vp, vn, vbytes = target_stream(val_pairs)
    if len(tn) == 0 or len(vn) == 0:
        raise ValueError("the n-gram baselines need scored target tokens in both splits")
    if int(max(tn.max(), vn.max(), tp.max(), vp.max())) >= vocab_size:
        raise ValueError(f"token ids reach beyond the vocabulary of {vocab_size}")
    if k is None:
        held = [p for i, p in enumerate(train_pairs) if i % 10 == 0]
        kept = [p for i, p in enumerate(train_pairs) if i % 10 != 0]
        hp, hn, _ = target_stream(held)
        kp, kn, _ = target_stream(kept)
        if len(hn) and len(kn):
            k_uni = _best_k(lambda x: unigram_nats(kn, hn, vocab_size, x), K_GRID)
            k_bi = _best_k(lambda x: bigram_nats(kp, kn, hp, hn, vocab_size, x), K_GRID)
        else:
            k_uni = k_bi = 1.0
    elif isinstance(k, tuple):
        k_uni, k_bi = k
    else:
        k_uni = k_bi = float(k)
    uni = unigram_nats(tn, vn, vocab_size, k_uni)
    bi = bigram_nats(tp, tn, vp, vn, vocab_size, k_bi)
    return NgramBaselines(
        unigram_bpb=bits_per_byte(uni, vbytes), bigram_bpb=bits_per_byte(bi, vbytes),
        unigram_loss=uni / len(vn), bigram_loss=bi / len(vn), unigram_k=k_uni, bigram_k=k_bi,
        train_tokens=int(len(tn)), val_tokens=int(len(vn)), val_bytes=int(vbytes),
    )
