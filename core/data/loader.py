"""Batching: padding/collation, sequence packing and a resumable, length-bucketed, distributed
batch loader.

Order of one epoch (identical on every rank): a seeded shuffle of all samples, cut into buckets
of ``bucket_batches`` global batches, each bucket sorted by length and cut into batches whose
order is shuffled, then the bucket order shuffled. A global batch of ``world_size × batch_size``
consecutive samples is then split into contiguous per-rank slices — so rank shares are disjoint,
every rank draws the same number of batches, and ``world_size`` ranks see exactly the samples a
single process would see with the same global batch. The state is (epoch, samples consumed), so
a restored loader continues at the exact next sample.

Sequence packing (``pack_length``) changes only how a batch's samples are laid out: several
short samples share a row (:func:`pack_groups`, :func:`collate_groups`), with per-token sample
numbers that make the model mask attention block-diagonally and restart positions per sample
(``core.model.packing``). A batch holds the same samples packed or not, so the loader state, a
resume and the out-of-memory split (fewer samples per micro-batch, more micro-batches) are
unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from core.data.formatting import IGNORE_INDEX, EncodedPair
from core.errors import DataError


def collate(
    pairs: Sequence[EncodedPair],
    pad_id: int = 0,
    with_target_bytes: bool = False,
    image_shape: tuple[int, int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad a list of pairs into int64 tensors with 1/0 masks; padded labels are -100.

    Keys: ``input_ids``, ``attention_mask``, ``decoder_input_ids``, ``decoder_attention_mask``,
    ``labels`` (+ ``target_bytes`` of shape (B,) when ``with_target_bytes``), plus the extra
    inputs the pairs carry (:func:`core.data.extras.collate_inputs`; ``image_shape`` for a model
    with a vision path). ``core.data.extras.model_inputs(batch)`` gives the model's arguments.
    """
    if not pairs:
        raise ValueError("collate needs at least one pair")
    b = len(pairs)
    s = max(len(p.input_ids) for p in pairs)
    t = max(len(p.decoder_input_ids) for p in pairs)
    input_ids = torch.full((b, s), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, s), dtype=torch.long)
    decoder_input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    decoder_attention_mask = torch.zeros((b, t), dtype=torch.long)
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
    for i, p in enumerate(pairs):
        n, m = len(p.input_ids), len(p.decoder_input_ids)
        if len(p.labels) != m:
            raise ValueError(f"pair {i}: {len(p.labels)} labels for {m} decoder inputs")
        input_ids[i, :n] = torch.tensor(p.input_ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        decoder_input_ids[i, :m] = torch.tensor(p.decoder_input_ids, dtype=torch.long)
        decoder_attention_mask[i, :m] = 1
        labels[i, :m] = torch.tensor(p.labels, dtype=torch.long)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": decoder_attention_mask,
        "labels": labels,
    }
    if with_target_bytes:
        batch["target_bytes"] = torch.tensor([p.target_bytes for p in pairs], dtype=torch.long)
    if image_shape is not None or any(p.inputs is not None for p in pairs):
        from core.data.extras import collate_inputs

        batch.update(collate_inputs([p.inputs for p in pairs], image_shape))
    return batch


def pack_groups(pairs: Sequence[EncodedPair], capacity: int) -> list[list[int]]:
    """Group pair indices into rows for sequence packing.

    A row holds at most ``max(capacity, longest side in pairs)`` encoder ids and as many decoder
    ids (a sample longer than ``capacity`` still gets a row). A batch is padded to its longest
    row on each side, so the grouping minimises ``rows × (longest encoder row + longest
    decoder row)``: for the fewest rows that fit (first-fit decreasing) and one or two more,
    samples go longest first to the least-loaded row they fit in, and the cheapest layout wins
    (on a tie the one with more rows).
    Deterministic (ties by index); within a row, samples keep the order they were placed in.
    """
    if capacity < 1:
        raise ValueError(f"pack capacity must be >= 1, got {capacity}")
    enc = [len(p.input_ids) for p in pairs]
    dec = [len(p.decoder_input_ids) for p in pairs]
    cap_enc, cap_dec = max(capacity, max(enc)), max(capacity, max(dec))
    order = sorted(range(len(pairs)), key=lambda i: (-(enc[i] + dec[i]), i))

    def place(rows: int | None) -> list[list[int]] | None:
        """Longest first into the least-loaded row that fits (first fit, opening rows as
        needed, when ``rows`` is None); None when ``rows`` rows cannot hold the samples."""
        groups: list[list[int]] = [[] for _ in range(rows or 0)]
        load: list[list[int]] = [[0, 0] for _ in range(rows or 0)]
        for i in order:
            fits = [r for r, (e, d) in enumerate(load)
                    if e + enc[i] <= cap_enc and d + dec[i] <= cap_dec]
            if not fits:
                if rows is not None:
                    return None
                groups.append([])
                load.append([0, 0])
                fits = [len(groups) - 1]
            if rows is None:
                r = fits[0]
            else:  # the row that grows the padded length least, then the least loaded
                top_e, top_d = max(e for e, _ in load), max(d for _, d in load)
                r = min(fits, key=lambda r: (max(top_e, load[r][0] + enc[i])
                                             + max(top_d, load[r][1] + dec[i]),
                                             sum(load[r]), r))
            groups[r].append(i)
            load[r][0] += enc[i]
            load[r][1] += dec[i]
        return [g for g in groups if g]

    def cost(groups: list[list[int]]) -> int:
        return len(groups) * (max(sum(enc[i] for i in g) for g in groups)
                              + max(sum(dec[i] for i in g) for g in groups))

    first_fit = place(None)
    assert first_fit is not None
    best = first_fit
    for rows in range(len(first_fit), min(len(first_fit) + 2, len(pairs)) + 1):
        groups = place(rows)
        # Ties go to more, shorter rows: the same positions, less attention work.
        if groups is not None and cost(groups) <= cost(best):
            best = groups
    return best


def collate_groups(
    pairs: Sequence[EncodedPair],
    groups: Sequence[Sequence[int]],
    pad_id: int = 0,
    with_target_bytes: bool = False,
) -> dict[str, torch.Tensor]:
    """A packed batch: the pairs of each group concatenated into one right-padded row.

    Besides :func:`collate`'s keys it has ``segment_ids`` / ``decoder_segment_ids`` (the sample
    number 1, 2, ... of every token in its row, 0 for padding), which make the model keep the
    samples apart (:mod:`core.model.packing`); ``target_bytes`` is per row.
    """
    if not groups or any(not g for g in groups):
        raise ValueError("collate_groups needs non-empty groups")
    b = len(groups)
    s = max(sum(len(pairs[i].input_ids) for i in g) for g in groups)
    t = max(sum(len(pairs[i].decoder_input_ids) for i in g) for g in groups)
    input_ids = torch.full((b, s), pad_id, dtype=torch.long)
    segment_ids = torch.zeros((b, s), dtype=torch.long)
    decoder_input_ids = torch.full((b, t), pad_id, dtype=torch.long)
    decoder_segment_ids = torch.zeros((b, t), dtype=torch.long)
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
    target_bytes = torch.zeros(b, dtype=torch.long)
    for r, group in enumerate(groups):
        enc: list[int] = []
        dec: list[int] = []
        lab: list[int] = []
        enc_seg: list[int] = []
        dec_seg: list[int] = []
        for k, i in enumerate(group, start=1):
            p = pairs[i]
            if len(p.labels) != len(p.decoder_input_ids):
                raise ValueError(f"pair {i}: {len(p.labels)} labels for "
                                 f"{len(p.decoder_input_ids)} decoder inputs")
            enc += p.input_ids
            dec += p.decoder_input_ids
            lab += p.labels
            enc_seg += [k] * len(p.input_ids)
            dec_seg += [k] * len(p.decoder_input_ids)
            target_bytes[r] += p.target_bytes
        input_ids[r, : len(enc)] = torch.tensor(enc, dtype=torch.long)
        segment_ids[r, : len(enc)] = torch.tensor(enc_seg, dtype=torch.long)
        decoder_input_ids[r, : len(dec)] = torch.tensor(dec, dtype=torch.long)
        decoder_segment_ids[r, : len(dec)] = torch.tensor(dec_seg, dtype=torch.long)
        labels[r, : len(lab)] = torch.tensor(lab, dtype=torch.long)
    batch = {
        "input_ids": input_ids,
        "attention_mask": (segment_ids > 0).long(),
        "segment_ids": segment_ids,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": (decoder_segment_ids > 0).long(),
        "decoder_segment_ids": decoder_segment_ids,
        "labels": labels,
    }
    if with_target_bytes:
        batch["target_bytes"] = target_bytes
    return batch


def collate_packed(
    pairs: Sequence[EncodedPair],
    pack_length: int | None,
    pad_id: int = 0,
    with_target_bytes: bool = False,
    image_shape: tuple[int, int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`collate_groups` over :func:`pack_groups` with rows of ``pack_length`` tokens;
    a plain :func:`collate` (no segment ids) when packing is off (``None``/0), when no two
    samples share a row, or when the batch carries extra inputs (knowledge graph, images, task
    ids are per sample, and a packed row holds several samples)."""
    if not pairs:
        raise ValueError("collate needs at least one pair")
    extras = image_shape is not None or any(p.inputs is not None for p in pairs)
    if pack_length and not extras:
        groups = pack_groups(pairs, pack_length)
        if len(groups) < len(pairs):
            return collate_groups(pairs, groups, pad_id, with_target_bytes)
    return collate(pairs, pad_id, with_target_bytes, image_shape)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments a training/evaluation forward takes from a collated batch
    (``segment_ids`` / ``decoder_segment_ids`` only when the batch is packed), with the extra
    inputs it carries (:func:`core.data.extras.model_inputs`)."""
    from core.data.extras import model_inputs as extra_inputs

    keys = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask",
            "labels", "segment_ids", "decoder_segment_ids")
    return {**{k: batch[k] for k in keys if k in batch}, **extra_inputs(batch)}


def batch_num_samples(batch: dict[str, torch.Tensor]) -> int:
    """How many samples a collated batch holds (rows, or segments of a packed batch)."""
    segments = batch.get("segment_ids")
    if segments is None:
        return int(batch["input_ids"].shape[0])
    return int(segments.max(dim=1).values.sum())


def padding_fraction(batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Share of padding among all encoder + decoder positions of ``batches``."""
    real = total = 0
    for batch in batches:
        for key in ("attention_mask", "decoder_attention_mask"):
            mask = batch[key]
            real += int(mask.sum())
            total += mask.numel()
    return 1.0 - real / total if total else 0.0


def packing_effect(
    pairs: Sequence[EncodedPair],
    batch_size: int,
    pack_length: int,
    seed: int = 0,
    max_batches: int = 400,
) -> tuple[float, float]:
    """Padding share of all positions, ``(unpacked, packed)``, over the first ``max_batches``
    batches a :class:`BatchLoader` would draw (lengths only: nothing is collated)."""
    loader = BatchLoader(pairs, batch_size, seed=seed)
    real = plain = packed = 0
    for _ in range(min(max_batches, loader.batches_per_epoch)):
        batch = loader.next_pairs()
        enc = [len(p.input_ids) for p in batch]
        dec = [len(p.decoder_input_ids) for p in batch]
        real += sum(enc) + sum(dec)
        plain += len(batch) * (max(enc) + max(dec))
        groups = pack_groups(batch, pack_length)
        packed += len(groups) * (max(sum(enc[i] for i in g) for g in groups)
                                 + max(sum(dec[i] for i in g) for g in groups))
    if not plain:
        return 0.0, 0.0
    return 1.0 - real / plain, 1.0 - real / packed


class BatchLoader:
    """Endless iterator of collated batches over epochs (``next(loader)``), exactly resumable.

    ``batch_size`` is per rank; the global batch is ``world_size × batch_size``.
    """

    def __init__(
        self,
        pairs: Sequence[EncodedPair],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        bucket_batches: int = 50,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pad_id: int = 0,
        with_target_bytes: bool = False,
        image_shape: tuple[int, int, int] | None = None,
        pack_length: int | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if bucket_batches < 0:
            raise ValueError(f"bucket_batches must be >= 0, got {bucket_batches}")
        self.pairs = list(pairs)
        if len(self.pairs) < world_size:
            raise DataError(
                f"{len(self.pairs)} samples cannot feed {world_size} ranks; use more data"
            )
        self.seed = int(seed)
        self.shuffle = shuffle
        self.bucket_batches = bucket_batches
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.pad_id = pad_id
        self.with_target_bytes = with_target_bytes
        self.image_shape = image_shape
        # Sequence packing: each batch's samples share rows of this many tokens (None: off).
        # The sample order and the state are the same either way, so resume is unaffected.
        self.pack_length = pack_length
        self._lengths = [len(p) for p in self.pairs]
        self.epoch = 0
        self.position = 0  # samples of this epoch's global order already consumed (all ranks)
        self.batch_size = 0
        self.set_batch_size(batch_size)
        self._order_global_batch = self.global_batch_size
        self._order: list[int] | None = None

    # ----------------------------------------------------------------- sizes
    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def global_batch_size(self) -> int:
        """Samples consumed per step across all ranks."""
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Batches each rank draws per epoch at the current batch size."""
        full, rest = divmod(len(self.pairs), self.global_batch_size)
        return full + (0 if self.drop_last or rest // self.world_size == 0 else 1)

    def num_tokens(self) -> int:
        """Encoder + decoder tokens over the whole dataset (all ranks, one epoch)."""
        return sum(p.num_tokens for p in self.pairs)

    def set_batch_size(self, batch_size: int) -> None:
        """Change the per-rank batch size from the next batch on; the sample position is kept."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.drop_last and len(self.pairs) < batch_size * self.world_size:
            raise DataError(
                f"{len(self.pairs)} samples are fewer than one global batch of "
                f"{batch_size * self.world_size} with drop_last; lower the batch size"
            )
        self.batch_size = int(batch_size)

    # ----------------------------------------------------------------- order
    def epoch_order(self, epoch: int, global_batch: int) -> list[int]:
        """The global sample order of ``epoch`` (same on every rank)."""
        idx = list(range(len(self.pairs)))
        rng = random.Random(f"aeron-loader:{self.seed}:{epoch}")
        if self.shuffle:
            rng.shuffle(idx)
        if self.bucket_batches == 0:
            return idx
        bucket = self.bucket_batches * global_batch
        buckets: list[list[int]] = []
        for start in range(0, len(idx), bucket):
            chunk = sorted(idx[start : start + bucket], key=self._lengths.__getitem__)
            groups = [chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch)]
            if self.shuffle:
                rng.shuffle(groups)
            buckets.append([i for g in groups for i in g])
        if self.shuffle:
            rng.shuffle(buckets)
        return [i for b in buckets for i in b]

    def _current_order(self) -> list[int]:
        if self._order is None:
            self._order = self.epoch_order(self.epoch, self._order_global_batch)
        return self._order

    def _next_epoch(self) -> None:
        self.epoch += 1
        self.position = 0
        self._order_global_batch = self.global_batch_size
        self._order = None

    # ----------------------------------------------------------------- iteration
    def next_indices(self) -> list[int]:
        """Sample indices of this rank's next batch (advances the loader)."""
        while True:
            order = self._current_order()
            remaining = len(order) - self.position
            g = self.global_batch_size
            if remaining >= g:
                take, per = g, self.batch_size
            elif remaining > 0 and not self.drop_last and remaining // self.world_size > 0:
                per = remaining // self.world_size
                take = remaining  # the few samples a rank split cannot share are skipped
            else:
                self._next_epoch()
                continue
            start = self.position + self.rank * per
            self.position += take
            return order[start : start + per]

    def next_pairs(self) -> list[EncodedPair]:
        """This rank's next batch as pairs (advances the loader)."""
        return [self.pairs[i] for i in self.next_indices()]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return collate_packed(self.next_pairs(), self.pack_length, self.pad_id,
                              self.with_target_bytes, self.image_shape)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain-int, JSON-serialisable position: restoring it continues at the next batch."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "batch_size": self.batch_size,
            "order_global_batch": self._order_global_batch,
            "num_samples": len(self.pairs),
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; DataError if it belongs to different data."""
        try:
            n = int(state["num_samples"])
            epoch, position = int(state["epoch"]), int(state["position"])
            order_global = int(state["order_global_batch"])
            batch_size = int(state["batch_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"data loader state is malformed ({exc!r}); cannot resume data position"
            ) from exc
        if n != len(self.pairs):
            raise DataError(
                f"data loader state was saved for {n} samples but the data has {len(self.pairs)}; "
                "resume with the same data (and --max-length) or start a new run"
            )
        if "seed" in state and int(state["seed"]) != self.seed:
            raise DataError(
                f"data loader state was saved with seed {state['seed']}, not {self.seed}; "
                "resume with the same seed"
            )
        if not 0 <= position <= n or epoch < 0 or order_global < 1:
            raise DataError(f"data loader state out of range: {state}")
        self.epoch, self.position = epoch, position
        self._order_global_batch = order_global
        self._order = None
        self.set_batch_size(batch_size)
