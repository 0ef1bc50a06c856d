"""Tokenizer: fixed layout, exact round-trip on random Unicode, deterministic training, save/load."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from core.data.tokenizer import (
    ASSISTANT_ID,
    BOS_ID,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    PROVIDER_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    STYLE_ID,
    SYSTEM_ID,
    TURN_ID,
    UNK_ID,
    USER_ID,
    AeronTokenizer,
)
from core.errors import CheckpointError, ConfigError, DataError

TRAIN_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "Compute (3 + 4) × 5 − 2.\nAnswer: 33",
    "Über café naïve — 東京 🚀 and the end.",
] * 40


def random_unicode(rng: random.Random, max_len: int = 60) -> str:
    """Mixed ASCII, control chars, combining marks, CRLF, NUL, special-token spellings, astral chars."""
    parts: list[str] = []
    for _ in range(rng.randint(0, max_len)):
        r = rng.random()
        if r < 0.3:
            parts.append(chr(rng.randint(0x20, 0x7E)))
        elif r < 0.45:
            parts.append(
                rng.choice(
                    [
                        "\r\n",
                        "\x00",
                        "\u0301",
                        "\u200d",
                        "</s>",
                        "<|user|>",
                        "<pad>",
                        " ",
                        "\t",
                        "\n\n",
                    ]
                )
            )
        elif r < 0.6:
            parts.append(chr(rng.randint(0x10000, 0x10FFFF)))  # astral (emoji, rare scripts)
        else:
            c = rng.randint(0, 0xFFFF)
            parts.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "x")  # no lone surrogates
    return "".join(parts)


@pytest.fixture(scope="module")
def trained() -> AeronTokenizer:
    return AeronTokenizer.train(TRAIN_TEXTS, vocab_size=600, min_frequency=2)


def test_byte_level_has_268_entries_and_fixed_special_ids() -> None:
    tok = AeronTokenizer.byte_level()
    assert tok.vocab_size == 268
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(12))
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID, SEP_ID, MASK_ID) == (0, 1, 2, 3, 4, 5)
    assert (SYSTEM_ID, USER_ID, ASSISTANT_ID, STYLE_ID, PROVIDER_ID, TURN_ID) == tuple(range(6, 12))
    # bytes 12-267 in byte order: "A" is byte 0x41
    assert tok.encode("A") == [12 + 0x41]
    assert tok.encode("é") == [12 + 0xC3, 12 + 0xA9]


@pytest.mark.parametrize("which", ["byte_level", "trained"])
def test_round_trip_random_unicode(which: str, trained: AeronTokenizer) -> None:
    tok = AeronTokenizer.byte_level() if which == "byte_level" else trained
    rng = random.Random(1234)
    for _ in range(1500):
        s = random_unicode(rng)
        ids = tok.encode(s)
        assert tok.decode(ids) == s, repr(s)
        assert tok.count_bytes(ids) == len(s.encode("utf-8"))
        assert all(i >= 12 for i in ids), "user text must never yield special ids"


def test_special_token_text_is_not_matched_in_user_text(trained: AeronTokenizer) -> None:
    ids = trained.encode("</s><|user|>")
    assert EOS_ID not in ids and USER_ID not in ids
    assert trained.encode_with_specials("</s>x")[0] == EOS_ID
    assert trained.decode([BOS_ID, *trained.encode("hi"), EOS_ID]) == "hi"
    assert trained.decode([BOS_ID, *trained.encode("hi")], skip_special_tokens=False) == "<s>hi"


def test_training_merges_and_respects_bounds(trained: AeronTokenizer) -> None:
    assert 268 < trained.vocab_size <= 600
    assert len(trained.encode("The quick brown fox")) < len("The quick brown fox")
    with pytest.raises(ConfigError, match="268"):
        AeronTokenizer.train(TRAIN_TEXTS, vocab_size=100)
    with pytest.raises(DataError, match="empty"):
        AeronTokenizer.train([], vocab_size=1000)


def test_min_frequency_stops_early() -> None:
    tok = AeronTokenizer.train(["abcabc"], vocab_size=5000, min_frequency=2)
    assert tok.vocab_size < 5000  # stops when no pair reaches min_frequency


def test_max_context_chunks_long_texts() -> None:
    text = "hello world " * 50
    small = AeronTokenizer.train([text], vocab_size=2000, max_context=5)
    # with 5-character chunks no token can span more than 5 characters
    assert max(len(small.token_bytes(i)) for i in range(small.vocab_size)) <= 5


def test_training_is_deterministic_across_processes(
    trained: AeronTokenizer, tmp_path: Path
) -> None:
    again = AeronTokenizer.train(TRAIN_TEXTS, vocab_size=600, min_frequency=2)
    assert again.sha256 == trained.sha256
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TRAIN_TEXTS))
    code = (
        "import json,sys; from core.data.tokenizer import AeronTokenizer;"
        f"print(AeronTokenizer.train(json.load(open({str(texts)!r})), vocab_size=600).sha256)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == trained.sha256


def test_save_load_round_trip(trained: AeronTokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path / "tok")
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert cfg["vocab_size"] == trained.vocab_size
    assert cfg["sha256"] == trained.sha256
    assert cfg["eos_token_id"] == 2 and cfg["special_tokens"]["<|assistant|>"] == 8
    for path in (tmp_path / "tok", tmp_path / "tok" / "tokenizer.json"):
        loaded = AeronTokenizer.load(path)
        assert loaded.sha256 == trained.sha256
        assert loaded.encode("Über café 🚀") == trained.encode("Über café 🚀")
    assert not list((tmp_path / "tok").glob("*.tmp"))


def test_load_rejects_non_tokenizers(tmp_path: Path, trained: AeronTokenizer) -> None:
    with pytest.raises(CheckpointError, match="no tokenizer"):
        AeronTokenizer.load(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="tokenizer.json"):
        AeronTokenizer.load(bad)
    # a valid HF tokenizer with a different special layout is not an Aeron tokenizer
    data = json.loads(trained.to_str())
    data["added_tokens"][0]["content"] = "[PAD]"
    vocab = data["model"]["vocab"]
    vocab["[PAD]"] = vocab.pop("<pad>")
    bad.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not an Aeron tokenizer"):
        AeronTokenizer.load(bad)


def test_load_detects_modified_tokenizer(tmp_path: Path, trained: AeronTokenizer) -> None:
    trained.save(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["model"]["merges"] = data["model"]["merges"][:-1]
    last = max(data["model"]["vocab"], key=data["model"]["vocab"].get)
    del data["model"]["vocab"][last]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        AeronTokenizer.load(tmp_path)
