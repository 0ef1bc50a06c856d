"""Blockwise quantisation of optimizer state: 8-bit, 12-bit packed, bf16 and fp32 storage.

Pure tensor functions used by the compressed trainer (training.md §6). A tensor is flattened,
padded to a multiple of the block size (256) and split into blocks; each block keeps one fp32
scale ``s = max|x|`` and integer codes:

* signed (first moment ``m``):    ``q = round(x / s · (2^(b−1) − 1))`` in ``[−(2^(b−1)−1), 2^(b−1)−1]``
* unsigned (second moment, stored as ``√v``): ``q = round(x / s · (2^b − 1))`` in ``[0, 2^b − 1]``

Unsigned codes may instead be rounded *up* (``round_up=True``): the compressed optimizer does
this for ``√v`` so the Adam denominator is never under-estimated — a small ``√v`` rounded to
code 0 would otherwise turn ``m / (√v + ε)`` into a step of size ``m / ε``.

Storage per value: 8 bits → one byte (int8 signed, uint8 unsigned); 12 bits → two values packed
into three bytes (uint8); 16 → bfloat16 (no scale); 32 → float32 (lossless, no scale).
Everything is vectorised over blocks; there are no Python loops over blocks or elements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BLOCK_SIZE = 256
SUPPORTED_BITS = (8, 12, 16, 32)


@dataclass
class QTensor:
    """A quantised tensor: codes (+ per-block fp32 scales for 8/12 bits) and how to decode them.

    ``codes`` is int8/uint8 (8 bits), packed uint8 (12 bits, 3 bytes per 2 values), bfloat16
    (16 bits) or float32 (32 bits); ``scales`` is empty for 16/32 bits.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    bits: int
    signed: bool
    shape: tuple[int, ...]
    block_size: int = BLOCK_SIZE

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Actual bytes held by this tensor's storage (codes + scales)."""
        return _nbytes(self.codes) + _nbytes(self.scales)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")


def _to_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flatten to fp32 and pad with zeros to whole blocks: shape (n_blocks, block_size)."""
    flat = x.detach().reshape(-1).to(torch.float32)
    pad = (-flat.numel()) % block_size
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(-1, block_size)


def quantize_blockwise(
    x: torch.Tensor,
    bits: int,
    signed: bool,
    block_size: int = BLOCK_SIZE,
    round_up: bool = False,
) -> QTensor:
    """Quantise ``x`` at ``bits`` (8, 12, 16 or 32). ``signed=False`` requires ``x >= 0``.

    ``round_up`` (unsigned 8/12-bit only) takes the ceiling instead of the nearest code, so the
    decoded value is never below the input.
    """
    _check_bits(bits)
    shape = tuple(x.shape)
    empty = torch.empty(0, dtype=torch.float32, device=x.device)
    if bits == 32:
        return QTensor(x.detach().to(torch.float32).clone(), empty, 32, signed, shape, block_size)
    if bits == 16:
        return QTensor(
            x.detach().to(torch.bfloat16).reshape(shape), empty, 16, signed, shape, block_size
        )
    blocks = _to_blocks(x, block_size)
    # √v is non-negative: its block maximum needs no abs() pass (aminmax measured slower).
    scales = blocks.abs().amax(dim=1) if signed else blocks.amax(dim=1)
    levels = (2 ** (bits - 1) - 1) if signed else (2**bits - 1)
    # An all-zero block keeps scale 0; the clamped divisor then gives codes 0 (decoded: 0).
    inverse = (levels / scales.clamp_min(1e-30)).unsqueeze(1)
    codes = blocks * inverse
    if round_up and not signed:
        codes = codes.ceil_().clamp_(max=levels)  # x·(levels/s) may exceed levels by an ulp
    else:
        codes = codes.round_()
    if x.device.type != "cpu" or not bool(torch.isfinite(scales).all()):
        # Non-finite input: codes become 0 but the block's scale stays NaN/inf, so the damage
        # is still visible to a finiteness check (integer casts of NaN are undefined).
        low = -levels if signed else 0
        codes = torch.nan_to_num_(codes, nan=0.0, posinf=0.0, neginf=0.0).clamp_(low, levels)
    codes = codes.reshape(-1)
    if bits == 8:
        stored = codes.to(torch.int8) if signed else codes.to(torch.uint8)
    else:  # 12 bits: shift signed codes to unsigned, then pack two per three bytes
        unsigned = codes.to(torch.int32)
        if signed:
            unsigned += 2 ** (bits - 1)
        stored = pack12(unsigned, check=False)
    return QTensor(stored, scales, bits, signed, shape, block_size)


def dequantize_blockwise(q: QTensor) -> torch.Tensor:
    """Decode to a float32 tensor of the original shape."""
    if q.bits == 32:
        return q.codes.to(torch.float32).reshape(q.shape)
    if q.bits == 16:
        return q.codes.to(torch.float32).reshape(q.shape)
    n_blocks = q.scales.numel()
    total = n_blocks * q.block_size
    if q.bits == 8:
        codes = q.codes  # int8/uint8 x float32 promotes to float32 in the multiply below
    else:
        codes = unpack12(q.codes, total)
        if q.signed:
            codes -= 2 ** (q.bits - 1)
    levels = (2 ** (q.bits - 1) - 1) if q.signed else (2**q.bits - 1)
    values = codes.view(n_blocks, q.block_size) * (q.scales.unsqueeze(1) / levels)
    return values.reshape(-1)[: q.numel].reshape(q.shape)


def pack12(codes: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Pack integers in ``[0, 4095]`` two per three bytes (uint8). An odd count is padded by 0.

    Layout for a pair (a, b): byte0 = a & 0xFF, byte1 = (a >> 8) | ((b & 0xF) << 4),
    byte2 = b >> 4.
    """
    flat = codes.reshape(-1).to(torch.int32)
    if check and flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 4095):
        raise ValueError("pack12 needs integers in [0, 4095]")
    if flat.numel() % 2:
        flat = torch.nn.functional.pad(flat, (0, 1))
    pairs = flat.view(-1, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    out = torch.stack([a & 0xFF, (a >> 8) | ((b & 0xF) << 4), b >> 4], dim=1)
    return out.to(torch.uint8).reshape(-1)


def unpack12(packed: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`pack12`: the first ``count`` integers as int32."""
    if packed.numel() % 3:
        raise ValueError(f"packed 12-bit data must be a multiple of 3 bytes, got {packed.numel()}")
    triples = packed.reshape(-1, 3).to(torch.int32)
    b0, b1, b2 = triples[:, 0], triples[:, 1], triples[:, 2]
    a = b0 | ((b1 & 0xF) << 8)
    b = (b1 >> 4) | (b2 << 4)
    values = torch.stack([a, b], dim=1).reshape(-1)
    if count > values.numel():
        raise ValueError(f"asked for {count} values but the data holds {values.numel()}")
    return values[:count]


def relative_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``‖x − x̂‖ / ‖x‖`` (0 when both are zero; inf when only x is zero and x̂ is not)."""
    x = x.to(torch.float32)
    diff = torch.linalg.vector_norm(x - x_hat.to(torch.float32)).item()
    ref = torch.linalg.vector_norm(x).item()
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref


def squared_error_parts(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[float, float]:
    """``(‖x − x̂‖², ‖x‖²)``: summed over several tensors these give a group's relative error."""
    x = x.to(torch.float32)
    diff = (x - x_hat.to(torch.float32)).pow(2).sum().item()
    return diff, x.pow(2).sum().item()


def qtensor_to_state(q: QTensor) -> dict[str, torch.Tensor]:
    """Tensors only, for an optimizer state dict loadable with ``weights_only=True``."""
    return {"codes": q.codes, "scales": q.scales}


def storage_dtype(bits: int, signed: bool) -> torch.dtype:
    """The dtype :func:`quantize_blockwise` stores codes in."""
    _check_bits(bits)
    if bits == 32:
        return torch.float32
    if bits == 16:
        return torch.bfloat16
    if bits == 8:
        return torch.int8 if signed else torch.uint8
    return torch.uint8


def bytes_per_value(bits: int, block_size: int = BLOCK_SIZE) -> float:
    """Storage cost per value including the per-block scale (for estimates)."""
    _check_bits(bits)
    if bits in (16, 32):
        return bits / 8
    return bits / 8 + 4 / block_size
