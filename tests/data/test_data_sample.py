"""The bundled sample corpus: deterministic, big enough, correct answers, valid preference set."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from core.data.preferences import read_preferences, read_prompts
from core.data.sample import (
    build_sample_corpus,
    corpus_manifest,
    default_data_dir,
    ensure_sample_corpus,
    extract_answer,
)
from core.data.styles import read_styles, split_samples

FILES = ("styles.jsonl", "preferences.jsonl", "prompts.jsonl", "manifest.json")


def test_build_is_byte_identical(sample_corpus_dir: Path, tmp_path: Path) -> None:
    build_sample_corpus(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (sample_corpus_dir / name).read_bytes(), name
    other = build_sample_corpus(tmp_path / "seed1", seed=1)
    assert other.styles.read_bytes() != (sample_corpus_dir / "styles.jsonl").read_bytes()


def test_build_ignores_monkeypatching_by_loaded_libraries(
    sample_corpus_dir: Path, tmp_path: Path
) -> None:
    # torch replaces inspect.getfile when imported; the corpus must not depend on that
    code = (
        "import torch, sys; from core.data.sample import build_sample_corpus;"
        f"build_sample_corpus({str(tmp_path)!r})"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2]
    )
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (sample_corpus_dir / name).read_bytes(), name


def test_size_labels_and_lengths(sample_corpus_dir: Path) -> None:
    samples = read_styles(sample_corpus_dir / "styles.jsonl")
    assert len(samples) >= 5000
    labels = {s.style_label for s in samples}
    # every LONPT domain is fed: syntactic (code/format/rewrite), semantic (qa), reasoning
    assert {"qa", "code", "reasoning", "math", "format"} <= labels
    assert len({s.turn_id for s in samples}) == len(samples)
    long_replies = sum(len(s.assistant_reply.encode()) > 400 for s in samples)
    assert long_replies / len(samples) < 0.05
    train, val = split_samples(samples)
    assert 0.15 < len(val) / len(samples) < 0.25


def _check_chain(reply: str) -> None:
    """Recompute every 'a op b = c' step of a reasoning/math reply."""
    ops = {
        "+": lambda a, b: a + b,
        "−": lambda a, b: a - b,
        "×": lambda a, b: a * b,
        "÷": lambda a, b: Fraction(a, b),
    }
    for a, op, b, c in re.findall(r"(-?\d+) ([+−×÷]) (-?\d+) = (-?\d+)", reply):
        assert ops[op](int(a), int(b)) == int(c), reply


def test_reasoning_answers_are_correct(sample_corpus_dir: Path) -> None:
    samples = [
        s
        for s in read_styles(sample_corpus_dir / "styles.jsonl")
        if s.style_label in ("reasoning", "math")
    ]
    assert len(samples) >= 1500
    checked = 0
    for s in samples:
        answer = extract_answer(s.assistant_reply)
        assert answer is not None and s.assistant_reply.endswith(f"Answer: {answer}")
        _check_chain(s.assistant_reply)
        q = s.user_input
        if m := re.fullmatch(r"Compute \((\d+) \+ (\d+)\) × (\d+) − (\d+)\.", q):
            a, b, c, d = map(int, m.groups())
            assert int(answer) == (a + b) * c - d
            checked += 1
        elif m := re.fullmatch(r"Solve for x: (\d+)x \+ (\d+) = (-?\d+)\.", q):
            a, b, c = map(int, m.groups())
            assert int(answer) * a + b == c
            checked += 1
        elif m := re.fullmatch(r"What is the sum of the whole numbers from 1 to (\d+)\?", q):
            assert int(answer) == sum(range(int(m.group(1)) + 1))
            checked += 1
        elif m := re.fullmatch(r"What is (\d+)% of (\d+)\?", q):
            assert Fraction(int(answer)) == Fraction(int(m.group(1)) * int(m.group(2)), 100)
            checked += 1
        elif "Who is the" in q:
            taller = dict(re.findall(r"(\w+) is taller than (\w+)", q))
            taller.update({hi: lo for lo, hi in re.findall(r"(\w+) is shorter than (\w+)", q)})
            names = set(taller) | set(taller.values())
            if "tallest" in q:
                assert answer in names and answer not in taller.values()
            else:
                assert answer in names and answer not in taller
            checked += 1
    assert checked > 500


def test_preferences_and_prompts(sample_corpus_dir: Path) -> None:
    pairs = read_preferences(sample_corpus_dir / "preferences.jsonl")  # validates every line
    assert len(pairs) >= 2000
    assert len({p.id for p in pairs}) == len(pairs)
    for p in pairs:
        if p.source in ("reasoning", "math"):
            good, bad = extract_answer(p.chosen), extract_answer(p.rejected)
            assert good is not None and bad is not None and good != bad
            _check_chain(p.chosen)
    prompts = read_prompts(sample_corpus_dir / "prompts.jsonl")
    assert len(prompts) >= 500 and all(p.answer for p in prompts)
    assert {p.style_label for p in prompts} == {"reasoning", "math"}


def test_manifest_and_corpus_manifest(sample_corpus_dir: Path) -> None:
    manifest = json.loads((sample_corpus_dir / "manifest.json").read_text())
    assert manifest["counts"]["styles"] >= 5000
    lineage = corpus_manifest([sample_corpus_dir / "styles.jsonl"])
    assert lineage["files"][0]["sha256"] == manifest["files"]["styles.jsonl"]["sha256"]
    assert lineage["total_samples"] == manifest["counts"]["styles"]


def test_ensure_builds_once_and_repairs(tmp_path: Path) -> None:
    corpus = ensure_sample_corpus()
    assert corpus.root == default_data_dir() / "sample"
    assert str(corpus.root).startswith(str(Path(__import__("os").environ["AERON_TUI_HOME"])))
    stamp = corpus.styles.stat().st_mtime_ns
    assert ensure_sample_corpus().styles.stat().st_mtime_ns == stamp  # reused
    with open(corpus.styles, "ab") as fh:  # damage it: the hash no longer matches
        fh.write(b"garbage\n")
    repaired = ensure_sample_corpus()
    assert read_styles(repaired.styles)[-1].style_label
    assert repaired.n_styles == corpus.n_styles


def test_unwritable_output_is_a_data_error(tmp_path: Path) -> None:
    from core.errors import DataError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot create"):
        build_sample_corpus(blocker / "sub")
