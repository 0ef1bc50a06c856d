"""The simple trainer (training.md §7): AdamW, warmup then cosine, clipping; no controllers.

lr 3e-4 for tiny/small models, 1e-4 for larger ones; warmup ``min(100, 5 %)`` steps then cosine
to 10 %; clip 1.0; evaluate every 200 steps; keep the last 3 checkpoints plus the best. All of
it is the engine's default behaviour — this class only chooses the learning rate.
"""

from __future__ import annotations

from core.train.engine import Trainer

SMALL_PROFILES = ("tiny", "small")
SMALL_MODEL_D = 512  # d_model of the small profile: at or below it counts as "tiny/small"


class SimpleTrainer(Trainer):
    """Plain supervised training of the encoder-decoder on the corpus."""

    name = "simple"
    description = "AdamW with warmup + cosine decay; the plain supervised trainer"
    accepted_options = frozenset({"shard"})

    def default_learning_rate(self) -> float:
        profile = (self.config.profile or "").lower()
        if profile in SMALL_PROFILES:
            return 3e-4
        base = self.base_model_config
        d_model = getattr(base, "d_model", None)
        if d_model is None and isinstance(base, dict):
            d_model = base.get("d_model")
        if profile == "" and d_model is not None and d_model <= SMALL_MODEL_D:
            return 3e-4
        return 1e-4 if profile or (d_model or 0) > SMALL_MODEL_D else 3e-4
