"""The headless display renders the event stream (the numbers shown are the numbers emitted)."""

from __future__ import annotations

import io
from pathlib import Path

from aeron_tui.headless import HeadlessDisplay, choose_mode, status_line
from core.runs.events import EventWriter, fold, read_events


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_choose_mode() -> None:
    tty, pipe = _Tty(), io.StringIO()
    assert choose_mode(False, False, stdout=tty, stderr=tty) == ("rich", tty)
    assert choose_mode(False, False, stdout=pipe, stderr=tty) == ("plain", pipe)
    assert choose_mode(True, False, stdout=pipe, stderr=tty) == ("rich", tty)
    assert choose_mode(True, False, stdout=pipe, stderr=pipe)[0] == "off"
    assert choose_mode(False, True, stdout=tty, stderr=tty)[0] == "off"


def _emit_run(writer: EventWriter) -> None:
    writer.emit("run_started", run_id="r1", trainer="simple", total_steps=10, profile="tiny")
    for step in (5, 10):
        writer.emit("step", global_step=step, step=step, loss=4.0 / step, lr=3e-4 * step,
                    tokens_per_s=1234.5, grad_norm=0.5, phase="stabilize", domain="semantic")
    writer.emit("eval", global_step=10, loss=0.41, best=True)
    writer.emit("checkpoint", global_step=10, path="/x/step_000010", name="step_000010")
    writer.emit("run_finished", status="finished", global_step=10)


def test_plain_lines_show_the_emitted_numbers(tmp_path: Path) -> None:
    out = io.StringIO()
    display = HeadlessDisplay("plain", out)
    with EventWriter(tmp_path / "events.jsonl", listeners=[display]) as writer:
        _emit_run(writer)
    lines = out.getvalue().splitlines()
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert steps[0].startswith("step 5/10 | loss 0.8000 | lr 1.50e-03 | 1,234 tok/s")
    assert "phase stabilize" in steps[0] and "domain semantic" in steps[0]
    assert steps[1].startswith("step 10/10 | loss 0.4000 | lr 3.00e-03")
    assert any("validation loss 0.4100 ✓ best" in ln for ln in lines)
    assert any("checkpoint step_000010" in ln for ln in lines)
    assert lines[-2].endswith("run finished")
    assert lines[-1] == ("run finished: 10/10 steps in 0s · best val 0.4100 (step 10) · "
                         "final checkpoint /x/step_000010")
    # The display folded the same state a reader of events.jsonl folds.
    replay = fold(read_events(tmp_path / "events.jsonl"))
    assert status_line(replay) == status_line(display.state)


def test_rich_display_draws_progress(tmp_path: Path) -> None:
    out = _Tty()
    display = HeadlessDisplay("rich", out)
    with EventWriter(tmp_path / "events.jsonl", listeners=[display]) as writer:
        _emit_run(writer)
    display.close()
    text = out.getvalue()
    assert "step 10/10" in text and "loss 0.4000" in text and "100.0%" in text
    assert "validation loss 0.4100" in text


def test_off_writes_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    display = HeadlessDisplay("off", out)
    with EventWriter(tmp_path / "events.jsonl", listeners=[display]) as writer:
        _emit_run(writer)
    assert out.getvalue() == "" and display.state.global_step == 10


def test_bpb_baselines_and_samples_print_under_the_eval_line(tmp_path: Path) -> None:
    out = io.StringIO()
    display = HeadlessDisplay("plain", out)
    with EventWriter(tmp_path / "events.jsonl", listeners=[display]) as writer:
        writer.emit("run_started", run_id="r1", trainer="simple", total_steps=10)
        writer.emit("eval", global_step=10, loss=2.5, bpb=1.2345, best=True,
                    baseline_bigram_bpb=1.7631, baseline_unigram_bpb=3.2878)
        writer.emit("sample", global_step=10, samples=[
            {"prompt": "What is 2 plus 2?", "text": "2 plus 2 is 4.", "style": "qa"},
            {"prompt": "Line one\nline two " + "x" * 80, "text": "a\nb"}])
        writer.emit("run_finished", status="finished", global_step=10)
    lines = out.getvalue().splitlines()
    at = next(i for i, ln in enumerate(lines) if "validation loss 2.5000" in ln)
    assert "1.234 bpb (bigram 1.763, unigram 3.288)" in lines[at]
    assert lines[at + 1] == "  [qa] What is 2 plus 2? → 2 plus 2 is 4."
    assert lines[at + 2].startswith("  Line one⏎line two xxx") and "… → a⏎b" in lines[at + 2]


def test_info_lines_are_not_warnings_and_ppo_evals_say_reward(tmp_path: Path) -> None:
    out = io.StringIO()
    display = HeadlessDisplay("plain", out)
    with EventWriter(tmp_path / "events.jsonl", listeners=[display]) as writer:
        writer.emit("run_started", run_id="r1", trainer="ppo", total_steps=4)
        writer.emit("info", message="resumed from /x/step_000002 at step 2", global_step=2)
        # PPO's eval loss is the negated held-out reward.
        writer.emit("eval", global_step=4, loss=-0.7119, best=True,
                    metrics={"reward": 0.7119, "kl": 0.0312})
        writer.emit("eval", global_step=4, loss=0.52, metrics={"accuracy": 0.8})
    lines = out.getvalue().splitlines()
    assert "[2] resumed from /x/step_000002 at step 2" in lines
    assert not any("warning" in ln for ln in lines)
    assert "[4] held-out reward 0.7119, KL 0.0312 ✓ best" in lines
    assert "[4] validation loss 0.5200" in lines  # a real loss keeps its name
    assert [e["type"] for e in display.state.log][:1] == ["info"]  # the console's log shows it
