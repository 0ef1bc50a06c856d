"""The picker on every recorded machine: the expected profile, and a reason for every profile."""

from __future__ import annotations

import dataclasses
import re

import pytest

from profiles.catalog import list_profiles, load_profile
from profiles.estimate import estimate_training_memory
from profiles.hardware import CpuInfo, GpuInfo, HardwareInfo
from profiles.pick import fit_profile, pick_profile

GiB = 1024**3
PROFILES = ("tiny", "small", "medium", "large", "default")

# (machine, profile, device, trainer, plan). Written from the estimator, checked against the
# spec: 80 GB trains large (even default) with plain AdamW; 24 GB cannot hold default and needs
# the compressed trainer plus checkpointing for large; an 8 GB card takes medium only with the
# compressed trainer; 2 cores without a GPU get the smoke-test size.
EXPECTED = [
    ("no-driver", "tiny", "cpu", "simple", "single"),
    ("driver-not-loaded", "tiny", "cpu", "simple", "single"),
    ("rtx-8gb", "medium", "cuda", "compressed", "single"),
    ("v100-16gb", "medium", "cuda", "simple", "single"),
    ("rtx-24gb", "large", "cuda", "compressed", "single"),
    ("a100-80gb", "default", "cuda", "simple", "single"),
    ("h200", "default", "cuda", "simple", "single"),  # the device machine: 3.7 B, micro-batch 4
    ("2x24gb", "large", "cuda", "compressed", "ddp"),
    ("busy-24gb", "small", "cuda", "simple", "single"),
    ("lost-midsession", "tiny", "cpu", "simple", "single"),
]


@pytest.mark.parametrize(("name", "profile", "device", "trainer", "plan"), EXPECTED)
def test_expected_pick_per_machine(machine, name, profile, device, trainer, plan) -> None:
    pick = pick_profile(machine(name))
    assert (pick.profile.name, pick.device, pick.trainer, pick.plan) == (profile, device, trainer, plan)
    assert pick.fits
    assert [v.name for v in pick.reasons] == list(PROFILES)
    for v in pick.reasons:  # every profile is explained
        assert re.match(r"(fits|needs|does not fit by [\d.]+ GiB|fits in RAM .* too slow)", v.detail), v.detail
    # Nothing larger than the pick fits; the pick fits the budget with the 10 % margin.
    chosen = PROFILES.index(profile)
    assert all(not v.fits for v in pick.reasons[chosen + 1:])
    assert pick.estimate is not None and pick.estimate.total <= 0.9 * pick.free


def test_cpu_pick_explains_missing_gpu_and_slow_sizes(machine) -> None:
    pick = pick_profile(machine("no-driver"))
    assert "no NVIDIA GPU detected (NVML Shared Library Not Found)" in pick.notes
    assert pick.device_label.startswith("CPU")
    small = next(v for v in pick.reasons if v.name == "small")
    assert small.status == "too-slow" and "too slow on this CPU" in small.detail
    faster = pick_profile(machine("no-driver", cores=64))
    assert faster.profile.name != "tiny"  # a big CPU is allowed a bigger model


def test_lost_and_busy_gpus_are_explained(machine) -> None:
    lost = pick_profile(machine("lost-midsession"))
    assert any("GPU 0 (NVIDIA GeForce RTX 3090) is unavailable: GPU is lost" in n for n in lost.notes)
    busy = pick_profile(machine("busy-24gb"))
    assert any("another process (python3, pid 31337) holds 20.4 GiB" in n for n in busy.notes)
    small = busy.verdict
    assert small.status == "smaller-batch" and small.micro_batch < load_profile("small").train.micro_batch
    assert small.micro_batch * small.grad_accum == load_profile("small").train.effective_batch
    assert small.detail.startswith(f"fits with micro-batch {small.micro_batch} × {small.grad_accum}")


def test_a100_trains_large_with_plain_adamw(machine) -> None:
    pick = pick_profile(machine("a100-80gb"))
    large = next(v for v in pick.reasons if v.name == "large")
    assert (large.status, large.trainer, large.checkpointing) == ("fits", "simple", False)


def test_24gb_cannot_hold_default_and_large_needs_compression(machine) -> None:
    pick = pick_profile(machine("rtx-24gb"))
    default = next(v for v in pick.reasons if v.name == "default")
    assert not default.fits and default.detail.startswith("does not fit by")
    simple_only = pick_profile(machine("rtx-24gb"), trainer_options=("simple",))
    assert simple_only.profile.name == "medium"


def test_identical_gpus_get_ddp_and_fsdp_when_only_sharding_fits(machine) -> None:
    ddp = pick_profile(machine("2x24gb"))
    assert ddp.gpus == (0, 1) and ddp.plan == "ddp"
    assert len(ddp.per_device) == 2 and all(d.profile == "large" for d in ddp.per_device)
    assert "data-parallel: 2 GPUs" in ddp.verdict.detail
    fsdp = pick_profile(machine("2x24gb"), trainer_options=("simple",))
    assert (fsdp.profile.name, fsdp.plan) == ("large", "fsdp")
    assert "fits only sharded across 2 GPUs (FSDP)" in fsdp.verdict.detail
    single = pick_profile(machine("rtx-24gb"), trainer_options=("simple",))
    assert single.profile.name == "medium"  # the same profile does not fit on one card


def test_inference_mode_fits_bigger_models(machine) -> None:
    pick = pick_profile(machine("rtx-8gb"), mode="infer")
    assert pick.mode == "infer" and pick.profile.name == "large"
    assert pick.estimate is not None and pick.estimate.kv_cache > 0


def _one_gpu(free: int) -> HardwareInfo:
    gpu = GpuInfo(0, "Test GPU", "GPU-test", 4 * free, free, 3 * free, compute_capability=(8, 0))
    cpu = CpuInfo("Test CPU", 2, 2, 2600.0, None, None, 0.0, True)
    return HardwareInfo(
        gpus=[gpu], cpu=cpu, ram_total=24 * GiB, ram_available=16 * GiB, swap_total=0,
        swap_used=0, disk_path="/", disk_total=0, disk_free=0, torch_cuda_available=True,
        bf16_supported=True,
    )


def _total(profile: str, mb: int, ckpt: bool, trainer: str) -> int:
    p = load_profile(profile)
    return estimate_training_memory(p, mb, p.train.seq_len, "bf16", checkpointing=ckpt,
                                    device="cuda", trainer=trainer).total


def test_order_smaller_batch_then_checkpointing_then_compressed() -> None:
    medium = load_profile("medium")
    # Budget between checkpointed and plain at micro-batch 1 -> checkpointing is what makes it fit.
    plain1, ckpt1 = _total("medium", 1, False, "simple"), _total("medium", 1, True, "simple")
    assert ckpt1 < plain1
    pick = pick_profile(_one_gpu(int((ckpt1 + plain1) / 2 / 0.9)), profiles=[medium],
                        trainer_options=("simple",))
    assert pick.verdict.status == "checkpointing" and pick.checkpointing
    assert pick.verdict.detail.startswith("needs gradient checkpointing")
    # Below every simple-trainer layout, the compressed trainer is tried before giving up.
    comp = _total("medium", 1, True, "compressed")
    assert comp < ckpt1
    free = int((comp + ckpt1) / 2 / 0.9)
    pick = pick_profile(_one_gpu(free), profiles=[medium], trainer_options=("simple", "compressed"))
    assert (pick.verdict.status, pick.trainer) == ("compressed", "compressed")
    # Without it: "does not fit by N GiB", N = smallest need - budget.
    pick = pick_profile(_one_gpu(free), profiles=[medium], trainer_options=("simple",))
    assert not pick.fits
    need = min(_total("medium", mb, c, "simple") for mb in (1, 2, 4) for c in (False, True))
    by = (need - int(0.9 * free)) / GiB
    assert pick.verdict.detail.startswith(f"does not fit by {by:.1f} GiB")


def test_margin_is_respected() -> None:
    tiny = load_profile("tiny")
    need = _total("tiny", tiny.train.micro_batch, False, "simple")
    dev_free = int(need / 0.9) + 1024
    assert pick_profile(_one_gpu(dev_free), profiles=[tiny]).verdict.status == "fits"
    assert pick_profile(_one_gpu(dev_free), profiles=[tiny], margin=0.3).verdict.status != "fits"


def test_every_fitting_layout_keeps_the_effective_batch(machine) -> None:
    for name in ("rtx-8gb", "busy-24gb", "a100-80gb"):
        for v in pick_profile(machine(name)).reasons:
            if v.fits:
                assert v.micro_batch * v.grad_accum == load_profile(v.name).train.effective_batch


def test_user_profile_takes_part(machine) -> None:
    from profiles.catalog import user_profile_dir

    user_profile_dir().mkdir(parents=True)
    (user_profile_dir() / "mini.toml").write_text('base = "tiny"\n[model]\nnum_encoder_layers = 1\n')
    names = [p.name for p in list_profiles()]
    assert names[0] == "mini"
    pick = pick_profile(machine("rtx-8gb"))
    assert [v.name for v in pick.reasons][0] == "mini"


def test_fit_profile_reports_params() -> None:
    from profiles.pick import _Device

    v = fit_profile(load_profile("tiny"), _Device("cuda", 8 * GiB, "bf16", "x"), 0.1)
    assert v.params == load_profile("tiny").parameter_count
    assert dataclasses.asdict(v)["fits"]


def test_only_the_given_trainers_are_tried(machine) -> None:
    pick = pick_profile(machine("rtx-8gb"), trainer_options=("compressed",))
    assert all(v.trainer == "compressed" for v in pick.reasons)
    assert pick.trainer == "compressed"
    tiny = next(v for v in pick.reasons if v.name == "tiny")
    assert tiny.status == "compressed" and tiny.micro_batch == load_profile("tiny").train.micro_batch
