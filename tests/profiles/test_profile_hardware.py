"""Hardware probe and live sampler against the recorded fake pynvml machines."""

from __future__ import annotations

import json
import threading
import time

import pynvml
import pytest

from core.errors import ConfigError
from profiles.fake_nvml import MACHINES, fake_nvml
from profiles.hardware import probe
from profiles.sampler import HardwareSampler

GiB = 1024**3


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_every_machine_probes_and_always_shuts_nvml_down(name: str) -> None:
    nvml = fake_nvml(name)
    hw = probe(nvml, with_torch=False)
    json.dumps(hw.to_dict())  # --json must serialise
    assert nvml.init_calls == 1
    if MACHINES[name].init_error is None:
        assert nvml.shutdown_calls == 1
    assert hw.source == f"fake:{name}"


def test_no_driver_reports_reason_and_no_gpu() -> None:
    hw = probe(fake_nvml("no-driver"), with_torch=False)
    assert hw.gpus == [] and not hw.torch_cuda_available
    assert hw.gpu_status == "no NVIDIA GPU detected (NVML Shared Library Not Found)"


def test_real_pynvml_is_graceful_here() -> None:
    hw = probe(pynvml, with_torch=False)
    assert hw.gpus or hw.gpu_status.startswith("no NVIDIA GPU detected (")
    assert hw.ram_total > 0 and hw.cpu.logical_cores


def test_gpu_fields_have_real_units() -> None:
    hw = probe(fake_nvml("rtx-8gb"), with_torch=False)
    (gpu,) = hw.gpus
    assert gpu.name == "NVIDIA GeForce RTX 4060" and gpu.uuid.startswith("GPU-")
    assert gpu.memory_total == 8188 * 1024**2
    assert gpu.memory_free + gpu.memory_used == gpu.memory_total
    assert gpu.power_draw_w == pytest.approx(14.25) and gpu.power_limit_w == pytest.approx(115.0)
    assert gpu.compute_capability == (8, 9) and gpu.bf16
    assert gpu.processes[0].name == "/usr/lib/xorg/Xorg" and gpu.processes[0].used_bytes == 142 * 1024**2
    assert hw.driver_version == "550.54.15" and hw.cuda_driver_version == "12.4"
    assert hw.torch_cuda_available and hw.bf16_supported


def test_busy_gpu_shows_the_other_process() -> None:
    (gpu,) = probe(fake_nvml("busy-24gb"), with_torch=False).gpus
    assert gpu.memory_free < 4 * GiB
    assert (gpu.processes[0].pid, gpu.processes[0].name) == (31337, "python3")


def test_gpu_lost_mid_session_is_reported_not_fatal() -> None:
    nvml = fake_nvml("lost-midsession")
    hw = probe(nvml, with_torch=False)
    (gpu,) = hw.gpus
    assert gpu.error == "GPU is lost" and not gpu.usable
    assert gpu.name == "NVIDIA GeForce RTX 3090" and gpu.memory_total > 0  # answered before it was lost
    assert "GPU 0 unavailable (GPU is lost)" in hw.gpu_status
    assert not hw.torch_cuda_available
    assert nvml.shutdown_calls == 1


def test_unexpected_library_failure_is_a_reason() -> None:
    class Broken:
        NVMLError = pynvml.NVMLError

        def nvmlInit(self) -> None:  # noqa: N802
            raise OSError("libnvidia-ml.so.1: wrong ELF class")

    hw = probe(Broken(), with_torch=False)
    assert hw.gpu_status == "no NVIDIA GPU detected (OSError: libnvidia-ml.so.1: wrong ELF class)"


def test_fake_raises_real_nvml_errors() -> None:
    nvml = fake_nvml("rtx-8gb")
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(3)
    assert nvml.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU


def test_env_var_selects_fake_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AERON_TUI_FAKE_GPU", "2x24gb")
    hw = probe(with_torch=False)
    assert [g.name for g in hw.gpus] == ["NVIDIA GeForce RTX 3090"] * 2
    assert hw.source == "fake:2x24gb"
    monkeypatch.setenv("AERON_TUI_FAKE_GPU", "nope")
    with pytest.raises(ConfigError, match="not a recorded machine"):
        probe(with_torch=False)


def test_sampler_thread_samples_and_stops() -> None:
    nvml = fake_nvml("2x24gb")
    seen: list[object] = []
    got = threading.Event()

    def callback(sample: object) -> None:
        seen.append(sample)
        if len(seen) >= 2:
            got.set()

    sampler = HardwareSampler(period=0.02, nvml=nvml, callback=callback).start()
    assert got.wait(10)
    sampler.stop()
    assert not sampler.running
    latest = sampler.latest()
    assert latest is not None and len(latest.gpus) == 2
    assert latest.gpus[0].memory_total == 24576 * 1024**2 and latest.gpus[0].error is None
    assert latest.ram_total > 0 and latest.process_rss > 0
    assert nvml.shutdown_calls == 1  # the thread shut NVML down on exit
    json.dumps(latest.to_dict())


def test_sampler_keeps_going_after_gpu_loss_and_without_driver() -> None:
    lost = HardwareSampler(nvml=fake_nvml("lost-midsession"))
    first = lost.sample_once()
    second = lost.sample_once()
    assert first.gpus[0].error is None and first.gpus[0].memory_used is not None
    assert second.gpus[0].error == "GPU is lost"
    lost.close()
    none = HardwareSampler(nvml=fake_nvml("no-driver")).sample_once()
    assert none.gpus == () and none.nvml_error == "NVML Shared Library Not Found"


def test_sampler_default_period_and_daemon() -> None:
    sampler = HardwareSampler(nvml=fake_nvml("rtx-8gb"))
    assert sampler.period == 1.0
    sampler.start()
    try:
        assert sampler._thread is not None and sampler._thread.daemon
        deadline = time.time() + 10
        while sampler.latest() is None and time.time() < deadline:
            time.sleep(0.01)
        assert sampler.latest() is not None
    finally:
        sampler.stop()
