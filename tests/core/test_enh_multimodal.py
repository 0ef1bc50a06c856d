"""Multimodal path: patch embedding, sinusoidal PE, fusion, validation."""

from __future__ import annotations

import math

import pytest
import torch
from enh_common import tiny_config

from core.model.multimodal import MultimodalFusion, VisionPatchEmbedding, sinusoidal_positions


def test_sinusoidal_positions_follow_the_formula() -> None:
    pe = sinusoidal_positions(5, 6)
    p, i = 3, 1
    assert pe[p, 2 * i] == pytest.approx(math.sin(p / 10000 ** (2 * i / 6)), abs=1e-6)
    assert pe[p, 2 * i + 1] == pytest.approx(math.cos(p / 10000 ** (2 * i / 6)), abs=1e-6)
    assert torch.equal(pe[0, 1::2], torch.ones(3))


def test_patch_embedding_shapes_and_position_dependence() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    emb = VisionPatchEmbedding(cfg)
    out = emb(torch.randn(2, 3, 8, 12))  # 2x3 patches of 4
    assert out.shape == (2, 6, 32)
    flat = emb(torch.zeros(1, 3, 8, 8))
    # identical (all-zero) patches differ only by position encoding
    assert not torch.allclose(flat[0, 0], flat[0, 1])
    assert "position_encoding" not in emb.state_dict()


@pytest.mark.parametrize(
    ("images", "needle"),
    [
        (torch.randn(2, 1, 8, 8), "1 channels, expected 3"),
        (torch.randn(2, 3, 8, 7), "size 8x7"),
        (torch.randn(2, 3, 20, 20), "25 patches"),
        (torch.randn(3, 8, 8), "shape"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.long), "dtype"),
    ],
)
def test_wrong_images_raise_value_error_naming_vision_inputs(images, needle) -> None:
    emb = VisionPatchEmbedding(tiny_config())
    with pytest.raises(ValueError, match="vision_inputs") as err:
        emb(images)
    assert needle in str(err.value)


def test_fusion_output_depends_on_image_and_all_weights_get_gradients() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(num_multimodal_layers=2)
    emb, fusion = VisionPatchEmbedding(cfg), MultimodalFusion(cfg)
    text = torch.randn(2, 5, 32)
    a = fusion(text, emb(torch.randn(2, 3, 8, 8)))
    b = fusion(text, emb(torch.randn(2, 3, 8, 8)))
    assert a.shape == text.shape and not torch.allclose(a, b)
    a.square().sum().backward()
    for module in (emb, fusion):
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
