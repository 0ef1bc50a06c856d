"""Pick the largest size profile that fits this machine, and say why for every profile.

For each profile, in order, the picker tries (training.md §4):

1. the profile's own settings (micro-batch, accumulation, checkpointing) with the simple trainer;
2. a smaller micro-batch with more accumulation (the effective batch stays the same);
3. gradient checkpointing (at the profile's micro-batch, then smaller ones);
4. the compressed trainer (without, then with checkpointing);

and stops at the first that fits ``(1 − margin) × free`` memory of the device (free VRAM on a
GPU, available RAM on the CPU). The largest profile that fits wins. With several identical GPUs
the plan is data-parallel (one replica each, "ddp"); a larger profile that only fits with its
model state split across them gets the sharded plan ("fsdp"). On the CPU a profile must also
finish its step budget in reasonable time (:data:`CPU_MAX_HOURS`).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from profiles.estimate import (
    GiB,
    MemoryEstimate,
    estimate_inference_memory,
    estimate_training_memory,
    parameter_facts,
    shard_estimate,
)

if TYPE_CHECKING:
    from profiles.catalog import SizeProfile
    from profiles.hardware import GpuInfo, HardwareInfo

# Dense matmul rate per core measured on this project's reference machine (2-core AMX Xeon,
# torch 2.13 CPU: 0.38 TFLOP/s fp32, 2.3 TFLOP/s bf16 for 2 cores — GUIDE.md), and the share of
# it a whole training step reaches (attention, norms, the optimizer, Python overhead).
CPU_MATMUL_FLOPS_PER_CORE = {"fp32": 0.19e12, "bf16": 1.15e12}
CPU_TRAINING_EFFICIENCY = 0.3
CPU_MAX_HOURS = 8.0  # longer than this for the profile's step budget counts as "too slow"


@dataclass(frozen=True)
class ProfileVerdict:
    """Whether one profile fits, how, and the estimate behind the answer."""

    name: str
    fits: bool
    detail: str
    estimate: MemoryEstimate | None
    params: int = 0
    status: str = "fits"  # fits | smaller-batch | checkpointing | compressed | sharded | too-slow | no-fit
    micro_batch: int = 1
    grad_accum: int = 1
    checkpointing: bool = False
    trainer: str = "simple"
    plan: str = "single"


@dataclass(frozen=True)
class DeviceChoice:
    """The best profile for one GPU on its own (multi-GPU machines)."""

    gpu: int
    name: str
    free: int
    profile: str | None
    detail: str


@dataclass(frozen=True)
class ProfilePick:
    """The recommendation: profile, device, batch layout, trainer, plan, and every reason."""

    profile: SizeProfile
    device: str  # "cpu" or "cuda"
    micro_batch: int
    grad_accum: int
    checkpointing: bool
    trainer: str  # "simple" or "compressed"
    plan: str  # "single", "ddp" or "fsdp"
    reasons: list[ProfileVerdict]
    mode: str = "train"
    gpus: tuple[int, ...] = ()
    precision: str = "fp32"
    fits: bool = True
    budget: int = 0
    free: int = 0
    device_label: str = ""
    notes: list[str] = field(default_factory=list)
    per_device: list[DeviceChoice] = field(default_factory=list)

    @property
    def verdict(self) -> ProfileVerdict:
        """The verdict of the chosen profile."""
        return next(v for v in self.reasons if v.name == self.profile.name)

    @property
    def estimate(self) -> MemoryEstimate | None:
        """The chosen configuration's estimate (per device for FSDP)."""
        return self.verdict.estimate

    @property
    def summary(self) -> str:
        """One line: what was chosen, where, and why."""
        where = self.device_label or self.device
        extra = ""
        if self.plan == "ddp":
            extra = f", data-parallel over {len(self.gpus)} GPUs"
        elif self.plan == "fsdp":
            extra = f", sharded (FSDP) over {len(self.gpus)} GPUs"
        return f"{self.profile.name} on {where}{extra}: {self.verdict.detail}"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for ``aeron-tui profile --json``."""
        return {
            "profile": self.profile.name,
            "device": self.device,
            "gpus": list(self.gpus),
            "mode": self.mode,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "checkpointing": self.checkpointing,
            "trainer": self.trainer,
            "plan": self.plan,
            "precision": self.precision,
            "fits": self.fits,
            "budget_bytes": self.budget,
            "free_bytes": self.free,
            "device_label": self.device_label,
            "summary": self.summary,
            "notes": list(self.notes),
            "reasons": [
                {
                    "name": v.name,
                    "fits": v.fits,
                    "status": v.status,
                    "detail": v.detail,
                    "params": v.params,
                    "micro_batch": v.micro_batch,
                    "grad_accum": v.grad_accum,
                    "checkpointing": v.checkpointing,
                    "trainer": v.trainer,
                    "plan": v.plan,
                    "estimate": v.estimate.to_dict() if v.estimate else None,
                }
                for v in self.reasons
            ],
            "per_device": [vars(d) for d in self.per_device],
        }


def available_trainers() -> tuple[str, ...]:
    """Trainers present in this install (the compressed one once ``core.train.compressed`` exists)."""
    found = ["simple"]
    if importlib.util.find_spec("core.train.compressed") is not None:
        found.append("compressed")
    return tuple(found)


def gib(n: float) -> str:
    """Bytes as ``"3.1"`` GiB text."""
    return f"{n / GiB:.1f}"


# ------------------------------------------------------------------------ one device
@dataclass(frozen=True)
class _Device:
    kind: str  # "cpu" | "cuda"
    free: int
    precision: str
    label: str
    cores: int = 1


def _batch_layouts(micro_batch: int, grad_accum: int) -> list[tuple[int, int]]:
    """(micro_batch, grad_accum) from the profile's down to 1, keeping the effective batch."""
    effective = micro_batch * grad_accum
    layouts = []
    mb = micro_batch
    while mb >= 1:
        layouts.append((mb, max(1, math.ceil(effective / mb))))
        if mb == 1:
            break
        mb = max(1, mb // 2)
    return layouts


def _train_attempts(profile: SizeProfile, trainers: Sequence[str]) -> list[tuple[str, int, int, bool, str]]:
    """(status, micro_batch, grad_accum, checkpointing, trainer) in the order they are tried.

    Only the given trainers are tried; with the compressed trainer alone its attempts start at
    the profile's own layout.
    """
    t = profile.train
    layouts = _batch_layouts(t.micro_batch, t.grad_accum)
    attempts: list[tuple[str, int, int, bool, str]] = []
    if "simple" in trainers:
        attempts.append(("fits", t.micro_batch, t.grad_accum, t.gradient_checkpointing, "simple"))
        attempts += [
            ("smaller-batch", mb, ga, t.gradient_checkpointing, "simple") for mb, ga in layouts[1:]
        ]
        if not t.gradient_checkpointing:
            attempts += [("checkpointing", mb, ga, True, "simple") for mb, ga in layouts]
    if "compressed" in trainers:
        for ckpt in sorted({t.gradient_checkpointing, True}):
            attempts += [("compressed", mb, ga, ckpt, "compressed") for mb, ga in layouts]
    if not attempts:
        raise ValueError(f"no known trainer in {tuple(trainers)!r} (simple, compressed)")
    return attempts


def _describe(status: str, est: MemoryEstimate, budget: int, mb: int, ga: int, ckpt: bool,
              chosen_trainer: bool = False) -> str:
    """The verdict in words. ``chosen_trainer``: only the compressed trainer was tried (the user
    chose it), so it "fits with" rather than "needs" it."""
    used = f"({gib(est.total)} of {gib(budget)} GiB)"
    if status == "fits":
        return f"fits {used}"
    if status == "smaller-batch":
        return f"fits with micro-batch {mb} × {ga} accumulation {used}"
    if status == "checkpointing":
        batch = f", micro-batch {mb} × {ga}" if mb > 1 or ga > 1 else ""
        return f"needs gradient checkpointing{batch} {used}"
    with_ckpt = " with gradient checkpointing" if ckpt else ""
    verb = "fits with" if chosen_trainer else "needs"
    return f"{verb} the compressed trainer{with_ckpt}, micro-batch {mb} × {ga} {used}"


def _cpu_hours(profile: SizeProfile, device: _Device, trainable: int) -> float:
    t = profile.train
    tokens = t.max_steps * t.micro_batch * t.grad_accum * 2 * t.seq_len  # encoder + decoder
    rate = CPU_MATMUL_FLOPS_PER_CORE["bf16" if device.precision == "bf16" else "fp32"]
    return 6.0 * trainable * tokens / (device.cores * rate * CPU_TRAINING_EFFICIENCY) / 3600.0


def fit_profile(
    profile: SizeProfile,
    device: _Device,
    margin: float,
    mode: str = "train",
    trainers: Sequence[str] = ("simple",),
    vocab_size: int | None = None,
) -> ProfileVerdict:
    """The cheapest way ``profile`` fits ``device`` (or by how much it does not)."""
    budget = int((1.0 - margin) * device.free)
    model = profile.run_model
    facts = parameter_facts(model if vocab_size is None else replace(model, vocab_size=vocab_size))
    if mode == "infer":
        est = estimate_inference_memory(
            profile, batch=1, prompt_len=profile.train.seq_len, new_tokens=profile.train.seq_len,
            precision=device.precision, vocab_size=vocab_size, device=device.kind,
        )
        if est.total <= budget:
            return ProfileVerdict(profile.name, True, f"fits ({gib(est.total)} of {gib(budget)} GiB)",
                                  est, facts.total, "fits", 1, 1, False, "none")
        return ProfileVerdict(profile.name, False, f"does not fit by {gib(est.total - budget)} GiB "
                              f"(needs {gib(est.total)}, budget {gib(budget)} GiB)",
                              est, facts.total, "no-fit", 1, 1, False, "none")

    smallest: MemoryEstimate | None = None
    for status, mb, ga, ckpt, trainer in _train_attempts(profile, trainers):
        est = estimate_training_memory(
            profile, mb, profile.train.seq_len, device.precision,
            checkpointing=ckpt, vocab_size=vocab_size, device=device.kind, trainer=trainer,
        )
        if smallest is None or est.total < smallest.total:
            smallest = est
        if est.total <= budget:
            detail = _describe(status, est, budget, mb, ga, ckpt, "simple" not in trainers)
            if device.kind == "cpu":
                hours = _cpu_hours(profile, device, facts.trainable_text)
                if hours > CPU_MAX_HOURS:
                    with_trainer = " with the compressed trainer" if trainer == "compressed" else ""
                    return ProfileVerdict(
                        profile.name, False,
                        f"fits in RAM{with_trainer} ({gib(est.total)} of {gib(budget)} GiB) but "
                        f"too slow on this "
                        f"CPU: ~{hours:.0f} h for {profile.train.max_steps} steps",
                        est, facts.total, "too-slow", mb, ga, ckpt, trainer)
            return ProfileVerdict(profile.name, True, detail, est, facts.total, status, mb, ga, ckpt, trainer)
    assert smallest is not None
    how = "micro-batch 1" + (", checkpointing" if smallest.checkpointing else "")
    if smallest.trainer == "compressed":
        how += ", compressed trainer"
    return ProfileVerdict(
        profile.name, False,
        f"does not fit by {gib(smallest.total - budget)} GiB (needs {gib(smallest.total)} GiB "
        f"with {how}; budget {gib(budget)} GiB)",
        smallest, facts.total, "no-fit", smallest.micro_batch, 1, smallest.checkpointing,
        smallest.trainer)


def _choose(verdicts: list[ProfileVerdict]) -> ProfileVerdict | None:
    fitting = [v for v in verdicts if v.fits]
    return fitting[-1] if fitting else None


# ------------------------------------------------------------------------------ public
def pick_profile(
    hardware: HardwareInfo,
    mode: str = "train",
    profiles: Sequence[SizeProfile] | None = None,
    margin: float = 0.10,
    trainer_options: Sequence[str] | None = None,
    vocab_size: int | None = None,
) -> ProfilePick:
    """Recommend a profile, device, batch layout, trainer and plan for ``hardware``.

    ``profiles`` defaults to :func:`profiles.catalog.list_profiles` (sorted small → large);
    ``trainer_options`` to :func:`available_trainers`; ``vocab_size`` to each profile's own.
    """
    if mode not in ("train", "infer"):
        from core.errors import ConfigError

        raise ConfigError(f"mode must be 'train' or 'infer', got {mode!r}")
    if profiles is None:
        from profiles.catalog import list_profiles

        profiles = list_profiles()
    profiles = sorted(profiles, key=lambda p: parameter_facts(p.run_model).total)
    trainers = tuple(trainer_options) if trainer_options is not None else available_trainers()
    notes: list[str] = []
    gpus = hardware.usable_gpus if hardware.gpus else []
    if hardware.nvml_error:
        notes.append(hardware.gpu_status)
    for g in hardware.gpus:
        if g.error:
            notes.append(f"GPU {g.index} ({g.name}) is unavailable: {g.error}; not used")
    if gpus and not hardware.torch_cuda_available:
        notes.append(
            "NVIDIA GPU found but this torch build has no CUDA support; install a CUDA build of "
            "torch to use it. Picking for the CPU."
        )
        gpus = []
    for g in gpus:
        others = [p for p in g.processes if p.used_bytes and p.used_bytes > 0.25 * g.memory_total]
        for p in others:
            notes.append(
                f"GPU {g.index}: another process ({p.name}, pid {p.pid}) holds "
                f"{gib(p.used_bytes or 0)} GiB; {gib(g.memory_free)} of {gib(g.memory_total)} GiB free"
            )

    if not gpus:
        cpu = _Device(
            "cpu", hardware.ram_available, "bf16" if hardware.cpu.bf16_native else "fp32",
            f"CPU ({gib(hardware.ram_available)} GiB RAM available)",
            cores=hardware.cpu.physical_cores or hardware.cpu.logical_cores or 1,
        )
        return _single(profiles, cpu, (), margin, mode, trainers, vocab_size, notes)

    per_device = []
    for g in gpus:
        dev = _gpu_device(g)
        best = _choose([fit_profile(p, dev, margin, mode, trainers, vocab_size) for p in profiles])
        per_device.append(DeviceChoice(g.index, g.name, g.memory_free, best.name if best else None,
                                       best.detail if best else "no profile fits"))

    identical = len(gpus) >= 2 and all(
        g.name == gpus[0].name and abs(g.memory_total - gpus[0].memory_total) <= 0.01 * gpus[0].memory_total
        for g in gpus
    )
    if not identical:
        if len(gpus) >= 2:
            notes.append("GPUs differ; using the one with the most free memory")
        g = max(gpus, key=lambda g: g.memory_free)
        pick = _single(profiles, _gpu_device(g), (g.index,), margin, mode, trainers, vocab_size, notes)
        return replace(pick, per_device=per_device)
    return _multi(profiles, gpus, margin, mode, trainers, vocab_size, notes, per_device)


def _gpu_device(g: GpuInfo) -> _Device:
    return _Device(
        "cuda", g.memory_free, "bf16" if g.bf16 else "fp16",
        f"GPU {g.index} {g.name} ({gib(g.memory_free)} GiB free)",
    )


def _single(
    profiles: Sequence[SizeProfile], device: _Device, gpu_ids: tuple[int, ...], margin: float,
    mode: str, trainers: Sequence[str], vocab_size: int | None, notes: list[str],
) -> ProfilePick:
    verdicts = [fit_profile(p, device, margin, mode, trainers, vocab_size) for p in profiles]
    chosen = _choose(verdicts)
    fits = chosen is not None
    if chosen is None:  # nothing fits: recommend the smallest and say so
        chosen = verdicts[0]
        notes = notes + [f"no profile fits {device.label}; {chosen.name} shown as the smallest"]
    profile = next(p for p in profiles if p.name == chosen.name)
    return ProfilePick(
        profile=profile, device=device.kind, micro_batch=chosen.micro_batch,
        grad_accum=chosen.grad_accum, checkpointing=chosen.checkpointing, trainer=chosen.trainer,
        plan="single", reasons=verdicts, mode=mode, gpus=gpu_ids, precision=device.precision,
        fits=fits, budget=int((1 - margin) * device.free), free=device.free,
        device_label=device.label, notes=notes,
    )


def _multi(
    profiles: Sequence[SizeProfile], gpus: list[GpuInfo], margin: float, mode: str,
    trainers: Sequence[str], vocab_size: int | None, notes: list[str],
    per_device: list[DeviceChoice],
) -> ProfilePick:
    """Identical GPUs: a replica per GPU (DDP) or, for a larger profile, sharded state (FSDP)."""
    n = len(gpus)
    tightest = min(gpus, key=lambda g: g.memory_free)
    dev = replace(_gpu_device(tightest), label=f"{n}× {tightest.name} ({gib(tightest.memory_free)} GiB free each)")
    budget = int((1 - margin) * dev.free)
    verdicts: list[ProfileVerdict] = []
    for p in profiles:
        v = fit_profile(p, dev, margin, mode, trainers, vocab_size)
        if v.fits:
            # Data parallel: same micro-batch per GPU, accumulation shared out across them.
            if mode == "train":
                ga = max(1, math.ceil(v.grad_accum / n))
                v = replace(
                    v, plan="ddp", grad_accum=ga,
                    detail=f"{v.detail}; data-parallel: {n} GPUs × micro-batch {v.micro_batch} × {ga}",
                )
        elif mode == "train" and v.status != "too-slow":
            v = _try_fsdp(p, dev, n, budget, vocab_size) or v
        verdicts.append(v)
    chosen = _choose(verdicts)
    fits = chosen is not None
    if chosen is None:
        chosen = verdicts[0]
        notes = notes + [f"no profile fits {dev.label}; {chosen.name} shown as the smallest"]
    profile = next(p for p in profiles if p.name == chosen.name)
    return ProfilePick(
        profile=profile, device="cuda", micro_batch=chosen.micro_batch, grad_accum=chosen.grad_accum,
        checkpointing=chosen.checkpointing, trainer=chosen.trainer, plan=chosen.plan if fits else "single",
        reasons=verdicts, mode=mode, gpus=tuple(g.index for g in gpus), precision=dev.precision,
        fits=fits, budget=budget, free=dev.free, device_label=dev.label, notes=notes,
        per_device=per_device,
    )


def _try_fsdp(profile: SizeProfile, dev: _Device, n: int, budget: int, vocab_size: int | None) -> ProfileVerdict | None:
    """FSDP with the simple trainer: state split n ways, micro-batch down, then checkpointing."""
    t = profile.train
    for ckpt in sorted({t.gradient_checkpointing, True}):
        for mb, ga in _batch_layouts(t.micro_batch, t.grad_accum):
            est = estimate_training_memory(
                profile, mb, t.seq_len, dev.precision, checkpointing=ckpt, vocab_size=vocab_size,
                device="cuda", trainer="simple",
            )
            model = (profile.run_model if vocab_size is None
                     else replace(profile.run_model, vocab_size=vocab_size))
            sharded = shard_estimate(est, n, model)
            if sharded.total <= budget:
                ga_n = max(1, math.ceil(mb * ga / (mb * n)))
                ckpt_text = " with gradient checkpointing" if ckpt else ""
                return ProfileVerdict(
                    profile.name, True,
                    f"fits only sharded across {n} GPUs (FSDP){ckpt_text}, micro-batch {mb} "
                    f"({gib(sharded.total)} of {gib(budget)} GiB per GPU)",
                    sharded, est.params, "sharded", mb, ga_n, ckpt, "simple", "fsdp")
    return None
