"""Fixtures for engine tests (helpers live in train_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import cli_train_args, write_styles


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    return write_styles(tmp_path / "styles.jsonl")


@pytest.fixture(scope="session")
def run_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One finished 8-step simple run (checkpoints at 4 and 8), its corpus and a different
    tokenizer, built once per session. Tests copy the run before changing anything in it."""
    import torch

    from aeron_tui.commands.train import build_run_config, execute
    from core.data.tokenizer import AeronTokenizer

    base = tmp_path_factory.mktemp("run_template")
    data = write_styles(base / "styles.jsonl")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test thread fixture
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AERON_TUI_HOME", str(base / "home"))
        args = cli_train_args(base / "run", data, 8)
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        cfg, model = build_run_config(
            "simple", profile="tiny", sets=sets,
            flags=dict(data=str(data), run_dir=str(base / "run"), steps=8, seq_len=32,
                       micro_batch=4, seed=3, precision="fp32", device="cpu"))
        try:
            assert execute("simple", cfg, model, quiet=True) == "finished"
        finally:
            torch.set_num_threads(threads)
    other = AeronTokenizer.train([f"other words {i} here" for i in range(50)], vocab_size=280)
    other.save(base / "other_tok")
    return {"run": base / "run", "data": data, "other_tok": base / "other_tok"}
