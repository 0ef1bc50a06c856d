"""Which numeric precision to train in on a given device (spec training.md §3).

CUDA with compute capability >= 8.0 -> bf16 autocast; older CUDA -> fp16 autocast with a
GradScaler; CPU -> bf16 autocast when the CPU multiplies bf16 natively (AMX or AVX512-BF16) and
it is measured faster there (``bench/model_step.py``, see bench/RESULTS.md), else fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

# Measured with bench/model_step.py on an AMX Xeon (2 cores): is the Aeron training step faster
# under CPU bf16 autocast than in fp32 at the tiny and small profiles? (bench/RESULTS.md)
CPU_BF16_MEASURED_FASTER = True

_FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags listed in ``/proc/cpuinfo`` (empty set when unavailable)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=4)
def cpu_supports_fast_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    return bool(cpu_flags(cpuinfo) & set(_FAST_BF16_FLAGS))


def default_precision(device: str | torch.device, cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: the default training precision for ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, _ = torch.cuda.get_device_capability(index)
        return "bf16" if major >= 8 else "fp16"
    if dev.type == "cpu":
        if CPU_BF16_MEASURED_FASTER and cpu_supports_fast_bf16(cpuinfo):
            return "bf16"
        return "fp32"
    if dev.type == "mps":
        return "fp16"
    return "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision name (None for fp32)."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if precision not in table:
        from core.errors import ConfigError

        raise ConfigError(f"precision must be one of {sorted(table)}, got {precision!r}")
    return table[precision]
