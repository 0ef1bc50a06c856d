"""Loss chart: train loss per step and validation loss per eval on one rescaling plot.

Built on textual-plotext. Series are downsampled to about two points per column before plotting,
so drawing costs the same at step 100 and step 100,000. Smoothing is TensorBoard's debiased EMA.
"""

from __future__ import annotations

from textual_plotext import PlotextPlot

from aeron_tui.app.format import debiased_ema, downsample
from aeron_tui.app.session import RunSession

SMOOTHING_WEIGHT = 0.8
TRAIN_COLOR = (90, 170, 255)
TRAIN_RAW_COLOR = (70, 90, 120)
VAL_COLOR = (255, 170, 60)


class LossChart(PlotextPlot):
    """Train + validation loss. ``smoothing`` toggles the EMA overlay (raw points stay, dimmed)."""

    DEFAULT_CSS = """
    LossChart { height: 1fr; min-height: 6; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.smoothing = True
        self.train_points = 0
        self.val_points = 0
        self._key: tuple[object, ...] = ()
        self._session: RunSession | None = None

    def show(self, session: RunSession | None, force: bool = False) -> None:
        """Replot when the data, the smoothing or the width changed."""
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
        self._plot_data()
        self.refresh()

    def toggle_smoothing(self) -> bool:
        self.smoothing = not self.smoothing
        self.show(self._session, force=True)
        return self.smoothing

    def on_resize(self) -> None:
        self.show(self._session)

    def _plot_data(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        st = self._session.state if self._session else None
        buckets = max(20, 2 * max(10, self.size.width - 10))
        # The title lives on the surrounding box (one row saved for data on 24-row terminals).
        if self.parent is not None:
            smooth = f"EMA {SMOOTHING_WEIGHT}" if self.smoothing else "raw"
            self.parent.border_title = f"loss · {smooth} (m) · x: step"
        if not st or (not st.train_losses and not st.val_losses):
            return
        if st.train_losses:
            xs, ys = downsample(st.train_losses, buckets)
            if self.smoothing and len(ys) > 2:
                # Smooth the full series, then sample it: EMA over bucket means would lag more.
                full = [p[1] for p in st.train_losses]
                sm = debiased_ema(full, SMOOTHING_WEIGHT)
                pairs = [(p[0], v) for p, v in zip(st.train_losses, sm, strict=True)]
                sx, sy = downsample(pairs, buckets)
                plt.plot(xs, ys, marker="braille", color=TRAIN_RAW_COLOR)
                plt.plot(sx, sy, marker="braille", color=TRAIN_COLOR, label="train")
            else:
                plt.plot(xs, ys, marker="braille", color=TRAIN_COLOR, label="train")
        if st.val_losses:
            vx = [float(s) for s, _ in st.val_losses]
            vy = [v for _, v in st.val_losses]
            if len(vx) > 1:
                plt.plot(vx, vy, marker="braille", color=VAL_COLOR, label="val")
            plt.scatter(vx, vy, marker="●", color=VAL_COLOR,
                        label=None if len(vx) > 1 else "val")
