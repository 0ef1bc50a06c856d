"""LONPT test settings: one torch thread.

The models here are tiny; on a shared 2-core machine a second intra-op thread only contends
(measured: a 15-step run took 38 s with 2 threads under load, 7.7 s with 1).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
