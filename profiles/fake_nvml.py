"""A recorded fake of the pynvml API, so every hardware path runs without an NVIDIA GPU.

``fake_nvml("rtx-8gb")`` returns an object with the real pynvml function names and return
structures (``c_nvmlMemory_t`` with ``.total/.free/.used``, ``c_nvmlUtilization_t`` with
``.gpu/.memory``, process objects with ``.pid/.usedGpuMemory``, power in milliwatts, compute
capability as a ``(major, minor)`` tuple) and raises the real ``pynvml.NVMLError`` subclasses.
Constants and error classes (``NVML_TEMPERATURE_GPU``, ``NVMLError_GpuIsLost``, ...) are the real
module's. Names, memory sizes and power limits are those the driver reports for these cards;
utilisation, temperature and process figures are representative values.

Machines: ``no-driver``, ``driver-not-loaded``, ``rtx-8gb``, ``v100-16gb``, ``rtx-24gb``,
``a100-80gb``, ``h200``, ``2x24gb``, ``busy-24gb``, ``lost-midsession``. Set ``AERON_TUI_FAKE_GPU=<machine>``
to make :func:`profiles.hardware.probe` and the sampler use one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pynvml

MiB = 1024**2
GiB = 1024**3


@dataclass(frozen=True)
class FakeProcess:
    """A process holding GPU memory (pid, executable name, bytes)."""

    pid: int
    name: str
    used_bytes: int


@dataclass(frozen=True)
class FakeDevice:
    """One recorded GPU. ``lost_after``: answer that many device queries, then GpuIsLost."""

    name: str
    uuid: str
    total: int
    used: int
    gpu_util: int
    mem_util: int
    temperature: int
    power_mw: int
    power_limit_mw: int
    compute_capability: tuple[int, int]
    processes: tuple[FakeProcess, ...] = ()
    lost_after: int | None = None


@dataclass(frozen=True)
class FakeMachine:
    """A recorded machine: its GPUs, driver versions, or the error ``nvmlInit`` raises."""

    devices: tuple[FakeDevice, ...] = ()
    driver_version: str = "550.54.15"
    cuda_driver_version: int = 12040
    init_error: type[pynvml.NVMLError] | None = None


def _rtx3090(n: int, used: int = 312 * MiB, **extra: Any) -> FakeDevice:
    values: dict[str, Any] = dict(
        name="NVIDIA GeForce RTX 3090",
        uuid=f"GPU-5b8d3c1e-7a20-4c51-9e0f-3090000000{n:02d}",
        total=24576 * MiB,
        used=used,
        gpu_util=0,
        mem_util=0,
        temperature=34,
        power_mw=29_000,
        power_limit_mw=350_000,
        compute_capability=(8, 6),
    )
    values.update(extra)
    return FakeDevice(**values)


MACHINES: dict[str, FakeMachine] = {
    "no-driver": FakeMachine(init_error=pynvml.NVMLError_LibraryNotFound),
    "driver-not-loaded": FakeMachine(init_error=pynvml.NVMLError_DriverNotLoaded),
    "rtx-8gb": FakeMachine(
        devices=(
            FakeDevice(
                name="NVIDIA GeForce RTX 4060",
                uuid="GPU-0f3a6c2d-1b7e-4e8a-9c55-406000000001",
                total=8188 * MiB,
                used=263 * MiB,
                gpu_util=2,
                mem_util=1,
                temperature=38,
                power_mw=14_250,
                power_limit_mw=115_000,
                compute_capability=(8, 9),
                processes=(FakeProcess(2211, "/usr/lib/xorg/Xorg", 142 * MiB),),
            ),
        )
    ),
    "v100-16gb": FakeMachine(
        devices=(
            FakeDevice(
                name="Tesla V100-PCIE-16GB",
                uuid="GPU-9e1d2f44-6c3b-4a11-8d7e-100000000001",
                total=16384 * MiB,
                used=4 * MiB,
                gpu_util=0,
                mem_util=0,
                temperature=31,
                power_mw=25_400,
                power_limit_mw=250_000,
                compute_capability=(7, 0),
            ),
        ),
        driver_version="535.161.08",
        cuda_driver_version=12020,
    ),
    "rtx-24gb": FakeMachine(
        devices=(
            FakeDevice(
                name="NVIDIA GeForce RTX 4090",
                uuid="GPU-7c2e9a51-3d84-4f60-b1a2-409000000001",
                total=24564 * MiB,
                used=421 * MiB,
                gpu_util=3,
                mem_util=1,
                temperature=36,
                power_mw=28_730,
                power_limit_mw=450_000,
                compute_capability=(8, 9),
                processes=(FakeProcess(1874, "/usr/lib/xorg/Xorg", 288 * MiB),),
            ),
        )
    ),
    "a100-80gb": FakeMachine(
        devices=(
            FakeDevice(
                name="NVIDIA A100-SXM4-80GB",
                uuid="GPU-2a9f7b3c-8e15-4d02-a6c4-a10000000001",
                total=81920 * MiB,
                used=4 * MiB,
                gpu_util=0,
                mem_util=0,
                temperature=29,
                power_mw=61_870,
                power_limit_mw=400_000,
                compute_capability=(8, 0),
            ),
        ),
        driver_version="535.161.08",
        cuda_driver_version=12020,
    ),
    # The device machine this project is sometimes lent (name, memory and driver as its
    # nvidia-smi showed them, see bench/gpu/; power limit and compute capability from the card's
    # data sheet). Replace with the recorded values once bench/gpu_check.py has run on it.
    "h200": FakeMachine(
        devices=(
            FakeDevice(
                name="NVIDIA H200",
                uuid="GPU-7c4e2d19-3b8a-4f60-9d21-h20000000001",
                total=143771 * MiB,
                used=562 * MiB,
                gpu_util=0,
                mem_util=0,
                temperature=31,
                power_mw=76_350,
                power_limit_mw=700_000,
                compute_capability=(9, 0),
            ),
        ),
        driver_version="580.159.03",
        cuda_driver_version=13000,
    ),
    "2x24gb": FakeMachine(devices=(_rtx3090(0), _rtx3090(1))),
    "busy-24gb": FakeMachine(
        devices=(
            _rtx3090(
                0,
                used=21_170 * MiB,
                gpu_util=97,
                mem_util=71,
                temperature=78,
                power_mw=331_500,
                processes=(FakeProcess(31337, "python3", 20_858 * MiB),),
            ),
        )
    ),
    # Answers its first 7 device queries, then every one raises NVMLError_GpuIsLost: a probe gets
    # name, UUID, memory, utilisation, temperature and power before losing it; a sampler gets one
    # good sample (4 queries) and the GPU is lost during the second.
    "lost-midsession": FakeMachine(devices=(_rtx3090(0, lost_after=7),)),
}


@dataclass
class _Handle:
    index: int


@dataclass
class FakeNvml:
    """Module-like fake of pynvml for one machine. Counts init/shutdown calls for tests."""

    machine_name: str
    machine: FakeMachine
    init_calls: int = 0
    shutdown_calls: int = 0
    calls: list[str] = field(default_factory=list)
    _initialized: int = 0
    _queries: dict[int, int] = field(default_factory=dict)

    # Real constants and error classes, so `except nvml.NVMLError` works on fake and real alike.
    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVML", "c_nvml")):
            return getattr(pynvml, name)
        raise AttributeError(f"fake pynvml has no attribute {name!r}")

    # ------------------------------------------------------------------ library
    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.calls.append("nvmlInit")
        self.init_calls += 1
        if self.machine.init_error is not None:
            raise self.machine.init_error()
        self._initialized += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls.append("nvmlShutdown")
        self.shutdown_calls += 1
        self._require_init()
        self._initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._require_init()
        return self.machine.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        self._require_init()
        return self.machine.cuda_driver_version

    def nvmlSystemGetProcessName(self, pid: int) -> str:  # noqa: N802
        self._require_init()
        for device in self.machine.devices:
            for proc in device.processes:
                if proc.pid == pid:
                    return proc.name
        raise pynvml.NVMLError_NotFound()

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._require_init()
        return len(self.machine.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:  # noqa: N802
        self._require_init()
        if not 0 <= index < len(self.machine.devices):
            raise pynvml.NVMLError_InvalidArgument()
        return _Handle(index)

    # ------------------------------------------------------------------ device
    def nvmlDeviceGetName(self, handle: _Handle) -> str:  # noqa: N802
        return self._device(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:  # noqa: N802
        return self._device(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: Any = None) -> Any:  # noqa: N802
        dev = self._device(handle, "nvmlDeviceGetMemoryInfo")
        return pynvml.c_nvmlMemory_t(total=dev.total, free=dev.total - dev.used, used=dev.used)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:  # noqa: N802
        dev = self._device(handle, "nvmlDeviceGetUtilizationRates")
        return pynvml.c_nvmlUtilization_t(gpu=dev.gpu_util, memory=dev.mem_util)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:  # noqa: N802
        dev = self._device(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError_NotSupported()
        return dev.temperature

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:  # noqa: N802
        return self._device(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:  # noqa: N802
        return self._device(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:  # noqa: N802
        return self._device(handle, "nvmlDeviceGetCudaComputeCapability").compute_capability

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:  # noqa: N802
        dev = self._device(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [
            pynvml.nvmlFriendlyObject(
                {
                    "pid": p.pid,
                    "usedGpuMemory": p.used_bytes,
                    "gpuInstanceId": 0xFFFFFFFF,
                    "computeInstanceId": 0xFFFFFFFF,
                }
            )
            for p in dev.processes
        ]

    # ------------------------------------------------------------------ helpers
    def _require_init(self) -> None:
        if self._initialized <= 0:
            raise pynvml.NVMLError_Uninitialized()

    def _device(self, handle: _Handle, call: str) -> FakeDevice:
        self.calls.append(call)
        self._require_init()
        dev = self.machine.devices[handle.index]
        done = self._queries.get(handle.index, 0)
        self._queries[handle.index] = done + 1
        if dev.lost_after is not None and done >= dev.lost_after:
            raise pynvml.NVMLError_GpuIsLost()
        return dev


def fake_nvml(machine: str) -> FakeNvml:
    """A fresh fake pynvml for a recorded machine (see :data:`MACHINES`)."""
    if machine not in MACHINES:
        from core.errors import ConfigError

        raise ConfigError(
            f"AERON_TUI_FAKE_GPU={machine!r} is not a recorded machine "
            f"(known: {', '.join(MACHINES)})"
        )
    return FakeNvml(machine, MACHINES[machine])
