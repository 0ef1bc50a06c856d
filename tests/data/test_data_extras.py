"""Optional record fields (triples, entities, image, task): parsed once for every reader, with
one-line errors naming the file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.extras import parse_record_extras, record_entities
from core.data.styles import read_styles
from core.errors import DataError


def base(**over: object) -> dict[str, object]:
    rec: dict[str, object] = {"provider": "p", "style_label": "qa", "user_input": "q",
                              "assistant_reply": "a"}
    rec.update(over)
    return rec


def test_styles_records_carry_the_optional_fields(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"not decoded here")
    lines = [
        base(triples=[["Zorb", "capital_of", "Quelm"]], entities=["Zorb"], image="img/a.png",
             task="facts"),
        base(),
    ]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    first, second = read_styles(path)
    assert first.triples == (("Zorb", "capital_of", "Quelm"),)
    assert first.entities == ("Zorb",)
    assert first.image == str(tmp_path / "img" / "a.png")
    assert first.task == "facts" and first.has_extras
    assert second.triples == () and second.image is None and not second.has_extras
    assert record_entities(first.triples, ("X", "Zorb")) == ["X", "Zorb", "Quelm"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("triples", [["a", "b"]], "field 'triples' item 0 must be [subject, relation, object]"),
        ("triples", "a,b,c", "field 'triples' must be a list"),
        ("entities", ["ok", ""], "field 'entities' item 1 must be a non-empty string"),
        ("image", "missing.png", "image 'missing.png' not found"),
        ("image", 3, "field 'image' must be a path string"),
        ("task", "", "field 'task' must be a non-empty string"),
    ],
)
def test_bad_fields_name_file_line_and_field(tmp_path: Path, field: str, value: object,
                                             expected: str) -> None:
    path = tmp_path / "d.jsonl"
    with pytest.raises(DataError) as err:
        parse_record_extras({field: value}, path, 7)
    msg = str(err.value)
    assert msg.startswith(f"{path}:7: ") and expected in msg and "\n" not in msg
