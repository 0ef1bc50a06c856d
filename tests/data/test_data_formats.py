"""Dataset formats and containers: detection, canonical records, errors, chat template, convert."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aeron_tui.cli import app
from core.data import containers
from core.data.formats import collect_stats, convert, open_source, read_samples
from core.data.formatting import IGNORE_INDEX, encode_styles_sample
from core.data.preferences import read_preferences, read_prompts
from core.data.styles import is_validation
from core.data.tokenizer import ASSISTANT_ID, BOS_ID, EOS_ID, SYSTEM_ID, USER_ID, AeronTokenizer
from core.errors import DataError

runner = CliRunner()


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


# One small fixture per format: good records, then one malformed line (its message parts).
FIXTURES: dict[str, tuple[list[dict[str, Any]], dict[str, Any], list[str]]] = {
    "styles": (
        [{"provider": "p", "style_label": "qa", "user_input": "hi", "assistant_reply": "hello"},
         {"user_input": "2+2?", "assistant_reply": "4"}],
        {"provider": "p"},
        ["missing fields 'user_input', 'assistant_reply'", "format styles"],
    ),
    "alpaca": (
        [{"instruction": "Add", "input": "2 and 3", "output": "5"},
         {"instruction": "Say hi", "response": "hi", "category": "open_qa"}],
        {"input": "x"},
        ["missing fields 'instruction', 'output'", "format alpaca"],
    ),
    "sharegpt": (
        [{"id": "c1", "conversations": [{"from": "human", "value": "hi"},
                                        {"from": "gpt", "value": "hello"},
                                        {"from": "human", "value": "and?"},
                                        {"from": "gpt", "value": "bye"}]}],
        {"conversations": [{"from": "human"}, {"from": "narrator", "value": "x"}]},
        ["conversations[0] is missing 'value'", "format sharegpt"],
    ),
    "messages": (
        [{"messages": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "hi"},
                       {"role": "assistant", "content": "hello"}]}],
        {"messages": [{"role": "user", "content": "hi"}]},
        ["has no assistant turn", "format messages"],
    ),
    "prompt_completion": (
        [{"prompt": "The sky is", "completion": " blue."},
         {"prompt": "Grass is", "completion": " green."}],
        {"prompt": "x", "completion": 3},
        ["field 'completion' must be a string, got int", "format prompt_completion"],
    ),
    "preferences": (
        [{"prompt": "2+2?", "chosen": "4", "rejected": "5"},
         {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
          "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go"}]}],
        {"chosen": "a"},
        ["missing fields 'prompt', 'rejected'", "format preferences"],
    ),
    "prompts": (
        [{"prompt": "2+2?", "answer": 4}, {"prompt": "Say hi"}],
        {"answer": "1"},
        ["missing field 'prompt'", "format prompts"],
    ),
    "text": (
        [{"text": "first document\n\nstill the first"}, {"text": "second"}],
        {"body": "x"},
        ["missing field 'text'", "format text"],
    ),
}


@pytest.mark.parametrize("fmt", list(FIXTURES))
def test_each_format_is_detected_read_and_its_bad_line_named(tmp_path: Path, fmt: str) -> None:
    good, bad, parts = FIXTURES[fmt]
    path = jsonl(tmp_path / f"{fmt}.jsonl", [*good, bad, good[0]])
    source = open_source(path)
    assert source.format == fmt
    with pytest.raises(DataError) as err:
        list(_read(path, source.kind))
    message = str(err.value)
    assert message.startswith(f"{path}:{len(good) + 1}: "), message
    for part in parts:
        assert part in message, message
    # Without the bad line the records read; the same file in a JSON array gives the same.
    clean = jsonl(tmp_path / f"{fmt}-ok.jsonl", good)
    records = _read(clean, source.kind)
    array = tmp_path / f"{fmt}.json"
    array.write_text(json.dumps(good, indent=2), encoding="utf-8")
    assert _without_lines(_read(array, source.kind), source.kind) == _without_lines(records,
                                                                                   source.kind)
    _check_canonical(fmt, records)


def _read(path: Path, kind: str) -> list[Any]:
    if kind == "sft":
        return read_samples(path)
    if kind == "preferences":
        return read_preferences(path)
    if kind == "prompts":
        return read_prompts(path)
    from core.data.formats import read_documents

    return read_documents(path)


def _check_canonical(fmt: str, records: list[Any]) -> None:
    if fmt == "styles":
        assert [(r.provider, r.style_label) for r in records] == [("p", "qa"), ("", "")]
    elif fmt == "alpaca":
        assert records[0].user_input == "Add\n\n2 and 3" and records[0].assistant_reply == "5"
        assert records[1].assistant_reply == "hi" and records[1].style_label == "open_qa"
    elif fmt == "sharegpt":  # two assistant turns: two samples, the second with history
        assert [r.assistant_reply for r in records] == ["hello", "bye"]
        assert records[1].history == (("user", "hi"), ("assistant", "hello"))
        assert records[1].user_input == "and?" and records[1].conversation_id == "c1"
        assert is_validation(records[0]) == is_validation(records[1])  # one conversation, one split
    elif fmt == "messages":
        assert records[0].system == "Be brief." and records[0].user_input == "hi"
    elif fmt == "prompt_completion":
        assert records[0].user_input == "The sky is" and records[0].assistant_reply == " blue."
    elif fmt == "preferences":
        assert (records[1].prompt, records[1].chosen, records[1].rejected) == ("hi", "hello", "go")
    elif fmt == "prompts":
        assert [r.answer for r in records] == ["4", None]
    else:
        assert records == ["first document\n\nstill the first", "second"]


def test_undetectable_file_names_fields_and_formats(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer_text": "a"}])
    with pytest.raises(DataError, match="cannot tell the data format from the fields "
                       "answer_text, question") as err:
        read_samples(path)
    assert "alpaca (instruction, output)" in str(err.value) and "--format" in str(err.value)
    # Forcing a format turns it into a per-line message naming every missing field.
    with pytest.raises(DataError, match=r"odd.jsonl:1: missing fields 'instruction', 'output'"):
        read_samples(path, "alpaca")


def test_wrong_kind_for_the_trainer_is_one_line(tmp_path: Path) -> None:
    prefs = jsonl(tmp_path / "p.jsonl", FIXTURES["preferences"][0][:1])
    with pytest.raises(DataError, match="holds preference pairs .* but supervised training needs"):
        read_samples(prefs)


def _write_csv(path: Path, rows: list[dict[str, Any]], delimiter: str = ",") -> Path:
    names = sorted({k for r in rows for k in r})
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, names, delimiter=delimiter)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                        for k, v in r.items()})
    return path


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "preferences"])
def test_csv_tsv_and_parquet_hold_the_same_records(tmp_path: Path, fmt: str) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    good = FIXTURES[fmt][0]
    kind = open_source(jsonl(tmp_path / "a.jsonl", good)).kind
    expected = _read(tmp_path / "a.jsonl", kind)
    for name, delim in (("a.csv", ","), ("a.tsv", "\t")):
        got = _read(_write_csv(tmp_path / name, good, delim), kind)
        assert _without_lines(got, kind) == _without_lines(expected, kind)
    # A Parquet column has one type: the preference fixture mixes strings and message lists.
    n = 1 if fmt == "preferences" else len(good)
    pq.write_table(pa.Table.from_pylist(_all_keys(good[:n])), tmp_path / "a.parquet")
    got = _read(tmp_path / "a.parquet", kind)
    assert _without_lines(got, kind) == _without_lines(expected if n == len(good) else expected[:n],
                                                       kind)


def _all_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row with every key (pyarrow takes the schema from the first row)."""
    names = sorted({k for r in rows for k in r})
    return [{k: r.get(k) for k in names} for r in rows]


def _without_lines(records: list[Any], kind: str) -> list[Any]:
    import dataclasses

    return [r if isinstance(r, str) else dataclasses.replace(r, line_no=0) for r in records]


def test_csv_problems_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text('instruction,output\n"Add, please",5\nSay hi,hi,extra\n"multi\nline",x\n'
                    'Only instruction,\n', encoding="utf-8")
    stats = collect_stats(path)
    assert stats["format"] == "alpaca" and stats["container"] == "csv"
    assert stats["samples"] == 2 and stats["problems"] == 2
    assert stats["first_problems"][0].startswith(f"{path}:3: row has 3 cells")
    assert stats["first_problems"][1].startswith(f"{path}:6: missing field 'output'")


def test_json_array_is_streamed_with_line_numbers(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"prompt": f"p{i}", "completion": "x" * (i % 7) + "\n{]\"" } for i in range(40)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    monkeypatch.setattr(containers, "_CHUNK", 5)  # every element crosses many refills
    items = list(containers.iter_json_array(path))
    assert [i.obj for i in items] == rows
    lines = path.read_text().splitlines()
    assert all(lines[i.line - 1].strip() == "{" for i in items)
    broken = tmp_path / "b.json"
    broken.write_text('[{"prompt": "a", "completion": "b"},\n {"prompt": "c", oops}]')
    got = list(containers.iter_json_array(broken))
    assert isinstance(got[1], containers.Problem) and got[1].where == f"{broken}:2"


@pytest.mark.slow
def test_stats_stream_a_large_file_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    row = json.dumps({"instruction": "Repeat " + "x" * 200, "output": "y" * 300}) + "\n"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(row * 8000)  # ~4.3 MB
    tracemalloc.start()
    stats = collect_stats(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert stats["samples"] == 8000
    assert peak < path.stat().st_size / 4, f"peak {peak} for a {path.stat().st_size} byte file"


def test_multi_turn_masking_by_hand(tmp_path: Path) -> None:
    tok = AeronTokenizer.byte_level()
    path = jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1", "weight": 0},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]}])
    [sample] = read_samples(path)  # weight 0: a1 is context, never a target
    pair = encode_styles_sample(sample, tok, 64)

    def ids(text: str) -> list[int]:
        return tok.encode(text)

    assert pair.input_ids == [SYSTEM_ID, *ids("S"), USER_ID, *ids("u1"), ASSISTANT_ID,
                              *ids("a1"), USER_ID, *ids("u2"), EOS_ID]
    assert pair.decoder_input_ids == [BOS_ID, ASSISTANT_ID, *ids("a2")]
    assert pair.labels == [ASSISTANT_ID, *ids("a2"), EOS_ID]
    scored = [t for t in pair.labels if t != IGNORE_INDEX]
    assert tok.decode(scored) == "a2"  # the loss sees the assistant's reply and nothing else
    # A short context drops the oldest turns first, whole, keeping system and the last question.
    short = encode_styles_sample(sample, tok, 10)
    assert short.input_ids == [SYSTEM_ID, *ids("S"), ASSISTANT_ID, *ids("a1"), USER_ID,
                               *ids("u2"), EOS_ID]


def test_single_turn_layout_is_unchanged() -> None:
    from core.data.formatting import encoder_ids
    from core.data.styles import StyleSample

    tok = AeronTokenizer.byte_level()
    s = StyleSample("prov", "qa", "question", "answer")
    assert encode_styles_sample(s, tok, 32).input_ids == encoder_ids(
        tok, "question", 32, style="qa", provider="prov")


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt"])
def test_convert_round_trip_through_csv_and_parquet_keeps_records_and_split(
        tmp_path: Path, fmt: str) -> None:
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = FIXTURES[fmt][0] * 3  # duplicates too: they keep distinct, stable split keys
    sources = [_write_csv(tmp_path / "in.csv", good)]
    pq.write_table(pa.Table.from_pylist(_all_keys(good)), tmp_path / "in.parquet")
    sources.append(tmp_path / "in.parquet")
    for src in sources:
        out = tmp_path / f"{src.suffix[1:]}.jsonl"
        result = runner.invoke(app, ["data", "convert", str(src), str(out)])
        assert result.exit_code == 0, result.output
        before, after = read_samples(src), read_samples(out)
        assert open_source(out).format == "styles"
        strip = ("line_no", "split_key", "turn_id", "conversation_id")
        assert [_fields(s, strip) for s in after] == [_fields(s, strip) for s in before]
        assert [is_validation(s) for s in after] == [is_validation(s) for s in before]


def _fields(sample: Any, skip: tuple[str, ...]) -> dict[str, Any]:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(sample).items() if k not in skip}


def test_convert_refuses_bad_input_and_leaves_no_file(tmp_path: Path) -> None:
    src = jsonl(tmp_path / "a.jsonl", [FIXTURES["alpaca"][0][0], {"instruction": "x"}])
    out = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match=r"a.jsonl:2: missing field 'output'"):
        convert(src, out)
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl.*"))


def test_stats_cli_shows_format_roles_lengths_and_problems(tmp_path: Path) -> None:
    rows = [*FIXTURES["sharegpt"][0], FIXTURES["sharegpt"][1]]
    path = jsonl(tmp_path / "chat.jsonl", rows)
    result = runner.invoke(app, ["data", "stats", str(path), "--json"])
    assert result.exit_code == 1  # a problem line: training would refuse the file
    figures = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert figures["format"] == "sharegpt" and figures["detected"]
    assert figures["roles"] == {"user": 2, "assistant": 2}
    assert figures["samples"] == 2 and figures["multi_turn_samples"] == 1
    assert figures["first_problems"] == [f"{path}:2: conversations[0] is missing 'value' "
                                         "(format sharegpt: conversations; optional system, "
                                         "provider, style_label, id)"]
    # Byte-level token lengths: encoder <|user|> "hi" </s> = 4, second <|user|>hi<|asst|>hello
    # <|user|>and?</s> = 1+2+1+5+1+4+1 = 15; decoder inputs <s><|assistant|> + reply.
    assert figures["lengths"]["encoder"]["max"] == 15 and figures["lengths"]["encoder"]["p50"] == 4
    assert figures["lengths"]["decoder"]["max"] == 2 + len("hello")
    text = runner.invoke(app, ["data", "stats", str(path)], terminal_width=200)
    assert "format sharegpt (detected) in jsonl" in text.stdout
    assert "turns per role: assistant 2, user 2" in text.stdout


def test_data_help_documents_the_schema() -> None:
    result = runner.invoke(app, ["data", "--help"], terminal_width=120)
    assert result.exit_code == 0
    for word in ("sharegpt", "conversations: [{from, value}", "prompt, chosen, rejected",
                 "instruction, output|response", ".parquet", "convert"):
        assert word in result.stdout, word


def test_text_directory_with_md_and_txt(tmp_path: Path) -> None:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("# Title\n\nBody one.\n")
    (d / "b.txt").write_text("Other\n")
    stats = collect_stats(d)
    assert stats["documents"] == 3 and stats["split"].startswith("documents split by file")


def test_model_input_fields_pass_through_every_format_and_convert(tmp_path: Path) -> None:
    (tmp_path / "img.png").write_bytes(b"\x89PNG not decoded here")
    extra = {"triples": [["Zorblat", "capital_of", "Quenland"]], "entities": ["Zorblat"],
             "task": "facts", "image": "img.png"}
    for fmt in ("styles", "alpaca", "sharegpt", "messages", "prompt_completion"):
        rows = [{**r, **extra} for r in FIXTURES[fmt][0]]
        sources = [jsonl(tmp_path / f"{fmt}.jsonl", rows)]
        if fmt == "alpaca":
            sources.append(_write_csv(tmp_path / f"{fmt}.csv", rows))
        for src in sources:
            samples = read_samples(src)
            for s in samples:
                assert s.triples == (("Zorblat", "capital_of", "Quenland"),), (fmt, src)
                assert (s.entities, s.task) == (("Zorblat",), "facts")
                assert s.image == str((tmp_path / "img.png").resolve())
            out = tmp_path / f"{fmt}-{src.suffix[1:]}-canonical.jsonl"
            convert(src, out)
            assert [(s.triples, s.task, s.image) for s in read_samples(out)] == \
                [(s.triples, s.task, s.image) for s in samples]
    bad = jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": "y", "triples": [["a"]]}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'triples' item 0"):
        read_samples(bad)


def test_chat_prompt_uses_the_training_template() -> None:
    from core.data.formatting import sample_encoder_ids
    from core.data.styles import StyleSample
    from core.infer.generation import encode_prompt_ids

    tok = AeronTokenizer.byte_level()
    history = (("user", "hello there"), ("assistant", "hi! how can I help?"))
    sample = StyleSample("", "", "what is 2+2?", "4", system="Be brief.", history=history)
    want = sample_encoder_ids(sample, tok, 10**6)
    got = encode_prompt_ids(tok, "what is 2+2?", 10**6, history=history, system="Be brief.")
    assert got.ids == want and not got.truncated
    # A context too small for the history drops the oldest turns, keeping the question whole.
    cut = encode_prompt_ids(tok, "what is 2+2?", len(want) - 5, history=history,
                            system="Be brief.")
    assert cut.truncated and cut.ids == sample_encoder_ids(sample, tok, len(want) - 5)
    assert cut.ids[-len("what is 2+2?") - 2:] == [USER_ID, *tok.encode("what is 2+2?"), EOS_ID]


def test_a_single_json_object_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"data": [{"prompt": "a", "completion": "b"}]}, indent=2))
    with pytest.raises(DataError, match="holds one JSON object, not records; put the records in "
                       "a top-level array"):
        read_samples(path)
    lines = tmp_path / "lines.json"  # JSONL saved as .json is read as JSONL
    lines.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
    assert [s.assistant_reply for s in read_samples(lines)] == ["b", "d"]
