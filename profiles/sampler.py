"""A live hardware sampler: a daemon thread that reads GPU, CPU and RAM figures every period.

The console and the trainers read :meth:`HardwareSampler.latest` (or get each sample through
``callback``). NVML is initialised once in the thread and shut down when it stops; a GPU that
errors is reported in its sample (``error``) and sampling continues.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one instant. Unsupported or failed readings are None."""

    index: int
    gpu_util: int | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    temperature: int | None = None
    power_w: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class HardwareSample:
    """Host and GPU utilisation at ``time`` (Unix seconds)."""

    time: float
    gpus: tuple[GpuSample, ...]
    cpu_percent: float
    ram_used: int
    ram_total: int
    process_rss: int
    nvml_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = asdict(self)
        data["gpus"] = [asdict(g) for g in self.gpus]
        return data


@dataclass
class HardwareSampler:
    """Background sampler. ``start()``, then ``latest()`` any time; ``stop()`` joins the thread.

    ``nvml`` is a pynvml-like module (default: pynvml, or the fake named by AERON_TUI_FAKE_GPU);
    ``pid`` whose resident memory is reported (default this process).
    """

    period: float = 1.0
    nvml: Any = None
    callback: Callable[[HardwareSample], None] | None = None
    pid: int | None = None
    _latest: HardwareSample | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _nvml_ready: bool = field(default=False, init=False, repr=False)
    _nvml_error: str | None = field(default=None, init=False, repr=False)

    def start(self) -> HardwareSampler:
        """Start the daemon thread (no-op when already running)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aeron-hw-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to exit and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def latest(self) -> HardwareSample | None:
        """The most recent sample, or None before the first."""
        with self._lock:
            return self._latest

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> HardwareSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------ sampling
    def open(self) -> None:
        """Initialise NVML (once); failures are kept as ``nvml_error`` in every sample."""
        if self.nvml is None:
            from profiles.hardware import default_nvml

            self.nvml, self._nvml_error, _ = default_nvml()
        if self.nvml is None or self._nvml_ready:
            return
        try:
            self.nvml.nvmlInit()
            self._nvml_ready = True
        except Exception as exc:  # noqa: BLE001 - any NVMLError or a broken library
            self._nvml_error = str(exc) or type(exc).__name__

    def close(self) -> None:
        """Shut NVML down if :meth:`open` initialised it."""
        if self._nvml_ready:
            self._nvml_ready = False
            try:
                self.nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - nothing useful to do
                pass

    def sample_once(self) -> HardwareSample:
        """Take one sample now (opens NVML on first use), store it as latest and return it."""
        import psutil

        self.open()
        gpus: tuple[GpuSample, ...] = ()
        if self._nvml_ready:
            gpus = self._sample_gpus()
        vm = psutil.virtual_memory()
        try:
            rss = int(psutil.Process(self.pid or os.getpid()).memory_info().rss)
        except psutil.Error:
            rss = 0
        sample = HardwareSample(
            time=time.time(),
            gpus=gpus,
            cpu_percent=float(psutil.cpu_percent(interval=None)),
            ram_used=int(vm.total - vm.available),
            ram_total=int(vm.total),
            process_rss=rss,
            nvml_error=self._nvml_error,
        )
        with self._lock:
            self._latest = sample
        return sample

    def _sample_gpus(self) -> tuple[GpuSample, ...]:
        nvml = self.nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:  # noqa: BLE001
            self._nvml_error = str(exc)
            return ()
        return tuple(self._sample_gpu(i) for i in range(count))

    def _sample_gpu(self, index: int) -> GpuSample:
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            temp = _maybe(nvml, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
            power = _maybe(nvml, nvml.nvmlDeviceGetPowerUsage, handle)
        except Exception as exc:  # noqa: BLE001 - a lost GPU is reported, sampling goes on
            return GpuSample(index=index, error=str(exc) or type(exc).__name__)
        return GpuSample(
            index=index,
            gpu_util=int(util.gpu),
            memory_used=int(mem.used),
            memory_total=int(mem.total),
            temperature=temp,
            power_w=power / 1000.0 if power is not None else None,
        )

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                sample = self.sample_once()
                if self.callback is not None:
                    try:
                        self.callback(sample)
                    except Exception:  # noqa: BLE001 - a bad callback must not kill sampling
                        pass
                self._stop.wait(self.period)
        finally:
            self.close()


def _maybe(nvml: Any, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except getattr(nvml, "NVMLError_NotSupported", ()):
        return None
