"""The training engine every trainer shares: setup, the loop, evaluation, checkpoints, events.

A run reads like a recipe::

    trainer = SimpleTrainer(run_config, model_config)
    trainer.run()          # setup() → train() → cleanup(), events all the way

Everything a user sees comes from the events this engine emits (``core.runs.events``); everything a
resumed run needs comes from the checkpoints it writes (``core.runs.checkpoint``).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.data.loader import batch_num_samples
from core.data.ngram import bits_per_byte
from core.errors import AeronError, CheckpointError, ConfigError, DataError, ResourceError
from core.model.uncertainty import auxiliary_loss, batch_calibration_error
from core.runs.checkpoint import (
    CHECKPOINTS_DIR,
    LoadedCheckpoint,
    capture_rng_state,
    check_trainer_state,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    prune_checkpoints,
    recover_interrupted_saves,
    restore_rng_state,
    save_checkpoint,
    step_checkpoint_name,
)
from core.runs.events import EventWriter
from core.runs.lock import RunDirLock, claim_run_dir
from core.runs.registry import (
    EVENTS_FILE,
    RUN_CONFIG_FILE,
    default_runs_root,
    new_run_dir,
    remove_pid_file,
    write_pid_file,
)
from core.train.config import RunConfig, seq_len_problem
from core.train.control import CONTROL_FILE, ControlChannel
from core.train.heartbeat import Heartbeat
from core.train.metrics import StepMetrics, memory_stats
from core.train.schedule import default_warmup_steps, lr_scale

TRAINER_STATE_VERSION = 1
# Default evaluation size (bench/RESULTS.md "eval_size"): 512 validation samples put the
# standard error of the validation loss at 0.06 nats on the bundled corpus (0.10 at 256, 0.30 at
# 32); a sample's forward pass costs 0.33-0.42 of its training step (tiny, bf16, CPU; two paired
# measurements on a loaded box — the larger is used). Every evaluation of a run scores the same
# pairs, so its curve has no sampling noise.
EVAL_SAMPLES = 512
MIN_EVAL_SAMPLES = 32
EVAL_TIME_SHARE = 0.10
FORWARD_COST = 0.42
# ``packing = "auto"`` packs when the packed batches hold at least this share fewer positions
# (real + padding) than the unpacked ones. Measured on the CPU (bench/packing.py,
# bench/RESULTS.md): the backbone step gains ~12 % at 30 % fewer positions, while at the 16 %
# the length-bucketed bundled corpus offers, longer rows' attention and the masks cost what
# the padding did; the per-sample stages gain nothing either way.
PACKING_MIN_SAVING = 0.25


class StopTraining(Exception):
    """Raised inside the loop to end the run early (status ``stopped``) after a checkpoint."""


class Trainer:
    """Base trainer: the shared loop. Subclasses change behaviour through these extension points.

    Construction and setup
        ``build_tokenizer()``, ``build_data()``, ``build_model()``, ``build_optimizer()`` —
        each called once by :meth:`setup`, in that order (resume restores state afterwards).
        ``default_learning_rate()`` gives the lr when neither the config nor the profile does.
    The step
        ``compute_loss(batch) -> (loss, outputs, n_tokens)`` — the loss of one micro-batch
        (mean over its target tokens), the model outputs (for the step-event statistics, may be
        ``None``) and the number of target tokens (weights the validation loss).
        ``lr_at(step) -> float`` — the learning rate of optimizer step ``step`` (0-based);
        ``lr_scale`` in events is ``lr / base_lr``. ``apply_lr(lr)`` writes it to the groups.
        ``optimizer_step()`` — clip, check finiteness, step; returns (grad_norm, applied).
        ``on_step_end(step, loss)`` — after every optimizer step (controllers, safety rails).
        ``step_event_extra()`` — extra fields for step events (``phase``, ``domain``, ...).
        ``handle_oom(exc) -> bool`` — ``torch.OutOfMemoryError`` during a step; return True to
        retry the step (after e.g. :meth:`set_micro_batch`), the default re-raises.
    State
        ``extra_state() -> dict`` / ``load_extra_state(dict)`` — controller states, saved in
        ``trainer_state.json`` under ``"controllers"``.
        ``save_checkpoint(name=None, best=False, val_loss=None) -> Path`` and
        ``restore_checkpoint(path)`` (model, optimizer, RNG, data position, step; used by resume
        and by rollback rails).
        ``set_micro_batch(micro_batch, grad_accum, reason)`` — change the batch shape mid-run.
        ``model_state_for_checkpoint()`` / ``optimizer_state_for_checkpoint()`` — what is saved
        (distributed runs gather full states here).
    Events
        ``self.events`` is the run's :class:`core.runs.events.EventWriter`; ``self.emit(type, ...)``
        adds ``global_step`` where the schema wants it. Only the main rank writes.
    """

    name = "base"
    description = "the shared training loop"
    # The ``options`` keys this very class understands; ``None`` accepts anything. Only the
    # class that declares it is strict (``vars(type(self))``), so subclasses adding their own
    # options are not broken by a parent's list.
    accepted_options: frozenset[str] | None = None
    # Language-model trainers score target tokens: their first eval carries the count-based
    # reference baselines and their evals are followed by live samples. (Not RLHF trainers.)
    language_model = True
    # Seconds between heartbeat events (None: no heartbeat; only benchmarks turn it off).
    heartbeat_interval_s: float | None = 1.0

    def __init__(
        self,
        config: RunConfig,
        model_config: Any = None,
        *,
        events: EventWriter | None = None,
        events_stdout: bool = False,
        listeners: Iterable[Callable[[dict[str, Any]], None]] = (),
        control: ControlChannel | None = None,
        dist: Any = None,
    ) -> None:
        self.config = config
        self.base_model_config = model_config
        self.model_config: Any = None
        self.dist = dist
        self.rank = int(getattr(dist, "rank", 0))
        self.world_size = int(getattr(dist, "world_size", 1))
        self.is_main = bool(getattr(dist, "is_main", True))
        self.control = control or ControlChannel()
        self._events_given = events
        self._events_stdout = events_stdout
        self._listeners = list(listeners)
        self.events: EventWriter = events or EventWriter(None, enabled=False)
        self.run_dir: Path = Path(config.run_dir) if config.run_dir else Path()
        self.run_id = ""
        self.device = torch.device("cpu")
        self.precision = "fp32"
        self.autocast_dtype: torch.dtype | None = None
        self.scaler: Any = None
        self.tokenizer: Any = None
        self.model: nn.Module = nn.Module()
        self.train_model: nn.Module = nn.Module()  # what forward runs on (compiled / wrapped)
        self.optimizer: torch.optim.Optimizer | None = None
        self.train_loader: Any = None
        self.val_pairs: list[Any] = []
        self._val_batches: list[dict[str, Tensor]] | None = None
        self._val_eval_pairs: list[Any] = []
        self._baselines_sent = False
        self._sample_prompts: list[Any] | None = None
        self.last_sample_step = -1
        self.corpus: dict[str, Any] = {}
        self.data_path = ""
        # The records' optional inputs (issue 17): coverage, the entity/relation/task vocabulary
        # (saved in checkpoints) and the image shape batches carry when the model has a vision
        # path. ``resume_checkpoint`` is set before build_data so a resume keeps its vocabulary.
        self.input_coverage: Any = None
        self.input_vocab: Any = None
        self.image_shape: tuple[int, int, int] | None = None
        self.resume_checkpoint: LoadedCheckpoint | None = None
        self.global_step = 0
        self.total_steps = config.steps
        self.micro_batch = config.micro_batch or 1
        self.grad_accum = config.grad_accum or 1
        self._oom_splits = 0  # micro-batch splits after out-of-memory errors (handle_oom)
        self.seq_len = config.seq_len or 256
        self.pack_length: int | None = None  # sequence packing row length (None: off)
        self._packing_resolved = False  # set by resolve_packing (trainers that pack call it)
        # One-line explanations found during setup (packing, modules switched by the data,
        # checkpoint modules added or ignored); ``info`` events once the run has started.
        self._setup_notes: list[str] = []
        self.base_lr = config.learning_rate or 0.0
        self.warmup_steps = 0
        self.nonfinite_skipped = 0
        self.consecutive_nonfinite = 0
        self.best_val_loss: float | None = None
        self.best_checkpoint: str | None = None
        self.last_val_loss: float | None = None
        self.last_eval_step = -1
        self.last_checkpoint_step = -1
        self.last_checkpoint: Path | None = None
        self.lineage_parents: list[dict[str, str]] = []
        self.resumed_from: LoadedCheckpoint | None = None
        self.metrics: StepMetrics = StepMetrics()
        self.elapsed_before = 0.0
        self._t_start = time.time()
        self._paused_s = 0.0
        self._last_lr = 0.0
        self._last_step_loss: Tensor | None = None
        self._warned_stages: set[str] = set()
        self._batch_iter: Iterator[dict[str, Tensor]] | None = None
        self._pre_step_data_state: dict[str, Any] | None = None
        self._status = "starting"
        self._setup_done = False
        self._trackers: list[Any] = []
        # Early stopping (--early-stop): best metric, its step, evaluations without improvement.
        self.early_stop: dict[str, Any] = {"best": None, "best_step": None, "bad_evals": 0}
        self.finish_reason: str | None = None
        # Liveness: what the trainer is doing now (name, done, of) and the heartbeat thread.
        self._activity: tuple[str, int | None, int | None] | None = None
        self._heartbeat: Heartbeat | None = None
        self._steps_this_process = 0
        self._run_lock: RunDirLock | None = None
        # Events found before the stream is open (run-dir claim, resume search): emitted after.
        self._early_events: list[tuple[str, dict[str, Any]]] = []

    # ==========================================================================================
    # The recipe
    # ==========================================================================================

    def run(self) -> str:
        """setup → train → cleanup. Returns the final status; project errors propagate."""
        status = "failed"
        # Signals during setup (tokenizer training can take a while) also stop cleanly: the
        # loop sees the stop before its first step.
        self.control.install_signal_handlers()
        try:
            self.setup()
            status = self.train()
            return status
        except KeyboardInterrupt:
            self._fail("aborted by a second interrupt (no final checkpoint)", None)
            raise
        except BaseException as exc:
            self._fail(str(exc) or type(exc).__name__, exc)
            raise
        finally:
            self.control.restore_signal_handlers()
            self.cleanup()

    def setup(self) -> None:
        """Everything before the first step; emits ``run_started`` at the end."""
        cfg = self.config
        self._check_options()
        self._check_early_stop_supported()
        self._prepare_run_dir()
        self._barrier()  # every rank sees the run directory rank 0 claimed (and recovered)
        # Before the event stream opens: a refused resume (corrupt checkpoint, pickle, bad
        # trainer_state) leaves the run directory exactly as it was.
        resume = self._find_resume()
        self._open_events()
        for kind, fields in self._early_events:
            self.emit(kind, **fields)
        self._early_events.clear()
        self.resume_checkpoint = resume
        self._start_liveness()
        self.device = self.resolve_device()
        self.seed_everything(cfg.seed)
        if resume is None:
            self.set_activity("building tokenizer")
        self.tokenizer = resume.tokenizer if resume is not None else self.build_tokenizer()
        self._resolve_sizes()
        self.set_activity("loading data")
        self.build_data()
        if self.config.packing == "on" and not self._packing_resolved:
            self._setup_notes.append(
                f"sequence packing does not apply to the {self.name} trainer (it builds its own "
                "batches); training unpacked")
        self.model_config = self.resolve_model_config(resume)
        self.configure_batches()
        self.set_activity("building model")
        self.model = self.build_model().to(self.device)
        self.precision = self.resolve_precision()
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)
        # Wrap before building the optimizer: FSDP replaces the parameters with sharded ones.
        self.train_model = self.wrap_model(self.model)
        self.optimizer = self.build_optimizer()
        if resume is not None:
            self.set_activity("restoring checkpoint")
            self._restore(resume)
        self.metrics = StepMetrics(self.device)
        self.config = self.resolved_config()
        if self.is_main:
            self.config.save(self.run_dir / RUN_CONFIG_FILE)
        self._setup_done = True
        self._status = "running"
        self.emit(
            "run_started",
            run_id=self.run_id,
            trainer=self.name,
            total_steps=self.total_steps,
            config=self.config.to_dict(),
            model_params=sum(p.numel() for p in self.model.parameters()),
            device=str(self.device),
            precision=self.precision,
            profile=self.config.profile,
            preset=self.config.preset,
            data=self.data_path,
            elapsed_s=self.elapsed_before,
            step=self.global_step,
            global_step=self.global_step,
            **self.plan_fields(),
            eval_batches=self.planned_eval_batches(),
        )
        if resume is not None:
            self.emit(
                "info",
                message=f"resumed from {resume.path} at step {self.global_step}",
                global_step=self.global_step,
            )
        for note in self._setup_notes:
            self.emit("info", message=note, global_step=self.global_step)

    def train(self) -> str:
        """The loop. Returns ``finished`` or ``stopped``."""
        installed_here = not self.control.handlers_installed
        self.control.install_signal_handlers()
        stopped = False
        try:
            while self.global_step < self.total_steps:
                if self._handle_control():
                    stopped = True
                    break
                self._one_step()
                self._after_step()
        except StopTraining:
            stopped = True
        finally:
            if installed_here:
                self.control.restore_signal_handlers()
        return self._finish(stopped)

    def cleanup(self) -> None:
        """Close the event stream and remove the pid file (always runs)."""
        self._stop_liveness()
        if self.is_main and self.run_dir != Path():
            remove_pid_file(self.run_dir)
        self._close_trackers()
        if self._events_given is None:
            self.events.close()
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None

    # ==========================================================================================
    # Setup pieces (override points)
    # ==========================================================================================

    def resolve_device(self) -> torch.device:
        if self.dist is not None and getattr(self.dist, "device", None) is not None:
            return torch.device(self.dist.device)
        wanted = self.config.device
        if wanted == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was requested but no CUDA device is available")
        return torch.device(wanted)

    def seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)

    def default_learning_rate(self) -> float:
        return 3e-4

    def build_tokenizer(self) -> Any:
        """The run's tokenizer: ``config.tokenizer`` if given, else one trained on the corpus
        (cached by corpus hash and vocabulary size under ``$AERON_TUI_HOME/cache/tokenizers``)."""
        from core.data.tokenizer import AeronTokenizer

        if self.config.tokenizer:
            return AeronTokenizer.load(self.config.tokenizer)
        return cached_corpus_tokenizer(
            self.resolve_data_path(), self.config.tokenizer_vocab_size, self.config.data_format
        )

    def resolve_data_path(self) -> Path:
        """``config.data``, or the bundled sample corpus's styles.jsonl (built on first use)."""
        if self.config.data:
            path = Path(self.config.data).expanduser()
            if not path.exists():
                raise DataError(f"{path}: data file not found (check --data)")
            if path.is_dir() and (path / "styles.jsonl").is_file():
                return path / "styles.jsonl"
            from core.data.containers import data_files

            data_files(path)  # a directory with nothing readable is refused here, in one line
            return path
        from core.data.sample import ensure_sample_corpus

        return ensure_sample_corpus().styles

    def build_data(self) -> None:
        """Pre-tokenize the corpus once: ``self.train_loader`` (a resumable BatchLoader over the
        training split) and ``self.val_pairs`` (the validation split)."""
        from core.data.extras import input_coverage
        from core.data.loader import BatchLoader

        path = self.resolve_data_path()
        self.data_path = str(path)
        samples = read_corpus_records(path, self.config.max_samples, self.config.data_format)
        self.input_coverage = input_coverage(samples or [])
        self.input_vocab = self.build_input_vocab(samples or [])
        train_pairs, val_pairs = load_pairs(
            path, self.tokenizer, self.seq_len, self.config.max_samples,
            vocab=self.input_vocab, samples=samples, data_format=self.config.data_format,
        )
        if not train_pairs or not val_pairs:
            raise DataError(split_problem(path, "training" if not train_pairs else "validation",
                                          self.config.data_format))
        self.val_pairs = val_pairs
        self.train_loader = BatchLoader(
            train_pairs,
            self.micro_batch,
            seed=self.config.seed,
            rank=self.rank,
            world_size=self.world_size,
            pack_length=self.resolve_packing(train_pairs),
        )
        from core.data.sample import corpus_manifest

        self.corpus = corpus_manifest([path])
        self.corpus["train_samples"] = len(train_pairs)
        self.corpus["val_samples"] = len(val_pairs)
        self.record_prompt_format(train_pairs)

    def record_prompt_format(self, pairs: list[Any]) -> None:
        """Keep how training prompts are formatted in the checkpoints' corpus record (the most
        common provider and style), so ``generate`` formats its prompts the same way."""
        from core.train.samples import prompt_format

        self.corpus["prompt_format"] = prompt_format(pairs, self.tokenizer)

    def build_input_vocab(self, samples: list[Any]) -> Any:
        """The run's entity/relation/task vocabulary: a resumed checkpoint's (ids must not move),
        else every name in ``samples``."""
        from core.data.extras import InputVocab

        resume = self.resume_checkpoint
        if resume is not None and resume.input_vocab is not None:
            return InputVocab.from_dict(resume.input_vocab, str(resume.path))
        return InputVocab.from_samples(samples)

    def fed_inputs(self) -> Any:
        """What the run's data feeds the model (:class:`core.model.modules.FedInputs`)."""
        images = bool(self.input_coverage is not None and self.input_coverage.feeds_images)
        if self.input_vocab is None:
            from core.model.modules import FedInputs

            return FedInputs(images=images)
        return self.input_vocab.fed_inputs(images)

    def configure_batches(self) -> None:
        """Once the model config is known: batches of a vision model carry images (blank for a
        record without one), and every image is decoded once now, so a bad file stops the run
        before its first step with the record's ``file:line``."""
        from core.data.extras import check_images, image_shape_of

        self.image_shape = image_shape_of(self.model_config)
        loaders = [self.train_loader, getattr(self.train_loader, "new", None),
                   getattr(self.train_loader, "old", None),
                   *getattr(self, "loaders", {}).values()]
        for loader in loaders:
            if loader is not None and hasattr(loader, "image_shape"):
                loader.image_shape = self.image_shape
        pairs = [p for loader in loaders for p in getattr(loader, "pairs", [])]
        pairs += self.val_pairs
        # Encoded pairs carry their extra inputs; other examples (RLHF preferences) carry none.
        inputs = [i for i in (getattr(p, "inputs", None) for p in pairs) if i is not None]
        if self.image_shape is not None:
            c, size, _ = self.image_shape
            check_images(inputs, size, c)
            if self.pack_length is not None:  # --set model.enable_multimodal=true on text
                self.pack_length = None
                for loader in loaders:
                    if loader is not None and hasattr(loader, "pack_length"):
                        loader.pack_length = None
                self._setup_notes.append(
                    "sequence packing off: the model has a vision path, so every sample "
                    "carries an image (blank without one) and a packed row holds several")
            return
        first = next((i for i in inputs if i.image), None)
        if first is not None:
            raise DataError(
                f"{first.where}: the record has an image but model.enable_multimodal is off; "
                "remove --set model.enable_multimodal=false or the records' 'image' fields")

    def resolve_packing(self, train_pairs: list[Any]) -> int | None:
        """Sequence packing for this run: sets and returns ``self.pack_length`` (rows of
        ``seq_len`` tokens) or None. ``packing = "auto"`` packs when it saves at least
        :data:`PACKING_MIN_SAVING` of the positions a step computes; the choice and the
        padding it measured go out as an ``info`` event."""
        from core.data.loader import packing_effect

        mode = self.config.packing
        self.pack_length = None
        self._packing_resolved = True
        if mode == "off":
            return None
        coverage = self.input_coverage
        if coverage is not None and (coverage.feeds_knowledge_graph or coverage.feeds_images
                                     or coverage.feeds_tasks):
            self._setup_notes.append(
                f"sequence packing off ({mode}): the records carry a knowledge graph, images or "
                "task ids, which belong to one sample each and a packed row holds several")
            return None
        before, after = packing_effect(train_pairs, self.micro_batch, self.seq_len,
                                       self.config.seed)
        saving = 1.0 - (1.0 - before) / (1.0 - after) if after < 1.0 else 0.0
        on = mode == "on" or saving >= PACKING_MIN_SAVING
        figures = (f"padding {before * 100:.1f} % of positions unpacked, "
                   f"{after * 100:.1f} % packed")
        if on:
            self.pack_length = self.seq_len
            self._setup_notes.append(
                f"sequence packing on ({mode}): several samples per row of {self.seq_len} "
                f"tokens, masked apart; {figures}")
        else:
            self._setup_notes.append(
                f"sequence packing off (auto): it would save {saving * 100:.0f} % of the "
                f"positions ({figures}); --packing on forces it")
        return self.pack_length

    def resolve_model_config(self, resume: LoadedCheckpoint | None) -> Any:
        """The profile's config with the tokenizer's vocabulary, room for ``seq_len`` and the
        ``[model]`` overrides; a resumed run must match its checkpoint's config."""
        from core.model.config import NeuralNetConfig

        base = self.base_model_config
        if base is None:
            if resume is None:
                raise ConfigError("no model config: give a --profile (or resume a checkpoint)")
            base = resume.config
        if isinstance(base, dict):
            base = NeuralNetConfig.from_dict(base)
        changes: dict[str, Any] = {"vocab_size": int(self.tokenizer.vocab_size)}
        if self.config.gradient_checkpointing is not None:
            changes["use_gradient_checkpointing"] = bool(self.config.gradient_checkpointing)
        try:
            model_config = base.replace(**{**changes, **self.config.model})
            model_config = self.resolve_modules(model_config, resume)
        except ConfigError as exc:
            raise ConfigError(f"run config [model]: {exc}") from exc
        # The sequence length never rewrites the architecture (it used to grow
        # max_position_embeddings silently): too long is refused with the limit.
        problem = seq_len_problem(self.seq_len, model_config.max_position_embeddings,
                                  self.config.profile)
        if problem:
            raise ConfigError(problem)
        if resume is not None:
            from core.runs.checkpoint import config_differences

            # Run-time fields (checkpointing, attention backend) may change on resume.
            diff = config_differences(resume.config_dict, model_config.to_dict())
            if diff:
                raise CheckpointError(
                    f"{resume.path / 'config.json'}: the checkpoint's model config differs from "
                    f"this run's: {'; '.join(diff[:6])} — resume with the checkpoint's profile"
                )
        return model_config

    def modules_checkpoint(self, resume: LoadedCheckpoint | None) -> LoadedCheckpoint | None:
        """The checkpoint whose data-fed modules this run keeps as they were saved (None: the
        data decides): the resumed one, so a resume is exact. RLHF adds its ``--from``."""
        return resume

    def resolve_modules(self, model_config: Any, resume: LoadedCheckpoint | None) -> Any:
        """Switch the data-fed modules (knowledge graph, vision, task conditioning) on exactly
        when the data feeds them, unless ``[model]`` sets them (issue 17); a run that continues a
        checkpoint (:meth:`modules_checkpoint`) keeps its modules. Emits one ``info`` event per
        module switched."""
        from core.model.modules import DATA_FED_MODULES, resolve_enabled_modules

        explicit = set(self.config.model)
        source = self.modules_checkpoint(resume)
        if source is not None and isinstance(source.config, type(model_config)):
            from core.model.modules import MODULE_NAMES
            from core.runs.checkpoint import unfed_modules

            keep = [*DATA_FED_MODULES, "kg_num_entities", "kg_num_relations", "num_tasks"]
            saved = {k: getattr(source.config, k) for k in keep if k not in explicit}
            old = unfed_modules(source)
            if old:
                self._setup_notes.append(
                    f"{source.path} predates data-fed modules: its "
                    f"{', '.join(MODULE_NAMES[s] for s in old)} module(s) are kept as saved, so "
                    "its weights load whole; a new run (or `continue`) builds only what the data "
                    "feeds")
            return model_config.replace(**saved)
        resolved, notes = resolve_enabled_modules(model_config, self.fed_inputs(), explicit)
        self._setup_notes.extend(notes)
        return resolved

    def build_model(self) -> nn.Module:
        from core.model.model import TransformerNeuralNetBackbone

        return TransformerNeuralNetBackbone(self.model_config)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module forward runs on: the model config's attention backend, ``compile``
        (``torch.compile`` per encoder/decoder layer, in place, before DDP/FSDP wrapping; a layer
        that fails to compile runs eagerly with a warning) and DDP/FSDP (distributed)."""
        from core.model.layers import set_attention_backend

        set_attention_backend(model, self.model_config.attention_backend)
        if self.config.compile:
            from core.model.compile import compile_model

            compile_model(model)
        if self.dist is not None and self.world_size > 1:
            from core.train.distributed import wrap_model

            return wrap_model(model, self.dist, bool(self.config.options.get("shard", False)))
        return model

    def resolve_precision(self) -> str:
        """``auto`` → bf16 on CUDA ≥ sm80, fp16 + GradScaler on older CUDA, and on the CPU bf16
        where ``core.model.precision.default_precision`` says it is native and faster, else fp32.
        An explicit precision is always honoured, except bf16 on a GPU without it."""
        wanted = self.config.precision
        dev = self.device
        if wanted == "auto":
            return str(default_precision(dev))
        if wanted == "bf16" and dev.type == "cuda" and default_precision(dev) != "bf16":
            raise ConfigError(
                "precision bf16 needs a CUDA GPU with compute capability >= 8.0; "
                "use --precision fp16 or fp32"
            )
        return wanted

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Weight decay on ≥2-D weights only (norms, biases and scalars are not decayed)."""
        decay, no_decay = [], []
        for _, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW, β (0.9, 0.95), ε 1e-8, fused when the device supports it."""
        groups = [g for g in self.parameter_groups() if g["params"]]
        kwargs: dict[str, Any] = {"lr": self.base_lr, "betas": (0.9, 0.95), "eps": 1e-8}
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.AdamW(groups, **kwargs)

    # ==========================================================================================
    # The step
    # ==========================================================================================

    def compute_loss(
        self, batch: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Any] | None, Tensor]:
        """Mean token cross-entropy of one micro-batch (the model's own loss)."""
        from core.data.loader import model_inputs

        # model_inputs: the ids, masks and labels, the segment ids of a packed batch and the
        # extra inputs (knowledge graph, images, task ids) the batch carries.
        outputs = self.train_model(**model_inputs(batch))
        n_tokens = (batch["labels"] != -100).sum()
        return outputs["loss"], outputs, n_tokens

    def lr_at(self, step: int) -> float:
        cfg = self.config
        return self.base_lr * lr_scale(cfg.lr_schedule, step, self.total_steps, self.warmup_steps,
                                       cfg.min_lr_ratio, cfg.lr_decay_fraction)

    def apply_lr(self, lr: float) -> None:
        assert self.optimizer is not None
        for group in self.optimizer.param_groups:
            group["lr"] = lr * float(group.get("lr_mult", 1.0))

    def next_batch(self) -> dict[str, Tensor]:
        """The next training micro-batch (on the CPU; the engine moves it to the device)."""
        return next(self.train_loader)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self) -> None:
        """One optimizer step: ``grad_accum`` micro-batches, clip, finiteness check, update."""
        assert self.optimizer is not None
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum: Tensor | None = None
        for micro in range(self.grad_accum):
            cpu_batch = self.next_batch()
            # Counted on the CPU copy: no device sync.
            tokens = int(cpu_batch["attention_mask"].sum()) + int(
                cpu_batch["decoder_attention_mask"].sum()
            )
            samples = batch_num_samples(cpu_batch)
            batch = (cpu_batch if self.device.type == "cpu" else
                     {k: v.to(self.device, non_blocking=True) for k, v in cpu_batch.items()})
            # DDP: all-reduce gradients only on the last micro-batch of the step.
            sync = micro == self.grad_accum - 1 or not hasattr(self.train_model, "no_sync")
            with contextlib.nullcontext() if sync else self.train_model.no_sync():
                with self.autocast():
                    loss, outputs, _ = self.compute_loss(batch)
                    # training.md §3: + the UQ heads' loss (already x 0.01) against this batch's
                    # own per-sequence NLL; the reported loss stays the task loss.
                    uq = auxiliary_loss(outputs, batch.get("labels"), self.global_step) if outputs else None
                scaled = (loss if uq is None else loss + uq) / self.grad_accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            self.metrics.add_micro_batch(loss, outputs, tokens, samples)
            if uq is not None:
                self.metrics.add_metric("uq_loss", uq)
                ece = batch_calibration_error(outputs or {}, batch.get("labels"))
                if ece is not None:
                    self.metrics.add_metric("uq_ece", ece)
            self._warn_enhancement_errors(outputs)
            loss_sum = (
                loss.detach().float() if loss_sum is None else loss_sum + loss.detach().float()
            )
        assert loss_sum is not None
        lr = self.lr_at(self.global_step)
        self.apply_lr(lr)
        self._last_lr = lr
        grad_norm, applied = self.optimizer_step(loss_sum)
        self.metrics.add_optimizer_step(grad_norm)
        self._last_step_loss = loss_sum / self.grad_accum
        if applied:
            self.consecutive_nonfinite = 0
        else:
            self.nonfinite_skipped += 1
            self.consecutive_nonfinite += 1
            self.emit(
                "warning",
                message=f"non-finite loss or gradients at step "
                f"{self.global_step + 1}: update skipped ({self.nonfinite_skipped} so far)",
                global_step=self.global_step + 1,
                code="nonfinite",
            )

    def optimizer_step(self, loss_sum: Tensor) -> tuple[Tensor, bool]:
        """Clip to ``grad_clip`` (global norm) and step unless loss or gradients are non-finite.

        One host sync per optimizer step (the finiteness flag) — needed to skip the update.
        """
        assert self.optimizer is not None
        params = self._clip_params()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor → a plain tensor
            grad_norm = grad_norm.full_tensor()
        finite = bool(torch.isfinite(grad_norm.detach().float() + loss_sum).item())
        if self.scaler is not None:
            # With fp16 the scaler also lowers its scale after inf gradients.
            if finite:
                self.scaler.step(self.optimizer)
            self.scaler.update()
            return grad_norm, finite
        if finite:
            self.optimizer.step()
        return grad_norm, finite

    def _clip_params(self) -> list[Tensor]:
        """The optimizer's parameters, cached per optimizer and group layout (rebuilding the
        list every step is measurable engine overhead at small sizes)."""
        assert self.optimizer is not None
        key = (id(self.optimizer), tuple(len(g["params"]) for g in self.optimizer.param_groups))
        if getattr(self, "_clip_key", None) != key:
            self._clip_key = key
            self._clip_list = [p for g in self.optimizer.param_groups for p in g["params"]]
        return self._clip_list

    def on_step_end(self, step: int, loss: Tensor | None) -> None:
        """After each optimizer step (``step`` = the new global step). Controllers go here."""

    def on_train_end(self, stopped: bool) -> None:
        """After the last step, final eval and checkpoint, before ``run_finished`` (reports)."""

    def step_event_extra(self) -> dict[str, Any]:
        """Extra fields for step events (LONPT: ``phase``, ``domain``, ``lr_scale``, ...)."""
        return {}

    def handle_oom(self, exc: BaseException) -> bool:
        """Out of memory in a step. Return True to retry the step on the same samples.

        The default splits the micro-batch (largest divisor at most half of it) and multiplies
        the accumulation to match, so the effective batch — and the optimisation — is unchanged;
        the change is a ``batch_change`` event and is kept in checkpoints, so a resume goes on
        with it. It gives up with a :class:`ResourceError` saying what to change at micro-batch
        1, after ``oom_retries`` splits, or with several processes (the other ranks are already
        waiting in a collective for this one).
        """
        mb, ga = self.micro_batch, self.grad_accum
        smaller = next((d for d in range(mb // 2, 0, -1) if mb % d == 0), None)
        used = self._oom_splits
        if smaller is None or used >= self.config.oom_retries or self.world_size > 1:
            why = (f"after {used} micro-batch split(s)" if used else
                   "with several processes" if self.world_size > 1 and smaller else
                   f"at micro-batch {mb}")
            raise ResourceError(
                f"out of memory on {self.device} {why} (micro-batch {mb} × accumulation {ga}, "
                f"sequence length {self.seq_len}): use a smaller --profile, a shorter --seq-len, "
                "--set gradient_checkpointing=true, the compressed trainer, or a smaller "
                "--micro-batch with a larger --grad-accum; `aeron-tui profile` shows what fits"
            ) from exc
        self._oom_splits += 1
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        new_ga = ga * mb // smaller
        self.emit(
            "warning",
            code="oom_retry",
            global_step=self.global_step,
            message=(f"out of memory at micro-batch {mb}: retrying step {self.global_step + 1} "
                     f"with micro-batch {smaller} × accumulation {new_ga} (same effective batch)"),
        )
        self.set_micro_batch(smaller, new_ga, "oom")
        return True

    # ==========================================================================================
    # Evaluation
    # ==========================================================================================

    def validation_batches(self) -> list[dict[str, Tensor]]:
        """Fixed validation batches (length-sorted, collated once, kept on the CPU)."""
        if self._val_batches is None:
            from core.data.loader import collate_packed

            pairs = sorted(self.val_pairs, key=len)
            limit = self.eval_max_batches() * self.micro_batch
            # Spread the capped subset over the whole length range instead of the shortest.
            if len(pairs) > limit:
                stride = len(pairs) / limit
                pairs = sorted((pairs[int(i * stride)] for i in range(limit)), key=len)
            self._val_eval_pairs = pairs
            self._val_batches = [
                collate_packed(pairs[i : i + self.micro_batch], self.pack_length,
                               with_target_bytes=True, image_shape=self.image_shape)
                for i in range(0, len(pairs), self.micro_batch)
            ]
        return self._val_batches

    def eval_max_batches(self) -> int:
        """Validation batches per evaluation: ``eval_max_batches`` when set; by default enough
        for :data:`EVAL_SAMPLES` samples, fewer when validating them would cost more than
        :data:`EVAL_TIME_SHARE` of the training between two evaluations (a sample's forward
        pass costs :data:`FORWARD_COST` of its training step), never under
        :data:`MIN_EVAL_SAMPLES`. Decided from the config alone, so every rank and a resumed run
        validate the same pairs."""
        if self.config.eval_max_batches is not None:
            return self.config.eval_max_batches
        interval = max(1, min(self.config.eval_every, self.total_steps or self.config.steps))
        trained = interval * self.micro_batch * self.grad_accum
        affordable = EVAL_TIME_SHARE * trained / FORWARD_COST
        samples = max(MIN_EVAL_SAMPLES, min(EVAL_SAMPLES, affordable))
        return max(1, math.ceil(samples / self.micro_batch))

    @torch.no_grad()
    def evaluate(self, batches: list[dict[str, Tensor]] | None = None) -> dict[str, float]:
        """Token-weighted cross-entropy over the validation batches; perplexity = exp(loss);
        ``bpb`` = summed nats ÷ ln 2 ÷ UTF-8 bytes of the targets, when the batches carry
        ``target_bytes`` (None otherwise).

        Runs with a forked RNG so evaluating never changes the training random stream.
        """
        batches = self.validation_batches() if batches is None else batches
        was_training = self.train_model.training
        self.train_model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        count = torch.zeros((), device=self.device, dtype=torch.float64)
        nbytes = torch.zeros((), device=self.device, dtype=torch.float64)
        all_bytes = True
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for done, cpu_batch in enumerate(batches):
                self.eval_progress(done, len(batches))
                batch = {k: v.to(self.device) for k, v in cpu_batch.items() if k != "target_bytes"}
                with self.autocast():
                    loss, _, n_tokens = self.compute_loss(batch)
                total += loss.detach().double() * n_tokens
                count += n_tokens
                if "target_bytes" in cpu_batch:
                    nbytes += float(cpu_batch["target_bytes"].sum())
                else:
                    all_bytes = False
        if was_training:
            self.train_model.train()
        if self.dist is not None and self.world_size > 1:
            import torch.distributed as tdist

            both = torch.stack([total, count, nbytes])
            tdist.all_reduce(both)
            total, count, nbytes = both[0], both[1], both[2]
        n = float(count.item())
        loss_value = float(total.item()) / n if n else float("nan")
        bpb = bits_per_byte(float(total.item()), float(nbytes.item())) if all_bytes else None
        return {"loss": loss_value, "perplexity": _safe_exp(loss_value), "tokens": n, "bpb": bpb}

    # ==========================================================================================
    # Reference baselines and live samples (what the first eval and every eval carry)
    # ==========================================================================================

    def baseline_pairs(self) -> tuple[list[Any], list[Any]]:
        """(training pairs, validation pairs) the n-gram baselines are counted and scored on:
        the training split and the pairs :meth:`validation_batches` evaluates."""
        self.validation_batches()
        train = list(getattr(self.train_loader, "pairs", []) or [])
        return train, list(self._val_eval_pairs)

    def reference_baselines(self) -> dict[str, float]:
        """``baseline_bigram_bpb`` / ``baseline_unigram_bpb`` for the first eval event (empty for
        trainers that are not language models, or when a split has no scored bytes)."""
        if not self.language_model or self._baselines_sent or not self.is_main:
            return {}
        self._baselines_sent = True
        from core.data.ngram import ngram_baselines

        train, val = self.baseline_pairs()
        try:
            found = ngram_baselines(train, val, int(self.tokenizer.vocab_size))
        except ValueError as exc:
            self.emit("warning", code="baselines", global_step=self.global_step,
                      message=f"no reference baselines for this run: {exc}")
            return {}
        out = {"baseline_bigram_bpb": found.bigram_bpb, "baseline_unigram_bpb": found.unigram_bpb}
        return {k: v for k, v in out.items() if v is not None}

    def sample_prompts(self) -> list[Any]:
        """The run's fixed sample prompts (chosen once; ``sample_prompts`` in the config)."""
        if self._sample_prompts is None:
            from core.train.samples import choose_prompts, prompts_from_texts

            wanted = self.config.sample_prompts
            if isinstance(wanted, list):
                self._sample_prompts = prompts_from_texts(
                    wanted, self.val_pairs or self.baseline_pairs()[0], self.tokenizer,
                    self.seq_len)
            else:
                self._sample_prompts = choose_prompts(self.val_pairs, self.tokenizer, wanted)
        return self._sample_prompts

    def samples_due(self) -> bool:
        """Samples follow an eval when enabled, ``sample_every`` steps have passed since the
        last ones (default: at every eval) or the run has reached its last step."""
        cfg = self.config
        if not self.language_model or not self.is_main or cfg.sample_every == 0:
            return False
        if not cfg.sample_prompts or self.last_sample_step == self.global_step:
            return False
        if self.world_size > 1 and cfg.options.get("shard"):
            return False  # the main rank alone cannot run a sharded model
        if cfg.sample_every is None or self.global_step >= self.total_steps:
            return True
        return self.last_sample_step < 0 or (
            self.global_step - self.last_sample_step >= cfg.sample_every)

    def emit_samples(self) -> list[dict[str, str]]:
        """Generate the live samples and emit a ``sample`` event (a failure is one warning)."""
        from core.train.samples import generate_samples

        self.last_sample_step = self.global_step
        try:
            samples = generate_samples(self.model, self.tokenizer, self.sample_prompts(),
                                       self.config.sample_max_tokens, self.device,
                                       self.autocast())
        except (RuntimeError, ValueError, AeronError) as exc:
            self.emit("warning", code="samples", global_step=self.global_step,
                      message=f"live samples failed and are skipped: {exc}")
            return []
        if samples:
            self.emit("sample", global_step=self.global_step, samples=samples)
        return samples

    # ==========================================================================================
    # Checkpoints
    # ==========================================================================================

    def trainer_state(self) -> dict[str, Any]:
        """Everything besides weights and optimizer that an exact resume needs."""
        return {
            "version": TRAINER_STATE_VERSION,
            "trainer": self.name,
            "run_id": self.run_id,
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "scheduler": {
                "type": self.config.lr_schedule,
                "base_lr": self.base_lr,
                "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps,
                "min_lr_ratio": self.config.min_lr_ratio,
                "last_lr": self._last_lr,
            },
            "rng": capture_rng_state(),
            "data": self.train_loader.state_dict() if self.train_loader is not None else None,
            "controllers": self.extra_state(),
            "best": {"val_loss": self.best_val_loss, "checkpoint": self.best_checkpoint},
            "early_stop": dict(self.early_stop),
            "last_val_loss": self.last_val_loss,
            "last_eval_step": self.last_eval_step,
            "nonfinite_skipped": self.nonfinite_skipped,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "elapsed_s": self.elapsed_s(),
            "run_config": self.config.to_dict(),
        }

    def extra_state(self) -> dict[str, Any]:
        """Controller states to save (JSON-serialisable)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def model_state_for_checkpoint(self) -> Any:
        """The full model state (gathered from all ranks in a distributed run; call on all)."""
        if self.dist is not None and self.world_size > 1:
            from core.train.distributed import full_state_dict

            return full_state_dict(self.train_model, self.dist)
        return self.model

    def optimizer_state_for_checkpoint(self) -> dict[str, Any] | None:
        """The optimizer state to save (sharded runs gather every rank's piece; call on all)."""
        assert self.optimizer is not None
        if self.dist is not None and self.world_size > 1:
            from core.train.distributed import gather_optimizer_state

            return gather_optimizer_state(self.optimizer, self.train_model, self.dist)
        return self.optimizer.state_dict()

    def load_model_state(self, state: dict[str, Any], source: Path) -> None:
        """Load a full single-process-layout state into the (possibly wrapped) model."""
        if self.dist is not None and self.world_size > 1:
            from core.train.distributed import load_full_state_dict

            load_full_state_dict(self.train_model, state, str(source))
        else:
            load_model_state(self.model, state, source)

    def load_optimizer_state(self, state: dict[str, Any], source: Path) -> None:
        assert self.optimizer is not None
        if self.dist is not None and self.world_size > 1:
            from core.train.distributed import scatter_optimizer_state

            state = scatter_optimizer_state(state, self.optimizer, self.dist, str(source))
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{source}: does not fit this optimizer ({exc})") from exc

    def save_checkpoint(
        self, name: str | None = None, best: bool = False, val_loss: float | None = None,
        *, reason: str | None = None,
    ) -> Path:
        """Write ``RUN_DIR/checkpoints/<name>`` (default ``step_NNNNNN``); emit ``checkpoint``.

        ``reason`` (``scheduled``, ``best``, ``requested``, ``final``) goes into the event: the
        ETA counts the planned ones.
        """
        self.set_activity("saving checkpoint")
        t0 = time.perf_counter()
        name = name or step_checkpoint_name(self.global_step)
        path = self.run_dir / CHECKPOINTS_DIR / name
        model_state = self.model_state_for_checkpoint()
        optim_state = self.optimizer_state_for_checkpoint()
        if best:
            self.best_checkpoint = name
        if self.is_main:
            save_checkpoint(
                path,
                model=model_state,
                config=self.model_config,
                tokenizer=self.tokenizer,
                trainer_state=self.trainer_state(),
                optimizer_state=optim_state,
                parents=self.lineage_parents,
                corpus=self.corpus,
                input_vocab=self.input_vocab.to_dict() if self.input_vocab is not None else None,
                extra={
                    "global_step": self.global_step,
                    "run_id": self.run_id,
                    "trainer": self.name,
                    "val_loss": val_loss,
                    "best": best,
                },
            )
            size = sum(f.stat().st_size for f in path.iterdir())
            self.emit(
                "checkpoint",
                path=str(path),
                name=name,
                size_bytes=size,
                val_loss=val_loss,
                best=best,
                global_step=self.global_step,
                reason=reason,
                duration_s=round(time.perf_counter() - t0, 3),
            )
            protect = {self.best_checkpoint} if self.best_checkpoint else set()
            prune_checkpoints(self.run_dir, self.config.keep_last, protect)
        self._barrier()
        self.metrics._t0 += time.perf_counter() - t0  # tokens/s counts training time only
        self.last_checkpoint = path
        self.last_checkpoint_step = self.global_step
        return path

    def restore_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Load model, optimizer, RNG, data position and counters from a checkpoint (rollback)."""
        loaded = load_checkpoint(path, device="cpu", expect_config=self.model_config)
        self._restore(loaded)

    def _restore(self, loaded: LoadedCheckpoint) -> None:
        self.load_model_state(loaded.model_state, loaded.path / "model.safetensors")
        opt_state = loaded.load_optimizer_state("cpu")
        if opt_state is not None:
            self.load_optimizer_state(opt_state, loaded.path / "optimizer.pt")
        state = loaded.trainer_state
        self.global_step = int(state.get("global_step", 0))
        if state.get("data") is not None and self.train_loader is not None:
            self.train_loader.load_state_dict(state["data"])
            self._batch_iter = None
        self.best_val_loss = (state.get("best") or {}).get("val_loss")
        self.best_checkpoint = (state.get("best") or {}).get("checkpoint")
        self.last_val_loss = state.get("last_val_loss")
        self.last_eval_step = int(state.get("last_eval_step", -1))
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        mb, ga = state.get("micro_batch"), state.get("grad_accum")
        if (
            isinstance(mb, int)
            and isinstance(ga, int)
            and (mb, ga) != (self.micro_batch, self.grad_accum)
        ):
            self.micro_batch, self.grad_accum = mb, ga
            if self.train_loader is not None:
                self.train_loader.set_batch_size(mb)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.load_extra_state(state.get("controllers") or {})
        self._load_early_stop_state(state.get("early_stop"))
        if "rng" in state:
            restore_rng_state(state["rng"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.last_checkpoint = loaded.path
        self.last_checkpoint_step = self.global_step
        self.resumed_from = loaded
        version = loaded.version
        if version:
            self.lineage_parents = [{"id": version, "relation": "resumed"}]

    # ==========================================================================================
    # Batch shape
    # ==========================================================================================

    def set_micro_batch(self, micro_batch: int, grad_accum: int, reason: str = "") -> None:
        """Change micro-batch and accumulation from the next step on (emits ``batch_change``)."""
        if micro_batch < 1 or grad_accum < 1:
            raise ConfigError(f"micro-batch {micro_batch} / grad-accum {grad_accum} must be >= 1")
        if (micro_batch, grad_accum) == (self.micro_batch, self.grad_accum):
            return
        self.micro_batch, self.grad_accum = micro_batch, grad_accum
        if self.train_loader is not None:
            self.train_loader.set_batch_size(micro_batch)
        self.emit(
            "batch_change",
            micro_batch=micro_batch,
            grad_accum=grad_accum,
            reason=reason or None,
            global_step=self.global_step,
        )

    # ==========================================================================================
    # Events
    # ==========================================================================================

    def emit(self, type: str, **fields: Any) -> dict[str, Any] | None:
        """Emit an event (main rank only); ``None`` values are dropped."""
        if not self.is_main:
            return None
        clean = {k: v for k, v in fields.items() if v is not None}
        try:
            return self.events.emit(type, **clean)
        except BrokenPipeError:
            # Whoever read our stdout went away without a drainer. events.jsonl already has
            # the line (it is written first); training goes on, writing to the file only.
            self.events._stream = None
            return None

    def elapsed_s(self) -> float:
        return self.elapsed_before + (time.time() - self._t_start) - self._paused_s

    # ==========================================================================================
    # Liveness (activity, heartbeat, detach) and the plan (total, evaluations, checkpoints)
    # ==========================================================================================

    def set_activity(self, activity: str, done: int | None = None, of: int | None = None) -> None:
        """Say what the trainer is doing now (``activity`` event; heartbeats repeat it)."""
        self._activity = (activity, done, of)
        self.emit("activity", activity=activity, done=done, of=of)

    def eval_progress(self, done: int, of: int) -> None:
        """``done`` of ``of`` validation batches: heartbeats carry it, and an ``activity`` event
        marks the start and every tenth of the way."""
        if done == 0 or done % max(1, of // 10) == 0:
            self.set_activity("evaluating", done, of)
        else:
            self._activity = ("evaluating", done, of)

    def _training_activity(self) -> None:
        wanted = ("compiling" if self.config.compile and self._steps_this_process == 0
                  else "training")
        if self._activity is None or self._activity[0] != wanted:
            self.set_activity(wanted)

    def _start_liveness(self) -> None:
        """Heartbeat thread and the run directory's control file (main rank, real runs only)."""
        if not self.is_main or not self.events.enabled or self.run_dir == Path():
            return
        self.control.watch_file(self.run_dir / CONTROL_FILE, since=self._t_start)
        if self._heartbeat is None and self.heartbeat_interval_s:
            self._heartbeat = Heartbeat(self._beat, self.heartbeat_interval_s)
            self._heartbeat.start()

    def _stop_liveness(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self.control.stop_watching()

    def _beat(self) -> None:
        self._report_detach()
        name, done, of = self._activity or (None, None, None)
        self.emit("heartbeat", global_step=self.global_step, activity=name, done=done, of=of)

    def _report_detach(self) -> None:
        """SIGHUP or the console's end of stdin: the run goes on unattended; say so once."""
        reason = self.control.take_detach()
        if reason is not None:
            self.emit("detached", reason=reason, global_step=self.global_step)

    def announce_total(self, total_steps: int, reason: str) -> None:
        """The planned number of optimizer steps changed (ACT, early stopping, the end):
        ``total_changed`` with the plan from here, and the loop runs to the new total."""
        if total_steps == self.total_steps and reason != "finished":
            return
        self.total_steps = total_steps
        plan = self.plan_fields()
        if reason == "finished":  # what _finish still does: a final evaluation and checkpoint
            plan = {"evals_left": int(self.last_eval_step != self.global_step),
                    "checkpoints_left": int(self.last_checkpoint_step != self.global_step)}
        self.emit("total_changed", global_step=self.global_step, total_steps=total_steps,
                  reason=reason, **plan)

    def plan_fields(self) -> dict[str, int]:
        """``evals_left`` / ``checkpoints_left`` from the current step (for the ETA)."""
        return {"evals_left": self.planned_evaluations(),
                "checkpoints_left": self.planned_checkpoints()}

    def planned_evaluations(self) -> int:
        """Evaluations still to come: every ``eval_every`` steps, and a final one unless the
        last step is one of those."""
        return _multiples_left(self.global_step, self.total_steps, self.config.eval_every)

    def planned_checkpoints(self) -> int:
        """Scheduled checkpoints still to come (every ``checkpoint_every`` steps and the final
        one); those after a new best are not planned."""
        return _multiples_left(self.global_step, self.total_steps, self.config.checkpoint_every)

    def planned_eval_batches(self) -> int | None:
        """Validation batches per evaluation (timing the first evaluation before it ran):
        what :meth:`validation_batches` will hold, counted without building it. None for
        trainers with their own evaluation."""
        if type(self).evaluate is not Trainer.evaluate or not self.val_pairs:
            return None
        samples = min(len(self.val_pairs), self.eval_max_batches() * self.micro_batch)
        return math.ceil(samples / self.micro_batch)

    # ==========================================================================================
    # Internals
    # ==========================================================================================

    def _check_options(self) -> None:
        accepted = vars(type(self)).get("accepted_options")
        if accepted is None:
            return
        unknown = sorted(set(self.config.options) - set(accepted))
        if unknown:
            known = ", ".join(sorted(accepted)) or "none"
            raise ConfigError(
                f"the {self.name} trainer has no option {unknown[0]!r} (its options: {known}); "
                "run-config keys are set with --set KEY=VALUE, model fields with model.KEY=VALUE"
            )

    def _prepare_run_dir(self) -> None:
        cfg = self.config
        if cfg.run_dir is None:
            self.run_dir = self._fresh_run_dir()
            self.config = cfg.with_overrides(source="run", run_dir=str(self.run_dir))
        else:
            self.run_dir = Path(cfg.run_dir).expanduser()
        self.run_id = self.run_dir.name
        if not self.is_main:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"run directory {self.run_dir} is not writable ({exc.strerror or exc}); "
                "choose another --run-dir"
            ) from exc
        # One owner per run directory; a directory holding a run needs --resume or --overwrite.
        self._run_lock, moved = claim_run_dir(
            self.run_dir, resume=bool(cfg.resume), overwrite=bool(cfg.overwrite))
        if self._run_lock.unlocked_reason:
            self._early_events.append(("warning", {"message": self._run_lock.unlocked_reason,
                                                   "code": "no_lock"}))
        if moved is not None:
            self._early_events.append(("info", {
                "message": f"--overwrite: the earlier run in {self.run_dir} was moved to {moved}"}))
        for note in recover_interrupted_saves(self.run_dir):
            self._early_events.append(("info", {"message": note}))
        write_pid_file(self.run_dir)

    def _fresh_run_dir(self) -> Path:
        """A new default run directory, created here (two trainers started in the same second
        get different names instead of one refusing the other)."""
        for _ in range(1000):
            candidate = new_run_dir(default_runs_root(), self.name, self.config.profile)
            if not self.is_main:
                return candidate
            try:
                candidate.mkdir(parents=True)
            except FileExistsError:
                continue
            except OSError:
                return candidate  # reported with the run directory's own check
            return candidate
        raise ConfigError(f"cannot create a new run directory under {default_runs_root()}")

    def _open_events(self) -> None:
        listeners = [*self._listeners, *self._make_trackers()]
        if self._events_given is None:
            self.events = EventWriter(
                self.run_dir / EVENTS_FILE,
                stdout=self._events_stdout,
                enabled=self.is_main,
                listeners=listeners,
            )
        else:
            self.events.listeners.extend(listeners)

    # -- trackers (--log): listeners on this run's own event stream -----------------------------

    def _make_trackers(self) -> list[Any]:
        """TensorBoard / CSV / W&B listeners from ``config.trackers`` (main rank only)."""
        if not self.config.trackers or not self.is_main:
            return []
        from core.runs.trackers import make_tracker

        self._trackers = [make_tracker(spec, self.run_dir) for spec in self.config.trackers]
        return self._trackers

    def _close_trackers(self) -> None:
        for tracker in self._trackers:
            with contextlib.suppress(Exception):  # a tracker never turns a run into a failure
                tracker.close()
        self._trackers = []

    # -- early stopping (--early-stop PATIENCE[:MIN_DELTA]) -------------------------------------

    # Trainers whose loop does not run the engine's evaluation (LONPT validates per domain)
    # say False here and refuse early stopping in one line.
    supports_early_stop = True

    def _check_early_stop_supported(self) -> None:
        if self.config.early_stop_patience and not type(self).supports_early_stop:
            raise ConfigError(
                f"--early-stop: the {self.name} trainer has its own validation schedule; early "
                "stopping works with simple, compressed, continual, reward, dpo and ppo"
            )

    def _early_stop_update(self, result: dict[str, Any]) -> bool:
        """After an evaluation: count evaluations without an improvement larger than
        ``early_stop_min_delta``; True when ``early_stop_patience`` of them in a row are reached
        (then :meth:`_early_stop_now` ends the run at this step)."""
        cfg = self.config
        patience = cfg.early_stop_patience
        if not patience or self.global_step >= self.total_steps:
            return False
        metric = cfg.early_stop_metric
        value = result.get(metric)
        if value is None and metric != "loss":  # a trainer that does not report bpb
            value = result.get("loss")
        value = float(value) if isinstance(value, (int, float)) else math.nan
        state = self.early_stop
        best = state["best"]
        if math.isfinite(value) and (best is None or value < best - cfg.early_stop_min_delta):
            state.update(best=value, best_step=self.global_step, bad_evals=0)
            return False
        state["bad_evals"] += 1
        return bool(state["bad_evals"] >= patience)

    def _early_stop_now(self) -> None:
        """End the run at this step: an ``info`` event saying why, ``total_changed`` to this
        step and ``run_finished`` (status finished) with reason ``early_stop``. The best
        checkpoint is kept (never pruned) and named in the message."""
        cfg = self.config
        step = self.global_step
        state = self.early_stop
        last = (f"{state['best']:.4f} at step {state['best_step']}"
                if state["best"] is not None else "none")
        kept = self.best_checkpoint or "none"
        if self.best_checkpoint and self.best_val_loss is not None:
            kept += f" (val loss {self.best_val_loss:.4f})"
        self.finish_reason = "early_stop"
        self.emit(
            "info",
            code="early_stop",
            global_step=step,
            message=(f"early stopping at step {step}: validation {cfg.early_stop_metric} has not "
                     f"improved by more than {cfg.early_stop_min_delta:g} in "
                     f"{cfg.early_stop_patience} evaluation(s) (last such improvement: {last}); "
                     f"best checkpoint: {kept}"),
        )
        self.total_steps = step
        self.emit("total_changed", global_step=step, total_steps=step, reason="early stop")

    def _load_early_stop_state(self, state: Any) -> None:
        if isinstance(state, dict):
            self.early_stop = {"best": state.get("best"), "best_step": state.get("best_step"),
                               "bad_evals": int(state.get("bad_evals") or 0)}

    def _find_resume(self) -> LoadedCheckpoint | None:
        spec = self.config.resume
        if not spec:
            return None

        def skipped(message: str) -> None:
            self._early_events.append(("warning", {"message": message, "code": "checkpoint_skipped"}))

        if spec == "latest":
            path = latest_checkpoint(self.run_dir, on_skip=skipped)
            if path is None:
                raise CheckpointError(
                    f"{self.run_dir}: no complete checkpoint to resume from "
                    "(start without --resume, or give --resume PATH)"
                )
        else:
            path = Path(spec).expanduser()
            if not path.exists():
                raise CheckpointError(f"{path}: checkpoint not found")
            if not (path / "manifest.json").exists() and (path / CHECKPOINTS_DIR).is_dir():
                found = latest_checkpoint(path, on_skip=skipped)
                if found is None:
                    raise CheckpointError(f"{path}: no complete checkpoint in this run directory")
                path = found
        loaded = load_checkpoint(path, device="cpu", load_optimizer=True)
        check_trainer_state(loaded.trainer_state, loaded.path / "trainer_state.json")
        self._check_model_overrides(loaded)
        if self.config.tokenizer:
            self._check_resume_tokenizer(loaded)
        return loaded

    def _check_model_overrides(self, loaded: LoadedCheckpoint) -> None:
        """``[model]`` values that contradict the checkpoint, found before the event stream
        opens (:meth:`resolve_model_config` compares the whole config later)."""
        from core.runs.checkpoint import RUNTIME_CONFIG_FIELDS

        saved = loaded.config_dict
        diff = [f"{key}: checkpoint {saved.get(key, '<absent>')!r}, this run {value!r}"
                for key, value in sorted(self.config.model.items())
                if key not in RUNTIME_CONFIG_FIELDS and saved.get(key, "<absent>") != value]
        if diff:
            raise CheckpointError(
                f"{loaded.path / 'config.json'}: the checkpoint's model config differs from "
                f"this run's: {'; '.join(diff[:6])} — resume with the checkpoint's settings"
            )

    def _check_resume_tokenizer(self, loaded: LoadedCheckpoint) -> None:
        """A resumed run keeps its checkpoint's tokenizer: a different ``tokenizer`` is refused
        (the embedding rows belong to the checkpoint's vocabulary); the same one is fine."""
        from core.data.tokenizer import AeronTokenizer

        wanted = AeronTokenizer.load(self.config.tokenizer)
        if wanted.sha256 != loaded.tokenizer.sha256:
            raise ConfigError(
                f"tokenizer {self.config.tokenizer}: a resumed run keeps the tokenizer of "
                f"{loaded.path} (vocabulary {loaded.tokenizer.vocab_size}, this one "
                f"{wanted.vocab_size}); drop --set tokenizer, or move the model to a new "
                "vocabulary with `aeron-tui tokenizer upgrade`"
            )

    def _resolve_sizes(self) -> None:
        cfg = self.config
        self.micro_batch = cfg.micro_batch or 8
        self.grad_accum = cfg.grad_accum or 1
        self.seq_len = cfg.seq_len or 256
        self.base_lr = cfg.learning_rate or self.default_learning_rate()
        self.total_steps = cfg.steps
        self.warmup_steps = (
            cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup_steps(cfg.steps)
        )

    def resolved_config(self) -> RunConfig:
        """The config with every value this run actually uses (saved as run.toml).

        ``resume`` and ``overwrite`` are cleared: running the saved file again starts the same
        run afresh (in a new directory, or with --overwrite).
        """
        data = self.config.to_dict()
        data.update(
            run_dir=str(self.run_dir),
            micro_batch=self.micro_batch,
            grad_accum=self.grad_accum,
            seq_len=self.seq_len,
            learning_rate=self.base_lr,
            warmup_steps=self.warmup_steps,
            data=self.data_path or data["data"],
            resume=None,
            overwrite=False,
        )
        if self.model_config is not None:
            # The data-fed modules this run resolved (issue 17): recorded, so running the saved
            # run.toml again builds the same model.
            from core.model.modules import DATA_FED_MODULES

            data["model"] = {**data["model"],
                             **{k: getattr(self.model_config, k) for k in DATA_FED_MODULES}}
        return RunConfig.from_dict(data, "resolved run config")

    def _one_step(self) -> None:
        self._training_activity()
        while True:
            if self.train_loader is not None:
                self._pre_step_data_state = self.train_loader.state_dict()
            try:
                self.train_step()
                self._steps_this_process += 1
                return
            except torch.OutOfMemoryError as exc:
                # The traceback's frames hold the failed step's activations: drop them (and the
                # partial gradients) before a retry needs the memory.
                exc.__traceback__ = None
                if self.optimizer is not None:
                    self.optimizer.zero_grad(set_to_none=True)
                if not self.handle_oom(exc):
                    raise
                # Retry the same step on the same samples.
                if self.train_loader is not None and self._pre_step_data_state is not None:
                    self.train_loader.load_state_dict(self._pre_step_data_state)
                    self.train_loader.set_batch_size(self.micro_batch)

    def _after_step(self) -> None:
        cfg = self.config
        self.global_step += 1
        step = self.global_step
        last = step >= self.total_steps
        self.on_step_end(step, self._last_step_loss)
        if step % cfg.log_every == 0 or last:
            self._emit_step()
        if step % cfg.eval_every == 0:
            self._run_eval()
        if step % cfg.checkpoint_every == 0 and self.last_checkpoint_step != step:
            self.save_checkpoint(
                best=self.best_checkpoint == step_checkpoint_name(step),
                val_loss=self.last_val_loss if self.last_eval_step == step else None,
                reason="scheduled",
            )

    def _emit_step(self) -> None:
        fields = self.metrics.flush()
        fields.pop("elapsed_s", None)
        lr = self._last_lr
        extra = self.step_event_extra()
        event = {
            "step": self.global_step,
            "global_step": self.global_step,
            "lr": lr,
            "lr_scale": lr / self.base_lr if self.base_lr else None,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "memory": memory_stats(self.device),
            "nonfinite_skipped": self.nonfinite_skipped,
            "elapsed_s": self.elapsed_s(),
            **fields,
            **extra,
        }
        if event.get("loss") is None:
            # Every update of the interval was skipped: there is no finite loss to report (JSON
            # has no NaN, and an invented number would draw a false curve); the per-step
            # warnings already say why.
            return
        self.emit("step", **event)

    def _run_eval(self) -> dict[str, float]:
        self.set_activity("evaluating")
        t0 = time.perf_counter()
        result = self.evaluate()
        duration = time.perf_counter() - t0
        self.metrics._t0 += duration  # tokens/s counts training time only
        loss = result["loss"]
        self.last_val_loss = loss
        self.last_eval_step = self.global_step
        best = math.isfinite(loss) and (self.best_val_loss is None or loss < self.best_val_loss)
        if best:
            self.best_val_loss = loss
        self.emit(
            "eval",
            loss=loss,
            perplexity=result["perplexity"],
            bpb=result.get("bpb"),
            best=best,
            global_step=self.global_step,
            metrics={"tokens": result["tokens"]},
            duration_s=round(duration, 3),
            **self.reference_baselines(),
            **{k: v for k, v in self.step_event_extra().items() if k in ("phase", "domain")},
        )
        # Counted before the best checkpoint is written, so it holds this evaluation (resume).
        stop = self._early_stop_update(result)
        if self.samples_due():
            self.emit_samples()
        if best:
            self.save_checkpoint(best=True, val_loss=loss, reason="best")
        if stop:
            self._early_stop_now()
        return result

    def _handle_control(self) -> bool:
        """Apply pending commands; True means stop now."""
        self._report_detach()
        for command in self.control.poll():
            if self._apply_command(command.cmd, command.detail, command.source):
                return True
        return False

    def _apply_command(self, cmd: str, detail: str = "", source: str = "stdin") -> bool:
        if cmd == "invalid":
            self.emit("warning", message=detail, code="control", global_step=self.global_step)
        elif cmd == "checkpoint":
            if self.last_checkpoint_step != self.global_step:
                self.save_checkpoint(reason="requested")
        elif cmd == "stop":
            if source == "signal":
                self.emit(
                    "warning",
                    message="signal received: stopping after a checkpoint",
                    code="signal",
                    global_step=self.global_step,
                )
            return True
        elif cmd == "pause":
            return self._pause()
        return False

    def _pause(self) -> bool:
        self._status = "paused"
        self.emit("status", status="paused", global_step=self.global_step)
        t0 = time.time()
        try:
            while True:
                for command in self.control.wait(0.25):
                    if command.cmd == "resume":
                        self._status = "running"
                        self.emit("status", status="running", global_step=self.global_step)
                        return False
                    if command.cmd in ("stop", "checkpoint", "invalid"):
                        if self._apply_command(command.cmd, command.detail, command.source):
                            return True
        finally:
            paused = time.time() - t0
            self._paused_s += paused
            self.metrics._t0 += paused  # tokens/s counts training time only

    def _finish(self, stopped: bool) -> str:
        if stopped:
            self._status = "stopping"
            self.emit("status", status="stopping", global_step=self.global_step)
        elif self.global_step != self.total_steps:
            # The plan changed under the loop (ACT, a cut curriculum): the run's real total.
            self.announce_total(self.global_step, "finished")
        if self.last_eval_step != self.global_step and not stopped and self.global_step > 0:
            self._run_eval()
        if self.last_checkpoint_step != self.global_step:
            self.save_checkpoint(
                val_loss=self.last_val_loss if self.last_eval_step == self.global_step else None,
                reason="final",
            )
        self.on_train_end(stopped)
        status = "stopped" if stopped else "finished"
        self._status = status
        self._stop_liveness()  # nothing is written after run_finished
        self.emit(
            "run_finished",
            status=status,
            global_step=self.global_step,
            val_loss=self.best_val_loss,
            elapsed_s=self.elapsed_s(),
            reason=self.finish_reason,
        )
        return status

    def _fail(self, message: str, exc: BaseException | None) -> None:
        self._stop_liveness()
        if not self.is_main:
            return
        tb = None
        if exc is not None:
            lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
            tb = "".join(lines[-6:])[-4000:]
        code = type(exc).__name__ if exc is not None else "KeyboardInterrupt"
        if self.events.enabled:
            self.emit(
                "error",
                message=message[:2000],
                traceback=tb,
                code=code,
                global_step=self.global_step,
            )
            self.emit(
                "run_finished",
                status="failed",
                global_step=self.global_step,
                reason=message[:500],
                elapsed_s=self.elapsed_s(),
            )

    def _warn_enhancement_errors(self, outputs: dict[str, Any] | None) -> None:
        errors = (outputs or {}).get("enhancement_errors") or {}
        for stage, message in errors.items():
            if stage not in self._warned_stages:
                self._warned_stages.add(stage)
                self.emit(
                    "warning",
                    message=f"model stage {stage} failed and was bypassed: {message}",
                    code="enhancement_error",
                    global_step=self.global_step,
                )

    def _barrier(self) -> None:
        if self.dist is not None and self.world_size > 1:
            import torch.distributed as tdist

            tdist.barrier()


# ==============================================================================================
# Data helpers
# ==============================================================================================


def default_precision(device: torch.device) -> str:
    """``core.model.precision.default_precision`` (the model engineer's measured rule), or — when that
    module is absent — the capability rule on CUDA and fp32 on the CPU."""
    try:
        from core.model.precision import default_precision as measured
    except ImportError:
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            return "bf16" if torch.cuda.get_device_capability(index)[0] >= 8 else "fp16"
        return "fp32"
    return str(measured(device))


def read_corpus_records(
    path: Path, max_samples: int | None = None, data_format: str | None = None
) -> list[Any] | None:
    """The supervised records of a corpus in any format ``core.data.formats`` reads (first
    ``max_samples``), or None for plain text."""
    from core.data.formats import open_source, read_samples

    if open_source(path, data_format).kind != "sft":
        return None
    samples = read_samples(path, data_format)
    return samples[:max_samples] if max_samples is not None else samples


def load_pairs(
    path: Path,
    tokenizer: Any,
    seq_len: int,
    max_samples: int | None = None,
    vocab: Any = None,
    samples: list[Any] | None = None,
    data_format: str | None = None,
) -> tuple[list[Any], list[Any]]:
    """Encode a corpus once. Supervised records (styles.jsonl, Alpaca, ShareGPT, messages,
    prompt/completion, in any container ``core.data.formats`` reads) → (train, val) pairs by the
    stable hash split; plain text (.txt/.md files, directories, ``{"text"}`` records) →
    continuation windows, split by document hash.

    With an input ``vocab`` the records' triples/entities/image/task travel with the pairs;
    ``samples`` are the records when the caller has read them already.
    """
    from core.data.formats import open_source, read_documents, require_kind
    from core.data.formatting import encode_styles_sample, encode_text_windows

    source = open_source(path, data_format)
    require_kind(source, ("sft", "text"), "supervised training")
    if source.kind == "sft":
        from core.data.styles import split_samples

        if samples is None:
            samples = read_corpus_records(path, max_samples, data_format)
        assert samples is not None
        train, val = split_samples(samples)
        return (
            [encode_styles_sample(s, tokenizer, seq_len, vocab, str(path)) for s in train],
            [encode_styles_sample(s, tokenizer, seq_len, vocab, str(path)) for s in val],
        )
    from core.data.styles import hash_is_validation

    docs = read_documents(path, data_format)
    if max_samples is not None:
        docs = docs[:max_samples]
    train_pairs: list[Any] = []
    val_pairs: list[Any] = []
    for i, doc in enumerate(docs):
        target = val_pairs if hash_is_validation(f"doc:{i}:{doc[:200]}") else train_pairs
        target.extend(encode_text_windows(doc, tokenizer, seq_len))
    task = getattr(vocab, "default_task", None)
    if task is not None:  # a model with tasks: plain text is the vocabulary's default task
        import dataclasses

        from core.data.extras import SampleInputs

        inputs = SampleInputs(task_id=vocab.task_id(task), where=str(path))
        train_pairs = [dataclasses.replace(p, inputs=inputs) for p in train_pairs]
        val_pairs = [dataclasses.replace(p, inputs=inputs) for p in val_pairs]
    return train_pairs, val_pairs


def split_problem(path: Path, missing: str, data_format: str | None = None) -> str:
    """Why the corpus at ``path`` gave no ``missing`` (training/validation) samples, with the
    number of documents or samples found and how the split works."""
    from core.data.formats import open_source, read_documents
    from core.data.styles import VAL_PERCENT

    if open_source(path, data_format).kind != "text":
        return (f"{path}: no {missing} samples after the train/validation split (about "
                f"{VAL_PERCENT} % of samples go to validation, chosen by a hash of each sample; "
                "the turns of one conversation stay together); add more samples")
    docs = len(read_documents(path, data_format))
    return (f"{path}: no {missing} samples: found {docs} document{'s' if docs != 1 else ''} "
            "(documents are split by file and by blank lines), and about "
            f"{VAL_PERCENT} % of documents go to validation; add blank lines between documents "
            "or more text")


def corpus_texts(path: Path, data_format: str | None = None) -> Iterator[str]:
    """The texts a tokenizer is trained on (every turn of supervised records, or documents)."""
    from core.data.formats import corpus_texts as texts

    return texts(path, data_format)


def cached_corpus_tokenizer(path: Path, vocab_size: int, data_format: str | None = None) -> Any:
    """A BPE tokenizer trained on ``path`` (``vocab_size`` upper bound), cached on disk."""
    from core.data.containers import data_files
    from core.data.tokenizer import AeronTokenizer, corpus_tokenizer_dir

    data_files(path)  # a missing or empty data path is a DataError naming it, not an OSError
    cache = corpus_tokenizer_dir(path, vocab_size, data_format)
    if (cache / "tokenizer.json").exists():
        try:
            return AeronTokenizer.load(cache)
        except AeronError:
            pass  # a damaged cache entry is rebuilt below
    texts = list(corpus_texts(path, data_format))
    if not any(t.strip() for t in texts):
        raise DataError(f"{path}: the corpus is empty (nothing to train a tokenizer on)")
    tok = AeronTokenizer.train(texts, vocab_size=vocab_size)
    try:
        tok.save(cache)
    except OSError:
        pass  # caching is an optimisation; an unwritable cache is not an error
    return tok


def _multiples_left(step: int, total: int, every: int) -> int:
    """Multiples of ``every`` in (step, total], plus the end when it is not one of them."""
    if total <= step:
        return 0
    return total // every - step // every + (1 if total % every else 0)


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x) if math.isfinite(x) else float("nan")
    except OverflowError:
        return float("inf")
