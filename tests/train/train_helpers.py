"""Helpers for engine tests: a very small model and a small styles corpus (fast on 2 cores)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def tiny_model_config() -> Any:
    """d_model 64, 1+1 layers, small enhancement modules: a step takes milliseconds."""
    from core.model.config import NeuralNetConfig

    return NeuralNetConfig(
        d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=1, num_decoder_layers=1,
        dim_feedforward=128, max_position_embeddings=128, num_tot_branches=2,
        num_scratchpad_slots=4, memory_slots=16, memory_dim=64, memory_heads=4,
        kg_num_entities=64, kg_dim=16, num_tasks=4,
    )


def write_styles(path: Path, n: int = 240, seed: int = 0) -> Path:
    """A deterministic little styles.jsonl (arithmetic Q/A in three styles)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        label = ("qa", "math", "code")[i % 3]
        rows.append({
            "provider": "synthetic", "style_label": label,
            "user_input": f"What is {a} plus {b}?",
            "assistant_reply": f"{a} plus {b} is {a + b}.",
            "turn_id": f"t{i:05d}",
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_config(run_dir: Path, data: Path, **changes: Any) -> Any:
    from core.train.config import RunConfig

    base: dict[str, Any] = dict(
        run_dir=str(run_dir), data=str(data), steps=12, micro_batch=4, seq_len=32,
        precision="fp32", device="cpu", log_every=1, eval_every=6, eval_max_batches=2,
        checkpoint_every=4, keep_last=2, tokenizer_vocab_size=300, seed=3,
    )
    base.update(changes)
    return RunConfig(**base)


TINY_MODEL_SETS = [
    "model.d_model=64", "model.nhead=4", "model.num_kv_heads=2", "model.num_encoder_layers=1",
    "model.num_decoder_layers=1", "model.dim_feedforward=128", "model.num_tot_branches=2",
    "model.num_scratchpad_slots=4", "model.memory_slots=16", "model.memory_dim=64",
    "model.memory_heads=4", "model.kg_num_entities=64", "model.kg_dim=16", "model.num_tasks=4",
]


def cli_train_args(run_dir: Path, data: Path, steps: int, **sets: Any) -> list[str]:
    """Arguments of `aeron-tui train simple` for a very small, fast CPU run."""
    values = dict(log_every=1, eval_every=1000, checkpoint_every=4, eval_max_batches=2,
                  tokenizer_vocab_size=300, keep_last=10)
    values.update(sets)
    args = ["train", "simple", "--profile", "tiny", "--data", str(data), "--run-dir", str(run_dir),
            "--steps", str(steps), "--seq-len", "32", "--micro-batch", "4", "--seed", "3",
            "--precision", "fp32", "--device", "cpu"]
    for item in TINY_MODEL_SETS + [f"{k}={v}" for k, v in values.items()]:
        args += ["--set", item]
    return args
