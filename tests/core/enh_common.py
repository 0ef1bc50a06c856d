"""Tiny configurations shared by the enhancement-pipeline tests."""

from __future__ import annotations

from typing import Any

from core.model.config import NeuralNetConfig


def tiny_config(**overrides: Any) -> NeuralNetConfig:
    """A few-hundred-kilo-parameter config with every module on and errors re-raised."""
    fields: dict[str, Any] = dict(
        vocab_size=96,
        d_model=32,
        nhead=4,
        num_kv_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=64,
        max_position_embeddings=64,
        num_multimodal_layers=1,
        patch_size=4,
        num_channels=3,
        vision_d_model=16,
        vision_max_patches=16,
        num_tot_branches=2,
        num_scratchpad_slots=4,
        reasoning_complexity_threshold=0.0,
        kg_dim=8,
        kg_num_entities=20,
        kg_num_relations=5,
        kg_cache_size=8,
        memory_slots=8,
        memory_dim=16,
        memory_heads=2,
        num_tasks=3,
        ewc_lambda=10.0,
        uq_mc_samples=4,
        uq_ensemble_size=2,
        uq_num_bins=15,
        uq_mc_dropout=0.1,
        al_proj_dim=4,
        strict_modules=True,
    )
    fields.update(overrides)
    return NeuralNetConfig(**fields)
