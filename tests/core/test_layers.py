"""Block numerics against straightforward reference formulas (spec model.md §2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.model.layers import (
    AeronRMSNorm,
    AttentionMask,
    GroupedQueryAttention,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
    attention,
    manual_attention,
    token_cross_entropy,
)


def test_rmsnorm_matches_formula() -> None:
    torch.manual_seed(0)
    norm = AeronRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(3, 5, 16) * 7
    ref = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-5)


def test_rmsnorm_bf16_input_uses_fp32_statistic() -> None:
    norm = AeronRMSNorm(8)
    x = torch.full((1, 8), 300.0, dtype=torch.bfloat16)  # x^2 sums lose precision in bf16
    y = norm(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), torch.ones(1, 8), rtol=1e-2, atol=1e-2)


def _reference_rope(x: torch.Tensor, theta: float, factor: float = 1.0, offset: int = 0):
    """x (B, T, heads, hd): rotate pairs (j, j + hd/2) by angle p * theta^(-2j/hd)."""
    b, t, h, hd = x.shape
    out = torch.empty_like(x)
    for p in range(t):
        pos = (p + offset) / factor
        for j in range(hd // 2):
            ang = pos * theta ** (-2 * j / hd)
            c, s = math.cos(ang), math.sin(ang)
            x1, x2 = x[:, p, :, j], x[:, p, :, j + hd // 2]
            out[:, p, :, j] = x1 * c - x2 * s
            out[:, p, :, j + hd // 2] = x2 * c + x1 * s
    return out


@pytest.mark.parametrize(("factor", "offset"), [(1.0, 0), (4.0, 3)])
def test_rope_matches_pairwise_rotation(factor: float, offset: int) -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, 10000.0, {"type": "linear", "factor": factor} if factor != 1 else None)
    x = torch.randn(2, 5, 3, 8)
    cos, sin = rope(5, offset)
    assert cos.dtype == torch.float32 and cos.shape == (5, 8)
    torch.testing.assert_close(apply_rotary(x, cos, sin), _reference_rope(x, 10000.0, factor, offset),
                               rtol=1e-5, atol=1e-5)


def test_rope_cache_extends_and_stays_consistent() -> None:
    rope = RotaryEmbedding(16, 500000.0)
    short_cos, _ = rope(10)
    long_cos, long_sin = rope(5000)
    assert long_cos.shape == (5000, 16)
    torch.testing.assert_close(long_cos[:10], short_cos)
    tail_cos, tail_sin = rope(3, offset=4997)
    torch.testing.assert_close(tail_cos, long_cos[4997:])
    torch.testing.assert_close(tail_sin, long_sin[4997:])


def _reference_attention(attn: GroupedQueryAttention, x, kv, mask_bool):
    """Per-head loop: head h uses KV head h // groups; masked softmax(q k^T / sqrt(hd)) v."""
    b, t, _ = x.shape
    hd, h, g = attn.head_dim, attn.nhead, attn.num_kv_heads
    q = (x @ attn.q_proj.weight.T).view(b, t, h, hd)
    src = x if kv is None else kv
    s = src.shape[1]
    k = (src @ attn.k_proj.weight.T).view(b, s, g, hd)
    v = (src @ attn.v_proj.weight.T).view(b, s, g, hd)
    heads = []
    for head in range(h):
        kvh = head // (h // g)
        scores = q[:, :, head] @ k[:, :, kvh].transpose(1, 2) / math.sqrt(hd)
        if mask_bool is not None:
            scores = scores.masked_fill(~mask_bool, float("-inf"))
        heads.append(scores.softmax(-1) @ v[:, :, kvh])
    return torch.cat(heads, dim=-1) @ attn.out_proj.weight.T


@pytest.mark.parametrize(("nhead", "kv_heads"), [(4, 4), (4, 2), (4, 1)])
def test_gqa_matches_reference(nhead: int, kv_heads: int) -> None:
    torch.manual_seed(0)
    attn = GroupedQueryAttention(32, nhead, kv_heads).eval()
    x = torch.randn(2, 6, 32)
    pad = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    key_mask = pad[:, None, :].expand(2, 6, 6)
    out, _, _ = attn(x, mask=AttentionMask(pad[:, None, None, :]))
    torch.testing.assert_close(out, _reference_attention(attn, x, None, key_mask),
                               rtol=1e-5, atol=1e-5)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    out_c, w, _ = attn(x, mask=AttentionMask(None, True), output_attentions=True)
    torch.testing.assert_close(out_c, _reference_attention(attn, x, None, causal[None]),
                               rtol=1e-5, atol=1e-5)
    assert w is not None and w.shape == (2, nhead, 6, 6)
    assert torch.all(w.triu(1) == 0)  # the manual path masks before the softmax
    memory = torch.randn(2, 9, 32)
    out_x, _, _ = attn(x, kv_input=memory)
    torch.testing.assert_close(out_x, _reference_attention(attn, x, memory, None),
                               rtol=1e-5, atol=1e-5)


def test_manual_and_sdpa_paths_agree() -> None:
    torch.manual_seed(1)
    attn = GroupedQueryAttention(32, 4, 2).eval()
    x = torch.randn(2, 7, 32)
    mask = AttentionMask(torch.tensor([[True] * 7, [True] * 3 + [False] * 4])[:, None, None, :])
    fast, _, _ = attn(x, mask=mask)
    slow, w, _ = attn(x, mask=mask, output_attentions=True)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 7))


def test_rope_is_applied_in_self_attention_only() -> None:
    torch.manual_seed(0)
    attn = GroupedQueryAttention(32, 4, 2).eval()
    x = torch.randn(1, 5, 32)
    cos, sin = RotaryEmbedding(8, 10000.0)(5)
    with_rope, _, _ = attn(x, rope=(cos, sin))
    without, _, _ = attn(x)
    assert not torch.allclose(with_rope, without)


def test_swiglu_matches_formula() -> None:
    torch.manual_seed(0)
    ffn = SwiGLU(16, 24).eval()
    x = torch.randn(3, 4, 16)
    ref = (F.silu(x @ ffn.gate_proj.weight.T) * (x @ ffn.up_proj.weight.T)) @ ffn.down_proj.weight.T
    torch.testing.assert_close(ffn(x), ref, rtol=1e-5, atol=1e-5)
    assert ffn.gate_proj.bias is None and ffn.up_proj.bias is None and ffn.down_proj.bias is None


def test_rotary_backward_matches_autograd_of_the_formula() -> None:
    torch.manual_seed(0)
    cos, sin = RotaryEmbedding(8, 10000.0)(5, offset=2)
    x = torch.randn(2, 5, 3, 8, requires_grad=True)
    g = torch.randn(2, 5, 3, 8)
    apply_rotary(x, cos, sin).backward(g)
    ours = x.grad.clone()
    x.grad = None
    x1, x2 = x.chunk(2, dim=-1)
    ref = x * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None]
    ref.backward(g)
    torch.testing.assert_close(ours, x.grad)
    with torch.no_grad():
        torch.testing.assert_close(apply_rotary(x, cos, sin), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_gradients_match_autograd_of_the_formula(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    norm = AeronRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = (torch.randn(3, 5, 16) * 3).to(dtype).requires_grad_(True)
    g = torch.randn(3, 5, 16).to(dtype)
    norm(x).backward(g)
    ours_x, ours_w = x.grad.clone(), norm.weight.grad.clone()
    x.grad = None
    norm.weight.grad = None
    xf = x.float()
    ref = xf / torch.sqrt((xf**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    ref.backward(g.float())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert ours_x.dtype == dtype
    torch.testing.assert_close(ours_x.float(), x.grad.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(ours_w, norm.weight.grad, rtol=tol, atol=tol)


def test_rmsnorm_under_autocast_emits_the_autocast_dtype() -> None:
    norm = AeronRMSNorm(8)
    final = AeronRMSNorm(8, autocast_output=False)
    x = torch.randn(2, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x).dtype == torch.bfloat16
        assert final(x).dtype == torch.float32
        y = norm(x)
    y.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


@pytest.mark.parametrize("vocab", [300, 9000])
def test_low_precision_cross_entropy_matches_the_fp32_one(vocab: int) -> None:
    # 9000 takes the chunked route (no fp32 copy of the logits), 300 the plain one.
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(40, vocab, generator=gen) * 3).bfloat16()
    target = torch.randint(0, vocab, (40,), generator=gen)
    target[::7] = -100
    ours = logits.clone().requires_grad_()
    ref = logits.clone().requires_grad_()
    got = token_cross_entropy(ours, target)
    want = F.cross_entropy(ref.float(), target, ignore_index=-100, reduction="none")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.dtype == torch.float32 and bool((got[::7] == 0).all())
    weights = torch.randn(40, generator=gen)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert ours.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours.grad.float(), ref.grad.float(), atol=2e-3, rtol=1e-2)


def test_cpu_training_attention_runs_fp32_and_matches_the_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 10, 16, generator=gen)  # 4 query heads over 2 key/value heads
    k, v = torch.randn(2, 2, 10, 16, generator=gen), torch.randn(2, 2, 10, 16, generator=gen)
    mask = AttentionMask(torch.rand(2, 1, 10, 10, generator=gen) > 0.3, False)
    mask = AttentionMask(mask.mask | torch.eye(10, dtype=torch.bool), False)
    low = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    ref = [t.bfloat16().float().requires_grad_() for t in (q, k, v)]
    saved: list[torch.dtype] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = attention(*low, mask)
    assert torch.float32 in saved  # the kernel ran (and saved) in fp32
    want = manual_attention(*ref, mask)[0]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want, atol=1e-2, rtol=1e-2)
    out.float().sum().backward()
    want.sum().backward()
    for a, b in zip(low, ref, strict=True):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=2e-2, rtol=2e-2)
