"""Collation and the batch loader: padding, exact resume, distributed shares, bucketing."""

from __future__ import annotations

import json
import random

import pytest
import torch

from core.data.formatting import EncodedPair
from core.data.loader import (
    BatchLoader,
    batch_num_samples,
    collate,
    collate_packed,
    pack_groups,
    packing_effect,
    padding_fraction,
)
from core.errors import DataError


def make_pairs(n: int, seed: int = 0) -> list[EncodedPair]:
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        s, t = rng.randint(3, 120), rng.randint(3, 120)
        y = [1] + [12 + (i + j) % 200 for j in range(t - 1)] + [2]
        pairs.append(EncodedPair([20 + i % 50] * (s - 1) + [2], y[:-1], y[1:], t))
    return pairs


def drain(loader: BatchLoader, k: int) -> list[list[int]]:
    return [loader.next_indices() for _ in range(k)]


def test_collate_pads_right_and_masks() -> None:
    pairs = [
        EncodedPair([5, 6, 2], [1, 8], [8, 2], 1),
        EncodedPair([5, 2], [1, 8, 40, 41], [8, 40, 41, 2], 2),
    ]
    b = collate(pairs, with_target_bytes=True)
    assert b["input_ids"].tolist() == [[5, 6, 2], [5, 2, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["decoder_input_ids"].tolist() == [[1, 8, 0, 0], [1, 8, 40, 41]]
    assert b["decoder_attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert b["labels"].tolist() == [[8, 2, -100, -100], [8, 40, 41, 2]]
    assert b["target_bytes"].tolist() == [1, 2]
    assert all(t.dtype == torch.long for t in b.values())


def test_endless_epochs_cover_every_sample_once() -> None:
    loader = BatchLoader(make_pairs(103), batch_size=8, seed=3)
    assert loader.batches_per_epoch == 13
    first = drain(loader, 13)
    assert sorted(i for b in first for i in b) == list(range(103))
    assert loader.epoch == 0
    second = drain(loader, 13)
    assert loader.epoch == 1 and sorted(i for b in second for i in b) == list(range(103))
    assert first != second  # reshuffled each epoch
    batch = next(loader)
    assert batch["input_ids"].shape[0] == 8


@pytest.mark.parametrize("k", [0, 5, 13, 20])
def test_exact_resume(k: int) -> None:
    pairs = make_pairs(103)
    reference = BatchLoader(pairs, batch_size=8, seed=7)
    expected = drain(reference, 40)
    loader = BatchLoader(pairs, batch_size=8, seed=7)
    drain(loader, k)
    state = json.loads(json.dumps(loader.state_dict()))  # survives JSON
    assert all(isinstance(v, int) for v in state.values())
    resumed = BatchLoader(pairs, batch_size=8, seed=7)
    resumed.load_state_dict(state)
    assert drain(resumed, 40 - k) == expected[k:]


def test_resume_after_batch_size_change() -> None:
    pairs = make_pairs(200)
    a = BatchLoader(pairs, batch_size=8, seed=1)
    drain(a, 3)
    a.set_batch_size(5)
    drain(a, 2)
    state = a.state_dict()
    expected = drain(a, 60)
    b = BatchLoader(pairs, batch_size=8, seed=1)
    b.load_state_dict(state)
    assert drain(b, 60) == expected


def test_set_batch_size_keeps_sample_position() -> None:
    pairs = make_pairs(100)
    ref = BatchLoader(pairs, batch_size=4, seed=0)
    flat = [i for b in drain(ref, 25) for i in b]
    loader = BatchLoader(pairs, batch_size=4, seed=0)
    got = drain(loader, 3)
    loader.set_batch_size(6)
    got += drain(loader, 2)
    assert [len(b) for b in got] == [4, 4, 4, 6, 6]
    assert [i for b in got for i in b] == flat[:24]


def test_load_state_rejects_other_data() -> None:
    loader = BatchLoader(make_pairs(50), batch_size=4, seed=0)
    state = loader.state_dict()
    other = BatchLoader(make_pairs(60), batch_size=4, seed=0)
    with pytest.raises(DataError, match="50 samples"):
        other.load_state_dict(state)
    with pytest.raises(DataError, match="malformed"):
        other.load_state_dict({"epoch": 0})


def test_distributed_shares_are_disjoint_equal_and_match_single_process() -> None:
    pairs = make_pairs(101)
    world = 2
    ranks = [
        BatchLoader(pairs, batch_size=4, seed=5, rank=r, world_size=world) for r in range(world)
    ]
    single = BatchLoader(pairs, batch_size=8, seed=5)
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == single.batches_per_epoch
    n = ranks[0].batches_per_epoch
    per_rank = [drain(r, n) for r in ranks]
    seen = [{i for b in batches for i in b} for batches in per_rank]
    assert not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == 50  # 101 // 2; one sample left out this epoch
    singles = drain(single, n)
    for step in range(n - 1):  # full global batches equal rank 0's slice + rank 1's slice
        assert per_rank[0][step] + per_rank[1][step] == singles[step]


def test_bucketing_reduces_padding() -> None:
    pairs = make_pairs(2000, seed=11)

    def padding(loader: BatchLoader) -> float:
        waste = 0
        for _ in range(loader.batches_per_epoch):
            b = next(loader)
            waste += int(
                (b["attention_mask"] == 0).sum() + (b["decoder_attention_mask"] == 0).sum()
            )
        return waste

    bucketed = padding(BatchLoader(pairs, batch_size=16, seed=0))
    random_order = padding(BatchLoader(pairs, batch_size=16, seed=0, bucket_batches=0))
    assert bucketed < 0.5 * random_order


def test_drop_last_and_guards() -> None:
    loader = BatchLoader(make_pairs(10), batch_size=4, seed=0, drop_last=True)
    assert loader.batches_per_epoch == 2
    assert [len(b) for b in drain(loader, 4)] == [4, 4, 4, 4]
    with pytest.raises(DataError, match="fewer than one global batch"):
        BatchLoader(make_pairs(3), batch_size=4, seed=0, drop_last=True)
    with pytest.raises(DataError, match="cannot feed"):
        BatchLoader(make_pairs(1), batch_size=4, seed=0, world_size=2)
    assert BatchLoader(make_pairs(10), 4, 0).num_tokens() == sum(
        p.num_tokens for p in make_pairs(10)
    )


# ------------------------------------------------------------------------- sequence packing
def short_pairs(n: int, seed: int = 0) -> list[EncodedPair]:
    """Samples of 3-24 ids a side: a short-sample corpus."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        s, t = rng.randint(3, 24), rng.randint(3, 24)
        y = [1] + [12 + (i + j) % 200 for j in range(t - 1)] + [2]
        pairs.append(EncodedPair([20 + i % 50] * (s - 1) + [2], y[:-1], y[1:], t + i % 3))
    return pairs


def _samples_of(batch: dict[str, torch.Tensor]) -> list[tuple]:
    """(encoder ids, decoder ids, labels, target bytes) of every sample of a collated batch,
    read back from the tensors (per segment of a packed batch)."""
    out = []
    enc_seg = batch.get("segment_ids", batch["attention_mask"])
    dec_seg = batch.get("decoder_segment_ids", batch["decoder_attention_mask"])
    for r in range(batch["input_ids"].shape[0]):
        for k in range(1, int(enc_seg[r].max()) + 1):
            out.append((tuple(batch["input_ids"][r][enc_seg[r] == k].tolist()),
                        tuple(batch["decoder_input_ids"][r][dec_seg[r] == k].tolist()),
                        tuple(batch["labels"][r][dec_seg[r] == k].tolist())))
    return sorted(out)


def test_packing_keeps_every_sample_and_cuts_padding_on_short_samples() -> None:
    pairs = short_pairs(160)
    plain = BatchLoader(pairs, batch_size=8, seed=1, with_target_bytes=True)
    packed = BatchLoader(pairs, batch_size=8, seed=1, with_target_bytes=True, pack_length=64)
    plain_batches = [next(plain) for _ in range(plain.batches_per_epoch)]
    packed_batches = [next(packed) for _ in range(packed.batches_per_epoch)]
    for a, b in zip(plain_batches, packed_batches, strict=True):
        assert _samples_of(a) == _samples_of(b)  # the same samples, intact
        assert int(a["target_bytes"].sum()) == int(b["target_bytes"].sum())
        assert batch_num_samples(a) == batch_num_samples(b) == 8
        assert b["input_ids"].shape[0] <= a["input_ids"].shape[0]
        assert b["input_ids"].shape[1] <= 64 and b["decoder_input_ids"].shape[1] <= 64
        if "segment_ids" in b:
            assert (b["attention_mask"] == (b["segment_ids"] > 0)).all()
    rows = sum(b["input_ids"].shape[0] for b in packed_batches)
    assert rows < 0.8 * sum(a["input_ids"].shape[0] for a in plain_batches)
    before, after = padding_fraction(plain_batches), padding_fraction(packed_batches)
    assert after < 0.6 * before, (before, after)
    # The lengths-only estimate the trainer decides with agrees with the real batches.
    est_before, est_after = packing_effect(pairs, 8, 64, seed=1)
    assert abs(est_before - before) < 1e-9 and abs(est_after - after) < 1e-9
    # Packing does not touch the loader's position: states match batch for batch.
    assert plain.state_dict() == packed.state_dict()


def test_packed_loader_resumes_at_the_exact_next_batch() -> None:
    pairs = short_pairs(100, seed=4)
    loader = BatchLoader(pairs, batch_size=6, seed=2, pack_length=64)
    for _ in range(5):
        next(loader)
    state = loader.state_dict()
    expected = [next(loader) for _ in range(20)]  # crosses the epoch boundary
    restored = BatchLoader(pairs, batch_size=6, seed=2, pack_length=64)
    restored.load_state_dict(state)
    for want in expected:
        got = next(restored)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_pack_groups_respect_the_row_length_and_give_long_samples_a_row() -> None:
    pairs = short_pairs(12, seed=5) + make_pairs(2, seed=6)  # two samples longer than 32
    groups = pack_groups(pairs, 32)
    assert sorted(i for g in groups for i in g) == list(range(len(pairs)))
    longest = max(len(p) for p in pairs)
    for g in groups:
        enc = sum(len(pairs[i].input_ids) for i in g)
        dec = sum(len(pairs[i].decoder_input_ids) for i in g)
        assert len(g) == 1 or (enc <= max(32, longest) and dec <= max(32, longest))
    # When packing would not save positions, the batch is a plain one (no segment ids).
    def pair(n: int) -> EncodedPair:
        return EncodedPair([5] * n, [1] * n, [2] * n, 3)

    assert "segment_ids" not in collate_packed([pair(10)] * 3, 20)  # 2 x 40 > 3 x 20
    packed = collate_packed([pair(10), pair(5), pair(5)], 10)
    assert packed["segment_ids"].tolist() == [[1] * 10, [1] * 5 + [2] * 5]
