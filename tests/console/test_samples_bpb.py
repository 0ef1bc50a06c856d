"""The dashboard shows the live samples the trainer emitted, their history on a key, and the loss
chart's bits-per-byte mode with the bigram/unigram reference lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aeron_tui.app.app import AeronConsole, ConsoleOptions
from aeron_tui.app.screens.samples import SamplesScreen
from aeron_tui.app.widgets.loss_chart import BIGRAM_STYLE, UNIGRAM_STYLE, VAL_STYLE, LossChart
from aeron_tui.app.widgets.samples_panel import SamplesPanel
from core.runs.events import make_event

from .helpers import FROZEN_NOW, fixed_hardware, plain, sync, wait_for
from .synth import synthetic_events, write_events

BYTES_PER_NAT = 0.55  # bpb = loss × this in the stream below (a fixed validation set)
BIGRAM, UNIGRAM = 1.70, 3.10


def _with_bpb_and_samples(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    first = True
    for e in events:
        if e["type"] != "eval":
            out.append(e)
            continue
        extra: dict[str, Any] = {"bpb": e["loss"] * BYTES_PER_NAT}
        if first:
            extra.update(baseline_bigram_bpb=BIGRAM, baseline_unigram_bpb=UNIGRAM)
            first = False
        out.append({**e, **extra})
        step = e["global_step"]
        out.append(make_event("sample", global_step=step, samples=[
            {"prompt": "What is 2 plus 2?", "text": f"reply at step {step}", "style": "qa"},
            {"prompt": "Explain `abc.ABCMeta`.", "text": f"line one\nline two {step}"},
        ]) | {"time": e["time"] + 0.05, "seq": e["seq"]})
    return out


def _app(run_dir: Path) -> AeronConsole:
    opts = ConsoleOptions(mode="watch", watch_dir=run_dir, runs_root=run_dir.parent)
    return AeronConsole(opts, clock=lambda: FROZEN_NOW, hardware=fixed_hardware())


@sync
async def test_samples_panel_history_and_bpb_chart(tmp_path: Path) -> None:
    events = _with_bpb_and_samples(synthetic_events(60, eval_every=20))
    write_events(tmp_path / "run" / "events.jsonl", events)
    samples = [e for e in events if e["type"] == "sample"]
    evals = [e for e in events if e["type"] == "eval"]
    app = _app(tmp_path / "run")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.session is not None
                       and app.session.state.status == "finished", what="finished run")
        app.render_now()
        await pilot.pause()
        panel = app.dashboard.query_one(SamplesPanel)
        assert panel.shown == samples[-1]["samples"] and panel.shown_step == 60
        text = panel.render().plain
        assert "[qa] What is 2 plus 2?" in text and "→ reply at step 60" in text
        assert "→ line one⏎line two 60" in text  # one row per reply, line breaks shown
        assert "step 60" in str(app.dashboard.query_one("#samples-box").border_title)

        # h: every set of samples, oldest first, in full.
        await pilot.press("h")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, SamplesScreen)
        assert [step for step, _ in screen.history] == [20, 40, 60]
        shown = plain(screen.query_one("#samples-text"), width=100)
        assert shown.index("reply at step 20") < shown.index("reply at step 60")
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, SamplesScreen)

        # Loss mode: the baselines drawn in nats per token (bpb ÷ bytes-per-nat of the set).
        chart = app.dashboard.query_one(LossChart)
        levels = {name: y for name, _, y in chart.reference_levels()}
        assert abs(levels["bigram"] - BIGRAM / BYTES_PER_NAT) < 1e-9
        assert abs(levels["unigram"] - UNIGRAM / BYTES_PER_NAT) < 1e-9
        # b: bits per byte — the validation points as emitted, the baselines as emitted.
        await pilot.press("b")
        assert chart.unit == "bpb"
        val = next(s for s in chart._series if s.style == VAL_STYLE)
        assert val.ys == [e["bpb"] for e in evals]
        refs = {s.style: s.ys for s in chart._series if s.style in (BIGRAM_STYLE, UNIGRAM_STYLE)}
        assert refs == {BIGRAM_STYLE: [BIGRAM, BIGRAM], UNIGRAM_STYLE: [UNIGRAM, UNIGRAM]}
        box = app.dashboard.query_one("#chart-box")
        assert "bits per byte" in str(box.border_title)
        assert "bigram" in str(box.border_subtitle) and "unigram" in str(box.border_subtitle)
        await pilot.press("b")
        assert chart.unit == "loss"
