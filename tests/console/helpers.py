"""Shared helpers for console Pilot tests: a fixed hardware view and waiting for conditions."""

from __future__ import annotations

import asyncio
import functools
import io
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from rich.console import Console
from textual.pilot import Pilot

from aeron_tui.app.app import FixedHardware

FROZEN_NOW = 1_700_000_200.0


def fixed_hardware(machine: str = "rtx-24gb") -> FixedHardware:
    """A recorded fake GPU machine with frozen CPU/RAM figures (deterministic snapshots)."""
    from profiles.fake_nvml import fake_nvml
    from profiles.hardware import CpuInfo, probe
    from profiles.sampler import HardwareSample, HardwareSampler

    nvml = fake_nvml(machine)
    info = replace(
        probe(nvml=nvml, with_torch=False),
        cpu=CpuInfo(model="Test CPU", physical_cores=8, logical_cores=16, freq_mhz=None,
                    freq_max_mhz=None, load_avg=None, percent=None, bf16_native=False),
        ram_total=32 * 2**30, ram_available=20 * 2**30, swap_total=0, swap_used=0,
        disk_path="/runs", disk_total=500 * 2**30, disk_free=200 * 2**30,
    )
    live = HardwareSampler(nvml=nvml).sample_once()
    sample = HardwareSample(time=FROZEN_NOW, gpus=live.gpus, cpu_percent=37.0,
                            ram_used=9 * 2**30, ram_total=32 * 2**30, process_rss=200 * 2**20,
                            nvml_error=live.nvml_error)
    return FixedHardware(info, sample)


def plain(widget: Any, width: int | None = None) -> str:
    """The text a Static-based widget currently shows (Rich renderable → plain text)."""
    console = Console(width=width or max(40, widget.size.width), file=io.StringIO(),
                      color_system=None, legacy_windows=False)
    with console.capture() as cap:
        console.print(widget.content)
    return cap.get()


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async Pilot test with asyncio.run (no async pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


async def wait_for(pilot: Pilot[Any], cond: Callable[[], bool], timeout: float = 10.0,
                   what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def estimates_in_process(monkeypatch: Any) -> None:
    """Run the setup/wizard helpers (profile estimates, torch) in this test process instead of a
    fresh interpreter: the same functions and figures, without a second torch import per screen
    (the suite's process has torch loaded already). Production keeps them out of the console."""
    from aeron_tui.app import offload

    def in_process(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
        return fn(*args)

    monkeypatch.setattr(offload, "in_child", in_process)
