"""Shared fixtures. Every test gets its own AERON_TUI_HOME so nothing touches the user's config."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("AERON_TUI_TEST", "1")
# The test models are tiny: one intra-op thread is as fast as two and keeps parallel test
# processes (subprocess trainers, torchrun ranks) from oversubscribing the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread per test, whatever OMP_NUM_THREADS says: the test models are tiny,
    and on a shared 2-core machine OpenMP barriers between two threads cost far more than the
    math (measured: SDPA 0.07 ms at 1 thread vs 8-12 ms at 2; a 15-step LONPT run 7.7 s vs 38 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], tuple[int, str, str]]:
    """``cli_main(args) -> (exit code, stdout, stderr)``: the console script's ``main`` in this
    process, as a user's shell would run ``aeron-tui ARGS``."""
    import sys

    from aeron_tui.cli import main

    def run(args: list[str]) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["aeron-tui", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
