"""Batching: padding/collation and a resumable, length-bucketed, distributed batch loader.

Order of one epoch (identical on every rank): a seeded shuffle of all samples, cut into buckets
of ``bucket_batches`` global batches, each bucket sorted by length and cut into batches whose
order is shuffled, then the bucket order shuffled. A global batch of ``world_size × batch_size``
consecutive samples is then split into contiguous per-rank slices — so rank shares are disjoint,
every rank draws the same number of batches, and ``world_size`` ranks see exactly the samples a
single process would see with the same global batch. The state is (epoch, samples consumed), so
a restored loader continues at the exact next sample.
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
        return collate(self.next_pairs(), self.pad_id, self.with_target_bytes, self.image_shape)

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
