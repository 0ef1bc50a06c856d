"""Default training precision per device (spec training.md §3)."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError
from core.model import precision


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 {flags}\n\n")
    return path


def test_fast_bf16_detected_from_flags(tmp_path) -> None:
    assert precision.cpu_supports_fast_bf16(_cpuinfo(tmp_path, "avx512f amx_bf16 amx_tile"))
    avx = tmp_path / "avx"
    avx.mkdir()
    assert precision.cpu_supports_fast_bf16(_cpuinfo(avx, "avx512_bf16"))
    other = tmp_path / "plain"
    other.mkdir()
    assert not precision.cpu_supports_fast_bf16(_cpuinfo(other, "avx2 avx512f"))
    assert not precision.cpu_supports_fast_bf16(tmp_path / "missing")


def test_cpu_default_follows_flags_and_measurement(tmp_path, monkeypatch) -> None:
    amx = _cpuinfo(tmp_path, "amx_bf16")
    plain_dir = tmp_path / "p"
    plain_dir.mkdir()
    plain = _cpuinfo(plain_dir, "avx2")
    monkeypatch.setattr(precision, "CPU_BF16_MEASURED_FASTER", True)
    assert precision.default_precision("cpu", amx) == "bf16"
    assert precision.default_precision("cpu", plain) == "fp32"
    monkeypatch.setattr(precision, "CPU_BF16_MEASURED_FASTER", False)
    assert precision.default_precision("cpu", amx) == "fp32"


@pytest.mark.parametrize(("capability", "expected"), [((8, 0), "bf16"), ((9, 0), "bf16"),
                                                      ((7, 5), "fp16"), ((6, 1), "fp16")])
def test_cuda_default_by_compute_capability(monkeypatch, capability, expected) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    assert precision.default_precision(torch.device("cuda", 0)) == expected


def test_autocast_dtype() -> None:
    assert precision.autocast_dtype("bf16") is torch.bfloat16
    assert precision.autocast_dtype("fp16") is torch.float16
    assert precision.autocast_dtype("fp32") is None
    with pytest.raises(ConfigError, match="precision"):
        precision.autocast_dtype("fp8")
