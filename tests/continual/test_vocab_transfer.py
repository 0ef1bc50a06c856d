"""Embedding transfer to a new tokenizer: copied rows bit-exact, composed rows the stated mean."""

from __future__ import annotations

import pytest
import torch

from core.data.tokenizer import NUM_SPECIAL, AeronTokenizer
from core.evolve.vocab_transfer import old_pieces, transfer_embedding

TEXTS = [
    "the cat sat on the mat with another cat",
    "def add(a, b): return a + b  # the sum",
    "naïve café — ünïcode text, the end",
] * 30


@pytest.fixture(scope="module")
def tokenizers() -> tuple[AeronTokenizer, AeronTokenizer]:
    old = AeronTokenizer.train(TEXTS, vocab_size=300)
    new = AeronTokenizer.train(TEXTS, vocab_size=400)
    return old, new


def test_counts_cover_the_new_vocabulary(tokenizers) -> None:
    old, new = tokenizers
    emb = torch.randn(old.vocab_size, 8)
    out, report = transfer_embedding(old, new, emb)
    assert out.shape == (new.vocab_size, 8)
    assert report.copied + report.composed + report.random == new.vocab_size
    assert report.copied >= old.vocab_size - 5  # the smaller BPE is (almost) a prefix of the larger
    assert report.composed > 0
    assert report.random == 0  # all Aeron tokenizers share the special layout


def test_copied_rows_are_bit_exact_and_composed_rows_are_means(tokenizers) -> None:
    old, new = tokenizers
    emb = torch.randn(old.vocab_size, 8, dtype=torch.float32)
    out, _ = transfer_embedding(old, new, emb)
    old_by_bytes = {old.token_bytes(i): i for i in range(NUM_SPECIAL, old.vocab_size)}
    checked_copy = checked_mean = 0
    for j in range(NUM_SPECIAL, new.vocab_size):
        data = new.token_bytes(j)
        if data in old_by_bytes:
            assert torch.equal(out[j], emb[old_by_bytes[data]])
            checked_copy += 1
        else:
            try:
                pieces = old.encode(data.decode("utf-8"))
            except UnicodeDecodeError:  # a fragment of a multi-byte character: spelled by bytes
                pieces = old_pieces(data, old, old_by_bytes, max(len(b) for b in old_by_bytes))
            assert b"".join(old.token_bytes(i) for i in pieces) == data
            assert torch.allclose(out[j], emb[pieces].mean(0))
            checked_mean += 1
    for j in range(NUM_SPECIAL):
        assert torch.equal(out[j], emb[j])
    assert checked_copy and checked_mean


def test_same_tokenizer_is_identity(tokenizers) -> None:
    old, _ = tokenizers
    emb = torch.randn(old.vocab_size, 4)
    out, report = transfer_embedding(old, old, emb)
    assert torch.equal(out, emb)
    assert report.composed == 0


def test_wrong_embedding_shape_is_rejected(tokenizers) -> None:
    old, new = tokenizers
    with pytest.raises(ValueError, match="expected"):
        transfer_embedding(old, new, torch.zeros(old.vocab_size + 1, 4))
