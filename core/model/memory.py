"""Neural episodic memory: a persistent bank of key/value slots the encoder states read from.

``memory_slots`` (1000) slots of ``memory_dim`` (512, independent of ``d_model``) live in
buffers (checkpointed, not trained): ``mem_keys``, ``mem_values``, ``usage``, ``written`` and
``age``. Each forward (model.md §4.2):

1. **Read.** ``q = q_proj(norm x)`` attends in ``memory_heads`` heads over the written slots plus
   one *current* slot per sample, ``(write_key, write_value)(pool(norm x))`` — the differentiable
   path through which ``write_key``/``write_value`` learn. The recall ``(B,S,memory_dim)`` is
   projected back and gated in: ``x + σ(gate([x; o]))⊙o``. With no written slot the read is
   skipped (``neural_memory_enhanced`` False) but the write below still happens. On the CPU
   the read scores the bank once for the whole batch with plain products (the bank is a
   buffer: no gradient is due to it); on the GPU it runs on SDPA's fused kernel. The usage
   statistics come from the read's weights, without autograd, at at most 64 query positions
   per sample.
2. **Write** (after the graph is built, by the backbone, per ``memory_write_mode``): each
   sample's detached current slot replaces the least-used slot — an unwritten one first, then the
   lowest usage, then the oldest — and ``usage ← 0.99·usage + read mass``. Done in place on
   buffers only after autograd no longer needs them, so it never breaks the backward pass.

``write``/``read``/``reset`` are public for direct use; ``memory_statistics()`` summarises the
bank for the console.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model.layers import AeronRMSNorm, masked_mean_pool, sdpa, tracing

USAGE_DECAY = 0.99
STAT_POSITIONS = 64  # query positions per sample that the read statistics look at
ENTROPY_POSITIONS = 8  # of those, the ones the mean read entropy (a display figure) looks at


def _stat_stride(length: int) -> int:
    """Stride between the query positions the read statistics use (at most STAT_POSITIONS)."""
    return max(1, -(-length // STAT_POSITIONS))


@dataclass
class PendingMemoryWrite:
    """What one forward wants to store: detached current slots and the read mass per slot."""

    keys: Tensor  # (B, memory_dim)
    values: Tensor  # (B, memory_dim)
    read_mass: Tensor | None  # (memory_slots,) or None when the read was skipped
    read_entropy: float = 0.0  # mean entropy of this forward's read attention (nats)


class NeuralMemoryNetwork(nn.Module):
    """Attention-read, least-used-write episodic memory."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        d, m = config.d_model, config.memory_dim
        self.num_slots = int(config.memory_slots)
        self.memory_dim = int(m)
        self.num_heads = int(config.memory_heads)
        self.head_dim = m // self.num_heads
        std = float(config.initializer_range)
        self.norm = AeronRMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, m, bias=False)
        self.write_key = nn.Linear(d, m, bias=False)
        self.write_value = nn.Linear(d, m, bias=False)
        self.out_proj = nn.Linear(m, d, bias=False)
        self.gate = nn.Linear(2 * d, d)
        for lin in (self.q_proj, self.write_key, self.write_value, self.out_proj, self.gate):
            nn.init.normal_(lin.weight, std=std)
        nn.init.constant_(self.gate.bias, -2.0)
        self.register_buffer("mem_keys", torch.zeros(self.num_slots, m))
        self.register_buffer("mem_values", torch.zeros(self.num_slots, m))
        self.register_buffer("usage", torch.zeros(self.num_slots))
        self.register_buffer("written", torch.zeros(self.num_slots, dtype=torch.bool))
        self.register_buffer("age", torch.zeros(self.num_slots, dtype=torch.long))
        self.register_buffer("writes_total", torch.zeros((), dtype=torch.long))
        self._last_read_entropy = 0.0

    # ------------------------------------------------------------------ read
    def _heads(self, t: Tensor) -> Tensor:
        """``(..., memory_dim) -> (h, N, hd)`` with every leading position flattened into N."""
        return t.reshape(-1, self.num_heads, self.head_dim).transpose(0, 1)

    def _read_weights(self, qh: Tensor, bank_k: Tensor, cur_k: Tensor | None, per: int) -> Tensor:
        """Softmax weights ``(h, N, W [+1])`` of queries over the bank (and each sample's slot).

        The bank is shared by the whole batch, so its scores are one matmul per head; the
        current slot (one per sample, ``per`` queries each) is a dot product.
        """
        qh = qh * (1.0 / math.sqrt(self.head_dim))  # scale the N·hd queries, not N·W scores
        scores = torch.matmul(qh, self._heads(bank_k).transpose(1, 2))  # (h, N, W)
        if cur_k is not None:
            ck = self._heads(cur_k).repeat_interleave(per, dim=1)  # (h, N, hd)
            cur = (qh * ck).sum(dim=-1, keepdim=True)  # (h, N, 1)
            scores = torch.cat((scores, cur), dim=-1)
        return scores.float().softmax(dim=-1)

    def read(self, query: Tensor) -> Tensor:
        """Recall for ``query (..., memory_dim)`` over the written slots only (zeros if none)."""
        if not bool(self.written.any()):
            return torch.zeros_like(query)
        idx = self.written.nonzero().squeeze(1)
        qh = self._heads(query)
        weights = self._read_weights(qh, self.mem_keys[idx].to(query.dtype), None, 1)
        out = torch.matmul(weights.to(query.dtype), self._heads(self.mem_values[idx].to(query.dtype)))
        return out.transpose(0, 1).reshape(query.shape)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None, PendingMemoryWrite]:
        """``(x', memory_recall or None, pending write)``; ``memory_recall`` is ``(B,S,memory_dim)``."""
        b, s, _ = x.shape
        normed = self.norm(x)
        pooled = masked_mean_pool(normed, mask)
        cur_key = self.write_key(pooled)  # (B, m), differentiable
        cur_value = self.write_value(pooled)
        pending = PendingMemoryWrite(cur_key.detach(), cur_value.detach(), None)
        if tracing():
            return self._traced_read(x, normed, cur_key, cur_value, pending)
        written_idx = self.written.nonzero().squeeze(1)
        n_written = int(written_idx.numel())
        if n_written == 0:
            return x, None, pending
        q = self.q_proj(normed)
        if x.device.type == "cpu":
            recall, weights = self._shared_bank_read(q, cur_key, cur_value, written_idx)
        else:
            recall, weights = self._fused_read(q, cur_key, cur_value, written_idx)
        with torch.no_grad():
            pending.read_mass, pending.read_entropy = self._read_statistics(
                weights, mask, written_idx, s)
        o = self.out_proj(recall)
        g = torch.sigmoid(self.gate(torch.cat((x, o), dim=-1)))
        return x + g * o, recall, pending

    def _shared_bank_read(self, q: Tensor, cur_key: Tensor, cur_value: Tensor,
                          written_idx: Tensor) -> tuple[Tensor, Tensor]:
        """The read with the bank shared by the batch: ``(recall (B,S,m), weights (h,B,S,W+1))``.

        The bank is a buffer, so no gradient is due to it: one ``(h, B·S, hd) × (h, hd, W)``
        product scores every query against it, each sample's own slot is a dot product, and
        the backward pass computes only the queries' and the current slot's gradients. SDPA
        would need the bank copied per sample and would produce (and discard) a key and a value
        gradient for every copy: measured at the tiny training step's shape, 1,000 written
        slots, the memory module fell from 185 to 38 CPU-ms (bench/RESULTS.md, "step_kernels").
        The weights are materialised, ``B·h·S·(W+1)`` of them (the estimator counts them on the
        CPU); the GPU keeps the fused kernel (:meth:`_fused_read`), which never does.
        """
        b, s, m = q.shape
        h, hd = self.num_heads, self.head_dim
        dtype = q.dtype
        qh = q.view(b * s, h, hd).transpose(0, 1) * (1.0 / math.sqrt(hd))  # (h, B·S, hd)
        bank_k = self.mem_keys[written_idx].to(dtype)  # (W, m)
        bank_v = self.mem_values[written_idx].to(dtype)
        scores = torch.matmul(qh, bank_k.view(-1, h, hd).permute(1, 2, 0))  # (h, B·S, W)
        ck = cur_key.to(dtype).view(b, 1, h, hd)
        cur = (qh.transpose(0, 1).view(b, s, h, hd) * ck).sum(dim=-1)  # (B, S, h)
        scores = torch.cat((scores, cur.view(b * s, h).T.unsqueeze(-1)), dim=-1)
        # Softmax in the compute dtype: the CPU kernel accumulates in fp32 either way, and an
        # fp32 copy of the (h, B·S, W+1) weights costs more than the products around it.
        weights = scores.softmax(dim=-1)  # (h, B·S, W+1)
        # The bank's values with a zero row for the current slot, whose value differs per
        # sample and is added apart: no slice of the weights, so no copy of them.
        bank_v = torch.cat((bank_v, bank_v.new_zeros(1, m))).view(-1, h, hd).transpose(0, 1)
        recall = torch.matmul(weights, bank_v)  # (h, B·S, hd)
        cv = cur_value.to(dtype).view(b, 1, h, hd).expand(b, s, h, hd)
        recall = recall + weights[..., -1:] * cv.reshape(b * s, h, hd).transpose(0, 1)
        recall = recall.transpose(0, 1).reshape(b, s, m)
        return recall, weights.detach().view(h, b, s, -1)

    def _fused_read(self, q: Tensor, cur_key: Tensor, cur_value: Tensor,
                    written_idx: Tensor) -> tuple[Tensor, Tensor]:
        """The read on SDPA's fused kernel (GPU): ``(recall (B,S,m), weights (h,B,S',W+1))``
        with the weights (no autograd) only at the statistics' query positions."""
        b, s, m = q.shape
        h, hd, w_n = self.num_heads, self.head_dim, int(written_idx.numel())
        dtype = q.dtype
        # Keys/values per sample: the bank (a constant: buffers) plus the sample's own slot.
        bank_k = self.mem_keys[written_idx].to(dtype).unsqueeze(0).expand(b, -1, -1)
        bank_v = self.mem_values[written_idx].to(dtype).unsqueeze(0).expand(b, -1, -1)
        keys = torch.cat((bank_k, cur_key.to(dtype).unsqueeze(1)), dim=1)
        values = torch.cat((bank_v, cur_value.to(dtype).unsqueeze(1)), dim=1)
        qh = q.view(b, s, h, hd).transpose(1, 2)  # (B, h, S, hd)
        kh = keys.view(b, w_n + 1, h, hd).transpose(1, 2)  # (B, h, W+1, hd)
        vh = values.view(b, w_n + 1, h, hd).transpose(1, 2)
        # SDPA's fused kernel never materialises the (S × W) weights, forward or backward.
        recall = sdpa(qh, kh, vh).transpose(1, 2).reshape(b, s, m)
        with torch.no_grad():
            stride = _stat_stride(s)
            scores = torch.matmul(qh[:, :, ::stride], kh.transpose(-1, -2)).float()
            weights = (scores / math.sqrt(hd)).softmax(dim=-1)  # (B, h, S', W+1)
        return recall, weights.transpose(0, 1)

    def _traced_read(self, x: Tensor, normed: Tensor, cur_key: Tensor, cur_value: Tensor,
                     pending: PendingMemoryWrite) -> tuple[Tensor, Tensor, PendingMemoryWrite]:
        """The read of :meth:`forward` without data-dependent shapes, for an exported graph.

        The whole bank takes part with the unwritten slots masked out (the same softmax as over
        the written ones), and with no slot written the recall is multiplied by 0 — the eager
        path's "no read" (``x`` unchanged; a zero recall adds nothing downstream either).
        """
        b, s, _ = x.shape
        q = self.q_proj(normed)
        dtype = q.dtype
        h, hd, n = self.num_heads, self.head_dim, self.num_slots
        keys = torch.cat((self.mem_keys.to(dtype).unsqueeze(0).expand(b, -1, -1),
                          cur_key.to(dtype).unsqueeze(1)), dim=1)
        values = torch.cat((self.mem_values.to(dtype).unsqueeze(0).expand(b, -1, -1),
                            cur_value.to(dtype).unsqueeze(1)), dim=1)
        allowed = torch.cat((self.written, self.written.new_ones(1))).view(1, 1, 1, n + 1)
        qh = q.view(b, s, h, hd).transpose(1, 2)
        kh = keys.view(b, n + 1, h, hd).transpose(1, 2)
        vh = values.view(b, n + 1, h, hd).transpose(1, 2)
        recall = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed)
        recall = recall.transpose(1, 2).reshape(b, s, self.memory_dim)
        recall = recall * self.written.any().to(dtype)
        o = self.out_proj(recall)
        g = torch.sigmoid(self.gate(torch.cat((x, o), dim=-1)))
        return x + g * o, recall, pending

    def _read_statistics(self, weights: Tensor, mask: Tensor | None, written_idx: Tensor,
                         seq_len: int) -> tuple[Tensor, float]:
        """Read mass per slot and mean read entropy from the read's ``weights (h, B, ·, W+1)``
        (all ``seq_len`` query positions, or only the sampled ones) at at most
        :data:`STAT_POSITIONS` evenly spaced query positions per sample (all of them for
        shorter inputs); the entropy, a display figure, at :data:`ENTROPY_POSITIONS` of them.

        Read mass: attention averaged over heads and real positions, summed over the batch
        (each sample contributes at most 1) — the usage signal for slot replacement.
        """
        h, b = weights.shape[:2]
        stride = _stat_stride(seq_len)
        if stride > 1 and weights.shape[2] == seq_len:
            weights = weights[:, :, ::stride]
        sampled = weights.shape[2]
        if mask is not None:
            m = mask[:, ::stride].float()
            m = m / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        else:
            m = torch.full((b, sampled), 1.0 / sampled, device=weights.device)
        n_written = int(written_idx.numel())
        # Σ over samples and positions as one product per head: (B·S') @ (h, B·S', W+1).
        per_slot = torch.matmul(m.reshape(-1).to(weights.dtype),
                                weights.reshape(h, b * sampled, -1)).float().sum(dim=0)
        read_mass = torch.zeros(self.num_slots, device=weights.device, dtype=torch.float32)
        read_mass.index_add_(0, written_idx, per_slot[:n_written] / h)
        step = max(1, -(-sampled // ENTROPY_POSITIONS))
        entropy = float(torch.special.entr(weights[:, :, ::step].float()).sum(dim=-1).mean())
        return read_mass, entropy

    # ------------------------------------------------------------------ write
    def _victims(self, n: int) -> Tensor:
        """Indices of the ``n`` slots to replace: unwritten, then least used, then oldest."""
        order = torch.argsort(self.age, descending=True, stable=True)
        order = order[torch.argsort(self.usage[order], stable=True)]
        order = order[torch.argsort(self.written[order].to(torch.uint8), stable=True)]
        return order[:n]

    @torch.no_grad()
    def write(self, keys: Tensor, values: Tensor, read_mass: Tensor | None = None) -> Tensor:
        """Store ``keys/values (n, memory_dim)`` in the least-used slots; returns the slot ids.

        ``usage`` first decays and gains ``read_mass`` (the last read's attention per slot), so
        the choice of victims reflects the read that produced these slots.
        """
        if keys.shape != values.shape or keys.dim() != 2 or keys.shape[1] != self.memory_dim:
            raise ValueError(
                f"write: keys and values must both be (n, {self.memory_dim}), "
                f"got {tuple(keys.shape)} and {tuple(values.shape)}"
            )
        self.usage.mul_(USAGE_DECAY)
        if read_mass is not None:
            self.usage.add_(read_mass.to(self.usage.device, self.usage.dtype))
        n = min(keys.shape[0], self.num_slots)
        keys, values = keys[-n:], values[-n:]
        slots = self._victims(n)
        self.age.add_(self.written.long())
        self.mem_keys[slots] = keys.to(self.mem_keys.dtype)
        self.mem_values[slots] = values.to(self.mem_values.dtype)
        self.written[slots] = True
        self.usage[slots] = 0.0
        self.age[slots] = 0
        self.writes_total.add_(n)
        return slots

    def apply_write(self, pending: PendingMemoryWrite) -> Tensor:
        """Apply a forward's pending write (the backbone calls this after the graph is built)."""
        self._last_read_entropy = pending.read_entropy
        return self.write(pending.keys, pending.values, pending.read_mass)

    @torch.no_grad()
    def reset(self) -> None:
        """Forget everything: empty slots, zero usage and counters."""
        for buf in (self.mem_keys, self.mem_values, self.usage, self.age, self.writes_total):
            buf.zero_()
        self.written.fill_(False)
        self._last_read_entropy = 0.0

    def reset_state(self) -> None:
        """Alias of :meth:`reset` (the backbone's ``reset_state`` calls it)."""
        self.reset()

    def memory_statistics(self, top: int = 5) -> dict[str, Any]:
        """``{num_slots, memory_dim, slots_used, mean_usage, read_entropy, top_slots, writes_total}``."""
        used = int(self.written.sum())
        mean_usage = float(self.usage[self.written].mean()) if used else 0.0
        k = min(top, used)
        usage = self.usage.masked_fill(~self.written, -1.0)
        top_slots = usage.topk(k).indices.tolist() if k else []
        return {
            "num_slots": self.num_slots,
            "memory_dim": self.memory_dim,
            "slots_used": used,
            "mean_usage": mean_usage,
            "read_entropy": self._last_read_entropy,
            "top_slots": top_slots,
            "writes_total": int(self.writes_total),
        }
