"""Fixtures for engine tests (helpers live in train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import write_styles


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    return write_styles(tmp_path / "styles.jsonl")
