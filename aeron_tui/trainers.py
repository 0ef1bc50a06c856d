"""The trainer registry: every trainer the CLI and the console can start, one entry each.

``aeron-tui train <name>`` gets one sub-command per entry (sharing the common options), and the
console's setup screen lists the same table. A new trainer is one line here — never a new CLI
code path. Entries name their class by import path so listing them stays free of torch.
(``core`` must not import ``lonpt``; that is why the table lives on the ``aeron_tui`` side.)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError


@dataclass(frozen=True)
class TrainerEntry:
    """One trainer: ``target`` is ``"module:Class"`` (a :class:`core.train.engine.Trainer`).

    ``defaults`` are RunConfig values this trainer prefers (applied after the profile's training
    settings, before the user's TOML and flags); ``options`` go to ``RunConfig.options``.
    """

    name: str
    target: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def load(self) -> type:
        """Import and return the trainer class."""
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"trainer {self.name!r} is not available: cannot import {module_name} ({exc})"
            ) from exc
        try:
            return getattr(module, attr)  # type: ignore[no-any-return]
        except AttributeError as exc:
            raise ConfigError(f"trainer {self.name!r}: {module_name} has no {attr}") from exc


_ENTRIES = (
    TrainerEntry("simple", "core.train.simple:SimpleTrainer",
                 "AdamW, warmup and the profile's lr schedule: plain supervised training"),
    TrainerEntry("compressed", "core.train.compressed:CompressedTrainer",
                 "AdamW with 8/12/16-bit block-quantised moments per component, breath-safety",
                 options={"check_every": 100, "rail_spike_factor": 3.0, "rail_max_nonfinite": 3}),
    TrainerEntry("reward", "core.train.rlhf.reward:RewardTrainer",
                 "RLHF reward model: Bradley-Terry on preference pairs (accuracy, margin)"),
    TrainerEntry("dpo", "core.train.rlhf.dpo:DPOTrainer",
                 "RLHF DPO on preference pairs (--set loss=hinge|ipo|simpo, beta, reference)"),
    TrainerEntry("ppo", "core.train.rlhf.ppo:PPOTrainer",
                 "RLHF PPO on prompts: reward model or verifiable reward (--set grpo=true)"),
    TrainerEntry("continual", "core.train.continual_trainer:ContinualTrainer",
                 "continue a checkpoint on new data: replay, EWC, mirror distillation, latent "
                 "anchoring, retention report (--set from=CKPT old_data=PATH recipe=full)",
                 defaults={"steps": 300}),
    # LONPT owns batch, length and learning rate through its presets (lonpt/presets/*.toml):
    # the profile's [train] values are reset here so only the user's flags/--set override them.
    TrainerEntry("lonpt", "lonpt.trainer:LonptTrainer",
                 "LONPT: AKAP domain curriculum, PNCEC LR phases, ACT batch control, HPF "
                 "low-rank FFN, safety rails (--set preset=smoke|light|standard|heavy|PATH)",
                 defaults={"seq_len": None, "micro_batch": None, "grad_accum": None,
                           "learning_rate": None, "weight_decay": 0.01, "grad_clip": 1.0,
                           "steps": 1000},
                 options={"presets": ["smoke", "light", "standard", "heavy"]}),
)

TRAINERS: dict[str, TrainerEntry] = {entry.name: entry for entry in _ENTRIES}


def get_trainer(name: str) -> TrainerEntry:
    """The registry entry for ``name``; ConfigError listing the known trainers otherwise."""
    try:
        return TRAINERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown trainer {name!r}; choose one of {', '.join(TRAINERS)}"
        ) from None
