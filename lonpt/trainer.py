"""The LONPT trainer (training.md §5): a domain-cycled loop on the shared engine.

For each of ``domain_cycles`` cycles, for each AKAP domain in the cycle's order: ACT resets the
micro-batch and later sizes it to the memory target; the domain trains ``epochs_per_domain``
epochs of at most ``steps_per_domain`` optimizer steps with ``lr = base × PNCEC scale × rail
multiplier``; the domain's held-out split is validated and a new best for the domain is saved
as ``lonpt_<domain>_<global_step:06d>``. One optimizer, one global step that never resets.

Everything else — optimizer, the step itself, non-finite skipping, checkpoints, events, control
(pause/stop/checkpoint), resume — is the engine's (:class:`core.train.engine.Trainer`); this
class only orders the steps and drives the controllers through the engine's extension points.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import CheckpointError, ConfigError, DataError
from core.runs.checkpoint import CHECKPOINTS_DIR, load_checkpoint, load_model_state
from core.runs.events import EventWriter
from core.train.config import RunConfig
from core.train.control import ControlChannel
from core.train.engine import StopTraining, Trainer
from lonpt.act import (
    BatchController,
    MemoryReader,
    check_target,
    cpu_memory_reader,
    cuda_memory_reader,
    device_capacity,
    reset_peak,
    static_bytes,
)
from lonpt.akap import Domain, assign_domains, build_domains, order_domains, select_fraction
from lonpt.config import LonptConfig, load_config, preset_path
from lonpt.hpf import HPFReport, apply_hpf, apply_structure, densify_state_dict, hpf_structure
from lonpt.pncec import PhaseSchedule
from lonpt.rails import ROLLBACK, SafetyRails, UpdateMonitor

DEFAULT_PRESET = "standard"
ALL_DOMAIN = "all"  # the single domain when AKAP is off
# Options the engine itself reads from ``RunConfig.options``; passed through untouched.
ENGINE_OPTIONS = frozenset({"shard"})
STATE_VERSION = 1


# ==============================================================================================
# Configuration: preset + [options] + explicit RunConfig flags
# ==============================================================================================


def resolve_run_config(config: RunConfig) -> tuple[RunConfig, LonptConfig]:
    """Merge the preset, ``[options]`` and explicit run flags into one consistent pair.

    Precedence: the preset (``--preset`` / ``preset`` option; default ``standard``), then the
    LONPT keys in ``[options]`` / ``--set``, then run flags the user set explicitly (``--lr``,
    ``--micro-batch``, ``--seq-len``, ``--data``, ... — a flag counts as set when it differs from
    the RunConfig default). The result's ``options`` hold every LONPT key, so the saved
    ``run.toml`` reproduces the run without the preset file. Idempotent.
    """
    options = dict(config.options)
    engine_options = {k: options.pop(k) for k in list(options) if k in ENGINE_OPTIONS}
    options.pop("presets", None)  # the registry's list for the console's picker, not a setting
    preset = options.pop("preset", None) or config.preset or DEFAULT_PRESET
    if not isinstance(preset, str):
        raise ConfigError(f"option 'preset' should be a preset name or a TOML path, got {preset!r}")
    lonpt = load_config(preset, options, source="[options] / --set")
    defaults = RunConfig.__dataclass_fields__
    values: dict[str, Any] = {}

    def default_of(name: str) -> Any:
        f = defaults[name]
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    # RunConfig field -> LONPT key. Flags defaulting to None count as set when not None.
    pairs = {
        "data": "dataset_path",
        "learning_rate": "learning_rate",
        "micro_batch": "batch_size",
        "seq_len": "max_length",
        "max_samples": "dataset_cap",
        "seed": "seed",
        "weight_decay": "weight_decay",
        "grad_clip": "gradient_clip",
        "device": "device",
        "log_every": "log_every",
        "eval_max_batches": "val_max_batches",
        "profile": "profile",
    }
    for run_key, lonpt_key in pairs.items():
        run_value = getattr(config, run_key)
        if run_value is not None and run_value != default_of(run_key):
            values[lonpt_key] = run_value
    if values:
        lonpt = LonptConfig.from_dict(values, source="command line", base=lonpt)
    run_values = {run_key: getattr(lonpt, lonpt_key) for run_key, lonpt_key in pairs.items()}
    opts = {k: v for k, v in lonpt.to_dict().items() if v is not None}
    opts.update(engine_options)
    data = config.to_dict()
    data.update(run_values)
    data["trainer"] = "lonpt"
    data["preset"] = _preset_label(preset)
    data["options"] = opts
    return RunConfig.from_dict(data, "LONPT run config"), lonpt


def _preset_label(preset: str) -> str:
    path = preset_path(preset)
    return path.stem if path.parent == Path(__file__).parent / "presets" else str(path)


# ==============================================================================================
# Curriculum position (what resume needs to continue a cycle/domain)
# ==============================================================================================


@dataclass
class Position:
    """Where the curriculum is. ``order`` is fixed when a cycle starts."""

    cycle: int = 0  # 0-based
    order: list[str] = field(default_factory=list)
    index: int = 0  # position in ``order``
    started: bool = False  # the current domain pass has begun (domain_change emitted)
    epoch: int = 0  # 0-based epoch within the pass
    epoch_started: bool = False
    local_step: int = 0  # steps of this domain pass (the log's "Step 0025")
    epoch_steps: int = 0
    epoch_start: list[int] = field(default_factory=lambda: [0, 0])  # loader (epoch, position)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Position:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ==============================================================================================
# The trainer
# ==============================================================================================


class LonptTrainer(Trainer):
    """LONPT on the shared engine: AKAP domains, PNCEC phases, ACT batch, HPF layers, rails."""

    supports_early_stop = False  # validation is per domain, with per-domain best checkpoints

    name = "lonpt"
    description = "LONPT: domain curriculum, cyclic LR phases, memory-targeted batch, low-rank FFN"

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
        memory_reader: MemoryReader | None = None,
    ) -> None:
        config, self.lonpt = resolve_run_config(config)
        super().__init__(config, model_config, events=events, events_stdout=events_stdout,
                         listeners=listeners, control=control, dist=dist)
        cfg = self.lonpt
        self.schedule = PhaseSchedule(cfg.pncec_enable, cfg.pncec_cycle_length,
                                      cfg.pncec_compression_scale, cfg.pncec_expansion_scale)
        self.rails = SafetyRails(cfg.rail_spike_factor, cfg.rail_max_nonfinite,
                                 cfg.rail_update_ratio)
        self._memory_reader = memory_reader
        self.act = BatchController(cfg.batch_size, cfg.target_memory_utilization,
                                   cfg.act_probe_steps, cfg.act_max_growth,
                                   cfg.act_keep_effective_batch, cfg.act_enable)
        self.domains: list[Domain] = []
        self.loaders: dict[str, Any] = {}
        self.domain_val_pairs: dict[str, list[Any]] = {}
        self._domain_val_batches: dict[str, list[dict[str, Tensor]]] = {}
        self._domain_eval_pairs: dict[str, list[Any]] = {}
        self.position = Position()
        self.domain_best: dict[str, float] = {}
        self.domain_last: dict[str, float] = {}
        self.domain_checkpoints: dict[str, list[str]] = {}
        self.hpf_report: HPFReport | None = None
        self.current_domain: str | None = None
        self.step_cap: int | None = None
        self._resume_ckpt: Any = None
        self._snapshot: tuple[dict[str, Tensor], dict[str, Any], int] | None = None
        self._seen_skipped = 0
        self._monitor: UpdateMonitor | None = None
        # Samples per optimizer step after ACT's probe (its last choice), for the total estimate.
        self._act_per_step: int | None = None

    # -- setup ---------------------------------------------------------------------------------

    def default_learning_rate(self) -> float:
        return self.lonpt.learning_rate

    def resolve_model_config(self, resume: Any) -> Any:
        self._resume_ckpt = resume  # build_model needs its HPF structure
        return super().resolve_model_config(resume)

    def build_data(self) -> None:
        """AKAP: fraction → domains → per-domain 80/20 split → encoded pairs and loaders."""
        from core.data.formatting import encode_styles_sample
        from core.data.loader import BatchLoader
        from core.data.sample import corpus_manifest
        from core.data.styles import is_validation

        cfg = self.lonpt
        path = self.resolve_data_path()
        self.data_path = str(path)
        from core.data.formats import read_samples

        # Any supervised format (styles.jsonl, Alpaca, ShareGPT, messages, ...); plain text is
        # refused in one line: AKAP assigns domains per sample.
        samples = read_samples(path, self.config.data_format, who="LONPT (AKAP assigns a domain "
                               "to each sample)")
        from core.data.extras import input_coverage

        # Triples, images and tasks in the records feed their modules (issue 17), as in the
        # simple trainer.
        self.input_coverage = input_coverage(samples)
        self.input_vocab = self.build_input_vocab(samples)
        chosen = select_fraction(samples, cfg.dataset_fraction, cfg.dataset_cap, cfg.seed)
        if cfg.akap_enable:
            assigned = assign_domains(chosen, cfg.domain_names, cfg.akap_assignment,
                                      cfg.akap_style_map, cfg.akap_default_domain, cfg.seed)
        else:
            assigned = {ALL_DOMAIN: list(chosen)}
        self.domains = build_domains(assigned, cfg.max_length, is_validation)
        self.loaders = {}
        self.domain_val_pairs = {}
        domain_train: dict[str, list[Any]] = {}
        for d in self.domains:
            vocab, src = self.input_vocab, str(path)
            train_pairs = [encode_styles_sample(s, self.tokenizer, self.seq_len, vocab, src)
                           for s in d.train]
            self.domain_val_pairs[d.name] = [
                encode_styles_sample(s, self.tokenizer, self.seq_len, vocab, src) for s in d.val
            ]
            if len(train_pairs) < self.world_size:
                raise DataError(
                    f"AKAP domain {d.name!r} has {len(train_pairs)} training samples for "
                    f"{self.world_size} ranks; raise dataset_fraction"
                )
            domain_train[d.name] = train_pairs
        pack_length = self.resolve_packing([p for ps in domain_train.values() for p in ps])
        for d in self.domains:
            self.loaders[d.name] = BatchLoader(domain_train[d.name], self.micro_batch,
                                               seed=cfg.seed + d.index, rank=self.rank,
                                               world_size=self.world_size, pack_length=pack_length)
        self.val_pairs = [p for pairs in self.domain_val_pairs.values() for p in pairs]
        self.train_loader = None  # set to the current domain's loader by the loop
        self.act.batch_size = self.micro_batch
        self.act.base_grad_accum = self.grad_accum
        self.act.micro_batch, self.act.grad_accum = self.micro_batch, self.grad_accum
        estimate = self._estimate_total_steps()
        if self.config.steps != RunConfig.steps and self.config.steps < estimate:
            self.step_cap = self.config.steps  # an explicit --steps cuts the curriculum
        self.total_steps = self.step_cap or estimate
        self.corpus = corpus_manifest([path])
        self.corpus["train_samples"] = sum(len(d.train) for d in self.domains)
        self.corpus["val_samples"] = sum(len(d.val) for d in self.domains)
        self.corpus["domains"] = {d.name: len(d.samples) for d in self.domains}
        self.record_prompt_format([p for loader in self.loaders.values() for p in loader.pairs])

    def _estimate_total_steps(self) -> int:
        """cycles × Σ_domains epochs × min(steps_per_domain, ⌈train/(b·accum)⌉) at the start batch."""
        cfg = self.lonpt
        per_step = self.micro_batch * self.grad_accum * self.world_size
        per_cycle = sum(
            cfg.epochs_per_domain * min(cfg.steps_per_domain, math.ceil(len(d.train) / per_step))
            for d in self.domains
        )
        return max(1, cfg.domain_cycles * per_cycle)

    def build_model(self) -> nn.Module:
        """The backbone, optionally initialised from ``init_from``, then the HPF rewrite pass."""
        model = super().build_model()
        cfg = self.lonpt
        recorded = self._recorded_hpf(self._resume_ckpt)
        if self._resume_ckpt is not None:
            if recorded:
                apply_structure(model, recorded)
            return model
        if cfg.init_from:
            self._load_init_weights(model, cfg.init_from)
        if cfg.hpf_enable:
            init = cfg.hpf_init
            if init == "auto":
                init = "svd" if cfg.init_from else "fresh"
            self.hpf_report = apply_hpf(model, cfg.hpf_lowrank_ratio, cfg.hpf_targets, init)
        return model

    @staticmethod
    def _recorded_hpf(loaded: Any) -> dict[str, int]:
        if loaded is None:
            return {}
        controllers = loaded.trainer_state.get("controllers") or {}
        return {str(k): int(v) for k, v in ((controllers.get("hpf") or {}).get("structure") or {}).items()}

    def _load_init_weights(self, model: nn.Module, source: str) -> None:
        loaded = load_checkpoint(Path(source).expanduser(), device="cpu", load_optimizer=False)
        state = loaded.model_state
        structure = self._recorded_hpf(loaded)
        if structure:
            state = densify_state_dict(state, structure)
        try:
            load_model_state(model, state, loaded.path / "model.safetensors")
        except RuntimeError as exc:  # shape mismatch: a different profile
            raise CheckpointError(
                f"{loaded.path}: init_from weights do not fit this model ({str(exc)[:200]}); "
                "use the checkpoint's profile"
            ) from exc

    def build_optimizer(self) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer()
        if self.lonpt.act_enable:
            # The target must at least hold weights, gradients and optimizer state (§5.5).
            check_target(self.lonpt.target_memory_utilization, static_bytes(self.model),
                         device_capacity(self.device), self.device.type)
            if self._memory_reader is None:
                if self.device.type == "cuda":
                    self._memory_reader = cuda_memory_reader(self.model, optimizer, self.device)
                else:
                    self._memory_reader = cpu_memory_reader(self.model, optimizer)
            self.act.reader = self._agreed_reading
        return optimizer

    def _agreed_reading(self) -> Any:
        """The memory reading, made identical on every rank (worst peak, smallest capacity) so
        ACT picks one micro-batch for all of them (the loader needs equal per-rank batches)."""
        assert self._memory_reader is not None
        reading = self._memory_reader()
        if self.dist is None or self.world_size <= 1:
            return reading
        import torch.distributed as tdist

        from lonpt.act import MemoryReading

        both = torch.tensor([reading.peak, reading.static, -reading.total], dtype=torch.float64,
                            device=self.device)
        tdist.all_reduce(both, op=tdist.ReduceOp.MAX)
        return MemoryReading(int(both[0]), int(both[1]), int(-both[2]))

    def resolved_config(self) -> RunConfig:
        data = super().resolved_config().to_dict()
        data.update(steps=self.total_steps, warmup_steps=0, micro_batch=self.lonpt.batch_size)
        return RunConfig.from_dict(data, "resolved LONPT run config")

    def emit(self, type: str, **fields: Any) -> dict[str, Any] | None:
        """Adds the LONPT context the log needs (domain, cycle, HPF/AKAP summary, output dir)."""
        if type in ("batch_change", "checkpoint", "warning", "phase_change") and self.current_domain:
            fields.setdefault("domain", self.current_domain)
            fields.setdefault("cycle", self.position.cycle + 1)
        if type == "run_started":
            fields["metrics"] = self._start_summary()
        if type == "run_finished":
            fields.setdefault("checkpoint_dir", str(self.output_dir()))
        return super().emit(type, **fields)

    def _start_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "domains": {d.name: {"samples": len(d.samples), "train": len(d.train),
                                 "val": len(d.val), "tokens": d.tokens} for d in self.domains},
            "cycles": self.lonpt.domain_cycles,
        }
        report = self.hpf_report
        if report is not None:
            summary["hpf"] = report.to_dict()
        elif hpf_structure(self.model):
            summary["hpf"] = {"structure": hpf_structure(self.model), "resumed": True}
        return summary

    def output_dir(self) -> Path:
        """Where the per-domain best checkpoints are: ``checkpoint_dir`` or RUN_DIR/checkpoints."""
        if self.lonpt.checkpoint_dir:
            return Path(self.lonpt.checkpoint_dir).expanduser()
        return self.run_dir / CHECKPOINTS_DIR

    # -- the plan: total steps, evaluations, checkpoints ----------------------------------------

    def set_micro_batch(self, micro_batch: int, grad_accum: int, reason: str = "") -> None:
        """The engine's batch change; ACT's choice changes the steps the curriculum takes, so
        the total is re-estimated (``total_changed``)."""
        super().set_micro_batch(micro_batch, grad_accum, reason)
        if reason == "act":
            self._act_per_step = micro_batch * grad_accum * self.world_size
        label = f"ACT micro-batch {micro_batch}" if reason == "act" else (reason or "batch change")
        self._revise_total(label)

    def _revise_total(self, reason: str) -> None:
        if not self._setup_done or not self.domains:
            return
        steps, _ = self._plan()
        self.announce_total(max(self.global_step, self.global_step + steps), reason)

    def planned_evaluations(self) -> int:
        """One validation per domain pass still to come (the current one included)."""
        return self._plan()[1] if self.domains else 0

    def planned_checkpoints(self) -> int:
        """LONPT saves on a domain's improvement (not planned) and once at the end."""
        return 1 if self.total_steps > self.global_step else 0

    def planned_eval_batches(self) -> int | None:
        if not self.domains:
            return None
        sizes = [len(self.domain_validation_batches(d.name)) for d in self.domains]
        return max(1, round(sum(sizes) / len(sizes)))

    def _plan(self) -> tuple[int, int]:
        """(optimizer steps, domain passes) left in the curriculum: the current pass from its
        loader position, later passes from their sizes; the first ``act_probe_steps`` steps of a
        pass at ``batch_size``, the rest at ACT's last choice; cut by an explicit ``--steps``."""
        cfg = self.lonpt
        pos = self.position
        start = cfg.batch_size * self.act.base_grad_accum * self.world_size
        later = self._act_per_step or start
        probe = cfg.act_probe_steps if cfg.act_enable else 0
        passes: list[int] = []
        if pos.cycle < cfg.domain_cycles:
            names = pos.order or [d.name for d in self.domains]
            index = pos.index
            if pos.started and index < len(names):
                passes.append(self._current_pass_left(names[index], start, later, probe))
                index += 1
            for name in names[index:]:
                passes.append(self._pass_steps(len(self.loaders[name]), start, later, probe))
            for _ in range(pos.cycle + 1, cfg.domain_cycles):
                for d in self.domains:
                    passes.append(self._pass_steps(len(self.loaders[d.name]), start, later, probe))
        steps = count = 0
        for n in passes:
            if self.step_cap is not None and self.global_step + steps >= self.step_cap:
                break
            steps += n
            count += 1
        if self.step_cap is not None:
            steps = max(0, min(steps, self.step_cap - self.global_step))
        return steps, count

    def _pass_steps(self, n: int, first: int, later: int, probe: int) -> int:
        """Steps of a fresh domain pass over ``n`` training samples."""
        cfg = self.lonpt
        total = 0
        for epoch in range(cfg.epochs_per_domain):
            if epoch == 0 and probe and n > probe * first:
                steps = probe + math.ceil((n - probe * first) / later)
            elif epoch == 0 and probe:
                steps = math.ceil(n / first)
            else:
                steps = math.ceil(n / later)
            total += min(cfg.steps_per_domain, steps)
        return total

    def _current_pass_left(self, name: str, start: int, later: int, probe: int) -> int:
        """Steps left in the pass under way, from its loader's position."""
        cfg = self.lonpt
        pos = self.position
        loader = self.loaders[name]
        n = len(loader)
        if pos.epoch == 0 and not pos.epoch_started:
            return self._pass_steps(n, start, later, probe)
        now = self.micro_batch * self.grad_accum * self.world_size
        after_probe = now if (self.act.probed or not cfg.act_enable) else later
        left, epochs_after = 0, cfg.epochs_per_domain - pos.epoch
        if pos.epoch_started:
            start_epoch, start_pos = pos.epoch_start
            consumed = (loader.epoch - start_epoch) * n + loader.position - start_pos
            rest = max(0, n - consumed)
            probe_left = 0 if after_probe == now else max(0, probe - self.act.steps_in_domain)
            if probe_left and rest > probe_left * now:
                this = probe_left + math.ceil((rest - probe_left * now) / after_probe)
            else:
                this = math.ceil(rest / now)
            left = min(cfg.steps_per_domain - pos.epoch_steps, this)
            epochs_after -= 1
        return left + epochs_after * min(cfg.steps_per_domain, math.ceil(n / after_probe))

    # -- the loop ------------------------------------------------------------------------------

    def train(self) -> str:
        """Cycles → domains → epochs → steps; then the engine's finish (final checkpoint)."""
        self.control.install_signal_handlers()
        stopped = False
        self._revise_total("curriculum position")  # a resumed run's real remainder
        try:
            stopped = self._run_curriculum()
        except StopTraining:
            stopped = True
        finally:
            self.control.restore_signal_handlers()
        return self._finish(stopped)

    def _run_curriculum(self) -> bool:
        cfg = self.lonpt
        pos = self.position
        if self.global_step == 0:
            self.emit("phase_change", phase=self.schedule.phase_at(1),
                      lr_scale=self.schedule.scale_at(1), global_step=0)
        while pos.cycle < cfg.domain_cycles:
            if not pos.order:
                ordered = order_domains(self.domains, cfg.akap_order, self.domain_last)
                pos.order = [d.name for d in ordered]
            by_name = {d.name: d for d in self.domains}
            while pos.index < len(pos.order):
                if self._reached_cap():
                    return False
                domain = by_name[pos.order[pos.index]]
                if self._train_domain(domain):
                    return True
                self._validate_domain(domain)  # a pass cut by --steps is validated too
            pos.cycle += 1
            pos.order, pos.index = [], 0
        self.current_domain = None
        return False

    def _reached_cap(self) -> bool:
        return self.step_cap is not None and self.global_step >= self.step_cap

    def _train_domain(self, domain: Domain) -> bool:
        """One domain pass; True when a stop was requested."""
        cfg = self.lonpt
        pos = self.position
        loader = self.loaders[domain.name]
        self.train_loader = loader
        self.current_domain = domain.name
        if not pos.started:
            pos.started, pos.epoch, pos.local_step, pos.epoch_started = True, 0, 0, False
            change = self.act.start_domain()
            if change is not None:
                self.set_micro_batch(change.micro_batch, change.grad_accum, change.reason)
            reset_peak(self.device)
        loader.set_batch_size(self.micro_batch)
        self.metrics.reset()  # validation time is not training time
        self._take_snapshot()
        while pos.epoch < cfg.epochs_per_domain:
            if not pos.epoch_started:
                pos.epoch_started, pos.epoch_steps = True, 0
                pos.epoch_start = [loader.epoch, loader.position]
                self.emit(
                    "domain_change", domain=domain.name, cycle=pos.cycle + 1,
                    cycles=cfg.domain_cycles, cycle_start=pos.index == 0 and pos.epoch == 0,
                    tokens=domain.tokens, epoch=pos.epoch + 1, epochs=cfg.epochs_per_domain,
                    global_step=self.global_step,
                )
            while pos.epoch_steps < cfg.steps_per_domain and not self._epoch_done(loader):
                if self._reached_cap():
                    break
                if self._handle_control():
                    return True
                self._one_step()
                self._after_lonpt_step()
            pos.epoch += 1
            pos.epoch_started = False
            if self._reached_cap():
                break
        if pos.local_step % cfg.log_every != 0 and pos.local_step > 0:
            self._emit_step()  # the pass's last steps get their own line
        return False

    def _epoch_done(self, loader: Any) -> bool:
        """One epoch = one full pass over the domain's training split from where it started."""
        if self.position.epoch_steps == 0:
            return False
        start_epoch, start_pos = self.position.epoch_start
        consumed = (loader.epoch - start_epoch) * len(loader) + loader.position - start_pos
        return consumed >= len(loader)

    def _after_lonpt_step(self) -> None:
        pos = self.position
        self.global_step += 1
        pos.local_step += 1
        pos.epoch_steps += 1
        self.on_step_end(self.global_step, self._last_step_loss)
        if pos.local_step % self.lonpt.log_every == 0:
            self._emit_step()

    # -- controllers through the engine's extension points -------------------------------------

    def lr_at(self, step: int) -> float:
        """Constant base × PNCEC scale of the step being taken (1-based) × rail multiplier."""
        return self.base_lr * self.schedule.scale_at(step + 1) * self.rails.lr_multiplier

    def step_event_extra(self) -> dict[str, Any]:
        return {
            "step": self.position.local_step,
            "phase": self.schedule.phase_at(self.global_step),
            "domain": self.current_domain,
            "cycle": self.position.cycle + 1,
        }

    def optimizer_step(self, loss_sum: Tensor) -> tuple[Tensor, bool]:
        """The engine's step; on logged steps the update-norm monitor watches it (§5.7)."""
        watch = (self.position.local_step + 1) % self.lonpt.log_every == 0
        if watch:
            if self._monitor is None:
                self._monitor = UpdateMonitor(self.model.named_parameters(),
                                              self.lonpt.rail_update_ratio)
            self._monitor.before()
        grad_norm, applied = super().optimizer_step(loss_sum)
        if watch and self._monitor is not None:
            over = self._monitor.after() if applied else []
            if over:
                name, ratio = over[0]
                more = f" and {len(over) - 1} more" if len(over) > 1 else ""
                self.emit("warning", code="rail_update_norm", global_step=self.global_step + 1,
                          message=f"[Rails] large update at step {self.global_step + 1}: "
                                  f"|dW|/|W| = {ratio:.3f} in {name}{more} "
                                  f"(limit {self.lonpt.rail_update_ratio:g})")
        return grad_norm, applied

    def on_step_end(self, step: int, loss: Tensor | None) -> None:
        applied = self.nonfinite_skipped == self._seen_skipped
        self._seen_skipped = self.nonfinite_skipped
        value = self._agreed_loss(loss)
        verdict = self.rails.check(value, grads_finite=applied)
        if verdict.action == ROLLBACK:
            self._rollback(verdict.reason)
        if self.schedule.changes_at(step + 1) and step + 1 <= self.total_steps:
            self.emit("phase_change", phase=self.schedule.phase_at(step + 1),
                      lr_scale=self.schedule.scale_at(step + 1), global_step=step)
        change = self.act.after_step()
        if change is not None:
            self.set_micro_batch(change.micro_batch, change.grad_accum, change.reason)

    def _agreed_loss(self, loss: Tensor | None) -> float:
        """The step loss the rails judge: the mean over ranks, so every rank decides alike."""
        if loss is None:
            return float("nan")
        if self.dist is None or self.world_size <= 1:
            return float(loss)
        import torch.distributed as tdist

        value = loss.detach().float().reshape(1).to(self.device)
        tdist.all_reduce(value)
        return float(value) / self.world_size

    def handle_oom(self, exc: BaseException) -> bool:
        """Out of memory: halve the micro-batch, double accumulation, free the cache, retry."""
        try:
            change = self.act.on_oom()
        except MemoryError as err:
            self.emit("warning", code="act_oom", global_step=self.global_step,
                      message=f"[ACT] {err}")
            return False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.set_micro_batch(change.micro_batch, change.grad_accum, change.reason)
        return True

    # -- rails: snapshot and rollback ----------------------------------------------------------

    def _take_snapshot(self) -> None:
        """Model and optimizer state at the domain start, on the CPU (the rollback target)."""
        assert self.optimizer is not None
        model = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        optim = _clone_tree(self.optimizer.state_dict())
        self._snapshot = (model, optim, self.global_step)

    def _rollback(self, reason: str) -> None:
        assert self.optimizer is not None and self._snapshot is not None
        model, optim, step = self._snapshot
        self.model.load_state_dict(model)
        self.optimizer.load_state_dict(_clone_tree(optim))
        self.optimizer.zero_grad(set_to_none=True)
        multiplier = self.rails.on_rollback()
        self.emit(
            "warning", code="rail_rollback", global_step=self.global_step,
            message=f"[Rails] {reason}: restored the weights of the start of domain "
                    f"'{self.current_domain}' (step {step}); learning-rate multiplier -> "
                    f"{multiplier:g}",
        )

    # -- validation and checkpoints ------------------------------------------------------------

    def domain_validation_batches(self, name: str) -> list[dict[str, Tensor]]:
        """Fixed batches of the domain's validation split (≤ val_max_batches × batch_size)."""
        if name not in self._domain_val_batches:
            from core.data.loader import collate_packed

            b = self.lonpt.batch_size
            pairs = sorted(self.domain_val_pairs[name], key=len)
            limit = self.lonpt.val_max_batches * b
            if len(pairs) > limit:
                stride = len(pairs) / limit
                pairs = sorted((pairs[int(i * stride)] for i in range(limit)), key=len)
            self._domain_eval_pairs[name] = pairs
            self._domain_val_batches[name] = [collate_packed(pairs[i:i + b], self.pack_length,
                                                             with_target_bytes=True,
                                                             image_shape=self.image_shape)
                                              for i in range(0, len(pairs), b)]
        return self._domain_val_batches[name]

    def baseline_pairs(self) -> tuple[list[Any], list[Any]]:
        """Every domain's training pairs, and the pairs all the domain validations score."""
        for name in self.domain_val_pairs:
            self.domain_validation_batches(name)
        train = [p for loader in self.loaders.values() for p in loader.pairs]
        val = [p for name in self.domain_val_pairs for p in self._domain_eval_pairs[name]]
        return train, val

    def _validate_domain(self, domain: Domain) -> None:
        """Validate, move the position on, save a new per-domain best, emit the eval event."""
        pos = self.position
        self.set_activity("evaluating")
        t0 = time.perf_counter()
        result = self.evaluate(self.domain_validation_batches(domain.name))
        duration = time.perf_counter() - t0
        loss = result["loss"]
        previous = self.domain_best.get(domain.name)
        improved = math.isfinite(loss) and (previous is None or loss < previous)
        self.domain_last[domain.name] = loss
        self.last_val_loss = loss
        self.last_eval_step = self.global_step
        # The checkpoint below must resume at the next domain, so the position moves first.
        pos.index += 1
        pos.started, pos.epoch, pos.local_step, pos.epoch_started = False, 0, 0, False
        cycle = pos.cycle + 1
        overall = improved and (self.best_val_loss is None or loss < self.best_val_loss)
        if improved:
            self.domain_best[domain.name] = loss
            if overall:
                self.best_val_loss = loss
            name = f"lonpt_{domain.name}_{self.global_step:06d}"
            path = self.save_checkpoint(name, best=overall, val_loss=loss, reason="best")
            self._keep_domain_checkpoint(domain.name, name, path)
        # ``best`` is the run's best over every domain; a domain's own best is
        # ``best_of_domain`` (the log's "✓ BEST"), so renderers never mix the two.
        self.emit(
            "eval", loss=loss, perplexity=result["perplexity"], bpb=result.get("bpb"),
            best=overall, best_of_domain=improved, best_loss=loss if improved else previous,
            domain=domain.name, cycle=cycle, global_step=self.global_step,
            metrics={"tokens": result["tokens"]}, duration_s=round(duration, 3),
            **self.reference_baselines(),
        )
        if self.samples_due():
            self.emit_samples()
        self._revise_total("domain pass validated")

    def _keep_domain_checkpoint(self, domain: str, name: str, path: Path) -> None:
        kept = self.domain_checkpoints.setdefault(domain, [])
        if name not in kept:
            kept.append(name)
        if self.is_main and self.lonpt.checkpoint_dir:
            _publish(path, self.output_dir())
        keep = self.lonpt.keep_per_domain
        while keep is not None and len(kept) > keep:
            old = kept.pop(0)
            if self.is_main:
                for root in {self.run_dir / CHECKPOINTS_DIR, self.output_dir()}:
                    shutil.rmtree(root / old, ignore_errors=True)

    # -- state ---------------------------------------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        return {
            "lonpt_version": STATE_VERSION,
            "position": self.position.to_dict(),
            "domains": [d.name for d in self.domains],
            "loaders": {name: loader.state_dict() for name, loader in self.loaders.items()},
            "act": self.act.state_dict(),
            "rails": self.rails.state_dict(),
            "domain_best": dict(self.domain_best),
            "domain_last": dict(self.domain_last),
            "domain_checkpoints": {k: list(v) for k, v in self.domain_checkpoints.items()},
            "hpf": {"structure": hpf_structure(self.model),
                    "ratio": self.lonpt.hpf_lowrank_ratio},
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state or "position" not in state:
            raise CheckpointError(
                "the checkpoint was not written by the LONPT trainer (no curriculum position); "
                "resume it with its own trainer, or start LONPT from its weights with "
                "--set init_from=PATH"
            )
        names = [d.name for d in self.domains]
        if list(state.get("domains", [])) != names:
            raise CheckpointError(
                f"the checkpoint's AKAP domains {state.get('domains')} differ from this run's "
                f"{names}; resume with the same preset and data"
            )
        self.position = Position.from_dict(state["position"])
        for name, loader_state in (state.get("loaders") or {}).items():
            self.loaders[name].load_state_dict(loader_state)
        self.act.load_state_dict(state.get("act") or self.act.state_dict())
        self.rails.load_state_dict(state.get("rails") or {})
        self.domain_best = {k: float(v) for k, v in (state.get("domain_best") or {}).items()}
        self.domain_last = {k: float(v) for k, v in (state.get("domain_last") or {}).items()}
        self.domain_checkpoints = {k: list(v) for k, v in
                                   (state.get("domain_checkpoints") or {}).items()}
        self._seen_skipped = self.nonfinite_skipped


def _clone_tree(obj: Any) -> Any:
    """Deep copy of a state dict: tensors cloned to the CPU, containers rebuilt."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tree(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone_tree(v) for v in obj)
    return obj


def _publish(src: Path, out_dir: Path) -> Path:
    """Copy a checkpoint into ``checkpoint_dir`` (hard links when possible), atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / src.name
    if dest.resolve() == src.resolve():
        return dest
    tmp = out_dir / f".{src.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, tmp, copy_function=link_or_copy)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest
