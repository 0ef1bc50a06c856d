"""The braille chart renderer: exact size, ticks, dots where the data is, markers on top."""

from __future__ import annotations

import re

from aeron_tui.app.braille import BRAILLE_BASE, Series, fmt_tick, nice_ticks, render_chart


def test_chart_has_the_requested_size_and_labels() -> None:
    xs = list(range(1, 101))
    ys = [5.0 - 0.03 * x for x in xs]
    lines = render_chart([Series(xs, ys, "blue")], width=60, height=12)
    assert len(lines) == 12
    assert all(len(line.plain) == 60 for line in lines)
    labels = [line.plain.split("┤")[0].strip() for line in lines[:-1] if "┤" in line.plain]
    assert labels and all(float(v) for v in labels)  # numeric y labels
    assert [float(v) for v in labels] == sorted((float(v) for v in labels), reverse=True)
    assert "100" in lines[-1].plain  # x axis reaches the last step


def test_decreasing_series_goes_from_top_left_to_bottom_right() -> None:
    lines = render_chart([Series([0, 10], [10, 0], "red")], width=30, height=10)
    plot = [re.split("[┤│]", line.plain, maxsplit=1)[1] for line in lines[:-1]]  # after the axis
    top = next(i for i, row in enumerate(plot) if row.strip())
    bottom = max(i for i, row in enumerate(plot) if row.strip())
    assert plot[top].index(next(c for c in plot[top] if c != " ")) < \
        plot[bottom].index(next(c for c in plot[bottom] if c != " "))
    assert all(ord(c) >= BRAILLE_BASE or c == " " for row in plot for c in row)


def test_markers_replace_cells_and_empty_input_is_blank() -> None:
    lines = render_chart([Series([0, 1, 2], [1, 2, 3], "x"),
                          Series([1], [2], "y", line=False, marker="●")], 40, 8)
    assert sum(line.plain.count("●") for line in lines) == 1
    blank = render_chart([], 20, 4)
    assert [line.plain for line in blank] == [" " * 20] * 4


def test_ticks() -> None:
    assert nice_ticks(0, 10, 6) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(4.93, 5.72, 5) == [5.0, 5.2, 5.4, 5.6]
    assert fmt_tick(5.25, 0.25) == "5.25" and fmt_tick(1500, 500) == "1,500"


def test_one_point_gets_whole_step_ticks_and_the_y_range_is_labelled_at_both_ends() -> None:
    lines = render_chart([Series([10], [5.3], "x")], width=40, height=8)
    assert lines[-1].plain.split() == ["9", "10", "11"]  # no 9.5, no 10.5
    top, bottom = (float(lines[i].plain.split("┤")[0]) for i in (0, -2))
    assert bottom < 5.3 < top
    # A longer series: the top and bottom labels bound every value drawn.
    ys = [5.74, 5.5, 5.3, 5.05]
    lines = render_chart([Series([0, 20, 40, 60], ys, "x")], width=40, height=10)
    top, bottom = (float(lines[i].plain.split("┤")[0]) for i in (0, -2))
    assert bottom <= min(ys) and top >= max(ys) and top - bottom < 1.0
    assert all(float(t).is_integer() for t in lines[-1].plain.split())
