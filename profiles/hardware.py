"""What this machine has: GPUs through pynvml, CPU/RAM/disk through psutil, CUDA through torch.

:func:`probe` never fails because of the hardware: a missing driver, a missing ``libnvidia-ml``
or any ``NVMLError`` becomes ``nvml_error`` ("no NVIDIA GPU detected (reason)"); a GPU that
errors part-way is reported in its own ``error`` field and the other GPUs are still listed.
``nvmlShutdown`` is always called after a successful ``nvmlInit``. Rendering lives elsewhere.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

FAKE_GPU_ENV = "AERON_TUI_FAKE_GPU"


class GpuProcess(NamedTuple):
    """A process holding memory on a GPU."""

    pid: int
    name: str
    used_bytes: int | None


@dataclass
class GpuInfo:
    """One NVIDIA GPU as NVML reports it. Fields NVML does not support on this card are None."""

    index: int
    name: str = "unknown"
    uuid: str = ""
    memory_total: int = 0
    memory_free: int = 0
    memory_used: int = 0
    gpu_util: int | None = None
    mem_util: int | None = None
    temperature: int | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    compute_capability: tuple[int, int] | None = None
    processes: list[GpuProcess] = field(default_factory=list)
    error: str | None = None

    @property
    def usable(self) -> bool:
        """True when the GPU answered every query and reports memory."""
        return self.error is None and self.memory_total > 0

    @property
    def bf16(self) -> bool:
        """Native bf16 (Ampere, compute capability 8.0, and newer)."""
        return self.compute_capability is not None and self.compute_capability >= (8, 0)


@dataclass
class CpuInfo:
    """The host CPU."""

    model: str
    physical_cores: int | None
    logical_cores: int | None
    freq_mhz: float | None
    freq_max_mhz: float | None
    load_avg: tuple[float, float, float] | None
    percent: float | None
    bf16_native: bool  # AMX-BF16 or AVX512-BF16: bf16 matmul several times the fp32 rate


@dataclass
class HardwareInfo:
    """Everything :func:`probe` found. ``to_dict()`` is the ``--json`` form."""

    gpus: list[GpuInfo]
    cpu: CpuInfo
    ram_total: int
    ram_available: int
    swap_total: int
    swap_used: int
    disk_path: str
    disk_total: int
    disk_free: int
    torch_cuda_available: bool
    bf16_supported: bool
    torch_version: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    nvml_error: str | None = None
    source: str = "nvml"  # "nvml", or "fake:<machine>" under AERON_TUI_FAKE_GPU

    @property
    def usable_gpus(self) -> list[GpuInfo]:
        """GPUs without errors."""
        return [g for g in self.gpus if g.usable]

    @property
    def gpu_status(self) -> str:
        """One line: how many GPUs, or why there are none."""
        if self.nvml_error:
            return f"no NVIDIA GPU detected ({self.nvml_error})"
        lost = [g for g in self.gpus if g.error]
        line = f"{len(self.gpus)} NVIDIA GPU{'s' if len(self.gpus) != 1 else ''}"
        if lost:
            line += "; " + "; ".join(f"GPU {g.index} unavailable ({g.error})" for g in lost)
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["gpu_status"] = self.gpu_status
        for gpu in data["gpus"]:
            gpu["processes"] = [dict(zip(GpuProcess._fields, p, strict=True)) for p in gpu["processes"]]
        return data


def default_nvml() -> tuple[Any | None, str | None, str]:
    """(nvml module, import error, source): the fake under AERON_TUI_FAKE_GPU, else pynvml."""
    machine = os.environ.get(FAKE_GPU_ENV)
    if machine:
        from profiles.fake_nvml import fake_nvml

        return fake_nvml(machine), None, f"fake:{machine}"
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        return None, "nvidia-ml-py is not installed", "nvml"
    return pynvml, None, "nvml"


def probe(nvml: Any = None, run_dir: str | Path | None = None, with_torch: bool = True) -> HardwareInfo:
    """Probe GPUs, CPU, RAM, swap, disk (at ``run_dir``, default the current directory), torch.

    ``nvml`` is a module-like object with the pynvml API (default: the real ``pynvml``, or the
    recorded fake named by ``AERON_TUI_FAKE_GPU``). ``with_torch=False`` skips importing torch.
    """
    source = "nvml"
    import_error = None
    if nvml is None:
        nvml, import_error, source = default_nvml()
    elif type(nvml).__name__ == "FakeNvml":
        source = f"fake:{nvml.machine_name}"
    gpus: list[GpuInfo] = []
    driver = cuda_driver = None
    nvml_error = import_error
    if nvml is not None:
        gpus, driver, cuda_driver, nvml_error = probe_gpus(nvml)

    import psutil

    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    disk_path = _existing_dir(Path(run_dir) if run_dir else Path.cwd())
    disk = shutil.disk_usage(disk_path)
    cpu = probe_cpu()

    simulated = source.startswith("fake:")
    torch_version = None
    if simulated:
        # A recorded machine stands in for a CUDA build of torch on that machine.
        cuda = any(g.usable for g in gpus)
        bf16 = cuda and all(g.bf16 for g in gpus if g.usable)
    elif with_torch:
        cuda, bf16, torch_version = _torch_cuda()
    else:
        cuda = bf16 = False
    return HardwareInfo(
        gpus=gpus,
        cpu=cpu,
        ram_total=int(vm.total),
        ram_available=int(vm.available),
        swap_total=int(swap.total),
        swap_used=int(swap.used),
        disk_path=str(disk_path),
        disk_total=int(disk.total),
        disk_free=int(disk.free),
        torch_cuda_available=cuda,
        bf16_supported=bf16,
        torch_version=torch_version,
        driver_version=driver,
        cuda_driver_version=cuda_driver,
        nvml_error=nvml_error,
        source=source,
    )


def probe_gpus(nvml: Any) -> tuple[list[GpuInfo], str | None, str | None, str | None]:
    """(gpus, driver version, CUDA driver version, error reason) from an NVML-like module."""
    nvml_error_cls = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except nvml_error_cls as exc:
        return [], None, None, _reason(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. OSError loading a broken libnvidia-ml
        return [], None, None, f"{type(exc).__name__}: {exc}"
    try:
        driver = _safe(nvml, nvml.nvmlSystemGetDriverVersion)
        cuda_raw = _safe(nvml, nvml.nvmlSystemGetCudaDriverVersion)
        cuda = f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}" if isinstance(cuda_raw, int) else None
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml_error_cls as exc:
            return [], driver, cuda, _reason(exc)
        if count == 0:
            return [], driver, cuda, "the driver reports 0 devices"
        return [probe_gpu(nvml, i) for i in range(count)], driver, cuda, None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a lost GPU may fail; nothing to do
            pass


class _Unsupported(Exception):
    pass


def probe_gpu(nvml: Any, index: int) -> GpuInfo:
    """One GPU. Unsupported fields stay None; any other NVMLError ends the probe in ``error``."""
    info = GpuInfo(index=index)
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        info.name = _text(nvml.nvmlDeviceGetName(handle))
        info.uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        info.memory_total, info.memory_free, info.memory_used = int(mem.total), int(mem.free), int(mem.used)
        util = _optional(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
        if util is not None:
            info.gpu_util, info.mem_util = int(util.gpu), int(util.memory)
        info.temperature = _optional(nvml, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        power = _optional(nvml, nvml.nvmlDeviceGetPowerUsage, handle)
        info.power_draw_w = power / 1000.0 if power is not None else None
        limit = _optional(nvml, nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        info.power_limit_w = limit / 1000.0 if limit is not None else None
        cc = _optional(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
        info.compute_capability = (int(cc[0]), int(cc[1])) if cc is not None else None
        procs = _optional(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
        info.processes = [
            GpuProcess(int(p.pid), _process_name(nvml, int(p.pid)), p.usedGpuMemory) for p in procs
        ]
    except getattr(nvml, "NVMLError", Exception) as exc:
        info.error = _reason(exc)
    return info


def probe_cpu() -> CpuInfo:
    """CPU model, cores, frequency, load and native-bf16 support (psutil + /proc/cpuinfo)."""
    import psutil

    model, flags = _cpuinfo()
    try:
        freq = psutil.cpu_freq()
    except Exception:  # noqa: BLE001 - not available in some containers
        freq = None
    try:
        load = tuple(float(x) for x in os.getloadavg())
    except (AttributeError, OSError):
        load = None
    return CpuInfo(
        model=model or platform.processor() or platform.machine() or "unknown",
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(logical=True),
        freq_mhz=float(freq.current) if freq else None,
        freq_max_mhz=float(freq.max) if freq and freq.max else None,
        load_avg=load,  # type: ignore[arg-type]
        percent=float(psutil.cpu_percent(interval=None)),
        bf16_native=bool({"amx_bf16", "avx512_bf16"} & flags),
    )


# -------------------------------------------------------------------------------- helpers


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe(nvml: Any, fn: Any, *args: Any) -> Any:
    try:
        value = fn(*args)
    except getattr(nvml, "NVMLError", Exception):
        return None
    return _text(value) if isinstance(value, bytes) else value


def _optional(nvml: Any, fn: Any, *args: Any) -> Any:
    """Call an NVML query; None when the card does not support it, re-raise real failures."""
    not_supported = tuple(
        getattr(nvml, name)
        for name in ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")
        if hasattr(nvml, name)
    )
    try:
        return fn(*args)
    except not_supported:
        return None


def _process_name(nvml: Any, pid: int) -> str:
    try:
        return _text(nvml.nvmlSystemGetProcessName(pid))
    except Exception:  # noqa: BLE001 - fall back to psutil (e.g. a process in another container)
        pass
    try:
        import psutil

        return psutil.Process(pid).name()
    except Exception:  # noqa: BLE001
        return "?"


def _cpuinfo() -> tuple[str | None, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, set()
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _existing_dir(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _torch_cuda() -> tuple[bool, bool, str | None]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False, False, None
    try:
        cuda = bool(torch.cuda.is_available())
        bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001 - a broken CUDA install must not break the probe
        cuda, bf16 = False, False
    return cuda, bf16, str(torch.__version__)
