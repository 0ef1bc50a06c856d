"""Folding the event stream: the numbers every renderer shows (RunState) against the events."""

from __future__ import annotations

from typing import Any

import pytest

from core.runs.events import RunState, describe_activity, describe_event, fold, make_event

T0 = 1_700_000_000.0


def ev(kind: str, t: float, **fields: Any) -> dict[str, Any]:
    event = make_event(kind, **fields)
    event["time"] = T0 + t
    return event


def started(t: float = 0.0, total: int = 26, **fields: Any) -> dict[str, Any]:
    return ev("run_started", t, run_id="r", trainer="lonpt", total_steps=total, global_step=0,
              **fields)


def step(t: float, n: int, **fields: Any) -> dict[str, Any]:
    return ev("step", t, global_step=n, loss=3.0, lr=1e-3, **fields)


def test_a_revised_total_is_used_and_a_finished_run_is_at_100_percent() -> None:
    state = fold([started(total=26), step(1, 5), ev("total_changed", 2, global_step=5,
                                                    total_steps=20, reason="act")])
    assert state.total_steps == 20 and state.total_reason == "act"
    assert state.progress == pytest.approx(5 / 20)
    state.apply(step(3, 18))
    state.apply(ev("run_finished", 4, status="finished", global_step=18))
    # The trainer never announced the last revision (an older stream): the finished run still
    # says what it did — 18 of 18, 100 %.
    assert (state.global_step, state.total_steps, state.progress) == (18, 18, 1.0)
    stopped = fold([started(total=26), step(1, 5),
                    ev("run_finished", 2, status="stopped", global_step=5)])
    assert stopped.total_steps == 26 and stopped.progress == pytest.approx(5 / 26)


def test_elapsed_never_decreases_and_ticks_without_events() -> None:
    state = RunState()
    seen: list[float] = []

    def frame(now: float) -> None:
        seen.append(state.elapsed_at(T0 + now))

    state.apply(ev("activity", 0, activity="loading data"))
    frame(1)
    frame(3)  # no events: it ticks
    state.apply(started(4, elapsed_s=4.5))  # setup began before the first event
    frame(4.2)
    frame(9)
    state.apply(step(6, 3))  # read late: an event older than the last frame
    frame(9.1)
    state.apply(ev("status", 10, status="paused", global_step=3))
    frame(15)  # paused: the wall clock still runs
    state.apply(ev("run_finished", 12, status="stopped", global_step=3))  # arrives late
    frame(16)
    frame(30)  # finished: it stays
    # A resume appends to the same stream; setup events come before its run_started.
    state.apply(ev("activity", 100, activity="loading data"))
    frame(101)
    state.apply(started(103, elapsed_s=10.0))  # the trainer's own count excludes the pause
    frame(104)
    frame(110)
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False)), seen
    assert seen[1] > seen[0] and seen[4] > seen[3]  # ticking between events
    assert seen[7] == seen[8]  # a finished run keeps its time
    assert seen[-1] > seen[-2]  # and the resumed one ticks on


def test_status_and_heartbeats_carry_the_step_the_trainer_is_at() -> None:
    state = fold([started(), step(1, 5), ev("heartbeat", 2, global_step=6, activity="training"),
                  ev("status", 3, status="paused", global_step=7)])
    assert state.global_step == 7 and state.paused
    assert describe_activity(state) == "paused at step 7"
    assert describe_event(state.log[-1]) == "[7] status → paused"
    # A warning names the step being taken (global_step + 1): it does not move the step.
    state.apply(ev("warning", 4, message="non-finite loss", global_step=8))
    assert state.global_step == 7


def test_a_phase_change_is_not_undone_by_the_step_logged_after_it() -> None:
    # LONPT: after step 14 it announces the phase of step 15, then logs step 14 (its own phase).
    state = fold([started(), ev("phase_change", 1, global_step=14, phase="settle", lr_scale=1.0),
                  step(1.1, 14, phase="expansion", lr_scale=1.25, domain="semantic")])
    assert (state.phase, state.lr_scale) == ("settle", 1.0)
    state.apply(step(2, 15, phase="settle", lr_scale=1.0))
    state.apply(step(3, 20, phase="compression", lr_scale=0.75))
    assert (state.phase, state.lr_scale) == ("compression", 0.75)
    state.apply(ev("domain_change", 4, global_step=20, domain="reasoning"))
    state.apply(step(4.1, 20, domain="semantic"))
    assert state.domain == "reasoning"


def test_the_run_best_and_a_domain_best_are_kept_apart() -> None:
    events = [started(),
              ev("eval", 1, global_step=10, loss=5.6242, domain="syntactic", best=True,
                 best_of_domain=True),
              ev("eval", 2, global_step=20, loss=5.8511, domain="semantic", best=False,
                 best_of_domain=True),
              ev("eval", 3, global_step=30, loss=5.9, domain="semantic", best=False,
                 best_of_domain=False)]
    state = fold(events)
    assert state.best_val_loss == 5.6242 and state.best_val_step == 10
    assert state.domain_best == {"syntactic": 5.6242, "semantic": 5.8511}
    lines = [describe_event(e) for e in events[1:]]
    assert lines[0].endswith("✓ best")
    assert lines[1].endswith("(semantic) ✓ best of domain semantic")
    assert "✓" not in lines[2]


def test_the_eta_counts_the_evaluations_and_checkpoints_to_come() -> None:
    # 100 steps at 1 s each; 2 evaluations of 10 s and the final checkpoint (2 s) still to come.
    state = fold([started(0, total=100, evals_left=2, checkpoints_left=1),
                  step(10, 10),
                  ev("activity", 10, activity="evaluating", done=0, of=5),
                  ev("eval", 20, global_step=10, loss=3.0, duration_s=10.0, best=True),
                  ev("activity", 20, activity="saving checkpoint"),
                  ev("checkpoint", 22, global_step=10, path="/r/c", reason="best", duration_s=2.0),
                  ev("activity", 22, activity="training"),
                  step(32, 20)])
    assert state.step_seconds == pytest.approx(1.0)
    # 80 steps + 1 evaluation + the final checkpoint + the expected best checkpoint after it
    # (1 of 1 evaluations so far saved one).
    assert state.eta_at(T0 + 32) == pytest.approx(80 + 10 + 2 + 2)
    assert state.eta_at(T0 + 32.5) == pytest.approx(80 + 10 + 2 + 2 - 0.5)  # ticks down
    state.apply(ev("status", 32.5, status="paused", global_step=20))
    frozen = state.eta_at(T0 + 33)
    assert frozen == pytest.approx(80 + 10 + 2 + 2 - 0.5)
    assert state.eta_at(T0 + 90) == frozen  # paused: the estimate does not run
    state.apply(ev("status", 92.5, status="running", global_step=20))
    state.apply(step(102, 30))
    # The 60 s pause is not training time: still 1 s per step.
    assert state.step_seconds == pytest.approx(1.0)
    # In the last evaluation, half done (done/of).
    state.apply(step(172, 100))
    state.apply(ev("activity", 172, activity="evaluating", done=5, of=10))
    assert state.eta_at(T0 + 173) == pytest.approx(5 + 2 + 2)
    state.apply(ev("run_finished", 190, status="finished", global_step=100))
    assert state.eta_at(T0 + 190) is None


def test_eval_time_is_estimated_from_the_step_time_before_the_first_evaluation() -> None:
    # simple --steps 40 with eval_every 200: the only evaluation is the final one.
    state = fold([started(0, total=40, evals_left=1, checkpoints_left=1, eval_batches=30),
                  step(10, 10, grad_accum=1)])
    # 30 validation batches, forward only: a third of a training step each.
    assert state.eval_seconds() == pytest.approx(10.0)
    assert state.eta_at(T0 + 10) == pytest.approx(30 + 10)


def test_activity_samples_and_detached_are_folded() -> None:
    state = fold([ev("activity", 0, activity="building tokenizer"), started(1),
                  ev("heartbeat", 2, global_step=0, activity="evaluating", done=3, of=12),
                  ev("sample", 3, global_step=0, samples=[{"prompt": "a", "text": "b"}]),
                  ev("detached", 4, reason="terminal closed (SIGHUP)")])
    assert describe_activity(state) == "evaluating 3/12"
    assert state.activity_since == T0 + 2 and state.last_heartbeat_time == T0 + 2
    assert state.samples == [{"prompt": "a", "text": "b"}] and len(state.sample_history) == 1
    assert state.detached and state.status == "running"
    assert state.quiet_s(T0 + 10) == pytest.approx(6.0)
    state.apply(ev("run_finished", 5, status="stopped", global_step=0))
    state.apply(ev("heartbeat", 5.2, global_step=0))  # a last beat after the end changes nothing
    assert state.status == "stopped" and describe_activity(state) == "stopped"
