"""Small configurations and batches shared by the model tests."""

from __future__ import annotations

from typing import Any

import torch

from core.model.config import NeuralNetConfig
from core.model.model import TransformerNeuralNetBackbone

VOCAB = 128


def small_config(**overrides: Any) -> NeuralNetConfig:
    fields: dict[str, Any] = dict(
        vocab_size=VOCAB, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=2,
        num_decoder_layers=2, dim_feedforward=64, max_position_embeddings=64,
        num_tot_branches=3, num_scratchpad_slots=6, reasoning_complexity_threshold=0.0,
    )
    fields.update(overrides)
    return NeuralNetConfig(**fields)


def build(seed: int = 0, **overrides: Any) -> TransformerNeuralNetBackbone:
    torch.manual_seed(seed)
    return TransformerNeuralNetBackbone(small_config(**overrides))


def batch(seed: int = 0, b: int = 3, s: int = 9, t: int = 7, pad: bool = True) -> dict[str, Any]:
    """Right-padded encoder/decoder batch with labels (-100 on decoder padding)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (b, s), generator=gen)
    dec = torch.randint(3, VOCAB, (b, t), generator=gen)
    mask = torch.ones(b, s, dtype=torch.long)
    dmask = torch.ones(b, t, dtype=torch.long)
    if pad and b > 1:
        mask[1, s - 3:] = 0
        ids[1, s - 3:] = 0
        dmask[b - 1, t - 2:] = 0
        dec[b - 1, t - 2:] = 0
    labels = torch.randint(3, VOCAB, (b, t), generator=gen).masked_fill(dmask == 0, -100)
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                decoder_attention_mask=dmask, labels=labels)
