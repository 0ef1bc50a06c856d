"""The count-based reference baselines against hand counts, and bits per byte by hand."""

from __future__ import annotations

import math

import pytest

from core.data.formatting import EncodedPair
from core.data.ngram import bits_per_byte, ngram_baselines, target_stream


def _pair(dec: list[int], labels: list[int], nbytes: int) -> EncodedPair:
    return EncodedPair([3, 4, 2], dec, labels, nbytes)


# Training targets (context → target): 1→5 5→6 6→2 | 1→5 5→5 5→2 ; validation: 1→5 5→2 | 1→7.
TRAIN = [_pair([1, 5, 6], [5, 6, 2], 3), _pair([1, 5, 5], [5, 5, 2], 4)]
# The last validation position is not scored (label -100, as padding or an RLHF prefix).
VAL = [_pair([1, 5], [5, 2], 2), _pair([1, 0], [7, -100], 1)]
V, K = 8, 0.5


def test_target_stream_pairs_each_label_with_the_decoder_input_before_it() -> None:
    prev, nxt, nbytes = target_stream(VAL)
    assert prev.tolist() == [1, 5, 1]
    assert nxt.tolist() == [5, 2, 7]
    assert nbytes == 3


def test_bigram_and_unigram_equal_hand_counts() -> None:
    found = ngram_baselines(TRAIN, VAL, V, k=K)
    # Unigram counts of the 6 training targets: 5:3, 6:1, 2:2, 7:0.
    p5, p2, p7 = (3 + K) / (6 + K * V), (2 + K) / (6 + K * V), (0 + K) / (6 + K * V)
    uni_nats = -(math.log(p5) + math.log(p2) + math.log(p7))
    # Bigram: context 1 seen twice (both → 5); context 5 seen three times (→6, →5, →2).
    q15 = (2 + K) / (2 + K * V)
    q52 = (1 + K) / (3 + K * V)
    q17 = (0 + K) / (2 + K * V)
    bi_nats = -(math.log(q15) + math.log(q52) + math.log(q17))
    assert found.unigram_loss == pytest.approx(uni_nats / 3, rel=1e-12)
    assert found.bigram_loss == pytest.approx(bi_nats / 3, rel=1e-12)
    assert found.unigram_bpb == pytest.approx(uni_nats / math.log(2) / 3, rel=1e-12)
    assert found.bigram_bpb == pytest.approx(bi_nats / math.log(2) / 3, rel=1e-12)
    assert (found.train_tokens, found.val_tokens, found.val_bytes) == (6, 3, 3)


def test_k_is_chosen_on_held_out_training_pairs_not_on_validation() -> None:
    train = [_pair([1, 5, 6], [5, 6, 2], 3)] * 30
    a = ngram_baselines(train, VAL, V)
    b = ngram_baselines(train, [_pair([1, 5, 6], [5, 6, 2], 3)], V)
    assert (a.unigram_k, a.bigram_k) == (b.unigram_k, b.bigram_k)  # same training split, same k
    # A perfectly repetitive training split wants the least smoothing on the grid.
    assert a.bigram_k == min(a.bigram_k, 0.001)


def test_bits_per_byte_and_bad_input() -> None:
    assert bits_per_byte(math.log(2) * 12, 4) == pytest.approx(3.0)
    assert bits_per_byte(1.0, 0) is None
    with pytest.raises(ValueError, match="beyond the vocabulary"):
        ngram_baselines(TRAIN, VAL, 6, k=K)
