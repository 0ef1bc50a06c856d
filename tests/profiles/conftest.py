"""Helpers for profile tests: hardware built from the recorded fake pynvml machines."""

from __future__ import annotations

import dataclasses

import pytest

from profiles.fake_nvml import fake_nvml
from profiles.hardware import CpuInfo, HardwareInfo, probe

GiB = 1024**3


def fixed_host(hw: HardwareInfo, ram_available: int = 16 * GiB, cores: int = 2,
               bf16: bool = True) -> HardwareInfo:
    """The same machine with a fixed CPU and RAM, so picks do not depend on the test host."""
    cpu = CpuInfo("Test CPU", cores, cores, 2600.0, None, (0.0, 0.0, 0.0), 0.0, bf16)
    return dataclasses.replace(hw, cpu=cpu, ram_total=24 * GiB, ram_available=ram_available)


@pytest.fixture
def machine():
    """machine("rtx-8gb") -> HardwareInfo probed through the fake, with a fixed host."""

    def make(name: str, **host: object) -> HardwareInfo:
        return fixed_host(probe(fake_nvml(name), with_torch=False), **host)  # type: ignore[arg-type]

    return make
