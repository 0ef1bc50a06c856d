"""The consistency oracle: what the console shows, read off its widgets, against an independent
fold of ``events.jsonl`` up to the same moment.

At a moment (between two awaits, so no event can arrive in between) the test forces a redraw,
reads the numbers the run panel, chart, branch panel, scratchpad, checkpoints table and event
log show, and folds the first N events of the run's file — N = the events the console has
applied — into a fresh :class:`RunState`. Every number must agree: step, total, %, activity,
phase, domain, best val, lr, loss, params, chart readout and points, branch scores, scratchpad
use, checkpoint rows, event-log lines. The screen's text is parsed, not the widgets' state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text

from aeron_tui.app.app import AeronConsole
from aeron_tui.app.format import fmt_count, fmt_duration, fmt_float, fmt_lr
from aeron_tui.app.session import LOG_TYPES
from aeron_tui.app.widgets.branch_scores import BranchScores
from aeron_tui.app.widgets.checkpoints_table import CheckpointsTable
from aeron_tui.app.widgets.event_log import EventLog
from aeron_tui.app.widgets.loss_chart import LossChart
from aeron_tui.app.widgets.run_panel import RunPanel
from aeron_tui.app.widgets.scratchpad_grid import ScratchpadGrid
from core.runs.events import RunState, describe_activity, read_events

from .helpers import plain


@dataclass
class Oracle:
    """Checks frames of one run; remembers the elapsed shown so it can never decrease."""

    events_path: Path
    frames: int = 0
    elapsed: list[float] = field(default_factory=list)

    def prefix(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for item in read_events(self.events_path):
            if len(out) == n:
                break
            assert isinstance(item, dict), f"unreadable line in the run's events: {item}"
            out.append(item)
        assert len(out) == n, f"the console applied {n} events, the file holds {len(out)}"
        return out

    def check(self, app: AeronConsole) -> RunState:
        """Redraw now and compare every panel with the fold of the events applied so far."""
        session = app.session
        assert session is not None
        app.render_now()  # synchronous: no event is applied until the next await
        dash = app.dashboard
        if session.state.events_seen == 0:
            assert "waiting for the trainer's first event" in plain(dash.query_one(RunPanel), 200)
            return RunState()
        events = self.prefix(session.state.events_seen)
        truth = RunState()
        for event in events:
            truth.apply(event)
        self.frames += 1

        panel = plain(dash.query_one(RunPanel), width=200)
        rows = {line.split(None, 1)[0]: line.split(None, 1)[1] if " " in line.strip() else ""
                for line in panel.splitlines() if line.strip()}
        step = rows["step"]
        total = f"{truth.global_step:,} / {truth.total_steps:,}" if truth.total_steps \
            else f"{truth.global_step:,}"
        assert step.startswith(total + " "), (step, total)
        assert f"{truth.progress * 100:5.1f}%".strip() in step, (step, truth.progress)
        if truth.total_reason:
            assert f"total revised: {truth.total_reason}" in step
        assert describe_activity(truth) in rows["now"], (rows["now"], describe_activity(truth))
        if truth.model_params:
            assert f"{fmt_count(truth.model_params)} params" in rows["what"]
        train = rows.get("train", "")
        assert f"loss {fmt_float(truth.loss)}" in train
        assert f"lr {fmt_lr(truth.lr)}" in train
        if truth.best_val_loss is not None:
            assert f"best val {fmt_float(truth.best_val_loss)} @{truth.best_val_step:,}" in train
        else:
            assert "best val" not in train
        lonpt = rows.get("lonpt", "")
        if truth.phase:
            assert f"phase {truth.phase}" in lonpt, (lonpt, truth.phase)
        if truth.domain:
            assert f"domain {truth.domain}" in lonpt, (lonpt, truth.domain)
            best = truth.domain_best.get(truth.domain)
            if best is not None:
                assert f"domain best {fmt_float(best)}" in lonpt
        elapsed = dash.query_one(RunPanel).shown_elapsed
        assert elapsed is not None
        match = re.search(r"elapsed (\S+)", rows["speed"])
        assert match is not None and match.group(1) == fmt_duration(elapsed)
        self.elapsed.append(elapsed)
        assert self.elapsed == sorted(self.elapsed), f"elapsed went backwards: {self.elapsed}"

        chart = dash.query_one(LossChart)
        assert chart.train_points == len(truth.train_losses)
        assert chart.val_points == len(truth.val_losses)
        last_train = truth.train_losses[-1] if truth.train_losses else None
        last_val = truth.val_losses[-1] if truth.val_losses else None
        assert chart.readout() == (last_train, last_val)
        subtitle = dash.query_one("#chart-box").border_subtitle
        legend = Text.from_markup(str(subtitle)).plain
        if last_train is not None:
            assert f"train {last_train[1]:.4f}" in legend, (legend, last_train)
        if last_val is not None:
            assert f"val {last_val[1]:.4f} @{last_val[0]:,}" in legend

        branches = dash.query_one(BranchScores)
        if truth.branch_scores:
            assert branches.shown_scores == truth.branch_scores
            keep = truth.branch_keep or []
            assert branches.pruned == [i for i, k in enumerate(keep) if k < 0.5]
            # The gate's share of samples reasoned on and its complexity, from the same event.
            last = next((e for e in reversed(events) if e["type"] == "step"
                         and e.get("reasoning_skipped_frac") is not None), None)
            if last is None:
                assert branches.reasoning_line == ""
            else:
                if last.get("branch_scores_mean") is not None:
                    ran = 1.0 - last["reasoning_skipped_frac"]
                    assert branches.reasoning_line.startswith(f"reasoned {ran:.0%}"), (
                        branches.reasoning_line, last)
                else:
                    assert branches.reasoning_line.startswith("none reasoned since")
                if last.get("complexity_mean") is not None:
                    assert f"complexity {last['complexity_mean']:.3f}" in branches.reasoning_line
        grid = dash.query_one(ScratchpadGrid)
        if truth.scratchpad:
            assert grid.occupied_count == truth.scratchpad["used_slots"]
            assert grid.total_slots == truth.scratchpad["total_slots"]

        table = dash.query_one(CheckpointsTable)
        assert table.row_count == len(truth.checkpoints)
        for i, ckpt in enumerate(truth.checkpoints):
            row = table.get_row_at(i)
            assert row[2] == f"{ckpt['global_step']:,}"
            assert row[3] == fmt_float(ckpt.get("val_loss"))

        log = dash.query_one(EventLog)
        assert log.lines_written == sum(1 for e in events if e["type"] in LOG_TYPES)
        return truth
