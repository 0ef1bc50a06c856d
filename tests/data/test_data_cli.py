"""`aeron-tui data ...` and `aeron-tui tokenizer ...` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aeron_tui.cli import app
from core.data.tokenizer import AeronTokenizer

runner = CliRunner()


def test_build_sample_and_stats(tmp_path: Path, sample_corpus_dir: Path) -> None:
    out = tmp_path / "corpus"
    result = runner.invoke(app, ["data", "build-sample", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "styles.jsonl" in result.output
    assert (out / "styles.jsonl").read_bytes() == (sample_corpus_dir / "styles.jsonl").read_bytes()

    result = runner.invoke(app, ["data", "stats", str(out / "styles.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    manifest = json.loads((out / "manifest.json").read_text())
    assert figures["samples"] == manifest["counts"]["styles"]
    assert figures["per_style"] == manifest["style_counts"]
    assert figures["train"] + figures["val"] == figures["samples"]

    table = runner.invoke(app, ["data", "stats", str(out / "styles.jsonl")], terminal_width=120)
    assert (
        table.exit_code == 0
        and f"{figures['samples']:,}" in table.output
        and "reasoning" in table.output
    )

    prefs = runner.invoke(app, ["data", "stats", str(out / "preferences.jsonl"), "--json"])
    assert json.loads(prefs.output)["pairs"] == manifest["counts"]["preferences"]
    prompts = runner.invoke(app, ["data", "stats", str(out / "prompts.jsonl"), "--json"])
    assert json.loads(prompts.output)["with_answer"] == manifest["counts"]["prompts"]


def test_stats_on_text(tmp_path: Path) -> None:
    f = tmp_path / "doc.txt"
    f.write_text("one\n\ntwo two\n")
    result = runner.invoke(app, ["data", "stats", str(f), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["documents"] == 2


@pytest.mark.parametrize("depth", [1, 6])
def test_bad_input_is_one_red_line_and_nonzero(tmp_path: Path, depth: int) -> None:
    # Deep, long paths too: Rich used to hard-wrap the line at 80 columns when stderr was a pipe,
    # splitting it wherever the path happened to end.
    folder = tmp_path.joinpath(*["a_rather_long_folder_name_for_wrapping"] * depth)
    folder.mkdir(parents=True, exist_ok=True)
    bad = folder / "bad.jsonl"
    bad.write_text(
        '{"provider": "x", "style_label": "qa", "user_input": "u", "assistant_reply": "r"}\n{oops\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "aeron_tui", "data", "stats", str(bad)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert f"{bad}:2: bad JSON" in lines[0]
    assert "Traceback" not in proc.stderr


def test_tokenizer_train_on_styles_and_text(tmp_path: Path, sample_corpus_dir: Path) -> None:
    text = tmp_path / "extra.txt"
    text.write_text("Some plain text about tokenizers.\n\nAnother document here.\n")
    out = tmp_path / "tok"
    result = runner.invoke(
        app,
        [
            "tokenizer",
            "train",
            "--corpus",
            str(sample_corpus_dir / "styles.jsonl"),
            "--corpus",
            str(text),
            "--vocab-size",
            "1000",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    tok = AeronTokenizer.load(out)
    assert tok.vocab_size == 1000
    assert f"{tok.vocab_size:,} entries" in result.output and tok.sha256 in result.output
    info = runner.invoke(app, ["tokenizer", "info", str(out)], terminal_width=200)
    assert info.exit_code == 0 and tok.sha256 in info.output


def test_tokenizer_train_default_corpus_uses_sample(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["tokenizer", "train", "--vocab-size", "300", "--out", str(tmp_path / "t")]
    )
    assert result.exit_code == 0, result.output
    assert AeronTokenizer.load(tmp_path / "t").vocab_size == 300


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; "
        "import aeron_tui.commands.data, aeron_tui.commands.tokenizer; "
        "print(any(m in sys.modules for m in ('torch', 'tokenizers')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout.strip() == "False", proc.stderr


def test_stats_on_corpus_directory(sample_corpus_dir: Path) -> None:
    result = runner.invoke(app, ["data", "stats", str(sample_corpus_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["format"] == "styles"


def test_tokenizer_train_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    text = tmp_path / "t.txt"
    text.write_text("hello hello world")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aeron_tui",
            "tokenizer",
            "train",
            "--corpus",
            str(text),
            "--vocab-size",
            "300",
            "--out",
            str(blocker / "tok"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode != 0
    assert "cannot write the tokenizer" in proc.stderr and "Traceback" not in proc.stderr
