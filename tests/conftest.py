"""Shared fixtures. Every test gets its own AERON_TUI_HOME so nothing touches the user's config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("AERON_TUI_TEST", "1")
# The test models are tiny: one intra-op thread is as fast as two and keeps parallel test
# processes (subprocess trainers, torchrun ranks) from oversubscribing the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("aeron_home")
    monkeypatch.setenv("AERON_TUI_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def sample_corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample corpus, built once per test session (styles, preferences, prompts)."""
    from core.data.sample import build_sample_corpus

    out = tmp_path_factory.mktemp("sample_corpus")
    build_sample_corpus(out)
    return out
