"""Attention backends (spec rlhf.md §6 OptimizedAttention): FlashAttention-2 → SDPA → manual.

There is no GPU here, so the FlashAttention-2 path runs against a fake ``flash_attn`` module
with the real function name and signature and a faked CUDA check; the fake computes the true
attention in the (B, S, H, D) layout, so a wrong transpose or GQA layout shows up as a mismatch.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

import core.model.layers as layers
from core.errors import ConfigError
from core.model.config import NeuralNetConfig
from core.model.layers import (
    NO_MASK,
    AttentionMask,
    GroupedQueryAttention,
    attention,
    manual_attention,
    set_attention_backend,
)


def _qkv(b: int, h: int, g: int, tq: int, tk: int, d: int = 16,
         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(tq * 100 + tk * 10 + g)
    q = torch.randn(b, h, tq, d, generator=gen).to(dtype)
    k = torch.randn(b, g, tk, d, generator=gen).to(dtype)
    v = torch.randn(b, g, tk, d, generator=gen).to(dtype)
    return q, k, v


def _pad_mask(b: int, tk: int) -> AttentionMask:
    keep = torch.ones(b, tk, dtype=torch.bool)
    keep[-1, tk // 2:] = False  # the last row is padded
    return AttentionMask(keep[:, None, None, :], False)


# (heads, kv heads, query length, key length, mask) — self, causal, padded, GQA/MQA, cross.
CASES = [
    pytest.param(4, 4, 6, 6, "causal", id="causal-mha"),
    pytest.param(4, 2, 6, 6, "causal", id="causal-gqa"),
    pytest.param(4, 1, 6, 6, "pad", id="padded-mqa"),
    pytest.param(4, 2, 5, 9, "none", id="cross-gqa"),
    pytest.param(4, 2, 5, 9, "pad", id="cross-padded"),
    pytest.param(4, 2, 3, 8, "causal", id="causal-with-past"),  # decoding after a prefix
]


def _mask(kind: str, b: int, tk: int) -> AttentionMask:
    return {"causal": AttentionMask(None, True), "pad": _pad_mask(b, tk), "none": NO_MASK}[kind]


def _loop_reference(q, k, v, mask: AttentionMask) -> torch.Tensor:
    """Per-head float64 loop, independent of every backend (bottom-right causal)."""
    b, h, tq, d = q.shape
    g, tk = k.shape[1], k.shape[2]
    allowed = torch.ones(b, 1, tq, tk, dtype=torch.bool)
    if mask.mask is not None:
        allowed = allowed & mask.mask
    if mask.is_causal:
        allowed = allowed & torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq)
    out = torch.empty(b, h, tq, d, dtype=torch.float64)
    for head in range(h):
        kh = head // (h // g)
        s = q[:, head].double() @ k[:, kh].double().transpose(1, 2) / math.sqrt(d)
        s = s.masked_fill(~allowed[:, 0], float("-inf"))
        out[:, head] = s.softmax(-1) @ v[:, kh].double()
    return out


@pytest.mark.parametrize(("h", "g", "tq", "tk", "kind"), CASES)
def test_manual_and_sdpa_agree_fp32(h: int, g: int, tq: int, tk: int, kind: str) -> None:
    q, k, v = _qkv(2, h, g, tq, tk)
    mask = _mask(kind, 2, tk)
    ref = _loop_reference(q, k, v, mask).float()
    manual = attention(q, k, v, mask, backend="manual")
    sdpa = attention(q, k, v, mask, backend="sdpa")
    auto = attention(q, k, v, mask, backend="auto")
    torch.testing.assert_close(manual, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sdpa, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(auto, sdpa, rtol=0, atol=0)  # no GPU: auto is SDPA


@pytest.mark.parametrize(("h", "g", "tq", "tk", "kind"), CASES)
def test_manual_and_sdpa_agree_bf16(h: int, g: int, tq: int, tk: int, kind: str) -> None:
    q, k, v = _qkv(2, h, g, tq, tk, dtype=torch.bfloat16)
    mask = _mask(kind, 2, tk)
    ref = _loop_reference(q, k, v, mask).to(torch.bfloat16)
    manual = attention(q, k, v, mask, backend="manual")
    sdpa = attention(q, k, v, mask, backend="sdpa")
    assert manual.dtype == sdpa.dtype == torch.bfloat16
    torch.testing.assert_close(manual, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(sdpa, ref, rtol=2e-2, atol=2e-2)


# ------------------------------------------------------------------------ fake FlashAttention-2


class _FakeFlash:
    """``flash_attn_func`` with the real signature; records the layouts it was called with."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def __call__(self, q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        self.calls.append({"q": tuple(q.shape), "k": tuple(k.shape), "v": tuple(v.shape),
                           "causal": causal, "dropout_p": dropout_p, "dtype": q.dtype})
        b, sq, h, d = q.shape
        sk, g = k.shape[1], k.shape[2]
        assert h % g == 0, "flash_attn needs nheads divisible by nheads_k"
        assert softmax_scale is None or softmax_scale == pytest.approx(1 / math.sqrt(d))
        # The true attention in (B, S, H, D), bottom-right causal, as FlashAttention-2 >= 2.1.
        qh = q.float().transpose(1, 2)
        kh = k.float().transpose(1, 2).repeat_interleave(h // g, dim=1)
        vh = v.float().transpose(1, 2).repeat_interleave(h // g, dim=1)
        s = qh @ kh.transpose(-1, -2) / math.sqrt(d)
        if causal:
            keep = torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq)
            s = s.masked_fill(~keep, float("-inf"))
        return (s.softmax(-1) @ vh).transpose(1, 2).to(q.dtype)


@pytest.fixture
def fake_flash(monkeypatch: pytest.MonkeyPatch) -> _FakeFlash:
    fake = _FakeFlash()
    module = types.ModuleType("flash_attn")
    module.flash_attn_func = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return fake


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layers, "_on_cuda", lambda t: True)


@pytest.mark.parametrize("backend", ["auto", "flash2"])
@pytest.mark.parametrize(("h", "g", "tq", "tk", "kind"),
                         [c for c in CASES if c.values[4] != "pad"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash2_is_chosen_when_usable_with_the_right_layout(
    fake_flash: _FakeFlash, fake_cuda: None, backend: str, h: int, g: int, tq: int, tk: int,
    kind: str, dtype: torch.dtype,
) -> None:
    q, k, v = _qkv(2, h, g, tq, tk, dtype=dtype)
    mask = _mask(kind, 2, tk)
    out = attention(q, k, v, mask, backend=backend)
    assert len(fake_flash.calls) == 1
    call = fake_flash.calls[0]
    assert call["q"] == (2, tq, h, 16) and call["k"] == call["v"] == (2, tk, g, 16)
    assert call["causal"] == (kind == "causal") and call["dtype"] == dtype
    assert out.shape == q.shape and out.dtype == dtype
    ref = _loop_reference(q, k, v, mask).to(dtype)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, attention(q, k, v, mask, backend="sdpa"),
                               rtol=2e-2, atol=2e-2)


def test_flash2_gets_the_dropout_probability(fake_flash: _FakeFlash, fake_cuda: None) -> None:
    q, k, v = _qkv(1, 4, 2, 4, 4, dtype=torch.bfloat16)
    attention(q, k, v, NO_MASK, dropout_p=0.1, backend="auto")
    assert fake_flash.calls[0]["dropout_p"] == 0.1


def test_auto_falls_back_to_sdpa_without_the_package(
    monkeypatch: pytest.MonkeyPatch, fake_cuda: None,
) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import raises ImportError
    q, k, v = _qkv(2, 4, 2, 6, 6, dtype=torch.bfloat16)
    mask = AttentionMask(None, True)
    out = attention(q, k, v, mask, backend="auto")
    torch.testing.assert_close(out, attention(q, k, v, mask, backend="sdpa"), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="attention_backend 'flash2' needs the flash_attn"):
        attention(q, k, v, mask, backend="flash2")


def test_a_missing_package_is_looked_up_once(monkeypatch: pytest.MonkeyPatch,
                                             fake_cuda: None) -> None:
    import builtins

    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)  # really not installed here
    monkeypatch.setattr(layers, "_flash_import_failed", False)
    lookups: list[str] = []
    real_import = builtins.__import__

    def counting_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "flash_attn":
            lookups.append(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", counting_import)
    q, k, v = _qkv(1, 4, 2, 4, 4, dtype=torch.bfloat16)
    for _ in range(3):
        attention(q, k, v, AttentionMask(None, True), backend="auto")
    assert lookups == ["flash_attn"]
    fake = _FakeFlash()  # installed later (a fresh sys.modules entry): used from then on
    module = types.ModuleType("flash_attn")
    module.flash_attn_func = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    attention(q, k, v, AttentionMask(None, True), backend="auto")
    assert len(fake.calls) == 1


def test_auto_falls_back_to_sdpa_on_cpu_in_fp32_and_with_padding(fake_flash: _FakeFlash,
                                                                 monkeypatch) -> None:
    q, k, v = _qkv(2, 4, 2, 6, 6, dtype=torch.bfloat16)
    causal = AttentionMask(None, True)
    # Real CPU tensors: the package is installed but there is no CUDA device.
    out = attention(q, k, v, causal, backend="auto")
    torch.testing.assert_close(out, attention(q, k, v, causal, backend="sdpa"), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="CUDA"):
        attention(q, k, v, causal, backend="flash2")
    monkeypatch.setattr(layers, "_on_cuda", lambda t: True)
    q32, k32, v32 = _qkv(2, 4, 2, 6, 6)
    for backend in ("auto", "flash2"):  # fp32 and padding masks are SDPA's, even for flash2
        fp32 = attention(q32, k32, v32, causal, backend=backend)
        torch.testing.assert_close(fp32, attention(q32, k32, v32, causal, backend="sdpa"))
        pad = _pad_mask(2, 6)
        padded = attention(q, k, v, pad, backend=backend)
        torch.testing.assert_close(padded, attention(q, k, v, pad, backend="sdpa"),
                                   rtol=0, atol=0)
    assert fake_flash.calls == []


# ---------------------------------------------------------------------------- selection


def test_config_field_is_validated_with_the_allowed_values() -> None:
    assert NeuralNetConfig().attention_backend == "auto"
    with pytest.raises(ConfigError, match=r"attention_backend must be one of \('auto', "
                                          r"'flash2', 'sdpa', 'manual'\), got 'fast'"):
        NeuralNetConfig(attention_backend="fast")
    with pytest.raises(ConfigError, match="attention_backend"):
        GroupedQueryAttention(32, 4, 2, backend="flash3")
    with pytest.raises(ConfigError, match="attention_backend"):
        attention(*_qkv(1, 4, 2, 3, 3), backend="xformers")


def test_set_attention_backend_routes_every_layer(fake_flash: _FakeFlash, fake_cuda: None,
                                                  tiny_model) -> None:
    """The whole tiny model gives the same logits on every backend; flash2 runs in bf16."""
    model = tiny_model
    ids = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    dec = torch.randint(3, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    logits = {}
    for backend in ("manual", "sdpa", "auto"):
        set_attention_backend(model, backend)
        assert {m.backend for m in model.modules()
                if isinstance(m, GroupedQueryAttention)} == {backend}
        with torch.no_grad():
            logits[backend] = model(ids, decoder_input_ids=dec)["logits"]
    torch.testing.assert_close(logits["manual"], logits["sdpa"], rtol=1e-4, atol=1e-4)
    assert fake_flash.calls == []  # fp32 model: auto stays on SDPA
    set_attention_backend(model, "flash2")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        flash = model(ids, decoder_input_ids=dec)["logits"].float()
    assert any(c["causal"] for c in fake_flash.calls)  # decoder self-attention went to flash
    set_attention_backend(model, "sdpa")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sdpa = model(ids, decoder_input_ids=dec)["logits"].float()
    torch.testing.assert_close(flash, sdpa, rtol=5e-2, atol=5e-2)
    with pytest.raises(ConfigError, match="attention_backend"):
        set_attention_backend(model, "fast")


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    from core.model.model import TransformerNeuralNetBackbone

    torch.manual_seed(0)
    cfg = NeuralNetConfig(
        vocab_size=64, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=2,
        num_decoder_layers=2, dim_feedforward=64, kg_num_entities=10, memory_slots=8,
        memory_dim=16, num_tasks=2, max_position_embeddings=64,
    )
    return TransformerNeuralNetBackbone(cfg).eval()


def test_manual_attention_returns_normalised_weights() -> None:
    q, k, v = _qkv(2, 4, 2, 5, 5)
    out, weights = manual_attention(q, k, v, AttentionMask(None, True))
    assert weights.shape == (2, 4, 5, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))
    assert torch.all(weights.triu(1) == 0)
    torch.testing.assert_close(out, attention(q, k, v, AttentionMask(None, True), backend="sdpa"))


def test_a_model_built_from_a_config_runs_on_its_backend() -> None:
    from core.model.layers import GroupedQueryAttention
    from core.model.model import TransformerNeuralNetBackbone

    config = NeuralNetConfig(
        vocab_size=64, d_model=32, nhead=2, num_kv_heads=1, num_encoder_layers=1,
        num_decoder_layers=1, dim_feedforward=64, attention_backend="manual",
    )
    with torch.device("meta"):
        model = TransformerNeuralNetBackbone(config)
    backends = {m.backend for m in model.modules() if isinstance(m, GroupedQueryAttention)}
    assert backends == {"manual"}


def test_checkpoint_config_comparison_ignores_how_the_weights_are_run() -> None:
    from core.runs.checkpoint import config_differences

    old = {"d_model": 32, "use_gradient_checkpointing": False}  # written before the field existed
    new = {"d_model": 32, "use_gradient_checkpointing": True, "attention_backend": "manual"}
    assert config_differences(old, new) == []
    assert config_differences(old, {**new, "d_model": 64}) == ["d_model: checkpoint 32, this run 64"]
