"""Event feeds and the session fold: batching, partial lines, corrupt and too-new input."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from aeron_tui.app.feeds import pump_replay, pump_tail
from aeron_tui.app.format import debiased_ema, downsample, fmt_duration, sparkline
from aeron_tui.app.session import RunSession
from core.runs.events import ParseProblem, encode_event

from .synth import synthetic_events, write_events


def _collect_tail(path: Path, seconds: float) -> list[list]:
    batches: list[list] = []
    stop = threading.Event()
    t = threading.Thread(target=pump_tail, args=(path, batches.append, stop.is_set),
                         kwargs={"interval": 0.05, "idle_interval": 0.05})
    t.start()
    time.sleep(seconds)
    stop.set()
    t.join(5)
    return batches


def test_tail_waits_for_a_partial_last_line(tmp_path: Path) -> None:
    events = synthetic_events(5)
    path = tmp_path / "events.jsonl"
    last = encode_event(events[-1])
    write_events(path, events[:-1], tail=last[:20])  # a writer mid-line
    session = RunSession(source="watch")
    for batch in _collect_tail(path, 0.4):
        session.apply(batch)
    assert session.state.status == "running" and session.problem_count == 0
    with open(path, "a") as fh:  # the writer finishes the line
        fh.write(last[20:] + "\n")
    for batch in _collect_tail(path, 0.4):
        session.apply(batch)
    # A fresh tail re-reads from the start: the fold must be the full, finished run.
    fresh = RunSession(source="watch")
    for batch in _collect_tail(path, 0.4):
        fresh.apply(batch)
    assert fresh.state.status == "finished" and fresh.state.global_step == 5


def test_garbage_and_newer_schema_become_problems_not_crashes(tmp_path: Path) -> None:
    events = synthetic_events(10)
    newer = dict(events[3], v=99)
    garbage = "this is not json\n" + json.dumps({"v": 1, "type": "step"}) + "\n"
    path = write_events(tmp_path / "events.jsonl", events[:5] + [newer] + events[5:],
                        tail=garbage + '{"v":1,"type":"st')
    session = RunSession(source="replay")
    pump_replay(path, session.apply, lambda: False, speed=0)
    st = session.state
    assert st.global_step == 10 and st.status == "finished"  # good events still count
    messages = [p.message for p in st.problems]
    assert any("newer than this aeron-tui" in m for m in messages)
    assert any(m.startswith("not JSON") for m in messages)
    assert any("field 'time' is missing" in m for m in messages)
    assert any(m.startswith("incomplete last line") for m in messages)
    lines = session.take_log()
    assert sum(1 for line in lines if line.problem is not None) == 4


def test_replay_batches_at_most_every_interval(tmp_path: Path) -> None:
    path = write_events(tmp_path / "events.jsonl", synthetic_events(40))
    batches: list[list] = []
    start = time.monotonic()
    pump_replay(path, batches.append, lambda: False, speed=40.0, interval=0.1)
    elapsed = time.monotonic() - start
    assert sum(len(b) for b in batches) == len(synthetic_events(40))
    assert len(batches) <= elapsed / 0.1 + 2  # coalesced, not one post per event


def test_session_metric_history_and_log() -> None:
    session = RunSession(source="watch")
    evs = synthetic_events(3)
    evs[1] = dict(evs[1], metrics={"reward": 0.5, "kl": 0.01})
    evs[2] = dict(evs[2], metrics={"reward": 0.7})
    session.apply(evs)
    assert session.metric_history["reward"] == [0.5, 0.7]
    assert session.headline_metrics() == {"reward": 0.7, "kl": 0.01}
    kinds = [line.kind for line in session.take_log()]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert session.take_log() == []


def test_display_status_never_shows_a_dead_child_as_running() -> None:
    session = RunSession(source="child")
    session.apply(synthetic_events(5)[:3])
    assert session.display_status == "running"
    session.exit_code = -9
    assert session.display_status == "failed" and not session.live


def test_format_helpers() -> None:
    assert fmt_duration(65) == "1:05" and fmt_duration(3725) == "1:02:05"
    assert fmt_duration(None) == "—"
    assert sparkline([0, 1, 2, 3], 4) == "▁▃▆█"
    sm = debiased_ema([2.0, 2.0, 2.0], 0.9)
    assert all(abs(v - 2.0) < 1e-9 for v in sm)  # debiased: no pull towards zero at the start
    xs, ys = downsample([(i, float(i)) for i in range(1000)], 10)
    assert len(xs) == 10 and abs(ys[0] - 49.5) < 1e-9
    assert isinstance(ParseProblem(1, "x"), ParseProblem)
