"""Tree-of-Thought branch scores: one bar per branch for the latest step plus its history.

Columns (headed on screen): the branch, its mean score at the latest step (bar and number), the
score's history (sparkline, each branch on its own scale) and ``kept`` — the share of the
batch's samples for which the branch survived pruning. A branch kept for fewer than half of the
samples is marked pruned (✗, struck through, grey, share in red); a line under the table says
so. A caption under the bars says how much of the batch the engine reasoned on (its complexity
gate skips samples below the threshold, and the scores average the samples it ran on) and the
gate's mean complexity; when the latest step event had no sample reasoned on, it says since
which step and which step the bars are from, so they never pass for current.
Runs without branch scores (RLHF trainers, reasoning off) show the trainer's headline
``metrics`` here instead, with the same bars-and-sparkline treatment — no special screen per
trainer.
"""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from aeron_tui.app.format import bar, fmt_float, line_count, sparkline
from aeron_tui.app.session import RunSession
from core.runs.events import RunState

PRUNED_BELOW = 0.5
BRANCH_COLORS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan",
                 "bright_magenta")


class BranchScores(Static):
    """Bars for ``branch_scores_mean`` of the last step event, sparklines of their history."""

    DEFAULT_CSS = """
    BranchScores { height: auto; padding: 0 1; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.shown_scores: list[float] = []
        self.pruned: list[int] = []
        self.shown_metrics: dict[str, float] = {}
        self.reasoning_line = ""  # the caption under the bars ("" when there is none)
        self._key: tuple[object, ...] = ()
        self._lines = -1

    def show(self, session: RunSession | None) -> None:
        key = (session.id if session else None, session.version if session else -1,
               self.size.width)
        if key == self._key:
            return
        self._key = key
        body = self._render_body(session)
        # + the header row, + the caption
        lines = line_count(body) + (1 if self.shown_scores else 0) + (1 if self.reasoning_line else 0)
        self.update(body, layout=lines != self._lines)
        self._lines = lines

    @property
    def legend(self) -> str:
        """What ✗ means (the box shows it under the table)."""
        if not self.shown_scores:
            return ""
        return f"✗ = pruned (kept < {PRUNED_BELOW:.0%})"

    def _render_body(self, session: RunSession | None) -> Table | Text:
        st = session.state if session else None
        if st is not None and st.branch_scores:
            return self._branches(session)  # type: ignore[arg-type]
        if session is not None and session.headline_metrics():
            return self._metrics(session)
        self.shown_scores = []
        self.shown_metrics = {}
        self.reasoning_line = ""
        return Text("no branch scores or metrics yet", style="dim")

    def _widths(self) -> tuple[int, int]:
        # label 3 + value 6 + keep 4 + four 1-column gaps = 17 fixed columns.
        width = max(24, self.size.width - 2 if self.size.width else 40)
        free = width - 17
        spark_w = max(4, min(30, free // 2))
        bar_w = max(4, free - spark_w)
        return bar_w, spark_w

    def _branches(self, session: RunSession) -> Table:
        st = session.state
        scores = [float(s) if isinstance(s, (int, float)) else math.nan
                  for s in (st.branch_scores or [])]
        keep = list(st.branch_keep or [])
        self.shown_scores = scores
        self.shown_metrics = {}
        bar_w, spark_w = self._widths()
        finite = [s for s in scores if math.isfinite(s)]
        unit = bool(finite) and min(finite) >= 0.0 and max(finite) <= 1.0
        scale = 1.0 if unit else max((abs(s) for s in finite), default=1.0) or 1.0
        history = st.branch_history[-spark_w:]
        self.pruned = []
        table = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, pad_edge=False,
                      header_style="dim")
        table.add_column("", no_wrap=True, width=3)
        table.add_column("score", no_wrap=True, width=bar_w)
        table.add_column("", no_wrap=True, width=6, justify="right")
        table.add_column("history", no_wrap=True, width=spark_w)
        table.add_column("kept", no_wrap=True, width=4, justify="right")
        self.reasoning_line = reasoning_caption(st)
        if self.reasoning_line:
            table.caption = self.reasoning_line
            table.caption_style = "dim"
            table.caption_justify = "left"
        for i, score in enumerate(scores):
            color = BRANCH_COLORS[i % len(BRANCH_COLORS)]
            kept = keep[i] if i < len(keep) and isinstance(keep[i], (int, float)) else None
            pruned = kept is not None and kept < PRUNED_BELOW
            if pruned:
                self.pruned.append(i)
            filled, empty = bar(abs(score) / scale if math.isfinite(score) else 0.0, bar_w)
            bar_txt = Text()
            bar_txt.append(filled, "grey50" if pruned else color)
            bar_txt.append(empty, "on grey15")
            series = [row[i] for row in history if i < len(row)]
            # Each branch on its own scale: the trend matters here, the level is in the number.
            spark = Text(sparkline(series, spark_w), style="grey50" if pruned else color)
            mark = Text()
            if kept is not None:
                mark.append(f"{kept * 100:3.0f}%", "bold red" if pruned else "dim")
            label = Text()
            if pruned:
                label.append("✗", "bold red")
                label.append(f"b{i}", "strike grey50")
            else:
                label.append(f" b{i}", f"bold {color}")
            table.add_row(
                label,
                bar_txt,
                Text(f"{score:6.3f}" if math.isfinite(score) else "     —",
                     style="grey50" if pruned else "bold"),
                spark,
                mark,
            )
        return table

    def _metrics(self, session: RunSession) -> Table:
        metrics = session.headline_metrics()
        self.shown_scores = []
        self.reasoning_line = ""
        self.shown_metrics = {k: float(v) for k, v in metrics.items()}
        _, spark_w = self._widths()
        table = Table.grid(padding=(0, 1))
        table.add_column(no_wrap=True, style="bold")
        table.add_column(no_wrap=True, justify="right")
        table.add_column(no_wrap=True)
        for i, (name, value) in enumerate(sorted(metrics.items())):
            color = BRANCH_COLORS[i % len(BRANCH_COLORS)]
            hist = session.metric_history.get(name, [])
            table.add_row(Text(name, style=color), fmt_float(float(value), 4),
                          Text(sparkline(hist, spark_w * 2), style=color))
        return table


def reasoning_caption(st: RunState) -> str:
    """``reasoned 22% · complexity 0.218``, or, when the latest step event reasoned on no
    sample, ``none reasoned since 1,240 · bars @1,230 · complexity 0.190``; "" without gate
    figures (older event streams)."""
    if st.reasoning_ran is None or st.reasoning_step is None:
        return ""
    stale = st.branch_scores_step is not None and st.branch_scores_step < st.reasoning_step
    if stale:
        text = f"none reasoned since {st.branch_scores_step + 1:,} · bars @{st.branch_scores_step:,}"
    else:
        text = f"reasoned {st.reasoning_ran:.0%}"
    if st.complexity_mean is not None:
        text += f" · complexity {st.complexity_mean:.3f}"
    return text
