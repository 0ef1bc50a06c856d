"""Transformer building blocks of the Aeron model (spec model.md §2).

RMSNorm, rotary position embeddings, grouped-query attention (backends: FlashAttention-2,
``torch.nn.functional.scaled_dot_product_attention`` or the manual reference, spec rlhf.md §6),
SwiGLU and the pre-norm encoder/decoder layers. Attention masks are boolean with True = attend;
every query always sees at least one key.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from core.errors import ConfigError
from core.model.config import ATTENTION_BACKENDS

# (self_k, self_v, cross_k, cross_v) of one decoder layer; cross entries may be None.
LayerCache = tuple[Tensor, Tensor, Tensor | None, Tensor | None]


def tracing() -> bool:
    """True while compiling/exporting/tracing: code that reads tensor values into Python
    (``int(t)``, ``if t.any()``) takes its value-independent form instead."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None:
        if compiler.is_compiling():
            return True
        is_exporting = getattr(compiler, "is_exporting", None)
        if is_exporting is not None and is_exporting():
            return True
    return bool(torch.jit.is_tracing())


def exporting() -> bool:
    """True while a graph is being exported (``torch.export``/ONNX, TorchScript tracing): a
    graph computes outputs; buffer writes made while tracing would not be part of it."""
    compiler = getattr(torch, "compiler", None)
    is_exporting = getattr(compiler, "is_exporting", None) if compiler is not None else None
    return bool(is_exporting is not None and is_exporting()) or bool(torch.jit.is_tracing())


def init_linear(linear: nn.Linear, std: float) -> None:
    """Normal(0, std) weights and zero bias (the spec's initialisation)."""
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward (fp32 statistics, any input/output dtype).

    With ``r = rsqrt(mean(x^2) + eps)`` and ``y = x r w``: ``dw = sum_n r_n (g*x)_n`` and
    ``dx = r (g*w) - x r^3 <g*w, x> / d``. Autograd's generic graph for the same formula
    walks the activations about twice as often (measured 2.5x slower per call on CPU).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float,  # type: ignore[override]
                out_dtype: torch.dtype) -> Tensor:
        xf = x.float()
        d = x.shape[-1]
        rstd = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(d)
        rstd = rstd.add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        y = (xf * rstd).mul_(weight.float())
        return y if y.dtype == out_dtype else y.to(out_dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        # Backward may run inside an autocast region: keep this arithmetic in fp32.
        with torch.autocast(device_type=grad.device.type, enabled=False):
            d = x.shape[-1]
            xf, gf, wf = x.float(), grad.float(), weight.float()
            # g*x once; both reductions over it are matrix-vector products: <g*w, x> per row
            # is (g*x) @ w and dw is rstd @ (g*x). (A batched 1x1 matmul per row for the dot
            # was 3.9x slower than a plain sum; this backward is 3x faster than that one.)
            gx = (gf * xf).reshape(-1, d)
            dot = (gx @ wf).view(rstd.shape)
            dw = None
            if ctx.needs_input_grad[1]:
                dw = (rstd.reshape(1, -1) @ gx).reshape(d).to(weight.dtype)
            coef = rstd.pow(3).mul_(dot).div_(d)
            dx = (gf * wf).mul_(rstd).addcmul_(xf, coef, value=-1.0)
        return dx.to(x.dtype), dw, None, None


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """``x / sqrt(mean(x^2) + eps)`` (no weight), fp32 statistic, same backward as the norm."""
    if torch.is_grad_enabled() and x.requires_grad:
        ones = torch.ones(x.shape[-1], device=x.device, dtype=torch.float32)
        return _RMSNormFunction.apply(x, ones, eps, x.dtype)
    return F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


class AeronRMSNorm(nn.Module):
    """``y = x / sqrt(mean(x^2) + eps) * weight`` with the statistic computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6, autocast_output: bool = True) -> None:
        super().__init__()
        self.eps = eps
        # Under autocast, return the autocast dtype (the consumers are linear layers).
        self.autocast_output = autocast_output
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        out_dtype = x.dtype
        device = x.device.type
        if self.autocast_output and torch.is_autocast_enabled(device):
            # Every consumer of a norm is a linear layer that would cast its input to the
            # autocast dtype; casting once here saves one copy per consumer (q/k/v, gate/up).
            out_dtype = torch.get_autocast_dtype(device)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return _RMSNormFunction.apply(x, self.weight, self.eps, out_dtype)
        # Inference: one fused call; low-precision input is normalised in fp32.
        y = F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps)
        return y if y.dtype == out_dtype else y.to(out_dtype)


class RotaryEmbedding:
    """Rotary position embedding tables: fp32 ``cos``/``sin`` of shape ``(L, head_dim)``.

    The cache is built lazily and extended when a longer sequence (or cache offset) arrives.
    Linear scaling divides positions by ``factor``. A plain object, not a module: it holds
    no parameters and nothing that belongs in a checkpoint.
    """

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None) -> None:
        if head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {head_dim}")
        self.head_dim = head_dim
        self.theta = float(theta)
        self.factor = float(scaling["factor"]) if scaling else 1.0
        self._cos: Tensor | None = None
        self._sin: Tensor | None = None

    def _build(self, length: int, device: torch.device) -> None:
        half = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float64)
        inv_freq = self.theta ** (-half / self.head_dim)
        pos = torch.arange(length, device=device, dtype=torch.float64) / self.factor
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self._cos = emb.cos().float()
        self._sin = emb.sin().float()

    def __call__(self, length: int, offset: int = 0, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``cos``, ``sin`` for positions ``offset .. offset+length-1`` as ``(length, head_dim)``."""
        device = device or torch.device("cpu")
        end = offset + length
        if self._cos is None or self._cos.shape[0] < end or self._cos.device != device:
            # Grow geometrically so incremental decoding does not rebuild every step.
            current = 0 if self._cos is None else self._cos.shape[0]
            self._build(max(end, 2 * current, 64), device)
        assert self._cos is not None and self._sin is not None
        return self._cos[offset:end].to(dtype), self._sin[offset:end].to(dtype)

    def at(self, positions: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``cos``, ``sin`` of shape ``(*positions.shape, head_dim)`` for explicit per-token
        positions (packed rows, where positions restart at every sample)."""
        end = int(positions.max()) + 1 if positions.numel() else 1
        self(end, 0, positions.device)  # build / extend the table
        assert self._cos is not None and self._sin is not None
        return self._cos[positions].to(dtype), self._sin[positions].to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """``concat(-x2, x1)`` over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """``x*cos + rotate_half(x)*sin`` as one multiply and two half-width fused multiply-adds.

    ``sin_signed`` is ``sin`` with its first half negated, so the first output half is
    ``x1*cos1 + x2*sin_signed1`` and the second ``x2*cos2 + x1*sin_signed2``: no rotated copy
    of ``x`` is ever built.
    """
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].addcmul_(x[..., half:], sin_signed[..., :half])
    out[..., half:].addcmul_(x[..., :half], sin_signed[..., half:])
    return out


class _RotaryFunction(torch.autograd.Function):
    """Rotary embedding with a hand-written backward: the transpose of the rotation is the
    rotation with the halves of ``sin_signed`` swapped, so backward costs what forward does."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos, sin_signed)
        return _rotate(x, cos, sin_signed)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        cos, sin_signed = ctx.saved_tensors
        half = grad.shape[-1] // 2
        gx = grad * cos
        gx[..., :half].addcmul_(grad[..., half:], sin_signed[..., half:])
        gx[..., half:].addcmul_(grad[..., :half], sin_signed[..., :half])
        return gx, None, None


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x' = x*cos + rotate_half(x)*sin`` for ``x (B, T, heads, hd)`` and ``cos/sin (T, hd)``
    (or ``(B, T, hd)``: per-token positions of packed rows)."""
    half = sin.shape[-1] // 2
    sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    cos = cos.to(x.dtype).unsqueeze(-2)
    sin_signed = sin_signed.to(x.dtype).unsqueeze(-2)
    if torch.is_grad_enabled() and x.requires_grad:
        return _RotaryFunction.apply(x, cos, sin_signed)
    return _rotate(x, cos, sin_signed)


class AttentionMask(NamedTuple):
    """How a layer masks attention: an explicit boolean mask and/or SDPA's causal flag."""

    mask: Tensor | None  # bool, broadcastable to (B, H, Tq, Tk); True = attend
    is_causal: bool = False


NO_MASK = AttentionMask(None, False)


_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def check_attention_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`ATTENTION_BACKENDS`, else a ConfigError naming it."""
    if backend not in ATTENTION_BACKENDS:
        raise ConfigError(
            f"attention_backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    return backend


_flash_import_failed = False


def _flash_attn_func() -> Callable[..., Tensor] | None:
    """The FlashAttention-2 kernel when the ``flash_attn`` package is installed, else None.

    A failed import is remembered: retrying it on every attention call would scan sys.path.
    """
    global _flash_import_failed
    if _flash_import_failed and "flash_attn" not in sys.modules:
        return None
    try:
        from flash_attn import flash_attn_func  # type: ignore[import-not-found]
    except ImportError:
        _flash_import_failed = True
        return None
    return flash_attn_func


def _on_cuda(t: Tensor) -> bool:
    """Whether ``t`` lives on a CUDA device (one place, so tests can fake a GPU)."""
    return t.is_cuda


def _flash_usable(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask) -> bool:
    """FlashAttention-2 handles this call: CUDA, fp16/bf16, no explicit mask, head_dim <= 256."""
    return (
        mask.mask is None and q.dtype in _FLASH_DTYPES and k.dtype == q.dtype
        and v.dtype == q.dtype and q.shape[-1] <= 256 and _on_cuda(q)
    )


def manual_attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask = NO_MASK,
                     dropout_p: float = 0.0) -> tuple[Tensor, Tensor]:
    """Reference ``softmax(q kᵀ/√d + mask) v`` in fp32 scores; returns ``(out, weights)``.

    ``q`` is ``(B, H, Tq, D)``, ``k``/``v`` ``(B, G, Tk, D)`` with ``H % G == 0``. The causal mask
    is aligned bottom-right (query ``i`` sees keys ``<= i + Tk - Tq``), as FlashAttention-2's.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    allowed = mask.mask
    if mask.is_causal:
        allowed = _combine(allowed, _causal(scores.shape[-2], scores.shape[-1], q.device))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(dim=-1)
    attn = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return torch.matmul(attn.to(v.dtype), v), weights


def _causal(tq: int, tk: int, device: torch.device) -> Tensor:
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(tk - tq)


def _combine(mask: Tensor | None, causal: Tensor) -> Tensor:
    return causal if mask is None else mask & causal


def attention(q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask = NO_MASK,
              dropout_p: float = 0.0, backend: str = "auto") -> Tensor:
    """Scaled dot-product attention ``(B, H, Tq, D)`` of ``q`` over ``k``/``v`` ``(B, G, Tk, D)``.

    Backends (spec rlhf.md §6; all agree within dtype tolerance): ``"flash2"`` runs
    ``flash_attn_func`` when the call allows it (CUDA, fp16/bf16, no explicit mask) and SDPA
    otherwise, and needs the ``flash_attn`` package and a CUDA tensor (ConfigError if not);
    ``"auto"`` is the same without the requirement; ``"sdpa"`` always uses
    ``F.scaled_dot_product_attention``; ``"manual"`` the fp32-score reference.
    """
    check_attention_backend(backend)
    if backend == "manual":
        return manual_attention(q, k, v, mask, dropout_p)[0]
    if backend == "flash2" and (_flash_attn_func() is None or not _on_cuda(q)):
        raise ConfigError(
            "attention_backend 'flash2' needs the flash_attn package and a CUDA device "
            f"(flash_attn {'installed' if _flash_attn_func() else 'not installed'}, tensors on "
            f"{q.device}); use attention_backend 'auto' to fall back to SDPA")
    # Cheap tensor checks first: on the CPU the package is never looked up.
    if backend != "sdpa" and _flash_usable(q, k, v, mask):
        flash = _flash_attn_func()
        if flash is not None:
            # flash_attn takes (B, S, H, D) and does GQA and bottom-right causal natively.
            out = flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                        dropout_p=dropout_p, softmax_scale=None, causal=mask.is_causal)
            return out.transpose(1, 2)
    attn_mask, is_causal = mask.mask, mask.is_causal
    if is_causal and q.shape[-2] != k.shape[-2]:
        # SDPA's is_causal is aligned top-left; keep every backend's bottom-right convention.
        attn_mask, is_causal = _combine(attn_mask, _causal(q.shape[-2], k.shape[-2], q.device)), False
    if v.dtype != q.dtype:  # e.g. cached fp32 K/V under autocast
        k, v = k.to(q.dtype), v.to(q.dtype)
    return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                enable_gqa=q.shape[1] != k.shape[1])


def sdpa(q: Tensor, k: Tensor, v: Tensor, **kwargs: object) -> Tensor:
    """``F.scaled_dot_product_attention``; when training on the CPU, low-precision inputs run
    in fp32.

    The CPU flash kernel's bf16 backward is 2-3x slower than its fp32 one at the tiny and small
    shapes and never faster at larger ones (measured, bench/RESULTS.md); the forward costs the
    same, so inference keeps the input dtype. Casting q/k/v up and the output back is cheap next
    to either; autograd then keeps fp32 q/k/v/output (profiles.estimate counts them).
    """
    if (q.device.type == "cpu" and q.dtype in _FLASH_DTYPES and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad)):
        # Autocast would cast the inputs straight back to bf16 (SDPA is on its CPU list).
        with torch.autocast(device_type="cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def masked_mean_pool(x: Tensor, mask: Tensor | None) -> Tensor:
    """``Σ_s m·x / max(1, Σ_s m)`` over the sequence axis: ``(B, S, d) -> (B, d)``; the plain
    mean without a mask. The pooling every enhancement stage and the reasoning engine use."""
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def set_attention_backend(module: nn.Module, backend: str) -> nn.Module:
    """Select ``backend`` for every :class:`GroupedQueryAttention` in ``module``; returns it."""
    check_attention_backend(backend)
    for sub in module.modules():
        if isinstance(sub, GroupedQueryAttention):
            sub.backend = backend
    return module


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention; query head ``h`` reads key/value head ``h // num_kv_groups``.

    Self-attention (``kv_input`` None) may apply rotary embeddings; cross-attention never does.
    ``past_kv`` / ``use_cache`` implement the decoder KV cache: for self-attention the new keys
    are appended to the past ones; for cross-attention a given ``past_kv`` is used as is.
    ``backend`` picks the attention kernel (see :func:`attention`).
    """

    def __init__(self, d_model: int, nhead: int, num_kv_heads: int, dropout: float = 0.0,
                 kv_input_dim: int | None = None, backend: str = "auto") -> None:
        super().__init__()
        if d_model % nhead or nhead % num_kv_heads:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by nhead ({nhead}) and nhead by "
                f"num_kv_heads ({num_kv_heads})"
            )
        self.nhead = nhead
        self.num_kv_heads = num_kv_heads
        self.head_dim = d_model // nhead
        self.dropout = dropout
        self.backend = check_attention_backend(backend)
        kv_in = kv_input_dim or d_model
        self.q_proj = nn.Linear(d_model, nhead * self.head_dim, bias=False)
        self.k_proj = nn.Linear(kv_in, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(kv_in, num_kv_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(nhead * self.head_dim, d_model, bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def project_kv(self, kv_input: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``(B, G, S, hd)`` of a source sequence (no rotary)."""
        b, s, _ = kv_input.shape
        k = self.k_proj(kv_input).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(kv_input).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(
        self,
        x: Tensor,
        kv_input: Tensor | None = None,
        mask: AttentionMask = NO_MASK,
        rope: tuple[Tensor, Tensor] | None = None,
        past_kv: tuple[Tensor, Tensor] | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor] | None]:
        """Returns ``(output (B,T,d), attention weights or None, (k, v) for the cache or None)``."""
        b, t, _ = x.shape
        hd = self.head_dim
        q = self.q_proj(x).view(b, t, self.nhead, hd)
        if kv_input is None:  # self-attention
            k = self.k_proj(x).view(b, t, self.num_kv_heads, hd)
            v = self.v_proj(x).view(b, t, self.num_kv_heads, hd)
            if rope is not None:
                cos, sin = rope
                q = apply_rotary(q, cos, sin)
                k = apply_rotary(k, cos, sin)
            k = k.transpose(1, 2)
            v = v.transpose(1, 2)
            if past_kv is not None:
                k = torch.cat((past_kv[0].to(k.dtype), k), dim=2)
                v = torch.cat((past_kv[1].to(v.dtype), v), dim=2)
        elif past_kv is not None:  # cross-attention with cached source keys/values
            k, v = past_kv
        else:
            k, v = self.project_kv(kv_input)
        q = q.transpose(1, 2)
        present = (k, v) if use_cache else None

        dropout_p = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if output_attentions:
            out, weights = manual_attention(q, k, v, mask, dropout_p)
        else:
            out = attention(q, k, v, mask, dropout_p, self.backend)
        out = out.transpose(1, 2).reshape(b, t, self.nhead * hd)
        return self.resid_dropout(self.out_proj(out)), weights, present


class SwiGLU(nn.Module):
    """``y = Dropout(down(silu(gate(x)) * up(x)))`` (bias-free)."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0,
                 activation: str = "silu") -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.act = F.silu if activation == "silu" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x)))


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer: ``x += SelfAttn(Norm x)``, ``x += FFN(Norm x)``."""

    def __init__(self, d_model: int, nhead: int, num_kv_heads: int, ffn_hidden: int,
                 dropout: float = 0.0, eps: float = 1e-6, activation: str = "silu") -> None:
        super().__init__()
        self.self_attn_norm = AeronRMSNorm(d_model, eps)
        self.self_attn = GroupedQueryAttention(d_model, nhead, num_kv_heads, dropout)
        self.ffn_norm = AeronRMSNorm(d_model, eps)
        self.ffn = SwiGLU(d_model, ffn_hidden, dropout, activation)

    def forward(self, x: Tensor, mask: AttentionMask = NO_MASK,
                rope: tuple[Tensor, Tensor] | None = None,
                output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        a, weights, _ = self.self_attn(self.self_attn_norm(x), mask=mask, rope=rope,
                                       output_attentions=output_attentions)
        x = x + a
        x = x + self.ffn(self.ffn_norm(x))
        return x, weights


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention to memory, SwiGLU."""

    def __init__(self, d_model: int, nhead: int, num_kv_heads: int, ffn_hidden: int,
                 dropout: float = 0.0, eps: float = 1e-6, activation: str = "silu") -> None:
        super().__init__()
        self.self_attn_norm = AeronRMSNorm(d_model, eps)
        self.self_attn = GroupedQueryAttention(d_model, nhead, num_kv_heads, dropout)
        self.cross_attn_norm = AeronRMSNorm(d_model, eps)
        self.cross_attn = GroupedQueryAttention(d_model, nhead, num_kv_heads, dropout)
        self.ffn_norm = AeronRMSNorm(d_model, eps)
        self.ffn = SwiGLU(d_model, ffn_hidden, dropout, activation)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        self_mask: AttentionMask = NO_MASK,
        cross_mask: AttentionMask = NO_MASK,
        rope: tuple[Tensor, Tensor] | None = None,
        past: LayerCache | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, LayerCache | None]:
        """Returns ``(x, self-attn weights, cross-attn weights, this layer's cache)``."""
        past_self = (past[0], past[1]) if past is not None else None
        past_cross = (past[2], past[3]) if past is not None and past[2] is not None else None
        a, self_w, present_self = self.self_attn(
            self.self_attn_norm(x), mask=self_mask, rope=rope, past_kv=past_self,
            use_cache=use_cache, output_attentions=output_attentions,
        )
        x = x + a
        if past_cross is None and memory is None:
            raise ValueError("decoder cross-attention needs the encoder memory or cached K/V")
        c, cross_w, present_cross = self.cross_attn(
            self.cross_attn_norm(x), kv_input=memory, mask=cross_mask, past_kv=past_cross,
            use_cache=use_cache, output_attentions=output_attentions,
        )
        x = x + c
        x = x + self.ffn(self.ffn_norm(x))
        cache: LayerCache | None = None
        if use_cache:
            assert present_self is not None and present_cross is not None
            cache = (present_self[0], present_self[1], present_cross[0], present_cross[1])
        return x, self_w, cross_w, cache


def maybe_checkpoint(module: nn.Module, enabled: bool, *args: object, **kwargs: object):
    """Run ``module(*args, **kwargs)``, through activation checkpointing when ``enabled``."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False, **kwargs)
    return module(*args, **kwargs)


# Rows of logits per chunk of the low-precision cross-entropy: about 2 M fp32 values (8 MB),
# small enough to stay in cache-friendly temporaries at a 32 k vocabulary.
_CE_CHUNK_ELEMENTS = 1 << 21
# Below this vocabulary the N·V tensors stay in cache and the plain route is as fast (measured
# on the CPU: 16 k: 2.7x faster chunked, 8 k: 1.1x, 4 k and 2 k: the plain one is faster).
_CE_CHUNKED_MIN_VOCAB = 8192


class _LowPrecisionCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of bf16/fp16 logits with fp32 arithmetic, chunk by chunk.

    The plain route (``logits.float()`` then ``F.cross_entropy``) writes an fp32 copy of the
    logits, keeps an fp32 log-softmax for backward, zero-fills an fp32 gradient and casts it
    back: about eight passes over ``N·V`` values. This keeps only the low-precision logits, and
    its backward recomputes the softmax and writes the low-precision gradient
    ``(softmax − onehot)·g`` directly: the same values (fp32 math), fewer passes and no fp32
    ``N·V`` tensor alive across the graph.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, ignore_index: int  # type: ignore[override]
                ) -> Tensor:
        n, v = logits.shape
        rows = max(1, _CE_CHUNK_ELEMENTS // max(v, 1))
        valid = target != ignore_index
        safe = torch.where(valid, target, torch.zeros_like(target))
        nll = torch.empty(n, dtype=torch.float32, device=logits.device)
        for start in range(0, n, rows):
            end = start + rows
            # The fused log-softmax kernel: one vectorised pass, its output a chunk temporary.
            nll[start:end] = F.cross_entropy(logits[start:end].float(), safe[start:end],
                                             reduction="none")
        ctx.save_for_backward(logits, safe, valid)
        return nll.masked_fill_(~valid, 0.0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        logits, safe, valid = ctx.saved_tensors
        n, v = logits.shape
        rows = max(1, _CE_CHUNK_ELEMENTS // max(v, 1))
        g = grad.float().masked_fill(~valid, 0.0)
        out = torch.empty_like(logits)
        for start in range(0, n, rows):
            end = start + rows
            p = torch.softmax(logits[start:end].float(), dim=-1)
            p.scatter_add_(1, safe[start:end, None], torch.full_like(p[:, :1], -1.0))
            out[start:end] = p.mul_(g[start:end, None])
        return out, None, None


def token_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """Per-token cross-entropy ``(N,)`` in fp32 of ``logits (N, V)`` (0 where ``target`` is
    ``ignore_index``); bf16/fp16 logits over a large vocabulary take the chunked route
    without an fp32 copy."""
    if (logits.dtype in _FLASH_DTYPES and logits.shape[-1] >= _CE_CHUNKED_MIN_VOCAB
            and torch.is_grad_enabled() and logits.requires_grad):
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return _LowPrecisionCrossEntropy.apply(logits, target, ignore_index)
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
