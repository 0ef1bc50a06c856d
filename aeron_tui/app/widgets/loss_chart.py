"""Loss chart: train loss per step and validation loss per eval on one rescaling plot.

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


class LossChart(Widget):
    """Train + validation loss. ``smoothing`` toggles the EMA overlay."""

    DEFAULT_CSS = """
    LossChart { height: 1fr; min-height: 5; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.smoothing = True
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
        key = (session.id if session else None, n_train, n_val, last, self.smoothing,
               self.size.width)
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
        other = "raw" if self.smoothing else "EMA"
        box.border_title = f"loss · {self.mode} (m: {other})"
        train, val = self.readout()
        legend = Text()
        legend.append("━ train", TRAIN_STYLE)
        if train is not None:
            legend.append(f" {train[1]:.4f}", "bold")
        legend.append("  ● val", VAL_STYLE)
        if val is not None:
            legend.append(f" {val[1]:.4f} @{val[0]:,}", "bold")
        box.border_subtitle = legend  # type: ignore[assignment]

    def _make_series(self) -> list[Series]:
        st = self._session.state if self._session else None
        if st is None:
            return []
        buckets = max(20, 2 * max(10, self.size.width - 8))
        out: list[Series] = []
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
        return out

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        if not self._series:
            return Text("no loss yet — step events will draw here", style="dim")
        if self._lines is None or len(self._lines) != height:
            self._lines = render_chart(self._series, width, height)
        return Text("\n").join(self._lines)
