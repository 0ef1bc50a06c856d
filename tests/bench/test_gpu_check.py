"""bench/gpu_check.py: the parts that decide its verdicts, on recorded inputs, and a CPU run of
its first two steps (the rest needs a GPU or minutes; `bash bench/gpu_check.sh` rehearses them)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
assert _spec and _spec.loader
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check
_spec.loader.exec_module(gpu_check)

MiB = 1024**2
# `nvidia-smi --query-gpu=name,memory.total,memory.used,memory.free,utilization.gpu,
# temperature.gpu,power.draw,power.limit --format=csv,noheader,nounits` on an H200 (shape as
# nvidia-smi prints it; a field the card does not report reads "[N/A]").
SMI_LINE = "NVIDIA H200, 143771, 562, 142584, 0, 31, 76.35, 700.00\n"


def nvml_gpu(**over: object) -> dict[str, object]:
    gpu: dict[str, object] = {
        "name": "NVIDIA H200", "memory_total": 143771 * MiB, "memory_used": 562 * MiB,
        "memory_free": 142584 * MiB, "temperature": 31, "power_draw_w": 80.1,
        "power_limit_w": 700.0, "gpu_util": 0,
    }
    gpu.update(over)
    return gpu


def test_smi_csv_parses_numbers_and_not_available() -> None:
    rows = gpu_check.parse_smi_csv(SMI_LINE + "NVIDIA H200, 143771, 1, 143770, [N/A], 30, [N/A], 700\n")
    assert rows[0]["name"] == "NVIDIA H200"
    assert rows[0]["memory.total"] == 143771.0 and rows[0]["power.draw"] == 76.35
    assert rows[1]["utilization.gpu"] is None and rows[1]["power.draw"] is None


def test_nvml_and_smi_agree_on_the_same_card() -> None:
    rows = gpu_check.compare_nvml_smi(nvml_gpu(), gpu_check.parse_smi_csv(SMI_LINE)[0])
    verdicts = {r["field"]: r["agree"] for r in rows}
    assert all(v in (True, None) for v in verdicts.values()), rows
    assert verdicts["memory total MiB"] is True and verdicts["utilisation %"] is None


@pytest.mark.parametrize("field,value,label", [
    ("memory_total", 80 * 1024 * MiB, "memory total MiB"),
    ("name", "NVIDIA H100 80GB HBM3", "name"),
    ("temperature", 45, "temperature °C"),
])
def test_a_field_that_differs_is_flagged(field: str, value: object, label: str) -> None:
    rows = gpu_check.compare_nvml_smi(nvml_gpu(**{field: value}), gpu_check.parse_smi_csv(SMI_LINE)[0])
    assert {r["field"]: r["agree"] for r in rows}[label] is False


def test_error_and_loss_verdicts() -> None:
    assert gpu_check.error_pct(110, 100) == pytest.approx(10.0)
    assert gpu_check.error_pct(90, 100) == pytest.approx(-10.0)
    assert math.isnan(gpu_check.error_pct(1, 0))
    falling = [{"loss": 8.0 - 0.1 * i} for i in range(30)]
    assert gpu_check.loss_falls(falling)[2] is True
    assert gpu_check.loss_falls(list(reversed(falling)))[2] is False
    assert gpu_check.loss_falls(falling[:-1] + [{"loss": None}])[2] is False  # not finite
    steps = [{"tokens_per_s": v} for v in [1.0] * 10 + list(range(100, 120))]
    assert gpu_check.median_tokens_per_s(steps) == pytest.approx(109.5)


def test_a_failing_step_becomes_an_error_row_not_a_crash() -> None:
    report = gpu_check.Report(env={"device": "test"})
    with gpu_check.section(report, "boom", deadline=float("inf")):
        raise RuntimeError("first line\nthe line that says why")
    with gpu_check.section(report, "late", deadline=-1.0) as sec:
        assert sec.status == "skipped"
    assert [(s.status, s.summary) for s in report.sections] == [
        ("error", "RuntimeError: the line that says why"), ("skipped", "time budget spent")]
    markdown = gpu_check.render_markdown(report)
    assert "| boom | error | RuntimeError: the line that says why |" in markdown


def test_text_corpus_has_many_full_documents(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    gpu_check.write_text_corpus(path, n_words=20_000)
    docs = [d for d in path.read_text().split("\n\n") if d.strip()]
    assert len(docs) == 8  # 2,500 words each: enough documents for a validation split
    assert all(len(d.split()) >= 2_400 for d in docs)


@pytest.mark.slow
def test_cpu_run_of_profile_and_pick_writes_the_report(tmp_path: Path) -> None:
    code = gpu_check.main(["--only", "profile,pick", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    sections = {s["name"]: s for s in report["sections"]}
    first = sections["1. profile --json vs nvidia-smi"]
    assert first["status"] == "skipped" and "no CUDA" in first["summary"]
    pick = sections["2. the pick"]
    assert pick["status"] == "ok" and pick["data"]["train"]["device"] == "cpu"
    assert {r["mode"] for r in pick["rows"]} == {"train", "infer"}
    assert code == 0
    assert (tmp_path / "gpu_report.md").read_text().startswith("# GPU check")
