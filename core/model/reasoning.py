"""The Aeron reasoning engine (spec model.md §5).

Fixed order: complexity gate -> Tree of Thought (branches, cross-branch attention, critic,
pruning, contradiction resolution, merge) -> scratchpad write -> scratchpad read -> synthesis ->
straight-through skip mask. The engine never mutates its buffers inside ``forward``; a scratchpad
write is returned as a ``pending_write`` that the backbone commits after the graph is built.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model.config import NeuralNetConfig
from core.model.layers import (
    NO_MASK,
    AeronRMSNorm,
    EncoderLayer,
    init_linear,
    masked_mean_pool,
    rms_normalize,
    tracing,
)


class MemorySlotType(enum.IntEnum):
    """What a scratchpad slot holds."""

    EMPTY = 0
    WORKING = 1
    SHORT_TERM = 2
    LONG_TERM = 3
    EPISODIC = 4


class MemoryPriority(enum.IntEnum):
    """How important a scratchpad slot is."""

    LOWEST = 0
    LOW = 1
    NORMAL = 2
    HIGH = 3
    CRITICAL = 4


def few_rows(t: Tensor) -> torch.autocast:
    """Autocast off (fp32) for layers applied to a handful of rows (B, N or P of them).

    Under autocast every weight would be cast to the low-precision dtype (and its gradient
    back) on each call, which costs far more than the matmul on a few rows.
    """
    return torch.autocast(device_type=t.device.type, enabled=False)


def _mlp(d_in: int, d_hidden: int, std: float) -> nn.Sequential:
    """``Linear(d_in, d_hidden) -> SiLU -> Linear(d_hidden, 1)`` with biases (last bias 0)."""
    net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, 1))
    for m in net:
        if isinstance(m, nn.Linear):
            init_linear(m, std)
    return net


def sinusoid(values: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``(..., dim)`` of real ``values`` (sin on even, cos on odd dims)."""
    half = dim // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=values.device, dtype=torch.float32) / max(half, 1)
    )
    angles = values.float().unsqueeze(-1) * freq
    emb = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
    if emb.shape[-1] < dim:
        emb = F.pad(emb, (0, dim - emb.shape[-1]))
    return emb


def scratchpad_heads(d_model: int) -> int:
    """``max(4, d//64)`` heads, lowered to the nearest count that divides ``d_model``."""
    heads = max(4, d_model // 64)
    while d_model % heads:
        heads -= 1
    return heads


class BranchGenerator(nn.Module):
    """One hypothesis: ``Linear(SiLU(Linear(Norm u)))`` (bias-free)."""

    def __init__(self, d: int, eps: float, std: float) -> None:
        super().__init__()
        self.norm = AeronRMSNorm(d, eps)
        self.fc_in = nn.Linear(d, d, bias=False)
        self.fc_out = nn.Linear(d, d, bias=False)
        init_linear(self.fc_in, std)
        init_linear(self.fc_out, std)

    def forward(self, u: Tensor) -> Tensor:
        return self.fc_out(F.silu(self.fc_in(self.norm(u))))


@dataclass
class TreeOfThoughtOutput:
    """Result of one Tree-of-Thought pass."""

    out: Tensor  # (B, S, d) merged states, x + update
    update: Tensor  # (B, S, d) gamma * (merged - x)
    summaries: Tensor  # (B, N, d) branch summaries after cross-branch attention
    logits: Tensor  # (B, N) critic scores before the sigmoid
    scores: Tensor  # (B, N) sigmoid critic scores
    keep_mask: Tensor  # (B, N) bool
    weights: Tensor  # (B, N) merge weights
    contradiction_levels: Tensor  # (B, N, N)
    resolved: Tensor  # () number of resolved pairs
    confidence_gate: Tensor  # (B,)


class AeronTreeOfThoughtProcessor(nn.Module):
    """N hypotheses, cross-branch attention, critic, pruning, contradictions and merge."""

    def __init__(self, config: NeuralNetConfig) -> None:
        super().__init__()
        d = config.d_model
        n = config.num_tot_branches
        std = config.initializer_range
        self.num_branches = n
        self.keep_k = config.effective_tot_keep_k
        self.contradiction_threshold = config.tot_contradiction_threshold
        self.branch_embed = nn.Parameter(torch.empty(n, d))
        nn.init.normal_(self.branch_embed, std=std)
        self.generators = nn.ModuleList(
            BranchGenerator(d, config.rms_norm_eps, std) for _ in range(n)
        )
        self.cross_branch = EncoderLayer(
            d, config.nhead, config.num_kv_heads, config.swiglu_hidden, config.dropout,
            config.rms_norm_eps, config.activation,
        )
        for mod in self.cross_branch.modules():
            if isinstance(mod, nn.Linear):
                init_linear(mod, std)
        self.conf = _mlp(d, d // 4, std)
        self.evid = _mlp(2 * d, d // 4, std)
        self.contra = _mlp(3 * d, d // 4, std)
        self.resolver = nn.Linear(2 * d, d, bias=False)
        init_linear(self.resolver, std)
        self.merge_gate = nn.Linear(2 * d, 1)
        init_linear(self.merge_gate, std)

    def forward(self, x: Tensor, u: Tensor, mask: Tensor | None,
                pooled_x: Tensor | None = None) -> TreeOfThoughtOutput:
        """``x`` the encoder states, ``u`` the conditioned states, ``mask (B,S)`` or None;
        ``pooled_x`` = ``pool(x, mask)`` when the caller has it already.

        The spec's branch states ``h_i = u + b_i + g_i + shift_i + delta_i`` (``g_i`` the
        generator output, the other terms per-sample vectors) are never materialised: pooling
        and the merge are linear, so ``pool(h_i) = pool(u) + b_i + fc_out_i(pool(a_i))`` and
        ``sum_i w_i h_i = u + fc_out([w_1 a_1, ..., w_N a_N]) + sum_i w_i c_i`` with
        ``a_i = silu(fc_in_i(norm_i(u)))`` and ``c_i = b_i + shift_i + delta_i``. This is the
        same function with one wide matmul in and one out instead of N full-size branch copies.
        """
        b = x.shape[0]
        n, d = self.num_branches, x.shape[-1]
        if pooled_x is None:
            pooled_x = masked_mean_pool(x, mask)  # (B, d)
        pooled_u = pooled_x if u is x else masked_mean_pool(u, mask)

        # Branch generators: the RMS statistic of u is shared; each branch's norm weight is
        # folded into its fc_in weight (norm_i(u) @ W^T == rms(u) @ (W * w_i)^T).
        gens = self.generators
        normed = rms_normalize(u, gens[0].norm.eps)
        w_in = (torch.stack([g.fc_in.weight for g in gens])
                * torch.stack([g.norm.weight for g in gens])[:, None, :]).flatten(0, 1)  # (N*d, d)
        w_out = torch.cat([g.fc_out.weight for g in gens], dim=1)  # (d, N*d)
        act = F.silu(F.linear(normed, w_in))  # (B, S, N*d)
        pooled_act = masked_mean_pool(act, mask).view(b, n, d)
        with few_rows(x):  # everything on (B, N, d) summaries runs in fp32
            pooled_x, pooled_u = pooled_x.float(), pooled_u.float()
            # fc_out_i(pool(a_i)) for every branch in one batched product.
            pooled_gen = torch.einsum("bni,oni->bno", pooled_act.float(), w_out.view(d, n, d))
            summaries = pooled_u[:, None, :] + self.branch_embed + pooled_gen  # (B, N, d)

            # Cross-branch attention over the N summaries.
            refined, _ = self.cross_branch(summaries, mask=NO_MASK)  # (B, N, d)
            shift = refined - summaries

            # Critic
            q = self.conf(refined).squeeze(-1) + self.evid(
                torch.cat((refined, pooled_x[:, None, :].expand_as(refined)), dim=-1)
            ).squeeze(-1)  # (B, N)
            scores = torch.sigmoid(q)

            # Pruning: keep the top-k by q.
            top = q.detach().topk(self.keep_k, dim=-1).indices
            keep = torch.zeros_like(q, dtype=torch.bool).scatter(1, top, True)

            # Contradictions between kept pairs; the lower-scored branch moves towards a
            # synthesis with the higher-scored one.
            levels, resolved, deltas = self._contradictions(refined, q, keep)

            # Quality-weighted merge of the kept branches.
            weights = q.masked_fill(~keep, float("-inf")).softmax(dim=-1)
            offsets = self.branch_embed + shift + (deltas if deltas is not None else 0.0)
            merged_offset = (weights[:, :, None] * offsets).sum(dim=1)  # (B, d)
            pooled_merged = (pooled_u + (weights[:, :, None] * pooled_gen).sum(dim=1)
                             + merged_offset)
            gamma = torch.sigmoid(self.merge_gate(torch.cat((pooled_merged, pooled_x), dim=-1)))
        weighted_act = (act.view(*act.shape[:-1], n, d)
                        * weights[:, None, :, None].to(act.dtype)).flatten(-2)
        # merged - x, built without materialising merged (one pass fewer each way).
        diff = F.linear(weighted_act, w_out) + merged_offset[:, None, :]
        if u is not x:
            diff = diff + (u - x)
        update = gamma[:, :, None].to(x.dtype) * diff
        return TreeOfThoughtOutput(x + update, update, refined, q, scores, keep, weights, levels,
                                   resolved, gamma.squeeze(-1))

    def _contradictions(self, s: Tensor, q: Tensor, keep: Tensor
                        ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Spec §5 step 7 on the refined summaries ``s (B, N, d)``: ``(levels (B,N,N), number
        resolved, deltas (B,N,d) or None)``.

        Both layers that read concatenations are split by their blocks, so nothing is built per
        ordered pair: ``contra``'s first layer on ``[s_i; s_j; s_i⊙s_j]`` applies its ``s_i`` and
        ``s_j`` blocks once per branch and only the product per unordered pair (``i < j``, the
        one level the pair has), and ``resolver([s_hi; s_lo]) = R_hi s_hi + R_lo s_lo`` is
        linear, so the level-weighted sum over the branches a branch loses to is
        ``R_hi(Σ_h c_ah s_h) + (Σ_h c_ah)(R_lo s_a)`` — one row per branch. The same function.
        """
        b, n, d = s.shape
        if n < 2 or self.keep_k < 2:  # no kept pair: nothing to assess or resolve
            return s.new_zeros(b, n, n), torch.zeros((), dtype=torch.long, device=s.device), None
        first, act, last = self.contra[0], self.contra[1], self.contra[2]
        hidden = first.out_features
        w_i, w_j, w_prod = first.weight.split(d, dim=1)
        per_branch = F.linear(s, torch.cat((w_i, w_j))).view(b, n, 2, hidden)
        pi, pj = torch.triu_indices(n, n, 1, device=s.device)  # (P,) the pairs i < j
        pair_hidden = (per_branch[:, pi, 0] + per_branch[:, pj, 1]
                       + F.linear(s[:, pi] * s[:, pj], w_prod, first.bias))  # (B, P, d/4)
        raw = torch.sigmoid(last(act(pair_hidden)).squeeze(-1))  # (B, P)
        # Each pair's level at (i, j) and (j, i); 0 on the diagonal.
        both = torch.cat((pi * n + pj, pj * n + pi))
        levels = raw.new_zeros(b, n * n).index_add(1, both, torch.cat((raw, raw), dim=1))
        levels = levels.view(b, n, n)
        pair_kept = keep[:, :, None] & keep[:, None, :]
        active = pair_kept & (levels.detach() > self.contradiction_threshold)
        # lose[b, a, h]: branch a is the lower-scored side of an active pair with h.
        qd = q.detach()
        idx = torch.arange(n, device=s.device)
        lower = (qd[:, :, None] < qd[:, None, :]) | (
            (qd[:, :, None] == qd[:, None, :]) & (idx[:, None] > idx[None, :])
        )
        lose = active & lower
        resolved = lose.sum()
        coef = levels * lose.to(levels.dtype)  # (B, N_lo, N_hi)
        total = coef.sum(dim=2, keepdim=True)  # (B, N, 1)
        count = lose.sum(dim=2, keepdim=True).clamp_min(1).to(s.dtype)
        # Σ_h c_ah (resolver([s_h; s_a]) − s_a) for every branch a, divided by its pair count.
        lo_part = total * s
        deltas = (self.resolver(torch.cat((torch.bmm(coef, s), lo_part), dim=-1)) - lo_part) / count
        return levels, resolved, deltas


@dataclass
class PendingWrite:
    """A scratchpad write computed in ``forward`` and applied later by ``commit_write``."""

    slots: Tensor  # (B, K) long, distinct per sample
    values: Tensor  # (B, K, d) detached written slot values
    active: Tensor  # (B, K) bool: the sample ran reasoning and this entry was written
    slot_type: Tensor  # (B, K) long MemorySlotType
    priority: Tensor  # (B, K) long MemoryPriority

    def __repr__(self) -> str:
        b, k = self.slots.shape
        return f"PendingWrite(batch={b}, entries={k}, active={int(self.active.sum())})"


class AeronInternalScratchpad(nn.Module):
    """``P`` learned slots plus committed content and per-slot metadata (buffers)."""

    def __init__(self, config: NeuralNetConfig) -> None:
        super().__init__()
        p, d = config.num_scratchpad_slots, config.d_model
        std = config.initializer_range
        self.num_slots = p
        self.slot_keys = nn.Parameter(torch.empty(p, d))
        self.slot_values = nn.Parameter(torch.empty(p, d))
        nn.init.normal_(self.slot_keys, std=std)
        nn.init.normal_(self.slot_values, std=std)
        self.write_gate = nn.Linear(2 * d, 1)
        init_linear(self.write_gate, std)
        self.register_buffer("committed", torch.zeros(p, d))
        self.register_buffer("committed_mask", torch.zeros(p, dtype=torch.bool))
        self.register_buffer("slot_type", torch.full((p,), int(MemorySlotType.EMPTY)))
        self.register_buffer("slot_priority", torch.full((p,), int(MemoryPriority.LOWEST)))
        self.register_buffer("slot_timestamp", torch.zeros(p, dtype=torch.long))
        self.register_buffer("step_counter", torch.zeros((), dtype=torch.long))

    def current_values(self, batch: int) -> Tensor:
        """``V = where(committed_mask, committed, slot_values)`` expanded to ``(B, P, d)``."""
        v = torch.where(self.committed_mask[:, None], self.committed.to(self.slot_values.dtype),
                        self.slot_values)
        return v.unsqueeze(0).expand(batch, -1, -1)

    def write(self, contents: Tensor, active: Tensor) -> tuple[Tensor, PendingWrite, Tensor]:
        """Out-of-place write of ``contents (B, K, d)`` (best first) for ``active (B,)`` samples.

        Returns ``(V (B,P,d) after the write, pending write, gate values (B,K))``; buffers are
        untouched.
        """
        b, k, d = contents.shape
        p = self.num_slots
        k = min(k, p)
        contents = contents[:, :k]
        with torch.no_grad():  # slot choice: greedy by cosine with slot_keys, distinct per sample
            sim = F.normalize(contents.float(), dim=-1) @ F.normalize(self.slot_keys.float(), dim=-1).T
            taken = torch.zeros(b, p, dtype=torch.bool, device=contents.device)
            chosen = []
            for j in range(k):
                pick = sim[:, j].masked_fill(taken, float("-inf")).argmax(dim=-1)
                chosen.append(pick)
                taken = taken.scatter(1, pick[:, None], True)
            slots = torch.stack(chosen, dim=1)  # (B, K)
        with few_rows(contents):
            values = self.current_values(b)
            idx = slots[:, :, None].expand(b, k, d)
            old = values.gather(1, idx)
            contents = contents.to(old.dtype)
            gate = torch.sigmoid(self.write_gate(torch.cat((old, contents), dim=-1)))
            new = (1 - gate) * old + gate * contents
            act = active[:, None].expand(b, k)
            delta = (new - old) * act[:, :, None].to(new.dtype)
            out = values.scatter_add(1, idx, delta)
        slot_type = torch.full_like(slots, int(MemorySlotType.SHORT_TERM))
        slot_type[:, 0] = int(MemorySlotType.WORKING)
        priority = torch.full_like(slots, int(MemoryPriority.NORMAL))
        priority[:, 0] = int(MemoryPriority.HIGH)
        pending = PendingWrite(slots, new.detach(), act.clone(), slot_type, priority)
        return out, pending, gate.squeeze(-1)

    @torch.no_grad()
    def commit_write(self, pending: PendingWrite | None) -> None:
        """Persist a pending write: per-slot mean over writers, metadata, timestamp, step.

        Buffers are replaced, not modified in place, so tensors saved for backward stay valid.
        """
        if pending is None:
            return
        p, d = self.committed.shape
        active = pending.active.reshape(-1)
        if not bool(active.any()):
            return
        slots = pending.slots.reshape(-1)[active]
        values = pending.values.reshape(-1, d)[active].to(self.committed.dtype)
        total = torch.zeros(p, d, device=values.device, dtype=values.dtype).index_add(0, slots, values)
        count = torch.zeros(p, device=values.device, dtype=values.dtype).index_add(
            0, slots, torch.ones_like(slots, dtype=values.dtype)
        )
        written = count > 0
        mean = total / count.clamp_min(1)[:, None]
        # Metadata of the highest-priority writer per slot.
        prio = pending.priority.reshape(-1)[active]
        typ = pending.slot_type.reshape(-1)[active]
        best_prio = torch.full((p,), -1, dtype=torch.long, device=values.device).scatter_reduce(
            0, slots, prio, reduce="amax"
        )
        key = prio * 16 + typ  # type of the highest-priority writer (ties: larger type id)
        best_key = torch.full((p,), -1, dtype=torch.long, device=values.device).scatter_reduce(
            0, slots, key, reduce="amax"
        )
        step = self.step_counter + 1
        self.committed = torch.where(written[:, None], mean, self.committed)
        self.committed_mask = self.committed_mask | written
        self.slot_priority = torch.where(written, best_prio, self.slot_priority)
        self.slot_type = torch.where(written, best_key % 16, self.slot_type)
        self.slot_timestamp = torch.where(written, step.expand(p), self.slot_timestamp)
        self.step_counter = step

    @torch.no_grad()
    def reset(self) -> None:
        """Forget all committed content and metadata."""
        self.committed = torch.zeros_like(self.committed)
        self.committed_mask = torch.zeros_like(self.committed_mask)
        self.slot_type = torch.full_like(self.slot_type, int(MemorySlotType.EMPTY))
        self.slot_priority = torch.full_like(self.slot_priority, int(MemoryPriority.LOWEST))
        self.slot_timestamp = torch.zeros_like(self.slot_timestamp)
        self.step_counter = torch.zeros_like(self.step_counter)

    def metadata_after(self, pending: PendingWrite | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-sample slot ``(type, priority, age, written)`` as seen after ``pending``.

        Shapes ``(B, P)``; slots written in this forward have age 0.
        """
        age = (self.step_counter - self.slot_timestamp).clamp_min(0)
        base = (self.slot_type, self.slot_priority, age, self.committed_mask)
        if pending is None:
            return tuple(t.unsqueeze(0) for t in base)  # type: ignore[return-value]
        b = pending.slots.shape[0]
        typ, prio, age, written = (t.unsqueeze(0).expand(b, -1).clone() for t in base)
        act = pending.active
        slots = pending.slots
        typ.scatter_(1, slots, torch.where(act, pending.slot_type, typ.gather(1, slots)))
        prio.scatter_(1, slots, torch.where(act, pending.priority, prio.gather(1, slots)))
        age.scatter_(1, slots, torch.where(act, torch.zeros_like(slots), age.gather(1, slots)))
        written.scatter_(1, slots, act | written.gather(1, slots))
        return typ, prio, age, written


class ScratchpadAttention(nn.Module):
    """Reads the scratchpad: queries from the merged states, keys from slot identity + metadata."""

    def __init__(self, config: NeuralNetConfig) -> None:
        super().__init__()
        d = config.d_model
        std = config.initializer_range
        self.heads = scratchpad_heads(d)
        self.head_dim = d // self.heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            init_linear(lin, std)
        self.type_emb = nn.Embedding(len(MemorySlotType), d)
        self.priority_emb = nn.Embedding(len(MemoryPriority), d)
        nn.init.normal_(self.type_emb.weight, std=std)
        nn.init.normal_(self.priority_emb.weight, std=std)
        self.importance = nn.Linear(d, 1)
        init_linear(self.importance, std)
        self.rho = nn.Parameter(torch.zeros(()))  # age decay, softplus(0) = ln 2

    def forward(self, queries: Tensor, slot_keys: Tensor, values: Tensor, slot_type: Tensor,
                priority: Tensor, age: Tensor) -> tuple[Tensor, Tensor]:
        """``queries (B,S,d)``, ``values (B,P,d)``, metadata ``(B|1, P)``.

        Returns ``(read (B,S,d), weights (B, heads, S, P))``: per head
        ``softmax(q_h k_hᵀ/√hd + bias) v_h``, heads concatenated, through ``o_proj``.

        With only ``P`` slots, the query and output projections fold into the per-sample slot
        keys and values: ``q_h k_hᵀ = x (W_q,hᵀ k_hᵀ)`` and ``o_proj(concat_h a_h v_h) =
        Σ_h a_h (v_h W_o,hᵀ)``, so each token costs ``2·d·heads·P`` multiply-adds instead of
        ``2·d² + 2·d·P`` (8x fewer at the tiny profile) — the same function.
        """
        b, s, d = queries.shape
        p = values.shape[1]
        h, hd = self.heads, self.head_dim
        with few_rows(queries):  # keys, values and the folded projections: per sample, fp32
            keys = (slot_keys + self.type_emb(slot_type) + self.priority_emb(priority)
                    + sinusoid(age, d).to(slot_keys.dtype))  # (B|1, P, d)
            keys = keys.expand(b, p, d)
            values = values.float()
            bias = (self.importance(values).squeeze(-1)
                    - F.softplus(self.rho) * torch.log1p(age.float()))
            k = self.k_proj(keys).view(b, p, h, hd)
            v = self.v_proj(values).view(b, p, h, hd)
            # (B, d, h·P): scores = queries @ fold_q; (B, h·P, d): read = weights @ fold_o.
            fold_q = torch.einsum("hed,bphe->bdhp", self.q_proj.weight.view(h, hd, d).float(),
                                  k).reshape(b, d, h * p) / math.sqrt(hd)
            fold_o = torch.einsum("bphe,dhe->bhpd", v, self.o_proj.weight.view(d, h, hd).float()
                                  ).reshape(b, h * p, d)
        scores = torch.matmul(queries, fold_q.to(queries.dtype)).float().view(b, s, h, p)
        weights = (scores + bias.float()[:, None, None, :]).softmax(dim=-1)  # (B, S, h, P)
        read = torch.matmul(weights.view(b, s, h * p).to(queries.dtype),
                            fold_o.to(queries.dtype))
        return read, weights.transpose(1, 2)


@dataclass
class ReasoningOutput:
    """What the engine hands back to the backbone."""

    hidden: Tensor  # (B, S, d)
    tot_branch_scores: Tensor | None  # (B, N) or None when reasoning did not run
    info: dict[str, Any]
    pending_write: PendingWrite | None


class AeronReasoningEngine(nn.Module):
    """Complexity gate + Tree of Thought + scratchpad + synthesis (spec §5)."""

    def __init__(self, config: NeuralNetConfig) -> None:
        super().__init__()
        d = config.d_model
        std = config.initializer_range
        self.threshold = config.reasoning_complexity_threshold
        self.memory_dim = config.memory_dim
        self.max_reasoning_steps = config.max_reasoning_steps
        self.complexity_gate = _mlp(d, d // 4, std)
        # The bridges from the neural memory's recall and the task embedding exist only with
        # the module that feeds them (a projection nothing feeds would never be trained).
        self.memory_bridge = (nn.Linear(config.memory_dim, d, bias=False)
                              if config.enable_memory else None)
        if self.memory_bridge is not None:
            init_linear(self.memory_bridge, std)
        self.task_proj = nn.Linear(d, d, bias=False) if config.enable_continual else None
        if self.task_proj is not None:
            init_linear(self.task_proj, std)
        self.tree_of_thought = AeronTreeOfThoughtProcessor(config)
        self.scratchpad = AeronInternalScratchpad(config)
        self.scratchpad_attention = ScratchpadAttention(config)
        self.synth_proj = nn.Linear(2 * d, d, bias=False)
        init_linear(self.synth_proj, std)

    def complexity(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Per-sample complexity ``c in (0, 1)``, shape ``(B,)``."""
        with few_rows(x):
            return torch.sigmoid(self.complexity_gate(masked_mean_pool(x, mask).float())).squeeze(-1)

    def forward(self, x: Tensor, mask: Tensor | None = None, memory_recall: Tensor | None = None,
                task_embedding: Tensor | None = None) -> ReasoningOutput:
        """``x (B,S,d)`` enhanced encoder states; ``mask (B,S)`` bool (True = real) or None."""
        b = x.shape[0]
        pooled_x = masked_mean_pool(x, mask)
        with few_rows(x):
            c = torch.sigmoid(self.complexity_gate(pooled_x.float())).squeeze(-1)
        run = c.detach() >= self.threshold
        info = skipped_info("below_threshold", self.threshold, self.max_reasoning_steps)
        # While tracing (an exported graph) nothing is read into Python: every sample takes
        # the path below and the skip mask `m` leaves the ones under the threshold unchanged.
        traced = tracing()
        info.update(complexity=c.detach(),
                    complexity_mean=None if traced else float(c.detach().float().mean()))
        info["skip_mask"] = run.to(x.dtype)
        if not traced and not bool(run.any()):
            return ReasoningOutput(x, None, info, None)

        # Conditioning on memory recall and task embedding (shape-guarded).
        u = x
        memory_used = (
            memory_recall is not None
            and self.memory_bridge is not None
            and memory_recall.dim() == x.dim()
            and memory_recall.shape[-1] == self.memory_dim
            and memory_recall.shape[:-1] == x.shape[:-1]
        )
        if memory_used:
            assert memory_recall is not None and self.memory_bridge is not None
            u = u + self.memory_bridge(memory_recall.to(x.dtype))
        task_used = task_embedding is not None and self.task_proj is not None
        if task_embedding is not None and self.task_proj is not None:
            e = task_embedding if task_embedding.dim() == 2 else task_embedding.expand(b, -1)
            u = u + self.task_proj(e)[:, None, :]

        tot = self.tree_of_thought(x, u, mask, pooled_x)

        # Scratchpad write: kept summaries, best first.
        order = tot.logits.detach().masked_fill(~tot.keep_mask, float("-inf")).argsort(
            dim=-1, descending=True)[:, : self.tree_of_thought.keep_k]
        contents = tot.summaries.gather(1, order[:, :, None].expand(-1, -1, x.shape[-1]))
        values, pending, write_gate = self.scratchpad.write(contents, run)

        # Scratchpad read.
        typ, prio, age, _ = self.scratchpad.metadata_after(pending)
        read, read_weights = self.scratchpad_attention(
            tot.out, self.scratchpad.slot_keys, values, typ, prio, age)
        # reasoned = tot_out + synth([tot_out; read]); kept as the change from x. The two
        # halves of synth_proj apply separately: the same sum without a (B, S, 2d) copy. `read`
        # is already in the compute dtype (autocast's, or tot_out's without autocast).
        w_synth = self.synth_proj.weight
        d = x.shape[-1]
        change = (tot.update + F.linear(tot.out, w_synth[:, :d]) + F.linear(read, w_synth[:, d:]))

        # Straight-through skip mask: forward value = run, gradient flows into the gate.
        m = run.to(c.dtype) + c - c.detach()
        y = x + m[:, None, None].to(x.dtype) * change

        token_w = read_weights.detach().float().mean(dim=1)  # (B, S, P)
        if mask is not None:
            mw = mask.to(token_w.dtype)[:, :, None]
            slot_read = (token_w * mw).sum(dim=(0, 1)) / mw.sum().clamp_min(1.0)
        else:
            slot_read = token_w.mean(dim=(0, 1))
        info.update(
            skipped=False,
            skip_reason=None,
            branch_weights=tot.weights.detach(),
            branch_keep_mask=tot.keep_mask,
            best_branch=tot.logits.detach().argmax(dim=-1),
            contradiction_levels=tot.contradiction_levels.detach(),
            tot_resolved_contradictions=tot.resolved if traced else int(tot.resolved),
            confidence_gate=tot.confidence_gate.detach(),
            write_gate_mean=None if traced else float(write_gate.detach().float()[run].mean()),
            slot_read_weights=slot_read,
            memory_context_used=bool(memory_used),
            task_conditioned=task_used,
            steps_taken=1,
            pending_write=pending,
        )
        return ReasoningOutput(y, tot.scores, info, pending)

    def reset_state(self) -> None:
        """Clear the scratchpad's committed content."""
        self.scratchpad.reset()

    def scratchpad_stats(self, pending: PendingWrite | None) -> dict[str, Any]:
        """``{used_slots, total_slots, step_counter, slot_types}`` including this forward's write."""
        typ, _, _, written = self.scratchpad.metadata_after(pending)
        used = written.any(dim=0)
        # One type per slot over the batch (the highest type id any sample gives it).
        types = typ.max(dim=0).values
        return {
            "used_slots": int(used.sum()),
            "total_slots": self.scratchpad.num_slots,
            "step_counter": int(self.scratchpad.step_counter),
            "slot_types": [int(t) for t in types.tolist()],
        }


def skipped_info(reason: str | None, threshold: float, max_steps: int) -> dict[str, Any]:
    """A ``reasoning_info`` dict with every key, for a pass where reasoning did not run."""
    return {
        "skipped": True,
        "skip_reason": reason,
        "complexity": None,
        "complexity_mean": None,
        "skip_mask": None,
        "threshold": threshold,
        "branch_weights": None,
        "branch_keep_mask": None,
        "best_branch": None,
        "contradiction_levels": None,
        "tot_resolved_contradictions": 0,
        "confidence_gate": None,
        "write_gate_mean": None,
        "slot_read_weights": None,
        "memory_context_used": False,
        "task_conditioned": False,
        "steps_taken": 0,
        "max_reasoning_steps": max_steps,
        "pending_write": None,
    }
