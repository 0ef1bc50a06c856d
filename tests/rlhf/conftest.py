"""Fixtures for the RLHF tests: one torch thread, small models and checkpoints, sample subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_tokenizer(sample_corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BPE tokenizer trained once on the sample styles corpus (saved directory)."""
    from core.data.tokenizer import AeronTokenizer

    texts = []
    with open(sample_corpus_dir / "styles.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            texts += [row["user_input"], row["assistant_reply"]]
    out = tmp_path_factory.mktemp("rlhf_tok")
    AeronTokenizer.train(texts, vocab_size=2048).save(out)
    return out


@pytest.fixture(scope="session")
def code_task_prefs(sample_corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample preference set's synthetic code-task pairs (~200; chosen and rejected differ in
    facts checkable against the prompt), a small single-kind set for the quick DPO tests."""
    out = tmp_path_factory.mktemp("prefs") / "code_tasks.jsonl"
    with open(sample_corpus_dir / "preferences.jsonl", encoding="utf-8") as src, open(
        out, "w", encoding="utf-8"
    ) as dst:
        for line in src:
            if json.loads(line)["id"].startswith("pref:code:code:"):
                dst.write(line)
    return out
