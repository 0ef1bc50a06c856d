"""styles.jsonl reader: strict validation naming file and line, stable split, statistics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.data.styles import is_validation, read_styles, split_samples, style_stats
from core.errors import DataError


def record(i: int, **over: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "provider": "claude",
        "style_label": ("qa", "code", "reasoning")[i % 3],
        "user_input": f"question {i}",
        "assistant_reply": f"answer {i}",
        "turn_id": f"t{i}",
    }
    rec.update(over)
    return rec


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def good_file(path: Path, n: int = 10) -> Path:
    return write_lines(path, [json.dumps(record(i)) for i in range(n)])


def test_reads_valid_file_ignoring_extra_fields_and_blank_lines(tmp_path: Path) -> None:
    lines = [json.dumps(record(0, extra=[1, 2])), "", json.dumps(record(1, turn_id=""))]
    samples = read_styles(write_lines(tmp_path / "s.jsonl", lines))
    assert [s.line_no for s in samples] == [1, 3]
    assert samples[0].user_input == "question 0" and samples[1].turn_id == ""


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"provider": "x", ', "bad JSON"),
        ("[1, 2]", "expected a JSON object"),
        (
            json.dumps({k: v for k, v in record(5).items() if k != "user_input"}),
            "missing field 'user_input'",
        ),
        (json.dumps(record(5, assistant_reply=42)), "'assistant_reply' must be a string"),
        (json.dumps(record(5, style_label="  ")), "'style_label' is empty"),
        (json.dumps(record(5, turn_id=7)), "'turn_id' must be a string"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(record(0)), json.dumps(record(1)), line])
    with pytest.raises(DataError) as err:
        read_styles(path)
    assert f"{path}:3" in str(err.value)
    assert message in str(err.value)


def test_empty_file(tmp_path: Path) -> None:
    for content in ("", "\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(content)
        with pytest.raises(DataError, match=r"empty.jsonl: file is empty"):
            read_styles(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: cannot open"):
        read_styles(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="directory holds no"):
        read_styles(tmp_path)


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(record(0)).encode() + b"\n" + '{"provider": "caf\xe9"}'.encode("latin-1") + b"\n"
    )
    with pytest.raises(DataError, match=r"latin1.jsonl:2: invalid UTF-8"):
        read_styles(path)


def test_huge_line_is_rejected_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as fh:
        fh.write(json.dumps(record(0)).encode() + b"\n")
        fh.write(b'{"provider": "')
        fh.seek(100 * 1024 * 1024, 1)  # a 100 MB line (sparse: fast to create)
        fh.write(b'"}\n')
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"huge.jsonl:2: line longer than 4 MB"):
        read_styles(path)
    assert time.perf_counter() - start < 5


def test_split_is_about_20_percent_and_stable_under_appends(tmp_path: Path) -> None:
    path = good_file(tmp_path / "s.jsonl", 2000)
    train, val = split_samples(read_styles(path))
    assert 0.17 < len(val) / 2000 < 0.23
    val_ids = {s.turn_id for s in val}
    # append new lines, including a repeated turn_id and empty turn_ids
    with open(path, "a", encoding="utf-8") as fh:
        for i in range(2000, 2500):
            fh.write(json.dumps(record(i)) + "\n")
        fh.write(json.dumps(record(9999, turn_id="t5")) + "\n")
        fh.write(json.dumps(record(9998, turn_id="")) + "\n")
    samples = read_styles(path)
    _, val2 = split_samples(samples)
    assert {s.turn_id for s in val2 if s.line_no <= 2000} == val_ids
    # the repeated turn_id does not drag the original's split along: it is keyed by its content
    repeated = samples[-2]
    assert repeated.turn_id == "t5" and repeated.split_key != "t5"


def test_split_rule_matches_the_spec_formula() -> None:
    import hashlib

    from core.data.styles import StyleSample

    for tid in ("a", "b", "turn-17", "x" * 40):
        s = StyleSample("p", "qa", "u", "r", tid)
        expected = (
            int(hashlib.sha256(("aeron-split:" + tid).encode()).hexdigest()[:8], 16) % 100 < 20
        )
        assert is_validation(s) == expected


def test_stats_counts(tmp_path: Path) -> None:
    samples = read_styles(good_file(tmp_path / "s.jsonl", 30))
    st = style_stats(samples)
    assert st.samples == 30 and st.train + st.val == 30
    assert st.per_style == {"code": 10, "qa": 10, "reasoning": 10}
    assert st.per_provider == {"claude": 30}
    assert st.mean_user_chars == pytest.approx(sum(len(f"question {i}") for i in range(30)) / 30)
    assert sum(a + b for a, b in st.per_style_split.values()) == 30
