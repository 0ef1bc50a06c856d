"""Helpers for the RLHF tests: small configs, checkpoints without training, events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def small_config(vocab: int, **kw: Any) -> Any:
    from core.model.config import NeuralNetConfig

    base: dict[str, Any] = dict(
        vocab_size=vocab, d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=2,
        num_decoder_layers=2, dim_feedforward=128, max_position_embeddings=160,
        num_tot_branches=2, num_scratchpad_slots=4,
    )
    base.update(kw)
    return NeuralNetConfig(**base)


def save_model_checkpoint(path: Path, model: Any, tokenizer: Any, trainer: str = "simple") -> Path:
    """A real checkpoint directory (what the trainers write), without training."""
    from core.runs.checkpoint import save_checkpoint

    return save_checkpoint(path, model=model, config=model.config, tokenizer=tokenizer,
                           trainer_state={"global_step": 0}, extra={"trainer": trainer})


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
