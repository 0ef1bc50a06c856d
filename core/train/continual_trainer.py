"""Continual training: keep what a model knows while it learns a new corpus (``continual.md`` §2).

Start from a checkpoint θ_old (also kept frozen as the teacher) and minimise

    L = CE + (ewc_lambda/2)·Σ F(θ − θ_old)² + λ_mirror·T²·KL(p_old^T ‖ p_θ^T) + λ_latent·(1 − cos(z_θ, z_old))

over batches that mix the new corpus with replayed samples of the old one. Each term can be
switched off; ``recipe`` picks a named combination (``plain``, ``ewc``, ``replay``, ``mirror``,
``full``). At the end a retention report (bits per byte on both corpora before and after,
vocabulary retention, representation drift) goes to ``RUN_DIR/retention.json`` and an ``eval``
event.

Options (``--set key=value`` or the ``[options]`` table):
``from`` (checkpoint, required), ``old_data`` (the old corpus; default: the sample corpus),
``recipe`` (default ``full``), ``replay_ratio`` 0.2, ``ewc_lambda`` (default
``NORMALIZED_EWC_LAMBDA`` with ``ewc_normalize``, else the model config's), ``ewc_normalize``
True (penalty on ``F / mean(F)``: the raw Fisher's scale differs by orders of magnitude between
corpora, see :mod:`core.model.continual`), ``ewc_batches`` 200, ``mirror_lambda`` 0.4,
``mirror_temperature`` 2.0, ``mirror_on_new`` False, ``latent_lambda`` 0.1,
``retention_samples`` 256, ``task_per_corpus`` True, ``task`` / ``old_task`` (names).

Task per corpus (issue 17): by default each corpus is a task of the continual module's task
conditioning — records without a ``task`` field get ``task`` (default: the new data file's name)
or ``old_task`` (default: the checkpoint's default task, else the old data file's name) — so the
model keeps one conditioning per corpus and ``generate --task`` picks one. A checkpoint without
the module gains it (the task conditioning starts as the identity); ``task_per_corpus=false``
turns this off.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ConfigError
from core.model.layers import masked_mean_pool
from core.model.packing import segment_mean_pool
from core.train.engine import Trainer, load_pairs, read_corpus_records

RECIPES: dict[str, dict[str, bool]] = {
    "plain": {"replay": False, "ewc": False, "mirror": False, "latent": False},
    "ewc": {"replay": False, "ewc": True, "mirror": False, "latent": False},
    "replay": {"replay": True, "ewc": False, "mirror": False, "latent": False},
    "mirror": {"replay": True, "ewc": False, "mirror": True, "latent": False},
    "full": {"replay": True, "ewc": True, "mirror": True, "latent": True},
}
DEFAULTS: dict[str, Any] = {
    "recipe": "full",
    "replay_ratio": 0.2,
    "ewc_lambda": None,
    "ewc_normalize": True,
    "ewc_batches": 200,
    "mirror_lambda": 0.4,
    "mirror_temperature": 2.0,
    "mirror_on_new": False,
    "latent_lambda": 0.1,
    "retention_samples": 256,
    "task_per_corpus": True,
    "task": None,
    "old_task": None,
}
RETENTION_FILE = "retention.json"
# λ on the mean-normalised Fisher: chosen on the sample corpus and the test corpora (see
# bench/RESULTS.md ## continual_retention) as keeping most of the old corpus while the new one
# is still learned.
NORMALIZED_EWC_LAMBDA = 0.5


class MixedLoader:
    """Micro-batches of ``b − k`` new samples plus ``k = round(ratio·b)`` replayed old samples.

    Resumable like :class:`core.data.loader.BatchLoader` (both positions are saved); batches
    carry ``is_replay`` (B,) marking the old-corpus rows. With ``pack_length`` the new samples
    and the replayed ones are packed into rows separately, so ``is_replay`` stays per row.
    """

    def __init__(self, new: Any, old: Any | None, ratio: float, batch_size: int,
                 pack_length: int | None = None) -> None:
        self.new, self.old, self.ratio = new, old, ratio
        self.pack_length = pack_length
        self.set_batch_size(batch_size)

    def split(self, batch_size: int) -> tuple[int, int]:
        if self.old is None or self.ratio <= 0:
            return batch_size, 0
        k = min(batch_size - 1, max(1, round(self.ratio * batch_size))) if batch_size > 1 else 0
        return batch_size - k, k

    def set_batch_size(self, batch_size: int) -> None:
        self.batch_size = batch_size
        n_new, n_old = self.split(batch_size)
        self.new.set_batch_size(n_new)
        if self.old is not None and n_old:
            self.old.set_batch_size(n_old)

    def __iter__(self) -> MixedLoader:
        return self

    def __next__(self) -> dict[str, Tensor]:
        from core.data.loader import collate, collate_groups, pack_groups

        n_new, n_old = self.split(self.batch_size)
        pairs = list(self.new.next_pairs())
        replay = list(self.old.next_pairs()) if self.old is not None and n_old else []
        extras = self.new.image_shape is not None or any(
            p.inputs is not None for p in pairs + replay)
        if self.pack_length and not extras:
            new_rows = pack_groups(pairs, self.pack_length)
            old_rows = ([[len(pairs) + i for i in g] for g in pack_groups(replay, self.pack_length)]
                        if replay else [])
            if len(new_rows) + len(old_rows) < len(pairs) + len(replay):
                batch = collate_groups(pairs + replay, new_rows + old_rows)
                batch["is_replay"] = torch.tensor([False] * len(new_rows) + [True] * len(old_rows))
                return batch
        batch = collate(pairs + replay, image_shape=self.new.image_shape)
        batch["is_replay"] = torch.tensor([False] * len(pairs) + [True] * len(replay))
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"new": self.new.state_dict(), "old": self.old.state_dict() if self.old is not None else None,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.new.load_state_dict(state["new"])
        if self.old is not None and state.get("old") is not None:
            self.old.load_state_dict(state["old"])
        self.batch_size = int(state.get("batch_size", self.batch_size))


class ContinualTrainer(Trainer):
    """Fine-tune a checkpoint on a new corpus with replay, EWC, mirror distillation and latent
    anchoring, then report what was retained."""

    name = "continual"
    description = "continue a checkpoint on new data with replay, EWC and distillation"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = {**DEFAULTS, **{k: v for k, v in self.config.options.items() if k in DEFAULTS}}
        unknown = set(self.config.options) - set(DEFAULTS) - {"from", "old_data", "shard"}
        if unknown:
            raise ConfigError(
                f"continual trainer: unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: from, old_data, {', '.join(DEFAULTS)}"
            )
        recipe = opts["recipe"]
        if recipe not in RECIPES:
            raise ConfigError(f"continual option recipe={recipe!r}; choose one of {', '.join(RECIPES)}")
        self.terms = dict(RECIPES[recipe])
        self.opts = opts
        if not 0.0 <= float(opts["replay_ratio"]) < 1.0:
            raise ConfigError(f"continual option replay_ratio={opts['replay_ratio']} must be in [0, 1)")
        if not isinstance(opts["ewc_normalize"], bool):
            raise ConfigError(f"continual option ewc_normalize={opts['ewc_normalize']!r} must be true or false")
        if opts["ewc_lambda"] is not None and not float(opts["ewc_lambda"]) >= 0:
            raise ConfigError(f"continual option ewc_lambda={opts['ewc_lambda']} must be >= 0")
        if float(opts["mirror_temperature"]) <= 0:
            raise ConfigError("continual option mirror_temperature must be positive")
        self.source = self.config.options.get("from")
        if not self.source:  # a resumed run finds it in its run.toml's [options]
            raise ConfigError("continual training needs a starting checkpoint: --from CHECKPOINT (or --set from=PATH)")
        self.base: Any = None  # LoadedCheckpoint of θ_old
        self.teacher: nn.Module | None = None
        self.old_train: list[Any] = []
        self.old_val: list[Any] = []
        self._old_records: list[Any] | None = None
        self.old_task: str | None = None
        self.new_task: str | None = None
        if not isinstance(opts["task_per_corpus"], bool):
            raise ConfigError(
                f"continual option task_per_corpus={opts['task_per_corpus']!r} must be true or false")
        self.before: dict[str, Any] = {}
        self._sums: dict[str, Tensor] = {}
        self._count = 0

    # ------------------------------------------------------------------ setup
    def _base_checkpoint(self) -> Any:
        if self.base is None:
            from core.runs.checkpoint import load_checkpoint

            self.base = load_checkpoint(self.source, load_optimizer=False)
        return self.base

    def build_tokenizer(self) -> Any:
        return self._base_checkpoint().tokenizer

    def resolve_model_config(self, resume: Any) -> Any:
        self.base_model_config = self._base_checkpoint().config
        return super().resolve_model_config(resume)

    def old_data_path(self) -> Path:
        if self.opts_old_data:
            path = Path(self.opts_old_data).expanduser()
            if not path.exists():
                raise ConfigError(f"{path}: old corpus not found (option old_data)")
            return path
        from core.data.sample import ensure_sample_corpus

        return ensure_sample_corpus().styles

    @property
    def opts_old_data(self) -> str | None:
        value = self.config.options.get("old_data")
        return str(value) if value else None

    def build_input_vocab(self, samples: list[Any]) -> Any:
        """The base checkpoint's vocabulary extended with both corpora's names and, with
        ``task_per_corpus``, one task per corpus (the new one is the default task)."""
        from dataclasses import replace

        from core.data.extras import InputVocab, input_coverage

        resume = self.resume_checkpoint
        if resume is not None and resume.input_vocab is not None:
            vocab = InputVocab.from_dict(resume.input_vocab, str(resume.path))
        else:
            base = self._base_checkpoint()
            vocab = (InputVocab.from_dict(base.input_vocab, str(base.path))
                     if base.input_vocab is not None else InputVocab())
        old_path = self.old_data_path()
        self._old_records = read_corpus_records(old_path)
        self.old_coverage = input_coverage(self._old_records or [])
        if resume is None or resume.input_vocab is None:
            if self.opts["task_per_corpus"]:
                self.old_task = str(self.opts["old_task"] or vocab.default_task or old_path.stem)
                new = str(self.opts["task"] or Path(self.data_path).stem)
                self.new_task = new if new != self.old_task else f"{new}-new"
                vocab = vocab.extended(self._old_records or [], default_task=self.old_task)
                vocab = vocab.extended(samples, default_task=self.new_task)
            else:
                vocab = vocab.extended([*(self._old_records or []), *samples])
        else:  # resumed: the tasks this run chose at its start
            tasks = (resume.trainer_state.get("controllers") or {}).get("continual_tasks") or {}
            self.new_task, self.old_task = tasks.get("new"), tasks.get("old")
        self._old_vocab = (replace(vocab, default_task=self.old_task)
                           if self.old_task is not None else vocab)
        return vocab

    def resolve_modules(self, model_config: Any, resume: Any) -> Any:
        """As the engine, but EWC keeps its Fisher in the continual module: with the ``ewc``
        term the module is built even when no task feeds it (``task_per_corpus=false``)."""
        resolved = super().resolve_modules(model_config, resume)
        if (self.terms["ewc"] and not resolved.enable_continual
                and "enable_continual" not in self.config.model):
            self._setup_notes.append("task conditioning module built without tasks: EWC keeps "
                                    "its Fisher there (task_per_corpus is off)")
            resolved = resolved.replace(enable_continual=True)
        return resolved

    def fed_inputs(self) -> Any:
        """What either corpus feeds: replayed old records need their modules too."""
        fed = super().fed_inputs()
        old = getattr(self, "old_coverage", None)
        if old is not None and old.feeds_images and not fed.images:
            from dataclasses import replace

            fed = replace(fed, images=True)
        return fed

    def build_data(self) -> None:
        from core.data.loader import BatchLoader

        super().build_data()
        self.old_train, self.old_val = load_pairs(
            self.old_data_path(), self.tokenizer, self.seq_len, vocab=self._old_vocab,
            samples=self._old_records)
        old_loader = None
        if self.terms["replay"] and self.old_train:
            old_loader = BatchLoader(self.old_train, 1, seed=self.config.seed + 1, rank=self.rank,
                                     world_size=self.world_size)
        self.train_loader = MixedLoader(self.train_loader, old_loader, float(self.opts["replay_ratio"]),
                                        self.micro_batch, self.pack_length)
        self.corpus["old_corpus"] = str(self.old_data_path())
        if self.new_task is not None:
            self.corpus["tasks"] = {"new": self.new_task, "old": self.old_task}

    def build_model(self) -> nn.Module:
        from core.runs.checkpoint import adapt_state_to_model, load_model_state

        model = super().build_model()
        base = self._base_checkpoint()
        state, notes = adapt_state_to_model(model, base.model_state, base.path)
        self._setup_notes.extend(notes)
        load_model_state(model, state, base.path)
        if self.terms["mirror"] or self.terms["latent"]:
            self.teacher = copy.deepcopy(model).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        return model

    def setup(self) -> None:
        resumed = bool(self.config.resume)
        self.lineage_parents = [{"id": self._base_checkpoint().version, "relation": "continued",
                                 "path": str(self._base_checkpoint().path)}]
        super().setup()
        if self.teacher is not None:
            self.teacher.to(self.device)
        if self.terms["ewc"]:
            self._consolidate(resumed)
        if not self.before:
            self.before = self._measure(self.model)
            self.before["fresh_old_bpb"] = self._fresh_old_bpb()
        recipe = self.opts["recipe"]
        ewc = ""
        if self.terms["ewc"]:
            state = self.model.continual_learning.ewc  # type: ignore[union-attr]
            ewc = (f"; EWC λ {state.ewc_lambda:g}" + (" on F/mean(F)" if state.normalize else "")
                   + f", mean Fisher {state.fisher_mean():.3g}")
        self.emit("info", code="continual",
                  message=f"continual recipe {recipe}: " + ", ".join(k for k, v in self.terms.items() if v)
                  + f"{ewc}; before: old-corpus {self.before['old']['bpb']:.4f} bpb, new-corpus "
                  f"{self.before['new']['bpb']:.4f} bpb", global_step=self.global_step)

    def _consolidate(self, resumed: bool) -> None:
        module = getattr(self.model, "continual_learning", None)
        if module is None:
            raise ConfigError(
                "EWC needs the model's continual-learning module, but model.enable_continual is "
                "false; drop that setting or use --set recipe=replay (or mirror) instead"
            )
        normalize = bool(self.opts["ewc_normalize"])
        module.ewc.normalize = normalize
        if self.opts["ewc_lambda"] is not None:
            module.ewc.ewc_lambda = float(self.opts["ewc_lambda"])
        elif normalize:
            module.ewc.ewc_lambda = NORMALIZED_EWC_LAMBDA
        if module.ewc.active and resumed:
            module.ewc.bind(self.model)
            return
        from core.data.extras import forward_batch
        from core.data.loader import BatchLoader

        loader = BatchLoader(self.old_train, max(1, self.micro_batch), seed=self.config.seed + 2,
                             shuffle=True, image_shape=self.image_shape)
        n = min(int(self.opts["ewc_batches"]), max(1, len(loader)))

        def batches() -> Any:
            for _ in range(n):
                yield forward_batch({k: v.to(self.device) for k, v in next(loader).items()})

        module.consolidate(self.model, batches())
        module.ewc.bind(self.model)

    # ------------------------------------------------------------------ the loss
    def compute_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any] | None, Tensor]:
        from core.data.loader import model_inputs

        is_replay = batch.pop("is_replay", None)
        latent = self.terms["latent"] and float(self.opts["latent_lambda"]) > 0
        # the ids, masks and labels, a packed batch's segment ids and the extra inputs
        inputs = model_inputs(batch)
        outputs = self.train_model(**inputs, output_hidden_states=latent)
        ce = outputs["loss"]
        loss = ce
        parts: dict[str, Tensor] = {"ce": ce.detach()}
        if self.model.training and self.terms["ewc"]:
            ewc = self.model.continual_learning.penalty(self.model)  # type: ignore[union-attr]
            loss = loss + ewc
            parts["ewc"] = ewc.detach()
        if self.model.training and self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(
                    **{k: v for k, v in inputs.items() if k != "labels"},
                    output_hidden_states=latent,
                )
            if self.terms["mirror"]:
                rows = torch.ones_like(batch["labels"][:, 0], dtype=torch.bool)
                if is_replay is not None and not self.opts["mirror_on_new"]:
                    rows = is_replay.to(rows.device)
                mirror = self._mirror_loss(outputs["logits"], teacher["logits"], batch["labels"], rows)
                loss = loss + float(self.opts["mirror_lambda"]) * mirror
                parts["mirror"] = mirror.detach()
            if latent:
                segments = batch.get("segment_ids")
                if segments is not None:  # packed: one mean per sample, not per row
                    z = segment_mean_pool(outputs["encoder_last_hidden_state"], segments)
                    z_old = segment_mean_pool(teacher["encoder_last_hidden_state"], segments)
                else:
                    mask = batch["attention_mask"]
                    z = masked_mean_pool(outputs["encoder_last_hidden_state"], mask)
                    z_old = masked_mean_pool(teacher["encoder_last_hidden_state"], mask)
                anchor = (1 - F.cosine_similarity(z.float(), z_old.float(), dim=-1)).mean()
                loss = loss + float(self.opts["latent_lambda"]) * anchor
                parts["latent"] = anchor.detach()
        if self.model.training:
            for k, v in parts.items():
                self._sums[k] = self._sums.get(k, torch.zeros((), device=v.device)) + v.float()
            self._count += 1
        n_tokens = (batch["labels"] != -100).sum()
        return loss, outputs, n_tokens

    def _mirror_loss(self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, rows: Tensor) -> Tensor:
        t = float(self.opts["mirror_temperature"])
        mask = (labels != -100) & rows.unsqueeze(1)
        if not bool(mask.any()):
            return logits.sum() * 0.0
        log_p = F.log_softmax(logits[mask].float() / t, dim=-1)
        log_q = F.log_softmax(teacher_logits[mask].float() / t, dim=-1)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1).mean()
        return kl * t * t

    def step_event_extra(self) -> dict[str, Any]:
        if not self._count:
            return {}
        metrics = {f"{k}_loss": float((v / self._count).item()) for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return {"metrics": metrics}

    # ------------------------------------------------------------------ retention
    def _measure(self, model: nn.Module) -> dict[str, Any]:
        from core.evolve.evaluation import evaluate_pairs

        n = int(self.opts["retention_samples"])
        return {
            "old": evaluate_pairs(model, self.old_val, max_samples=n, device=self.device).to_dict(),
            "new": evaluate_pairs(model, self.val_pairs, max_samples=n, device=self.device).to_dict(),
        }

    def _fresh_old_bpb(self) -> float:
        from core.evolve.evaluation import evaluate_pairs
        from core.model.model import TransformerNeuralNetBackbone

        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            fresh = TransformerNeuralNetBackbone(self.model_config).to(self.device)
        return evaluate_pairs(fresh, self.old_val, max_samples=int(self.opts["retention_samples"]),
                              device=self.device).bpb

    def on_train_end(self, stopped: bool) -> None:
        if not self.is_main:
            return
        report = self.retention_report()
        path = self.run_dir / RETENTION_FILE
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
        os.replace(tmp, path)
        after = report["after"]
        self.emit(
            "eval", loss=after["old"]["loss"], domain="old-corpus", global_step=self.global_step,
            metrics={
                "old_bpb_before": report["before"]["old"]["bpb"], "old_bpb_after": after["old"]["bpb"],
                "new_bpb_before": report["before"]["new"]["bpb"], "new_bpb_after": after["new"]["bpb"],
                "retained_fraction": report["retained_fraction"],
                "vocab_retained": report["vocabulary"]["retained"], "vocab_total": report["vocabulary"]["total"],
                "representation_cosine": report["representation_cosine"],
            },
        )

    def retention_report(self) -> dict[str, Any]:
        from core.data.styles import read_styles
        from core.evolve.retention import (
            per_word_nll,
            representation_drift,
            retained_fraction,
            token_nlls,
            vocabulary_retention,
            word_counts,
        )

        after = self._measure(self.model)
        old_path = self.old_data_path()
        from core.data.formats import open_source

        texts = ([s.assistant_reply for s in read_styles(old_path)]
                 if open_source(old_path).kind == "sft" else [])
        words = {w for w, c in word_counts(texts).items() if c >= 5}
        from core.evolve.evaluation import evaluation_subset

        subset = evaluation_subset(self.old_val, int(self.opts["retention_samples"]))
        reference = self.teacher if self.teacher is not None else self._reload_base()
        vocab = vocabulary_retention(
            per_word_nll(token_nlls(reference, subset), self.tokenizer, words),
            per_word_nll(token_nlls(self.model, subset), self.tokenizer, words),
        )
        return {
            "recipe": self.opts["recipe"],
            "terms": self.terms,
            "steps": self.global_step,
            "before": {k: v for k, v in self.before.items() if k in ("old", "new")},
            "after": after,
            "fresh_old_bpb": self.before["fresh_old_bpb"],
            "retained_fraction": retained_fraction(
                self.before["fresh_old_bpb"], self.before["old"]["bpb"], after["old"]["bpb"]),
            "vocabulary": vocab.to_dict(),
            "representation_cosine": representation_drift(reference, self.model, subset),
        }

    def _reload_base(self) -> nn.Module:
        from core.model.model import TransformerNeuralNetBackbone
        from core.runs.checkpoint import adapt_state_to_model, load_model_state

        model = TransformerNeuralNetBackbone(self.model_config)
        base = self._base_checkpoint()
        state, _ = adapt_state_to_model(model, base.model_state, base.path)
        load_model_state(model, state, base.path)
        return model.to(self.device).eval()

    # ------------------------------------------------------------------ state
    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "continual_before": self.before,
                "continual_tasks": {"new": self.new_task, "old": self.old_task}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        self.before = state.get("continual_before") or {}

