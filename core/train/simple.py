"""The simple trainer (training.md §7): AdamW, warmup then a decay to the run's end, clipping.

A run from the CLI or the console takes its learning rate and schedule from the size profile's
``[train]`` table (the tiny profile's were chosen by measurement: lr 1e-3, constant then decay,
bench/RESULTS.md "recipe_search"). Without one, this class chooses: 1e-3 for tiny, 3e-4 for
small (unmeasured there), 1e-4 for larger models. Warmup ``min(100, 5 %)`` steps; clip 1.0; keep
the last 3 checkpoints plus the best. All of it is the engine's default behaviour.
"""

from __future__ import annotations

from core.train.engine import Trainer

SMALL_PROFILES = ("tiny", "small")
SMALL_MODEL_D = 512  # d_model of the small profile: at or below it counts as "tiny/small"


class SimpleTrainer(Trainer):
    """Plain supervised training of the encoder-decoder on the corpus."""

    name = "simple"
    description = "AdamW, warmup and the profile's lr schedule; the plain supervised trainer"
    accepted_options = frozenset({"shard"})

    def default_learning_rate(self) -> float:
        profile = (self.config.profile or "").lower()
        if profile == "tiny":
            return 1e-3  # the tiny profile's measured learning rate (profiles/catalog/tiny.toml)
        if profile in SMALL_PROFILES:
            return 3e-4
        base = self.base_model_config
        d_model = getattr(base, "d_model", None)
        if d_model is None and isinstance(base, dict):
            d_model = base.get("d_model")
        if profile == "" and d_model is not None and d_model <= SMALL_MODEL_D:
            return 3e-4
        return 1e-4 if profile or (d_model or 0) > SMALL_MODEL_D else 3e-4
