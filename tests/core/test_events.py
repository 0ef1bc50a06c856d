"""The event stream survives what training throws at it: non-finite losses, a vanished reader."""

from __future__ import annotations

import io
from pathlib import Path

from core.runs.events import EventWriter, ParseProblem, RunState, describe_event, read_events


def test_a_non_finite_loss_is_written_read_back_and_shown(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        writer.emit("run_started", run_id="r", trainer="simple", total_steps=3)
        writer.emit("step", global_step=1, loss=float("nan"), lr=1e-3)
        writer.emit("step", global_step=2, loss=2.5, lr=1e-3)
        writer.emit("eval", global_step=2, loss=float("inf"))
        writer.emit("eval", global_step=3, loss=2.0)
    events = list(read_events(path))
    assert not [e for e in events if isinstance(e, ParseProblem)]
    assert events[1]["loss"] is None and events[3]["loss"] is None
    state = RunState()
    for event in events:
        state.apply(event)
    assert state.train_losses == [(2, 2.5)]
    assert state.val_losses == [(3, 2.0)] and state.best_val_loss == 2.0
    assert "validation loss not finite" in describe_event(events[3])
    assert "validation loss 2.0000" in describe_event(events[4])


class _GonePipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_vanished_stdout_reader_does_not_stop_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    seen: list[dict] = []
    with EventWriter(path, stdout=True, stream=_GonePipe(), listeners=[seen.append]) as writer:
        for step in range(3):
            writer.emit("step", global_step=step, loss=1.0, lr=1e-3)
    assert [e["global_step"] for e in read_events(path)] == [0, 1, 2]
    assert len(seen) == 3
