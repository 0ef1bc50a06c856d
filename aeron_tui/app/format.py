"""Small formatting helpers shared by the console widgets (no Textual here)."""

from __future__ import annotations

import math

from rich.text import Text

SPARK_CHARS = "▁▂▃▄▅▆▇█"


def fmt_duration(seconds: float | None) -> str:
    """``42s``, ``12:05``, ``3:04:05``; ``—`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}:{m:02d}:{sec:02d}"
    return f"{m}:{sec:02d}"


def fmt_clock(seconds: float) -> str:
    """Offset from the run start as ``+MM:SS`` or ``+H:MM:SS`` (time-zone free, deterministic)."""
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"+{h}:{m:02d}:{sec:02d}" if h else f"+{m:02d}:{sec:02d}"


def fmt_bytes(n: float | None) -> str:
    """Binary units: ``512 B``, ``1.5 KiB`` ... ``2.3 GiB``."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def fmt_gib(n: float | None) -> str:
    """Gibibytes with one decimal, no unit (for ``used/total GiB`` pairs)."""
    return "—" if n is None else f"{n / 2**30:.1f}"


def fmt_count(n: float | None) -> str:
    """``950``, ``12.3k``, ``1.2M``, ``3.7B``."""
    if n is None:
        return "—"
    value = float(n)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.1f}{suffix}"
    return f"{value:.0f}"


def fmt_float(x: float | None, digits: int = 4) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "—"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def fmt_lr(x: float | None) -> str:
    return "—" if x is None else f"{x:.2e}"


def bar(fraction: float, width: int) -> tuple[str, str]:
    """A horizontal bar as (filled, empty) strings with eighth-block precision."""
    width = max(0, width)
    frac = 0.0 if not math.isfinite(fraction) else min(1.0, max(0.0, fraction))
    eighths = int(round(frac * width * 8))
    full, part = divmod(eighths, 8)
    filled = "█" * full + ("" if part == 0 or full >= width else "▏▎▍▌▋▊▉"[part - 1])
    return filled, " " * max(0, width - len(filled))


def sparkline(values: list[float], width: int, lo: float | None = None,
              hi: float | None = None) -> str:
    """The last ``width`` values as block characters, scaled to [lo, hi] (default: their range)."""
    vals = [v for v in values[-width:] if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals or width <= 0:
        return ""
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    span = hi - lo
    top = len(SPARK_CHARS) - 1
    if span <= 0:
        return SPARK_CHARS[top // 2] * len(vals)
    return "".join(SPARK_CHARS[min(top, max(0, int((v - lo) / span * top + 0.5)))] for v in vals)


def debiased_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an EMA divided by ``1 - weight**n`` so it starts unbiased."""
    out: list[float] = []
    last = 0.0
    n = 0
    for v in values:
        if not math.isfinite(v):
            out.append(out[-1] if out else v)
            continue
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


def downsample(points: list[tuple[int, float]], buckets: int) -> tuple[list[float], list[float]]:
    """Mean-per-bucket of consecutive points, so a plot costs O(width), not O(steps)."""
    n = len(points)
    if n <= buckets or buckets <= 0:
        return [float(p[0]) for p in points], [p[1] for p in points]
    xs: list[float] = []
    ys: list[float] = []
    for b in range(buckets):
        start = b * n // buckets
        end = max(start + 1, (b + 1) * n // buckets)
        chunk = points[start:end]
        xs.append(sum(p[0] for p in chunk) / len(chunk))
        ys.append(sum(p[1] for p in chunk) / len(chunk))
    return xs, ys


def line_count(renderable: object) -> int:
    """Rows a Table or Text will take (used to skip relayouts when the height is unchanged)."""
    rows = getattr(renderable, "rows", None)
    if isinstance(rows, list):
        return len(rows)
    plain = getattr(renderable, "plain", None)
    if isinstance(plain, str):
        return plain.count("\n") + 1
    return -1


def fit_mark(fits: bool) -> Text:
    """The profile tables' fit column: a coloured ✓/✗ only, because the detail column next to
    it already says it in words ("fits (4.1 of 21.2 GiB)", "does not fit by …")."""
    return Text("✓", style="bold green") if fits else Text("✗", style="bold red")


# The profile tables of the setup and wizard screens: fixed columns, and the detail column takes
# the rest of the width so a long verdict ends with "…" instead of being cropped.
PROFILE_COLUMNS = (("", "mark", 1), ("profile", "profile", 9), ("params", "params", 6),
                   ("est. memory", "estimate", 11), ("fits", "fits", 4))


def profile_detail_width(screen_width: int) -> int:
    """Width left for the detail column on a screen ``screen_width`` columns wide."""
    fixed = sum(w for _, _, w in PROFILE_COLUMNS)
    padding = 2 * (len(PROFILE_COLUMNS) + 1)  # each cell's left/right padding
    return max(12, screen_width - fixed - padding - 4)  # form margins, scrollbar
