"""Helpers for LONPT tests: a very small model, a small three-domain corpus, run configs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from core.runs.events import ParseProblem, read_events


def tiny_model_config() -> Any:
    """d_model 64, 1+1 layers, small enhancement modules: a step takes milliseconds."""
    from core.model.config import NeuralNetConfig

    return NeuralNetConfig(
        d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=1, num_decoder_layers=1,
        dim_feedforward=128, max_position_embeddings=128, num_tot_branches=2,
        num_scratchpad_slots=4, memory_slots=16, memory_dim=64, memory_heads=4,
        kg_num_entities=64, kg_dim=16, num_tasks=4,
    )


def write_domain_corpus(path: Path, n: int = 270, seed: int = 0, labels: tuple[str, ...] = ("qa", "math", "code")) -> Path:
    """Arithmetic Q/A in styles that map to semantic (qa), reasoning (math), syntactic (code)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        rows.append({
            "provider": "synthetic", "style_label": labels[i % len(labels)],
            "user_input": f"What is {a} plus {b}?",
            "assistant_reply": f"{a} plus {b} is {a + b}.",
            "turn_id": f"t{i:05d}",
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def lonpt_run_config(run_dir: Path, data: Path, **options: Any) -> Any:
    """A RunConfig for the smoke preset made smaller still, with LONPT ``options`` on top."""
    from core.train.config import RunConfig

    opts: dict[str, Any] = dict(
        dataset_fraction=1.0, max_length=32, batch_size=4, domain_cycles=2, steps_per_domain=6,
        log_every=2, val_max_batches=2, pncec_cycle_length=8, learning_rate=3e-3, seed=3,
    )
    opts.update(options)
    return RunConfig(
        trainer="lonpt", preset="smoke", run_dir=str(run_dir), data=str(data), precision="fp32",
        device="cpu", tokenizer_vocab_size=300, options=opts,
    )


def events_of(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for e in read_events(run_dir / "events.jsonl"):
        assert not isinstance(e, ParseProblem), e  # every line parses and validates
        out.append(e)
    return out


class FakeMemory:
    """A memory reader with a fixed reading (bytes): peak, static, total."""

    def __init__(self, peak: int, static: int, total: int) -> None:
        from lonpt.act import MemoryReading

        self.reading = MemoryReading(peak, static, total)
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.reading
