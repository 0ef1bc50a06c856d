"""NeuralMemoryNetwork: shapes, gradients, write/read behaviour, victim choice, statistics."""

from __future__ import annotations

import torch
from enh_common import tiny_config

from core.model.memory import NeuralMemoryNetwork


def _memory(**overrides: object) -> NeuralMemoryNetwork:
    torch.manual_seed(0)
    return NeuralMemoryNetwork(tiny_config(**overrides))


def test_written_value_is_read_back_by_its_key() -> None:
    mem = _memory(memory_slots=16, memory_dim=64, memory_heads=1)
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(10, 64, generator=gen) * 3.0
    values = torch.randn(10, 64, generator=gen)
    mem.write(keys, values)
    recall = mem.read(keys)
    # Each key recalls its own value far better than any other stored value.
    dist = torch.cdist(recall, values)
    assert torch.equal(dist.argmin(dim=1), torch.arange(10))
    assert torch.allclose(recall, values, atol=0.05)


def test_read_on_empty_memory_is_zero_and_forward_skips_read() -> None:
    mem = _memory()
    x = torch.randn(2, 5, 32)
    out, recall, pending = mem(x)
    assert recall is None and torch.equal(out, x)
    assert pending.keys.shape == (2, 16) and pending.read_mass is None
    assert torch.equal(mem.read(torch.randn(3, 16)), torch.zeros(3, 16))
    # The write still happens when asked, so the next forward reads.
    mem.apply_write(pending)
    assert mem.memory_statistics()["slots_used"] == 2
    out2, recall2, _ = mem(x)
    assert recall2 is not None and recall2.shape == (2, 5, 16)
    assert not torch.equal(out2, x)


def test_forward_gradients_reach_every_parameter_once_a_slot_is_written() -> None:
    mem = _memory()
    x = torch.randn(3, 6, 32)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    _, _, pending = mem(x, mask)
    mem.apply_write(pending)
    x = x.clone().requires_grad_(True)
    out, recall, _ = mem(x, mask)
    (out.square().mean() + recall.square().mean()).backward()
    for name, p in mem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None


def test_forward_does_not_touch_buffers_until_the_write_is_applied() -> None:
    mem = _memory()
    mem.apply_write(mem(torch.randn(2, 4, 32))[2])
    before = {k: v.clone() for k, v in mem.named_buffers()}
    out, _, pending = mem(torch.randn(2, 4, 32))
    for k, v in mem.named_buffers():
        assert torch.equal(before[k], v), k
    out.sum().backward()  # the graph is intact
    mem.apply_write(pending)
    assert int(mem.writes_total) == 4


def test_least_used_slot_is_replaced_unwritten_first() -> None:
    mem = _memory(memory_slots=4, memory_dim=16)
    k = torch.eye(16)[:4]
    slots = mem.write(k[:3], k[:3])
    assert sorted(slots.tolist()) == [0, 1, 2]
    # slot 3 is unwritten: taken first even though others have zero usage
    assert mem.write(k[3:4], k[3:4]).tolist() == [3]
    # now all written; give slot 1 heavy reads, slots 0 and 2 light, 3 medium
    new_key = torch.full((1, 16), 5.0)
    slot = mem.write(new_key, k[:1], read_mass=torch.tensor([0.0, 2.0, 0.1, 1.0]))
    # slot 0 has the least usage (0) -> replaced
    assert slot.tolist() == [0]
    stats = mem.memory_statistics()
    assert stats["slots_used"] == 4 and stats["writes_total"] == 5
    assert stats["top_slots"][0] == 1
    assert torch.equal(mem.mem_keys[0], new_key[0])


def test_oldest_slot_wins_a_usage_tie() -> None:
    mem = _memory(memory_slots=3, memory_dim=16)
    e = torch.eye(16)
    mem.write(e[0:1], e[0:1])  # slot 0, oldest
    mem.write(e[1:2], e[1:2])
    mem.write(e[2:3], e[2:3])
    assert mem.write(e[3:4], e[3:4]).tolist() == [0]
    assert mem.write(e[4:5], e[4:5]).tolist() == [1]


def test_buffers_are_checkpointed_and_reset_clears() -> None:
    mem = _memory()
    mem.write(torch.randn(3, 16), torch.randn(3, 16))
    state = mem.state_dict()
    for name in ("mem_keys", "mem_values", "usage", "written", "age", "writes_total"):
        assert name in state
    fresh = _memory()
    fresh.load_state_dict(state)
    assert fresh.memory_statistics()["slots_used"] == 3
    fresh.reset()
    assert fresh.memory_statistics()["slots_used"] == 0
    assert int(fresh.writes_total) == 0


def test_statistics_report_read_entropy_after_a_read() -> None:
    mem = _memory()
    mem.apply_write(mem(torch.randn(2, 4, 32))[2])
    _, _, pending = mem(torch.randn(2, 4, 32))
    assert pending.read_mass is not None and float(pending.read_mass.sum()) > 0
    mem.apply_write(pending)
    stats = mem.memory_statistics()
    assert set(stats) == {"num_slots", "memory_dim", "slots_used", "mean_usage", "read_entropy",
                          "top_slots", "writes_total"}
    assert stats["read_entropy"] > 0 and stats["mean_usage"] > 0


def _filled_memory(slots: int = 40, dim: int = 32, heads: int = 4) -> NeuralMemoryNetwork:
    mem = _memory(memory_slots=slots, memory_dim=dim, memory_heads=heads)
    gen = torch.Generator().manual_seed(3)
    mem.write(torch.randn(slots - 3, dim, generator=gen), torch.randn(slots - 3, dim, generator=gen))
    return mem


def _read_both_ways(mem: NeuralMemoryNetwork, seq: int, autocast: bool
                    ) -> list[tuple[torch.Tensor, ...]]:
    """(recall, read mass, entropy, grads of q / current key / current value) from the CPU's
    shared-bank read and from the fused (SDPA) read on the same inputs."""
    gen = torch.Generator().manual_seed(4)
    b, m = 3, mem.memory_dim
    q0 = torch.randn(b, seq, m, generator=gen)
    k0, v0 = torch.randn(b, m, generator=gen), torch.randn(b, m, generator=gen)
    mask = torch.ones(b, seq, dtype=torch.bool)
    mask[1, seq // 2:] = False
    idx = mem.written.nonzero().squeeze(1)
    upstream = torch.randn(b, seq, m, generator=gen)
    results = []
    for read in (mem._shared_bank_read, mem._fused_read):
        q, k, v = (t.clone().requires_grad_(True) for t in (q0, k0, v0))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            recall, weights = read(q, k, v, idx)
        (recall.float() * upstream).sum().backward()
        mass, entropy = mem._read_statistics(weights, mask, idx, seq)
        results.append((recall.float(), mass, torch.tensor(entropy), q.grad, k.grad, v.grad))
    return results


def test_shared_bank_read_is_the_fused_read() -> None:
    """The CPU read (the bank scored once for the whole batch, no gradient for the bank) gives
    the SDPA read's recall, statistics and gradients, at short and long (strided) lengths."""
    mem = _filled_memory()
    for seq in (7, 150):  # 150 > STAT_POSITIONS: the statistics sample every 3rd position
        shared, fused = _read_both_ways(mem, seq, autocast=False)
        for name, a, b in zip(("recall", "mass", "entropy", "dq", "dkey", "dvalue"), shared, fused, strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (seq, name)


def test_shared_bank_read_under_bf16_autocast_stays_near_fp32() -> None:
    mem = _filled_memory()
    ref = _read_both_ways(mem, 9, autocast=False)[0]
    low = _read_both_ways(mem, 9, autocast=True)[0]
    for name, a, b in zip(("recall", "mass", "entropy", "dq", "dkey", "dvalue"), low, ref, strict=True):
        scale = b.abs().max().clamp_min(1e-6)
        assert ((a.float() - b).abs().max() / scale) < 0.05, name
