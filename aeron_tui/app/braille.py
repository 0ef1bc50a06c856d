"""A small braille line chart: series → rows of styled text (no Textual, no plotting library).

Each terminal cell holds a 2×4 braille dot matrix, so a W×H cell plot has 2W×4H dots. Series
are drawn as connected lines (Bresenham between consecutive points) in order; a cell takes the
colour of the last series that touched it, so later series (the smoothed line, validation
points) stay on top. Markers (``●``) replace a whole cell. Costs O(width) per series once the
caller has downsampled to about two points per column, which keeps a redraw at a millisecond
or two however long the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text

BRAILLE_BASE = 0x2800
# Dot bit for (column 0/1, row 0..3) inside a cell (Unicode braille numbering).
_DOT_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


@dataclass(frozen=True)
class Series:
    """Points to draw. ``line`` connects them; ``marker`` (one character) marks each point."""

    xs: Sequence[float]
    ys: Sequence[float]
    style: str
    line: bool = True
    marker: str | None = None


def nice_ticks(lo: float, hi: float, max_ticks: int, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 5 × 10^k steps) inside [lo, hi], at most ``max_ticks``.

    ``integer`` keeps the spacing a whole number (steps on an x axis: no "9.5").
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or max_ticks < 1:
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max_ticks
    if integer:
        raw = max(raw, 1.0)
    mag = 10 ** math.floor(math.log10(raw))
    factors = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in factors if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + 1e-9 * step and len(ticks) < max_ticks + 1:
        ticks.append(round(value, 12))
        value += step
    return ticks


def fmt_tick(value: float, step: float) -> str:
    """A tick label with just enough decimals for the tick spacing (0.25 → 2 decimals)."""
    if step <= 0 or not math.isfinite(step):
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step)))
    scaled = step * 10**decimals
    if abs(scaled - round(scaled)) > 1e-6:
        decimals += 1
    if decimals == 0:
        return f"{value:,.0f}"
    return f"{value:.{decimals}f}"


def render_chart(series: Sequence[Series], width: int, height: int,
                 axis_style: str = "grey50", integer_x: bool = True) -> list[Text]:
    """The chart as ``height`` lines of ``width`` cells: y labels, plot area, x labels.

    The top and bottom plot rows are labelled with the y range they show (every value drawn is
    between them), nice round ticks fill the rows between; x ticks are whole numbers
    (``integer_x``, optimizer steps). A single x value sits mid-chart with its neighbours as
    ticks.
    """
    pts = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=False)
           if math.isfinite(x) and math.isfinite(y)]
    if width < 12 or height < 3 or not pts:
        return [Text(" " * max(0, width)) for _ in range(max(0, height))]
    x0 = min(p[0] for p in pts)
    x1 = max(p[0] for p in pts)
    y0 = min(p[1] for p in pts)
    y1 = max(p[1] for p in pts)
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 if y1 > y0 else max(abs(y0) * 0.05, 0.5)
    y0, y1 = y0 - pad, y1 + pad

    plot_h = height - 1  # last row: x labels
    y_ticks = nice_ticks(y0, y1, max(2, min(6, plot_h // 2)))
    y_step = (y_ticks[1] - y_ticks[0]) if len(y_ticks) > 1 else (y1 - y0) or 1.0
    y_labels = [fmt_tick(t, y_step) for t in y_ticks]
    # The range ends, one decimal finer than the ticks so they read as the exact bounds.
    fine = y_step / 10
    top_label, bottom_label = fmt_tick(y1, fine), fmt_tick(y0, fine)
    label_w = max(len(s) for s in [*y_labels, top_label, bottom_label])
    plot_w = width - label_w - 1  # one column for the axis line
    if plot_w < 4:
        return [Text(" " * width) for _ in range(height)]

    dots_w, dots_h = plot_w * 2, plot_h * 4
    bits = [[0] * plot_w for _ in range(plot_h)]
    color: list[list[str | None]] = [[None] * plot_w for _ in range(plot_h)]
    marks: dict[tuple[int, int], tuple[str, str]] = {}

    def to_dot(x: float, y: float) -> tuple[int, int]:
        dx = int(round((x - x0) / (x1 - x0) * (dots_w - 1)))
        dy = int(round((y1 - y) / (y1 - y0) * (dots_h - 1)))
        return min(max(dx, 0), dots_w - 1), min(max(dy, 0), dots_h - 1)

    def plot_dot(dx: int, dy: int, style: str) -> None:
        cx, cy = dx >> 1, dy >> 2
        bits[cy][cx] |= _DOT_BITS[dx & 1][dy & 3]
        color[cy][cx] = style

    for s in series:
        prev: tuple[int, int] | None = None
        for x, y in zip(s.xs, s.ys, strict=False):
            if not (math.isfinite(x) and math.isfinite(y)):
                prev = None
                continue
            cur = to_dot(x, y)
            if s.marker:
                marks[(cur[0] >> 1, cur[1] >> 2)] = (s.marker, s.style)
            if s.line:
                if prev is None:
                    plot_dot(*cur, s.style)
                else:
                    _line(prev, cur, s.style, plot_dot)
            prev = cur

    # Which plot rows carry a y label: the range ends, then the ticks on rows not next to them.
    label_rows: dict[int, str] = {0: top_label, plot_h - 1: bottom_label}
    for t, lab in zip(y_ticks, y_labels, strict=True):
        row = to_dot(x0, t)[1] >> 2
        if all(abs(row - taken) > 1 for taken in label_rows):
            label_rows[row] = lab

    lines: list[Text] = []
    for r in range(plot_h):
        line = Text(no_wrap=True)
        lab = label_rows.get(r)
        line.append((lab or "").rjust(label_w), axis_style)
        line.append("┤" if lab else "│", axis_style)
        run_style: str | None = None
        run = []
        for c in range(plot_w):
            mark = marks.get((c, r))
            if mark is not None:
                ch, style = mark
            else:
                b = bits[r][c]
                ch = chr(BRAILLE_BASE + b) if b else " "
                style = color[r][c] or ""
            if style != run_style and run:
                line.append("".join(run), run_style or "")
                run = []
            run_style = style
            run.append(ch)
        if run:
            line.append("".join(run), run_style or "")
        lines.append(line)

    lines.append(_x_axis(x0, x1, label_w, plot_w, axis_style, integer_x))
    return lines


def _x_axis(x0: float, x1: float, label_w: int, plot_w: int, style: str,
            integer: bool = True) -> Text:
    """One row: the x tick labels placed under their columns (no overlaps)."""
    ticks = nice_ticks(x0, x1, max(2, min(8, plot_w // 10)), integer=integer)
    step = (ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    row = [" "] * (label_w + 1 + plot_w)
    taken_until = -1
    for t in ticks:
        lab = fmt_tick(t, step)
        col = label_w + 1 + int(round((t - x0) / (x1 - x0) * (plot_w - 1)))
        start = min(max(col - len(lab) // 2, label_w + 1), len(row) - len(lab))
        if start <= taken_until + 1:
            continue
        row[start:start + len(lab)] = list(lab)
        taken_until = start + len(lab)
    return Text("".join(row), style=style, no_wrap=True)


def _line(a: tuple[int, int], b: tuple[int, int], style: str, plot: object) -> None:
    """Bresenham from a to b (both ends included)."""
    (xa, ya), (xb, yb) = a, b
    dx, dy = abs(xb - xa), -abs(yb - ya)
    sx = 1 if xa < xb else -1
    sy = 1 if ya < yb else -1
    err = dx + dy
    while True:
        plot(xa, ya, style)  # type: ignore[operator]
        if xa == xb and ya == yb:
            return
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            xa += sx
        if e2 <= dx:
            err += dx
            ya += sy
