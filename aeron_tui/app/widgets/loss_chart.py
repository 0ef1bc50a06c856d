"""Loss chart: train loss per step and validation loss per eval on one rescaling plot.

``b`` switches to bits per byte (validation; comparable across tokenizers). In both modes the
run's count-based reference models — the bigram ("pairs of tokens") and unigram ("word
frequencies") baselines of its first eval — are drawn as flat lines, so a user sees when the
model has passed them (in loss mode converted to nats per token with the validation set's own
bytes-per-token ratio, exact because baseline and eval score the same pairs).

Drawn with the console's own braille renderer (:mod:`aeron_tui.app.braille`): a redraw costs a
millisecond or two, so a key press or a new batch of events shows at once even on a busy
machine. Series are downsampled to about two points per column first, so the cost is the same
at step 100 and step 100,000. ``m`` switches between the raw losses and TensorBoard's debiased
EMA: in EMA mode each series is drawn once, smoothed (no raw line underneath), and the title and
legend both say so. The legend carries the latest values (the same figures as the run panel and
the event log), the y axis is labelled at both ends of its range, and x ticks are whole steps.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from aeron_tui.app.braille import Series, render_chart
from aeron_tui.app.format import debiased_ema, downsample
from aeron_tui.app.session import RunSession

SMOOTHING_WEIGHT = 0.8
TRAIN_STYLE = "rgb(90,170,255)"
VAL_STYLE = "rgb(255,170,60)"
BIGRAM_STYLE = "rgb(110,190,110)"
UNIGRAM_STYLE = "rgb(170,110,190)"
UNITS = ("loss", "bpb")


class LossChart(Widget):
    """Train + validation loss. ``smoothing`` toggles the EMA overlay."""

    DEFAULT_CSS = """
    LossChart { height: 1fr; min-height: 5; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.smoothing = True
        self.unit = "loss"  # what the chart plots: "loss" or "bpb" (b switches)
        self.train_points = 0
        self.val_points = 0
        self._key: tuple[object, ...] = ()
        self._session: RunSession | None = None
        self._series: list[Series] = []
        self._lines: list[Text] | None = None

    def show(self, session: RunSession | None, force: bool = False) -> None:
        """Recompute the series when the data or the smoothing changed."""
        self._session = session
        st = session.state if session else None
        n_train = len(st.train_losses) if st else 0
        n_val = len(st.val_losses) if st else 0
        last = st.train_losses[-1] if st and st.train_losses else None
        refs = (st.baseline_bigram_bpb, st.baseline_unigram_bpb, len(st.val_bpbs)) if st else ()
        key = (session.id if session else None, n_train, n_val, last, self.smoothing,
               self.size.width, self.unit, refs)
        if key == self._key and not force:
            return
        self._key = key
        self.train_points = n_train
        self.val_points = n_val
        self._series = self._make_series()
        self._lines = None
        self._title()
        self.refresh()

    def toggle_smoothing(self) -> bool:
        self.smoothing = not self.smoothing
        self.show(self._session, force=True)
        return self.smoothing

    def toggle_unit(self) -> str:
        """Loss ↔ bits per byte; returns the new unit."""
        self.unit = UNITS[(UNITS.index(self.unit) + 1) % len(UNITS)]
        self.show(self._session, force=True)
        return self.unit

    def on_resize(self) -> None:
        self.show(self._session, force=True)

    @property
    def mode(self) -> str:
        """What the lines show: ``EMA 0.8`` or ``raw`` (title and legend use the same words)."""
        return f"EMA {SMOOTHING_WEIGHT}" if self.smoothing else "raw"

    def readout(self) -> tuple[tuple[int, float] | None, tuple[int, float] | None]:
        """The latest (step, loss) of train and of validation: the figures the legend shows."""
        st = self._session.state if self._session else None
        if st is None:
            return None, None
        return (st.train_losses[-1] if st.train_losses else None,
                st.val_losses[-1] if st.val_losses else None)

    def _title(self) -> None:
        # Title and legend live on the surrounding box: every row inside is for data.
        box = self.parent
        if box is None:
            return
        legend = Text()
        if self.unit == "bpb":
            box.border_title = "validation bits per byte · loss (b) · x: step"
            legend.append("● val bpb", VAL_STYLE)
            st = self._session.state if self._session else None
            if st is not None and st.val_bpbs:
                step, bpb = st.val_bpbs[-1]
                legend.append(f" {bpb:.4f} @{step:,}", "bold")
        else:
            other = "raw" if self.smoothing else "EMA"
            box.border_title = f"loss · {self.mode} (m: {other}) · bpb (b)"
            train, val = self.readout()
            legend.append("━ train", TRAIN_STYLE)
            if train is not None:
                legend.append(f" {train[1]:.4f}", "bold")
            legend.append("  ● val", VAL_STYLE)
            if val is not None:
                legend.append(f" {val[1]:.4f} @{val[0]:,}", "bold")
        for name, style, _ in self.reference_levels():
            legend.append(f"  ─ {name}", style)
        box.border_subtitle = legend  # type: ignore[assignment]

    def reference_levels(self) -> list[tuple[str, str, float]]:
        """(name, style, y) of the baselines in the current mode's unit (none while unknown)."""
        st = self._session.state if self._session else None
        if st is None:
            return []
        scale = 1.0
        if self.unit == "loss":
            # nats/token = bpb × ln 2 × bytes/token: the ratio of the newest eval with both.
            losses = dict(st.val_losses)
            both = [(step, bpb) for step, bpb in st.val_bpbs if step in losses and bpb > 0]
            if not both:
                return []
            step, bpb = both[-1]
            scale = losses[step] / bpb
        out = []
        for name, style, value in (("bigram", BIGRAM_STYLE, st.baseline_bigram_bpb),
                                   ("unigram", UNIGRAM_STYLE, st.baseline_unigram_bpb)):
            if value is not None:
                out.append((name, style, value * scale))
        return out

    def _make_series(self) -> list[Series]:
        st = self._session.state if self._session else None
        if st is None:
            return []
        buckets = max(20, 2 * max(10, self.size.width - 8))
        out: list[Series] = []
        if self.unit == "bpb":
            if st.val_bpbs:
                vx = [float(step) for step, _ in st.val_bpbs]
                vy = [v for _, v in st.val_bpbs]
                out.append(Series(vx, vy, VAL_STYLE, line=len(vx) > 1, marker="●"))
            return self._with_references(out)
        if st.train_losses:
            points = st.train_losses
            if self.smoothing:
                # Smooth the full series, then sample it (EMA over bucket means lags more).
                smooth = debiased_ema([p[1] for p in points], SMOOTHING_WEIGHT)
                points = [(p[0], v) for p, v in zip(points, smooth, strict=True)]
            xs, ys = downsample(points, buckets)
            out.append(Series(xs, ys, TRAIN_STYLE))
        if st.val_losses:
            vx = [float(s) for s, _ in st.val_losses]
            vy = [v for _, v in st.val_losses]
            if self.smoothing:
                vy = debiased_ema(vy, SMOOTHING_WEIGHT)
            out.append(Series(vx, vy, VAL_STYLE, line=len(vx) > 1, marker="●"))
        return self._with_references(out)

    def _with_references(self, series: list[Series]) -> list[Series]:
        """The baselines as flat lines across the plotted steps, drawn first (under the data)."""
        xs = [x for s in series for x in s.xs]
        if not xs:
            return series
        x0, x1 = min(xs), max(xs)
        if x1 <= x0:
            x1 = x0 + 1.0
        refs = [Series([x0, x1], [y, y], style) for _, style, y in self.reference_levels()]
        return [*refs, *series]

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        if not self._series:
            what = "no bits per byte yet — evaluations will draw here" if self.unit == "bpb" else (
                "no loss yet — step events will draw here")
            return Text(what, style="dim")
        if self._lines is None or len(self._lines) != height:
            self._lines = render_chart(self._series, width, height)
        return Text("\n").join(self._lines)
