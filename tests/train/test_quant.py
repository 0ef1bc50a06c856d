"""Blockwise quantisation: error bounds, exact 12-bit packing, storage sizes."""

from __future__ import annotations

import pytest
import torch

from core.train.quant import (
    BLOCK_SIZE,
    dequantize_blockwise,
    pack12,
    quantize_blockwise,
    relative_error,
    unpack12,
)


def _moments(n: int = 10_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, generator=g) * 1e-3
    v = (torch.randn(n, generator=g) * 1e-3) ** 2
    return m, v


def test_pack12_round_trip_exact_including_odd_length() -> None:
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 255, 1001):
        codes = torch.randint(0, 4096, (n,), generator=g, dtype=torch.int32)
        packed = pack12(codes)
        assert packed.dtype == torch.uint8
        assert packed.numel() == 3 * ((n + 1) // 2)  # two values per three bytes
        assert torch.equal(unpack12(packed, n), codes)
    extremes = torch.tensor([0, 4095, 4095, 0, 2048], dtype=torch.int32)
    assert torch.equal(unpack12(pack12(extremes), 5), extremes)


def test_pack12_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="0, 4095"):
        pack12(torch.tensor([4096]))
    with pytest.raises(ValueError, match="multiple of 3"):
        unpack12(torch.zeros(4, dtype=torch.uint8), 2)


@pytest.mark.parametrize(("bits", "bound"), [(8, 0.03), (12, 0.004), (16, 0.01), (32, 0.0)])
def test_error_under_the_spec_bounds_for_adam_like_moments(bits: int, bound: float) -> None:
    m, v = _moments()
    qm = quantize_blockwise(m, bits, signed=True)
    qs = quantize_blockwise(v.sqrt(), bits, signed=False)
    err_m = relative_error(m, dequantize_blockwise(qm))
    err_s = relative_error(v.sqrt(), dequantize_blockwise(qs))
    assert err_m <= bound and err_s <= bound
    if bits == 32:
        assert torch.equal(dequantize_blockwise(qm), m)
    else:
        assert err_m > 0  # lossy for real


def test_codes_follow_the_spec_formula() -> None:
    x = torch.zeros(2 * BLOCK_SIZE)
    x[0], x[1] = 2.0, -1.0  # block 0: s = 2
    x[BLOCK_SIZE] = 0.5  # block 1: s = 0.5
    q = quantize_blockwise(x, 8, signed=True)
    assert q.codes.dtype == torch.int8
    assert q.scales.tolist() == [2.0, 0.5]
    assert q.codes[0].item() == 127 and q.codes[1].item() == round(-0.5 * 127)
    assert q.codes[BLOCK_SIZE].item() == 127
    u = quantize_blockwise(x.abs(), 8, signed=False)
    assert u.codes.dtype == torch.uint8 and u.codes[1].item() == round(0.5 * 255)


def test_round_up_never_decodes_below_the_input() -> None:
    _, v = _moments()
    s = v.sqrt()
    for bits in (8, 12):
        up = dequantize_blockwise(quantize_blockwise(s, bits, signed=False, round_up=True))
        assert bool((up >= s * (1 - 1e-6)).all())  # never a lower code (float rounding aside)
        nearest = dequantize_blockwise(quantize_blockwise(s, bits, signed=False))
        assert bool((nearest < s).any())  # nearest rounding does go below


def test_shapes_padding_zero_blocks_and_storage_bytes() -> None:
    x = torch.randn(7, 100)  # 700 values → 3 blocks, last one padded
    for bits, per_value in ((8, 1.0), (12, 1.5)):
        q = quantize_blockwise(x, bits, signed=True)
        back = dequantize_blockwise(q)
        assert back.shape == x.shape and back.dtype == torch.float32
        assert q.scales.numel() == 3
        assert q.nbytes == int(3 * BLOCK_SIZE * per_value) + 3 * 4
    zeros = torch.zeros(300)
    assert torch.equal(dequantize_blockwise(quantize_blockwise(zeros, 8, signed=True)), zeros)
    q16 = quantize_blockwise(x, 16, signed=True)
    assert q16.codes.dtype == torch.bfloat16 and q16.nbytes == 700 * 2


def test_relative_error_definition() -> None:
    x = torch.tensor([3.0, 4.0])
    assert relative_error(x, torch.tensor([3.0, 3.0])) == pytest.approx(1 / 5)
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0.0
    with pytest.raises(ValueError, match="bits"):
        quantize_blockwise(x, 4, signed=True)


def test_non_finite_input_keeps_a_non_finite_scale() -> None:
    x = torch.randn(600)
    x[3], x[300] = float("nan"), float("inf")
    for bits in (8, 12):
        q = quantize_blockwise(x, bits, signed=True)
        assert not bool(torch.isfinite(q.scales[:2]).any()) and bool(torch.isfinite(q.scales[2]))
        assert not bool(torch.isfinite(dequantize_blockwise(q)[:512]).all())
