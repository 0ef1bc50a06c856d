"""The helper-process runner the console uses for torch-importing work (profile estimates)."""

from __future__ import annotations

import time

import pytest

from aeron_tui.app.offload import Cancelled, in_child


def test_result_and_exception_come_back_from_the_child() -> None:
    assert in_child(divmod, 17, 5) == (3, 2)
    with pytest.raises(ValueError, match="invalid literal"):
        in_child(int, "not a number")


def test_cancel_kills_the_child_at_once() -> None:
    """A closed screen or a quitting console must not wait for the estimates to finish."""
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        in_child(time.sleep, 60, cancelled=lambda: time.monotonic() - t0 > 0.3)
    assert time.monotonic() - t0 < 10
