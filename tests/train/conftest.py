"""Fixtures for engine tests (helpers live in train_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from train_helpers import write_styles


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    return write_styles(tmp_path / "styles.jsonl")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core box: OpenMP barriers between 2 threads cost ~100× more
    than the math when other processes compete for the cores; one thread is fastest and
    keeps timings stable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
