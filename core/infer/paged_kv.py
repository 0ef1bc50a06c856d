"""Paged KV cache for batched generation (spec rlhf.md §6 "PagedKVCache").

The decoder's self-attention keys and values live in one pool of fixed-size blocks,
``(L, 2, num_blocks, 16, G, hd)`` (layers, key/value, block, slot in block, KV heads, head
dim). Each running sequence owns a *block table*: the pool blocks holding its positions
``0-15, 16-31, ...`` in order. A block is taken from the free list only when a sequence's
next position starts one (allocation on demand) and all of a sequence's blocks go back to the
free list the moment it finishes, so the cache holds ``Σ ceil(len_i / 16)`` blocks of the
sequences still running — not ``batch × longest`` like a rectangular cache that keeps finished
rows. Running out of blocks is a :class:`PagedCacheExhausted` error that says how many blocks
were in use by how many sequences and what to raise.

:class:`PagedDecoder` runs the model's own decoder layers (``model.decoder.layers``, the same
modules and cached-attention path that ``model.decode(..., use_cache=True)`` runs) one layer at
a time: for each layer it gathers the running rows' past keys/values from their blocks, runs the
layer, and writes the new positions back into the pool. Only one layer's gathered copy exists at
a time. Finished rows leave the batch (their encoder memory and cross-attention keys/values are
dropped too), so they cost neither memory nor compute. The cross-attention keys/values
(fixed length per sequence, computed once from the encoder memory) stay per-row tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from core.errors import ConfigError
from core.model.layers import NO_MASK, AttentionMask

BLOCK_SIZE = 16  # tokens per block (spec)


class PagedCacheExhausted(ConfigError):
    """Every block of the pool is held by running sequences and one more is needed."""


class PagedKVCache:
    """A block pool ``(L, 2, num_blocks, block_size, G, hd)`` with per-sequence block tables.

    Sequences are identified by any hashable id (generation uses the batch row). ``reserve``
    makes room for positions up to a length (allocating blocks on demand), ``write`` stores one
    layer's new keys/values, ``gather`` reads a layer's keys/values of several sequences as a
    ``(B, G, T, hd)`` tensor, ``free`` returns a sequence's blocks to the free list.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        *,
        block_size: int = BLOCK_SIZE,
        dtype: torch.dtype = torch.float32,
        device: Any = "cpu",
    ) -> None:
        if num_blocks < 1:
            raise ConfigError(f"--paged-blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.pool = torch.zeros(
            (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim),
            dtype=dtype, device=device,
        )
        # Lowest ids first: a freed block is the next one handed out (LIFO), which keeps the
        # live working set small and makes reuse visible in the counters.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self.tables: dict[Any, list[int]] = {}
        self.lengths: dict[Any, int] = {}
        self.peak_blocks_in_use = 0
        self.blocks_allocated = 0  # allocations, counting a reused block again
        self.blocks_reused = 0  # allocations of a block some earlier sequence had freed
        self._ever_used: set[int] = set()
        self.enough: int | None = None  # blocks that always suffice (for the error message)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def blocks_in_use(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def bytes_per_block(self) -> int:
        return self.pool[:, :, 0].numel() * self.pool.element_size()

    def add(self, seq: Any) -> None:
        """Start a sequence with an empty block table."""
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} is already in the paged cache")
        self.tables[seq] = []
        self.lengths[seq] = 0

    def reserve(self, seq: Any, length: int) -> None:
        """Make the sequence's table cover positions ``0 .. length-1`` (new blocks on demand)."""
        table = self.tables[seq]
        needed = -(-length // self.block_size)
        while len(table) < needed:
            if not self._free:
                raise PagedCacheExhausted(
                    f"paged KV cache exhausted: all {self.num_blocks} blocks of "
                    f"{self.block_size} tokens are held by {len(self.tables)} running "
                    f"sequence(s), and sequence {seq!r} needs another block for position "
                    f"{len(table) * self.block_size}; raise --paged-blocks"
                    + (f" (this batch never needs more than {self.enough})" if self.enough else "")
                    + " or generate fewer prompts at once"
                )
            block = self._free.pop()
            if block in self._ever_used:
                self.blocks_reused += 1
            self._ever_used.add(block)
            self.blocks_allocated += 1
            table.append(block)
        self.peak_blocks_in_use = max(self.peak_blocks_in_use, self.blocks_in_use)

    def free(self, seq: Any) -> None:
        """Return every block of a finished sequence to the free list."""
        blocks = self.tables.pop(seq)
        del self.lengths[seq]
        self._free.extend(reversed(blocks))

    # ------------------------------------------------------------------ tensors
    def _slots(self, seqs: list[Any], start: int, count: int) -> tuple[Tensor, Tensor]:
        """Pool ``(block, offset)`` index tensors ``(B, count)`` of positions start..start+count."""
        pos = torch.arange(start, start + count)
        tables = self.block_tables(seqs, start + count)
        blocks = tables[:, pos // self.block_size]
        offsets = (pos % self.block_size).expand(len(seqs), count)
        return blocks.to(self.pool.device), offsets.to(self.pool.device)

    def block_tables(self, seqs: list[Any], length: int) -> Tensor:
        """``(B, ceil(length/16))`` block ids covering positions ``0 .. length-1``."""
        n = -(-length // self.block_size)
        return torch.tensor([self.tables[s][:n] for s in seqs], dtype=torch.long)

    def write(self, layer: int, seqs: list[Any], start: int, k: Tensor, v: Tensor) -> None:
        """Store ``k, v (B, G, t, hd)`` of ``seqs`` at positions ``start .. start+t-1``."""
        t = int(k.shape[2])
        for s in seqs:
            self.reserve(s, start + t)
            self.lengths[s] = max(self.lengths[s], start + t)
        blocks, offsets = self._slots(seqs, start, t)
        self.pool[layer, 0, blocks, offsets] = k.transpose(1, 2).to(self.pool.dtype)
        self.pool[layer, 1, blocks, offsets] = v.transpose(1, 2).to(self.pool.dtype)

    def gather(self, layer: int, seqs: list[Any], length: int) -> tuple[Tensor, Tensor]:
        """Keys and values ``(B, G, length, hd)`` of positions ``0 .. length-1`` of ``seqs``."""
        tables = self.block_tables(seqs, length).to(self.pool.device)
        b, n = tables.shape
        out = []
        for kv in (0, 1):
            blocks = self.pool[layer, kv, tables]  # (B, n, block, G, hd)
            flat = blocks.reshape(b, n * self.block_size, *blocks.shape[3:])[:, :length]
            out.append(flat.transpose(1, 2))
        return out[0], out[1]

    def stats(self) -> dict[str, int]:
        """Counters for reports and tests."""
        return {
            "num_blocks": self.num_blocks,
            "block_size": self.block_size,
            "peak_blocks_in_use": self.peak_blocks_in_use,
            "blocks_in_use": self.blocks_in_use,
            "blocks_allocated": self.blocks_allocated,
            "blocks_reused": self.blocks_reused,
            "bytes_per_block": self.bytes_per_block,
        }


def blocks_needed(batch: int, tokens: int, block_size: int = BLOCK_SIZE) -> int:
    """Blocks a batch needs when every row runs to ``tokens`` decoder positions."""
    return batch * -(-tokens // block_size)


class PagedDecoder:
    """Cached decoder steps of a batch whose self-attention K/V live in a :class:`PagedKVCache`.

    ``step(ids, finished)`` takes the next decoder tokens of every batch row ``(B, t)`` and the
    rows' finished flags, frees the blocks of rows that finished since the last call, runs the
    still-running rows only, and returns last-position logits ``(B, V)`` (zeros for finished
    rows, which the caller ignores). All running rows share one decoder length: they start
    from the same prefix and advance together.
    """

    def __init__(self, model: Any, encoded: Any, num_blocks: int,
                 block_size: int = BLOCK_SIZE, max_length: int | None = None) -> None:
        for name in ("decoder", "token_embedding", "rotary", "decoder_norm", "_project"):
            if not hasattr(model, name):
                raise ConfigError(
                    f"the paged KV cache needs a single Aeron model (no {name!r} on "
                    f"{type(model).__name__}); drop --paged-blocks for this model"
                )
        cfg = model.config
        weight = model.token_embedding.weight
        self.model = model
        self.cache = PagedKVCache(
            int(cfg.num_decoder_layers), int(cfg.num_kv_heads), int(cfg.head_dim), num_blocks,
            block_size=block_size, dtype=weight.dtype, device=weight.device,
        )
        self.batch = int(encoded.memory.shape[0])
        if max_length is not None:
            self.cache.enough = blocks_needed(self.batch, max_length, block_size)
        if num_blocks < self.batch:
            raise PagedCacheExhausted(
                f"--paged-blocks {num_blocks} cannot start {self.batch} sequences (each needs "
                f"at least one block of {block_size} tokens); use at least {self.batch}"
            )
        self.rows = list(range(self.batch))  # running batch rows, in order
        self.memory: Tensor = encoded.memory
        self.memory_mask: Tensor | None = encoded.memory_mask
        self.cross: list[tuple[Tensor, Tensor]] | None = None  # per layer (B_run, G, S, hd)
        self.length = 0  # decoder positions cached per running row
        for r in self.rows:
            self.cache.add(r)

    def _drop(self, finished: Tensor) -> None:
        keep = [i for i, r in enumerate(self.rows) if not bool(finished[r])]
        if len(keep) == len(self.rows):
            return
        kept = set(keep)
        for i, r in enumerate(self.rows):
            if i not in kept:
                self.cache.free(r)
        index = torch.tensor(keep, dtype=torch.long, device=self.memory.device)
        self.rows = [self.rows[i] for i in keep]
        self.memory = self.memory.index_select(0, index)
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask.index_select(0, index)
        if self.cross is not None:
            self.cross = [(k.index_select(0, index), v.index_select(0, index))
                          for k, v in self.cross]

    def finish(self) -> None:
        """Free the blocks of every row still holding some (end of generation)."""
        for r in self.rows:
            self.cache.free(r)
        self.rows = []

    def step(self, ids: Tensor, finished: Tensor) -> Tensor:
        self._drop(finished)
        model = self.model
        vocab = int(model.config.vocab_size)
        out = torch.zeros(self.batch, vocab, device=ids.device, dtype=torch.float32)
        if not self.rows:
            return out
        run = torch.tensor(self.rows, dtype=torch.long, device=ids.device)
        x_ids = ids.index_select(0, run)
        t, past = int(x_ids.shape[1]), self.length
        if past + t > int(model.config.max_position_embeddings):
            raise ConfigError(
                f"{past} cached + {t} new decoder tokens exceed max_position_embeddings "
                f"({model.config.max_position_embeddings})"
            )
        # The same masks model.decode builds for right-padded (here: unpadded) decoder input.
        if past == 0:
            self_mask = AttentionMask(None, t > 1)
        elif t == 1:
            self_mask = NO_MASK
        else:
            q_pos = torch.arange(past, past + t, device=ids.device)
            k_pos = torch.arange(past + t, device=ids.device)
            self_mask = AttentionMask(k_pos[None, :] <= q_pos[:, None], False)
        cross_mask = (AttentionMask(self.memory_mask[:, None, None, :], False)
                      if self.memory_mask is not None else NO_MASK)
        rope = model.rotary(t, past, ids.device)
        x = model.token_embedding(x_ids)
        new_cross: list[tuple[Tensor, Tensor]] = []
        for i, layer in enumerate(model.decoder.layers):
            layer_past = None
            if past:
                assert self.cross is not None
                k_past, v_past = self.cache.gather(i, self.rows, past)
                layer_past = (k_past, v_past, self.cross[i][0], self.cross[i][1])
            # The memory is passed even with cached cross K/V: it marks the call as
            # cross-attention (as model.decode does); the cached K/V are used as they are.
            x, _, _, present = layer(x, self.memory, self_mask, cross_mask, rope, layer_past, True)
            assert present is not None
            self.cache.write(i, self.rows, past, present[0][:, :, past:], present[1][:, :, past:])
            if past == 0:
                assert present[2] is not None and present[3] is not None
                new_cross.append((present[2], present[3]))
        if past == 0:
            self.cross = new_cross
        self.length = past + t
        logits = model._project(model.decoder_norm(x))[:, -1, :].float()
        out[run] = logits
        return out
