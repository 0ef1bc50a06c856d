"""The reasoning engine: gate, Tree of Thought, scratchpad (spec model.md §5)."""

from __future__ import annotations

import pytest
import torch
from model_common import batch, build, small_config

from core.model.layers import masked_mean_pool
from core.model.reasoning import (
    AeronInternalScratchpad,
    AeronReasoningEngine,
    AeronTreeOfThoughtProcessor,
    MemoryPriority,
    MemorySlotType,
    scratchpad_heads,
)


def _engine(seed: int = 0, **overrides) -> AeronReasoningEngine:
    torch.manual_seed(seed)
    return AeronReasoningEngine(small_config(**overrides))


def test_enums_match_the_spec() -> None:
    assert [m.name for m in MemorySlotType] == ["EMPTY", "WORKING", "SHORT_TERM", "LONG_TERM",
                                               "EPISODIC"]
    assert [m.name for m in MemoryPriority] == ["LOWEST", "LOW", "NORMAL", "HIGH", "CRITICAL"]


def test_masked_mean_pool() -> None:
    x = torch.arange(12.0).view(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(masked_mean_pool(x, mask), x[:, :2].mean(1))
    torch.testing.assert_close(masked_mean_pool(x, None), x.mean(1))


def test_scratchpad_heads_divide_d_model() -> None:
    assert scratchpad_heads(2048) == 32 and scratchpad_heads(512) == 8
    assert scratchpad_heads(32) == 4 and 130 % scratchpad_heads(130) == 0


def test_branch_scores_and_scratchpad_stats_respond_to_input() -> None:
    model = build(num_scratchpad_slots=16).eval()
    a = model(**batch(seed=1))
    b = model(**batch(seed=2))
    assert not torch.allclose(a["tot_branch_scores"], b["tot_branch_scores"])
    assert not torch.allclose(a["tot_branch_scores"][0], a["tot_branch_scores"][1])
    assert not torch.allclose(a["reasoning_info"]["complexity"], b["reasoning_info"]["complexity"])
    # Committed inference passes fill the scratchpad and advance the step counter.
    stats = []
    with torch.no_grad():
        for seed in range(4):
            stats.append(model(**batch(seed=seed, b=1), commit_scratchpad=True)["scratchpad_stats"])
    assert [s["step_counter"] for s in stats] == [1, 2, 3, 4]
    assert stats[-1]["used_slots"] > stats[0]["used_slots"] > 0
    assert any(t != MemorySlotType.EMPTY for t in stats[-1]["slot_types"])
    model.reset_state()
    fresh = model(**batch(seed=1), commit_scratchpad=False)["scratchpad_stats"]
    assert fresh["step_counter"] == 0


def test_training_forward_never_commits() -> None:
    model = build().train()
    sp = model.reasoning_engine.scratchpad
    before = {k: v.clone() for k, v in sp.named_buffers()}
    out = model(**batch(), commit_scratchpad=True)
    out["loss"].backward()
    for name, value in sp.named_buffers():
        assert torch.equal(value, before[name]), name
    assert out["scratchpad_stats"]["used_slots"] > 0  # written in this forward, not committed
    assert out["scratchpad_stats"]["step_counter"] == 0


def test_commit_after_graph_keeps_backward_valid() -> None:
    """Eval mode with grad: the commit replaces buffers, so backward still works."""
    model = build().eval()
    out = model(**batch(), commit_scratchpad=True)
    out["loss"].backward()
    assert model.reasoning_engine.scratchpad.committed_mask.any()


def test_complexity_gate_skips_below_threshold() -> None:
    eng = _engine(reasoning_complexity_threshold=1.0)  # sigmoid never reaches 1
    x = torch.randn(2, 5, 32)
    res = eng(x, None)
    assert res.tot_branch_scores is None and res.pending_write is None
    assert res.info["skipped"] and res.info["skip_reason"] == "below_threshold"
    assert torch.equal(res.hidden, x)
    assert res.info["complexity"].shape == (2,)


def test_gate_starts_near_one_half_and_partial_skip_is_per_sample() -> None:
    eng = _engine()
    x = torch.randn(4, 5, 32)
    c = eng.complexity(x, None).detach()
    assert torch.all((c - 0.5).abs() < 0.05)
    eng.threshold = float(c.sort().values[2])  # samples with c below it skip
    res = eng(x, None)
    run = c >= eng.threshold
    assert run.sum() == 2
    torch.testing.assert_close(res.hidden[~run], x[~run])  # skipped samples pass through
    assert not torch.allclose(res.hidden[run], x[run])
    assert res.pending_write.active[~run].sum() == 0
    torch.testing.assert_close(res.info["skip_mask"], run.float())


def test_straight_through_mask_trains_the_gate() -> None:
    eng = _engine()
    x = torch.randn(2, 5, 32)
    eng(x, None).hidden.square().sum().backward()
    gate_grads = [p.grad for p in eng.complexity_gate.parameters()]
    assert all(g is not None and torch.any(g != 0) for g in gate_grads)


def test_pruning_keeps_top_k_and_merge_ignores_pruned() -> None:
    torch.manual_seed(0)
    tot = AeronTreeOfThoughtProcessor(small_config(num_tot_branches=4, tot_keep_k=2))
    x = torch.randn(3, 6, 32)
    out = tot(x, x, None)
    assert out.keep_mask.sum(-1).eq(2).all()
    top2 = out.logits.topk(2, dim=-1).indices
    assert torch.all(out.keep_mask.gather(1, top2))
    assert torch.all(out.weights[~out.keep_mask] == 0)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3))
    torch.testing.assert_close(out.scores, torch.sigmoid(out.logits))
    lv = out.contradiction_levels
    torch.testing.assert_close(lv, lv.transpose(1, 2))


def test_contradictions_are_counted_and_resolved() -> None:
    torch.manual_seed(0)
    cfg = small_config(num_tot_branches=4, tot_keep_k=4, tot_contradiction_threshold=0.0)
    tot = AeronTreeOfThoughtProcessor(cfg)
    x = torch.randn(2, 6, 32)
    out = tot(x, x, None)
    assert int(out.resolved) == 2 * 6  # every kept pair (4 choose 2) in both samples
    tot.contradiction_threshold = 1.0
    none = tot(x, x, None)
    assert int(none.resolved) == 0
    assert not torch.allclose(out.out, none.out)


def test_scratchpad_write_is_out_of_place_and_commit_persists() -> None:
    torch.manual_seed(0)
    sp = AeronInternalScratchpad(small_config(num_scratchpad_slots=8))
    contents = torch.randn(2, 3, 32)
    before = sp.committed.clone()
    values, pending, gate = sp.write(contents, torch.tensor([True, False]))
    assert torch.equal(sp.committed, before) and not sp.committed_mask.any()
    assert values.shape == (2, 8, 32) and gate.shape == (2, 3)
    assert pending.slots[0].unique().numel() == 3  # distinct slots per sample
    torch.testing.assert_close(values[1], sp.slot_values.detach())  # inactive sample: unchanged
    assert pending.slot_type[0, 0] == MemorySlotType.WORKING
    assert pending.priority[0, 0] == MemoryPriority.HIGH
    assert torch.all(pending.slot_type[0, 1:] == MemorySlotType.SHORT_TERM)
    sp.commit_write(pending)
    written = pending.slots[0]
    assert sp.committed_mask[written].all() and sp.committed_mask.sum() == 3
    torch.testing.assert_close(sp.committed[written], pending.values[0])
    assert sp.step_counter.item() == 1 and torch.all(sp.slot_timestamp[written] == 1)
    again = sp.current_values(1)[0]
    torch.testing.assert_close(again[written], pending.values[0])
    sp.reset()
    assert not sp.committed_mask.any() and sp.step_counter.item() == 0


def test_commit_averages_writers_of_the_same_slot() -> None:
    torch.manual_seed(0)
    sp = AeronInternalScratchpad(small_config(num_scratchpad_slots=4))
    same = torch.randn(1, 1, 32).expand(2, 1, 32).contiguous()
    same = same + torch.randn(2, 1, 32) * 1e-3  # same slot choice, slightly different content
    _, pending, _ = sp.write(same, torch.tensor([True, True]))
    assert pending.slots[0, 0] == pending.slots[1, 0]
    sp.commit_write(pending)
    slot = pending.slots[0, 0]
    torch.testing.assert_close(sp.committed[slot], pending.values[:, 0].mean(0))


def test_reasoning_info_is_detached() -> None:
    eng = _engine()
    res = eng(torch.randn(2, 5, 32), None)
    for key, value in res.info.items():
        if isinstance(value, torch.Tensor):
            assert not value.requires_grad, key


def _reference_tree_of_thought(tot: AeronTreeOfThoughtProcessor, x, u, mask):
    """Spec §5 steps 3-8 written out literally, materialising every branch state h_i."""
    pool = lambda t: masked_mean_pool(t, mask)  # noqa: E731
    h = [u + tot.branch_embed[i] + g.fc_out(torch.nn.functional.silu(g.fc_in(g.norm(u))))
         for i, g in enumerate(tot.generators)]
    s = torch.stack([pool(hi) for hi in h], dim=1)
    s2, _ = tot.cross_branch(s)
    h = [hi + (s2[:, i] - s[:, i])[:, None] for i, hi in enumerate(h)]
    q = (tot.conf(s2).squeeze(-1)
         + tot.evid(torch.cat((s2, pool(x)[:, None].expand_as(s2)), -1)).squeeze(-1))
    keep = torch.zeros_like(q, dtype=torch.bool).scatter(1, q.topk(tot.keep_k, -1).indices, True)
    b, n = q.shape
    for bi in range(b):
        moves = {i: [] for i in range(n)}
        for i in range(n):
            for j in range(i + 1, n):
                if not (keep[bi, i] and keep[bi, j]):
                    continue
                c = torch.sigmoid(tot.contra(torch.cat((s2[bi, i], s2[bi, j], s2[bi, i] * s2[bi, j]))))
                if c.item() > tot.contradiction_threshold:
                    hi_, lo = (i, j) if q[bi, i] >= q[bi, j] else (j, i)
                    if q[bi, i] == q[bi, j]:
                        hi_, lo = i, j
                    moves[lo].append(c * (tot.resolver(torch.cat((s2[bi, hi_], s2[bi, lo])))
                                          - s2[bi, lo]))
        for lo, deltas in moves.items():
            if deltas:
                h[lo] = h[lo].clone()
                h[lo][bi] = h[lo][bi] + torch.stack(deltas).mean(0)
    w = q.masked_fill(~keep, float("-inf")).softmax(-1)
    m = sum(w[:, i, None, None] * h[i] for i in range(n))
    gamma = torch.sigmoid(tot.merge_gate(torch.cat((pool(m), pool(x)), -1)))
    return x + gamma[:, :, None] * (m - x), q


@pytest.mark.parametrize(("branches", "keep", "threshold"),
                         [(4, 3, 0.0), (4, 3, 0.5), (4, 3, 1.0), (3, 2, 0.0), (2, 1, 0.0)])
def test_tree_of_thought_matches_the_literal_spec(branches: int, keep: int,
                                                  threshold: float) -> None:
    """Values and gradients (inputs and every parameter) equal the spec written out literally,
    with contradictions resolved (threshold 0), some or none."""
    torch.manual_seed(0)
    cfg = small_config(num_tot_branches=branches, tot_keep_k=keep,
                       tot_contradiction_threshold=threshold)
    tot = AeronTreeOfThoughtProcessor(cfg)
    x0 = torch.randn(3, 7, 32)
    u0 = x0 + 0.1 * torch.randn(3, 7, 32)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] * 6 + [False]])
    grad = torch.randn(3, 7, 32)

    def run(fn):
        tot.zero_grad(set_to_none=True)
        x, u = x0.clone().requires_grad_(True), u0.clone().requires_grad_(True)
        out, q = fn(x, u)
        (out * grad).sum().backward()
        grads = {n: p.grad for n, p in tot.named_parameters()}
        return out.detach(), q.detach(), x.grad, u.grad, grads

    def fast(x, u):
        res = tot(x, u, mask)
        return res.out, res.logits

    got = run(fast)
    want = run(lambda x, u: _reference_tree_of_thought(tot, x, u, mask))
    for g, w in zip(got[:4], want[:4], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    for name, w in want[4].items():
        g = got[4][name]
        if w is None or not w.any():  # no gradient by the spec: none, or zeros, is the same
            assert g is None or not g.any(), name
        else:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=name)
    resolving = {n for n, w in want[4].items() if w is not None and w.any()
                 and n.startswith(("contra.", "resolver."))}
    if threshold == 0.0:  # every kept pair is a contradiction: the heads train iff pairs exist
        assert bool(resolving) == (keep > 1)
    elif threshold == 1.0:
        assert not resolving


def test_one_kept_branch_assesses_no_contradiction() -> None:
    """With one kept branch there is no kept pair: no level, nothing resolved, and the
    contradiction heads are not evaluated (their parameters get no gradient)."""
    torch.manual_seed(0)
    tot = AeronTreeOfThoughtProcessor(small_config(num_tot_branches=2, tot_keep_k=1,
                                                   tot_contradiction_threshold=0.0))
    out = tot(torch.randn(2, 5, 32), torch.randn(2, 5, 32), None)
    out.out.sum().backward()
    assert not out.contradiction_levels.any() and int(out.resolved) == 0
    assert all(p.grad is None for p in (*tot.contra.parameters(), tot.resolver.weight))


def test_folded_scratchpad_read_equals_the_per_head_attention() -> None:
    """The read folds q/o projections into the slot keys/values: same function as written out."""
    import math

    import torch.nn.functional as F

    from core.model.reasoning import ScratchpadAttention, sinusoid

    cfg = small_config(d_model=32, num_scratchpad_slots=5)
    torch.manual_seed(3)
    att = ScratchpadAttention(cfg)
    b, s, p, d = 2, 7, 5, 32
    h, hd = att.heads, att.head_dim
    queries, values = torch.randn(b, s, d), torch.randn(b, p, d)
    slot_keys = torch.randn(p, d)
    typ, prio = torch.randint(0, 5, (1, p)), torch.randint(0, 5, (1, p))
    age = torch.randint(0, 9, (1, p))
    read, weights = att(queries, slot_keys, values, typ, prio, age)
    keys = slot_keys + att.type_emb(typ) + att.priority_emb(prio) + sinusoid(age, d)
    bias = att.importance(values).squeeze(-1) - F.softplus(att.rho) * torch.log1p(age.float())
    q = att.q_proj(queries).view(b, s, h, hd).transpose(1, 2)
    k = att.k_proj(keys.expand(b, p, d)).view(b, p, h, hd).transpose(1, 2)
    v = att.v_proj(values).view(b, p, h, hd).transpose(1, 2)
    want_w = (q @ k.transpose(-1, -2) / math.sqrt(hd) + bias[:, None, None, :]).softmax(-1)
    want = att.o_proj((want_w @ v).transpose(1, 2).reshape(b, s, d))
    torch.testing.assert_close(weights, want_w, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(read, want, atol=1e-5, rtol=1e-5)
