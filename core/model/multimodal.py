"""The multimodal path: image patches fused into the text states before the encoder.

Only taken when ``vision_inputs`` is given (model.md §3); text-only batches skip it entirely.

- :class:`VisionPatchEmbedding` cuts ``(B, num_channels, H, W)`` images into ``patch_size``
  squares with a strided convolution to ``vision_d_model`` features, adds a fixed sinusoidal
  absolute position encoding (the model's only absolute PE: ``sin(p/10000^(2i/D))`` on even
  dims, ``cos`` on odd ones) and projects to ``d_model``.
- :class:`MultimodalFusion`: ``num_multimodal_layers`` pre-norm layers
  ``t += CrossAttn(Norm t, v)`` (text queries, image keys, no rotary), ``t += SwiGLU(Norm t)``.
  The fused text states are the encoder input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from core.model.layers import AeronRMSNorm, GroupedQueryAttention, SwiGLU


def validate_vision_inputs(
    vision_inputs: Any, batch_size: int, num_channels: int, patch_size: int, max_patches: int
) -> None:
    """ValueError naming ``vision_inputs`` unless it is a float ``(B, C, H, W)`` image batch."""
    form = (
        f"a float tensor (B={batch_size}, C={num_channels}, H, W) with H and W multiples of "
        f"patch_size={patch_size} and at most {max_patches} patches"
    )
    if not isinstance(vision_inputs, Tensor):
        raise ValueError(f"vision_inputs must be {form}, got {type(vision_inputs).__name__}")
    if not vision_inputs.dtype.is_floating_point:
        raise ValueError(f"vision_inputs must be {form}, got dtype {vision_inputs.dtype}")
    if vision_inputs.dim() != 4:
        raise ValueError(f"vision_inputs must be {form}, got shape {tuple(vision_inputs.shape)}")
    b, c, h, w = vision_inputs.shape
    if b != batch_size:
        raise ValueError(f"vision_inputs has batch size {b} but input_ids has {batch_size}: expected {form}")
    if c != num_channels:
        raise ValueError(f"vision_inputs has {c} channels, expected {num_channels}: {form}")
    if h == 0 or w == 0 or h % patch_size or w % patch_size:
        raise ValueError(f"vision_inputs has size {h}x{w}, expected {form}")
    patches = (h // patch_size) * (w // patch_size)
    if patches > max_patches:
        raise ValueError(f"vision_inputs gives {patches} patches ({h}x{w}), expected {form}")


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """``(length, dim)``: ``sin(p/10000^(2i/dim))`` at even dims ``2i``, ``cos`` at odd ``2i+1``."""
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, two_i / dim)
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return pe.float()


class VisionPatchEmbedding(nn.Module):
    """Conv2d patches → + sinusoidal PE → ``vision_proj`` to ``d_model``: ``(B, Np, d)``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.patch_size = int(config.patch_size)
        self.num_channels = int(config.num_channels)
        self.max_patches = int(config.vision_max_patches)
        vd = int(config.vision_d_model)
        self.patch_conv = nn.Conv2d(self.num_channels, vd, kernel_size=self.patch_size, stride=self.patch_size)
        self.vision_proj = nn.Linear(vd, config.d_model, bias=False)
        std = float(config.initializer_range)
        nn.init.normal_(self.patch_conv.weight, std=std)
        nn.init.zeros_(self.patch_conv.bias)
        nn.init.normal_(self.vision_proj.weight, std=std)
        # Fixed, not learned and not checkpointed: rebuilt from the config.
        self.register_buffer("position_encoding", sinusoidal_positions(self.max_patches, vd), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        validate_vision_inputs(images, images.shape[0], self.num_channels, self.patch_size, self.max_patches)
        feats = self.patch_conv(images.to(self.patch_conv.weight.dtype))  # (B, vd, H/p, W/p)
        feats = feats.flatten(2).transpose(1, 2)  # (B, Np, vd)
        feats = feats + self.position_encoding[: feats.shape[1]].to(feats.dtype)
        return self.vision_proj(feats)


class FusionLayer(nn.Module):
    """``t += CrossAttn(Norm t, v)``; ``t += SwiGLU(Norm t)``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        d = config.d_model
        self.cross_attn_norm = AeronRMSNorm(d, config.rms_norm_eps)
        self.cross_attn = GroupedQueryAttention(d, config.nhead, config.num_kv_heads, config.dropout)
        self.ffn_norm = AeronRMSNorm(d, config.rms_norm_eps)
        self.ffn = SwiGLU(d, config.swiglu_hidden, config.dropout, config.activation)

    def forward(self, text: Tensor, vision: Tensor) -> Tensor:
        a, _, _ = self.cross_attn(self.cross_attn_norm(text), kv_input=vision)
        text = text + a
        return text + self.ffn(self.ffn_norm(text))


class MultimodalFusion(nn.Module):
    """``num_multimodal_layers`` cross-attention fusion layers (text queries image patches)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(FusionLayer(config) for _ in range(config.num_multimodal_layers))
        std = float(config.initializer_range)
        out_std = std / math.sqrt(2 * max(1, config.num_multimodal_layers))
        for layer in self.layers:
            for lin in (layer.cross_attn.q_proj, layer.cross_attn.k_proj, layer.cross_attn.v_proj,
                        layer.ffn.gate_proj, layer.ffn.up_proj):
                nn.init.normal_(lin.weight, std=std)
            for lin in (layer.cross_attn.out_proj, layer.ffn.down_proj):
                nn.init.normal_(lin.weight, std=out_std)

    def forward(self, text: Tensor, vision: Tensor) -> Tensor:
        for layer in self.layers:
            text = layer(text, vision.to(text.dtype))
        return text
