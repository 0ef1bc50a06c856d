"""Direct preference optimisation and relatives (spec rlhf.md §3; ``aeron-tui rlhf dpo``).

The policy is the Aeron backbone (from ``--from`` or fresh); the reference is the policy as it
was at the start. By default the reference log-probabilities of every pair are **precomputed
once** before training (no second model in memory — ANCHORS §8) and cached in
``RUN_DIR/reference_logps.json`` so a resumed run does not recompute them; option
``reference = "model"`` keeps a frozen copy instead.

Options: ``beta`` (0.1; SimPO 2.0), ``loss`` (``sigmoid`` = DPO, ``hinge``, ``ipo``, ``simpo``),
``label_smoothing`` (0), ``simpo_gamma`` (1.0), ``reference`` (``precompute`` | ``model``), and
the shared ``from`` / ``prefs``. Step and eval events carry ``metrics`` ``{reward_chosen,
reward_rejected, margin, accuracy}`` (implicit rewards ``β(log π − log π_ref)``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import ConfigError
from core.train.rlhf.common import (
    PreferenceExample,
    RLHFTrainer,
    collate_preferences,
    preference_batches,
)
from core.train.rlhf.losses import PREFERENCE_LOSSES, preference_loss, sequence_logprobs

REFERENCE_MODES = ("precompute", "model")
REFERENCE_CACHE = "reference_logps.json"


class DPOTrainer(RLHFTrainer):
    """DPO (or hinge / IPO / SimPO) on preference pairs against a frozen reference."""

    name = "dpo"
    description = "DPO on preference pairs (frozen or precomputed reference; hinge/IPO/SimPO)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference: nn.Module | None = None

    # -- options -------------------------------------------------------------------------
    @property
    def loss_type(self) -> str:
        loss = str(self.option("loss", "sigmoid"))
        if loss == "dpo":
            loss = "sigmoid"
        if loss not in PREFERENCE_LOSSES:
            raise ConfigError(
                f"option 'loss' is {loss!r}; expected one of dpo, {', '.join(PREFERENCE_LOSSES)}"
            )
        return loss

    @property
    def beta(self) -> float:
        beta = self.float_option("beta", 2.0 if self.loss_type == "simpo" else 0.1)
        if beta <= 0:
            raise ConfigError(f"option 'beta' must be > 0, got {beta}")
        return beta

    @property
    def reference_mode(self) -> str:
        mode = str(self.option("reference", "precompute"))
        if mode not in REFERENCE_MODES:
            raise ConfigError(f"option 'reference' is {mode!r}; expected one of {REFERENCE_MODES}")
        return mode

    # -- setup ---------------------------------------------------------------------------
    def build_data(self) -> None:
        _ = self.loss_type, self.beta, self.reference_mode  # validate options before any work
        self.load_preference_data(full_sequence=False)

    def build_model(self) -> nn.Module:
        from core.model.model import TransformerNeuralNetBackbone

        model = TransformerNeuralNetBackbone(self.model_config)
        self.init_weights(model)
        if self.loss_type == "simpo":
            return model  # reference-free
        if self.reference_mode == "model":
            self.reference = copy.deepcopy(model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        return model

    def build_optimizer(self) -> torch.optim.Optimizer:
        # Called after the precision is known and before a resume restores trained weights:
        # the one point where the model still holds the reference weights at the run's dtype.
        if self.loss_type != "simpo" and self.reference_mode == "precompute":
            self._attach_reference_logps(self.model)
        return super().build_optimizer()

    def _attach_reference_logps(self, model: nn.Module) -> None:
        """Reference log-probabilities of every pair, from the cache or one no-grad pass."""
        key = self._reference_key()
        cache = self.run_dir / REFERENCE_CACHE
        values: dict[str, list[list[float]]] | None = None
        if cache.is_file():
            try:
                saved = json.loads(cache.read_text(encoding="utf-8"))
                if saved.get("key") == key:
                    values = saved["values"]
            except (OSError, ValueError, KeyError, TypeError):
                values = None  # a damaged cache is recomputed
        if values is None or len(values.get("train", [])) != len(self.train_examples) or len(
            values.get("val", [])
        ) != len(self.val_examples):
            model.to(self.device)
            values = {
                "train": self._logps_of(model, self.train_examples),
                "val": self._logps_of(model, self.val_examples),
            }
            if self.is_main:
                tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
                tmp.write_text(json.dumps({"key": key, "values": values}), encoding="utf-8")
                os.replace(tmp, cache)
        self.train_examples = _with_refs(self.train_examples, values["train"])
        self.val_examples = _with_refs(self.val_examples, values["val"])
        self.train_loader.pairs = list(self.train_examples)

    def _reference_key(self) -> str:
        """Identity of the reference and the data: init weights, seed, data, sequence length."""
        init = self.load_init_checkpoint()
        parts = [
            init.version if init is not None else f"fresh:{self.config.seed}",
            self.data_path,
            str(self.seq_len),
            str(len(self.train_examples)),
            json.dumps(self.model_config.to_dict(), sort_keys=True),
        ]
        if os.path.isfile(self.data_path):
            from core.runs.checkpoint import file_sha256

            parts.append(file_sha256(self.data_path))
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    @torch.no_grad()
    def _logps_of(self, model: nn.Module, examples: Sequence[PreferenceExample]) -> list[list[float]]:
        was_training = model.training
        model.eval()
        out: list[list[float]] = []
        with torch.random.fork_rng(devices=[]):
            for i in range(0, len(examples), self.micro_batch):
                chunk = examples[i : i + self.micro_batch]
                batch = {
                    k: v.to(self.device)
                    for k, v in collate_preferences(chunk, full_sequence=False).items()
                }
                with self.autocast():
                    logps = self._sequence_logps(model, batch)
                b = len(chunk)
                out.extend([float(c), float(r)] for c, r in zip(logps[:b], logps[b:], strict=True))
        model.train(was_training)
        return out

    # -- the step --------------------------------------------------------------------------
    @staticmethod
    def _sequence_logps(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
        )["logits"]
        return sequence_logprobs(logits, batch["labels"])

    def _loss(self, batch: dict[str, Tensor]) -> Any:
        logps = self._sequence_logps(self.train_model, batch)
        b = logps.shape[0] // 2
        lengths = (batch["labels"] != -100).sum(-1)
        ref_c = ref_r = None
        if self.loss_type != "simpo":
            if "ref_logps" in batch:
                ref = batch["ref_logps"]
            else:
                assert self.reference is not None, "no reference log-probabilities"
                with torch.no_grad():
                    ref = self._sequence_logps(self.reference, batch)
            ref_c, ref_r = ref[:b], ref[b:]
        return preference_loss(
            logps[:b], logps[b:], ref_c, ref_r,
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.float_option("label_smoothing", 0.0),
            chosen_lengths=lengths[:b],
            rejected_lengths=lengths[b:],
            simpo_gamma=self.float_option("simpo_gamma", 1.0),
        )

    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any] | None, Tensor]:
        out = self._loss(batch)
        if self.train_model.training:
            self.metrics.add_metric("reward_chosen", out.chosen_rewards.mean())
            self.metrics.add_metric("reward_rejected", out.rejected_rewards.mean())
            self.metrics.add_metric("margin", out.margin)
            self.metrics.add_metric("accuracy", out.accuracy)
        pairs = out.chosen_rewards.shape[0]
        return out.loss, None, torch.tensor(pairs, device=out.loss.device)

    @torch.no_grad()
    def evaluate(self, batches: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        """Held-out loss, implicit-reward margin and accuracy (chosen reward > rejected)."""
        if batches is None:
            if self._val_batches is None:
                limit = self.eval_max_batches() * self.micro_batch
                self._val_batches = preference_batches(
                    self.val_examples[:limit], self.micro_batch, full_sequence=False
                )
            batches = self._val_batches
        was_training = self.train_model.training
        self.train_model.eval()
        losses, chosen, rejected = [], [], []
        with torch.random.fork_rng(devices=[]):
            for cpu_batch in batches:
                batch = {k: v.to(self.device) for k, v in cpu_batch.items()}
                with self.autocast():
                    out = self._loss(batch)
                n = out.chosen_rewards.shape[0]
                losses.append(float(out.loss) * n)
                chosen.append(out.chosen_rewards.float())
                rejected.append(out.rejected_rewards.float())
        self.train_model.train(was_training)
        rc, rr = torch.cat(chosen), torch.cat(rejected)
        n = rc.numel()
        return self.eval_result(
            sum(losses) / n, n,
            reward_chosen=rc.mean().item(), reward_rejected=rr.mean().item(),
            margin=(rc - rr).mean().item(), accuracy=(rc > rr).float().mean().item(),
        )


def _with_refs(
    examples: Sequence[PreferenceExample], values: Sequence[Sequence[float]]
) -> list[PreferenceExample]:
    return [
        replace(e, ref_chosen=float(v[0]), ref_rejected=float(v[1]))
        for e, v in zip(examples, values, strict=True)
    ]
