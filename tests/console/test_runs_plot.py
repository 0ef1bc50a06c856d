"""`aeron-tui runs plot`: pictures drawn from the runs' events, one run or several overlaid."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aeron_tui.cli import app
from aeron_tui.plots import ema, read_run_series
from core.runs.events import EventWriter

runner = CliRunner()


def _run(path: Path, slope: float, with_bpb: bool = True) -> Path:
    """A run directory whose events.jsonl a trainer could have written (the real writer)."""
    path.mkdir(parents=True)
    with EventWriter(path / "events.jsonl") as ev:
        ev.emit("run_started", run_id=path.name, trainer="simple", total_steps=40, elapsed_s=0.0)
        for step in range(1, 41):
            ev.emit("step", global_step=step, loss=6.0 - slope * step, lr=1e-3 * min(1, step / 5),
                    tokens_per_s=1000.0 + step, elapsed_s=0.5 * step,
                    branch_scores_mean=[0.5 + 0.001 * step, 0.4])
            if step % 10 == 0:
                extra = {"bpb": 2.5 - 0.01 * step} if with_bpb else {}
                if with_bpb and step == 10:
                    extra |= {"baseline_unigram_bpb": 3.1, "baseline_bigram_bpb": 2.4}
                ev.emit("eval", global_step=step, loss=6.1 - slope * step, **extra)
        ev.emit("run_finished", status="finished", global_step=40)
    return path


def test_series_from_events(tmp_path: Path) -> None:
    s = read_run_series(_run(tmp_path / "a", 0.05))
    assert s.steps == list(range(1, 41)) and s.eval_steps == [10, 20, 30, 40]
    assert s.loss[0] == pytest.approx(5.95) and s.val_bpb[-1] == pytest.approx(2.1)
    assert s.baselines == {"unigram": 3.1, "bigram": 2.4}
    # Tokens seen: each step's rate × the 0.5 s since the previous step event.
    assert s.tokens[2] == pytest.approx(0.5 * (1001 + 1002 + 1003))
    assert ema([1.0, None, 3.0], alpha=0.5) == [1.0, None, 2.0]


def test_one_run_png_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AERON_TUI_HOME", str(tmp_path / "home"))
    _run(tmp_path / "home" / "runs" / "a", 0.05)
    out = tmp_path / "pics" / "a.png"
    r = runner.invoke(app, ["runs", "plot", "a", "--out", str(out)])  # a name `runs list` prints
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert f"wrote {out}" in r.output


def test_two_runs_svg_overlaid_by_tokens(tmp_path: Path) -> None:
    a, b = _run(tmp_path / "lonpt", 0.05), _run(tmp_path / "simple", 0.03, with_bpb=False)
    out = tmp_path / "cmp.svg"
    r = runner.invoke(app, ["runs", "plot", str(a), str(b), "--out", str(out), "--x", "tokens"])
    assert r.exit_code == 0, r.output
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    text = out.read_text()
    for label in ("lonpt train (EMA)", "simple validation", "lonpt bigram baseline 2.40",
                  "tokens seen"):
        assert label in text, label


def test_bad_inputs_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path / "a", 0.05)
    r = runner.invoke(app, ["runs", "plot", str(run), "--out", str(tmp_path / "a.jpgx")])
    assert r.exit_code == 1 and "must end in .png, .svg, .pdf" in str(r.exception)
    r = runner.invoke(app, ["runs", "plot", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "not a run directory" in str(r.exception)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    r = runner.invoke(app, ["runs", "plot", str(run), "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "pip install 'aeron-tui[plot]'" in str(r.exception)
    assert not (tmp_path / "x.png").exists()
