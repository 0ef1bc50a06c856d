"""Plain-text corpora, preference and prompt readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.preferences import read_preferences, read_prompts, split_records
from core.data.text import read_text_corpus
from core.errors import DataError


def test_text_file_blocks_and_directory_files(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("first doc\nline two\n\n\n  \nsecond doc\r\n\r\nthird\n")
    assert read_text_corpus(f) == ["first doc\nline two", "second doc", "third"]
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("B\n\nstill B")
    (d / "sub" / "a.txt").write_text("A")
    (d / "notes.md").write_text("M")
    (d / "ignored.csv").write_text("no")
    # Documents are split by file and by blank lines (as training splits them), .md included.
    assert read_text_corpus(d) == ["B", "still B", "M", "A"]


def test_text_corpus_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(DataError, match="empty.txt: corpus is empty"):
        read_text_corpus(empty)
    with pytest.raises(DataError, match="no .txt or .md files"):
        read_text_corpus(_empty_dir(tmp_path))
    with pytest.raises(DataError, match="no such file"):
        read_text_corpus(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\nfine\n\xff\xfe broken")
    with pytest.raises(DataError, match=r"bad.txt:3: invalid UTF-8"):
        read_text_corpus(bad)


def _empty_dir(tmp_path: Path) -> Path:
    d = tmp_path / "emptydir"
    d.mkdir()
    return d


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preferences_valid_and_split(tmp_path: Path) -> None:
    rows = [
        {"prompt": f"p{i}", "chosen": "good", "rejected": "bad", "id": f"id{i}"} for i in range(200)
    ]
    rows[0]["source"] = "sample"
    pairs = read_preferences(write(tmp_path / "p.jsonl", rows))
    assert len(pairs) == 200 and pairs[0].source == "sample" and pairs[5].line_no == 6
    train, val = split_records(pairs)
    assert len(train) + len(val) == 200 and 20 < len(val) < 60
    again_train, _ = split_records(pairs + pairs[:0])
    assert again_train == train


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "identical"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "'prompt' is empty"),
        ({"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
        ({"prompt": "p", "chosen": "a", "rejected": ["b"]}, "'rejected' must be a string"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "id": [3]}, "'id' must be a string"),
    ],
)
def test_bad_preference_lines(tmp_path: Path, row: dict[str, object], message: str) -> None:
    path = write(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError, match=message) as err:
        read_preferences(path)
    assert f"{path}:2" in str(err.value)


def test_prompts(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.jsonl",
        [{"prompt": "2+2?", "answer": 4}, {"prompt": "hi"}, {"prompt": "x", "answer": "7"}],
    )
    prompts = read_prompts(path)
    assert [p.answer for p in prompts] == ["4", None, "7"]
    bad = write(tmp_path / "b.jsonl", [{"prompt": "ok"}, {"prompt": "x", "answer": " "}])
    with pytest.raises(DataError, match=r"b.jsonl:2: field 'answer' is empty"):
        read_prompts(bad)
