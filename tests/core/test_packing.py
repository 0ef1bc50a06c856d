"""Sequence packing in the model: a packed batch computes what the unpacked batch computes."""

from __future__ import annotations

import copy

import pytest
import torch
from model_common import VOCAB, build

from core.data.formatting import EncodedPair
from core.data.loader import collate, collate_groups, model_inputs
from core.model.packing import PackedLayout, segment_mean_pool, segment_positions


def _pairs(lengths: list[tuple[int, int]], seed: int = 0) -> list[EncodedPair]:
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for s, t in lengths:
        enc = torch.randint(3, VOCAB, (s,), generator=gen).tolist()
        y = torch.randint(3, VOCAB, (t + 1,), generator=gen).tolist()
        pairs.append(EncodedPair(enc, y[:-1], y[1:], t))
    return pairs


# Four samples of different lengths that fill two rows of 12 encoder / 10 decoder ids exactly.
LENGTHS = [(5, 3), (7, 7), (8, 6), (4, 4)]
ROWS = [[0, 1], [2, 3]]


def _model() -> torch.nn.Module:
    model = build(seed=1, memory_slots=8, memory_dim=32, memory_heads=4)
    # A long run's memory: every slot written, so the read runs too.
    keys = torch.randn(8, 32, generator=torch.Generator().manual_seed(2))
    model.neural_memory.write(keys, torch.randn_like(keys))
    return model.train()


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    torch.manual_seed(7)  # the uncertainty heads' MC dropout draws the same masks
    return model(**model_inputs(batch))


def test_packed_batch_that_fits_exactly_gives_the_unpacked_loss_and_gradients() -> None:
    pairs = _pairs(LENGTHS)
    plain = collate(pairs)
    packed = collate_groups(pairs, ROWS)
    assert packed["attention_mask"].all() and packed["decoder_attention_mask"].all()  # no pad
    assert packed["input_ids"].shape == (2, 12) and plain["input_ids"].shape == (4, 8)
    model = _model()
    twin = copy.deepcopy(model)
    a, b = _forward(model, plain), _forward(twin, packed)
    assert a["enhancement_errors"] == {} and b["enhancement_errors"] == {}
    assert a["neural_memory_enhanced"] and b["neural_memory_enhanced"]
    assert not a["reasoning_info"]["skipped"] and not b["reasoning_info"]["skipped"]
    assert abs(a["loss"].item() - b["loss"].item()) < 1e-5
    # Per-sample outputs come back one per sample, in row order (here the same order).
    torch.testing.assert_close(a["uncertainty_estimates"]["sequence_nll"],
                               b["uncertainty_estimates"]["sequence_nll"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a["tot_branch_scores"], b["tot_branch_scores"], atol=1e-5,
                               rtol=1e-5)
    # The logits of every real decoder token match the sample's own unpacked logits.
    seg = packed["decoder_segment_ids"]
    for n, (row, k) in enumerate([(0, 1), (0, 2), (1, 1), (1, 2)]):
        got = b["logits"][row][seg[row] == k]
        want = a["logits"][n][plain["decoder_attention_mask"][n] == 1]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    a["loss"].backward()
    b["loss"].backward()
    scale = max(p.grad.abs().max().item() for p in model.parameters() if p.grad is not None)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert (p.grad - q.grad).abs().max().item() <= 1e-4 * scale, name


def test_a_packed_sample_never_sees_its_neighbour() -> None:
    pairs = _pairs(LENGTHS)
    model = _model().eval()
    first = model(**model_inputs(collate_groups(pairs, ROWS)))["logits"]
    changed = list(pairs)
    # Another second sample of row 0: new ids on both sides, same lengths.
    changed[1] = _pairs([LENGTHS[1]], seed=9)[0]
    second = model(**model_inputs(collate_groups(changed, ROWS)))["logits"]
    seg = collate_groups(pairs, ROWS)["decoder_segment_ids"]
    torch.testing.assert_close(first[0][seg[0] == 1], second[0][seg[0] == 1])
    assert not torch.allclose(first[0][seg[0] == 2], second[0][seg[0] == 2])
    torch.testing.assert_close(first[1], second[1])


def test_layout_helpers_restart_positions_and_pool_per_sample() -> None:
    segments = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    assert segment_positions(segments).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]
    layout = PackedLayout.from_segments(segments)
    assert layout.num_samples == 3
    assert layout.sample_mask.sum(dim=1).tolist() == [3, 2, 6]
    x = torch.arange(12.0).view(2, 6, 1)
    assert layout.unpack(x)[:, :, 0].tolist() == [
        [0, 1, 2, 0, 0, 0], [3, 4, 0, 0, 0, 0], [6, 7, 8, 9, 10, 11]]
    assert layout.repack(layout.unpack(x))[:, :, 0].tolist() == [
        [0, 1, 2, 3, 4, 0], [6, 7, 8, 9, 10, 11]]
    assert segment_mean_pool(x, segments)[:, 0].tolist() == [1.0, 3.5, 8.5]


@pytest.mark.parametrize(("segments", "message"), [
    ([[1, 1, 3, 3, 0, 0]], "number each row"),
    ([[1, 1, 0, 2, 2, 0]], "number each row"),
    ([[2, 2, 2, 2, 2, 2]], "number each row"),
])
def test_malformed_segment_ids_are_one_clear_error(segments: list[list[int]], message: str) -> None:
    model = _model().eval()
    ids = torch.randint(3, VOCAB, (1, 6))
    with pytest.raises(ValueError, match=message):
        model(input_ids=ids, decoder_input_ids=ids, segment_ids=torch.tensor(segments),
              decoder_segment_ids=torch.tensor([[1, 1, 1, 2, 2, 2]]))


def test_encoder_and_decoder_must_pack_the_same_samples() -> None:
    model = _model().eval()
    ids = torch.randint(3, VOCAB, (1, 6))
    with pytest.raises(ValueError, match="same number of samples"):
        model(input_ids=ids, decoder_input_ids=ids,
              segment_ids=torch.tensor([[1, 1, 2, 2, 3, 3]]),
              decoder_segment_ids=torch.tensor([[1, 1, 1, 2, 2, 2]]))
