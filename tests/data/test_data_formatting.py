"""Sequence formatting: layouts of training.md §1, truncation, shift, byte counts."""

from __future__ import annotations

from core.data.formatting import (
    encode_prompt,
    encode_prompt_response,
    encode_response,
    encode_styles_sample,
    encode_text_windows,
)
from core.data.styles import StyleSample
from core.data.tokenizer import (
    ASSISTANT_ID,
    BOS_ID,
    EOS_ID,
    PROVIDER_ID,
    STYLE_ID,
    USER_ID,
    AeronTokenizer,
)

TOK = AeronTokenizer.byte_level()


def test_styles_layout_and_shift() -> None:
    s = StyleSample("claude", "qa", "Hi </s> there", "Hello, world ✓", "t1")
    pair = encode_styles_sample(s, TOK, 64)
    e = TOK.encode
    assert pair.input_ids == [
        PROVIDER_ID,
        *e("claude"),
        STYLE_ID,
        *e("qa"),
        USER_ID,
        *e("Hi </s> there"),
        EOS_ID,
    ]
    y = [BOS_ID, ASSISTANT_ID, *e("Hello, world ✓"), EOS_ID]
    assert pair.decoder_input_ids == y[:-1] and pair.labels == y[1:]
    assert pair.target_bytes == len("Hello, world ✓".encode())
    assert pair.input_ids.count(EOS_ID) == 1  # the user's literal "</s>" stays text
    # the target never sits on the encoder side
    assert pair.labels != pair.input_ids[: len(pair.labels)]
    assert TOK.decode(pair.labels) == s.assistant_reply


def test_truncation_keeps_eos_and_bounds() -> None:
    s = StyleSample("p", "code", "u" * 500, "r" * 500, "t")
    for max_len in (8, 33, 128):
        pair = encode_styles_sample(s, TOK, max_len)
        assert len(pair.input_ids) == max_len and pair.input_ids[-1] == EOS_ID
        assert len(pair.decoder_input_ids) + 1 <= max_len + 1
        assert pair.labels[-1] == EOS_ID and pair.decoder_input_ids[:2] == [BOS_ID, ASSISTANT_ID]
        assert pair.target_bytes == max_len - 2  # kept reply bytes only


def test_text_windows_cover_the_text_once() -> None:
    text = "abcdefghij" * 30  # 300 byte tokens
    pairs = encode_text_windows(text, TOK, 32)
    assert len(pairs) == 5  # windows of 2*(32-1) = 62 tokens
    rebuilt = ""
    for p in pairs:
        assert len(p.input_ids) <= 32 and len(p.decoder_input_ids) <= 33
        assert p.input_ids[-1] == EOS_ID and p.decoder_input_ids[0] == BOS_ID
        assert p.labels != p.input_ids[: len(p.labels)]
        rebuilt += TOK.decode(p.input_ids) + TOK.decode(p.labels)
    assert rebuilt == text
    assert pairs[-1].labels[-1] == EOS_ID and pairs[0].labels[-1] != EOS_ID
    assert sum(p.target_bytes for p in pairs) == sum(
        len(TOK.decode(p.labels).encode()) for p in pairs
    )
    assert encode_text_windows("x", TOK, 32) == []
    short = encode_text_windows("hello", TOK, 32)
    assert TOK.decode(short[0].input_ids) + TOK.decode(short[0].labels) == "hello"


def test_rlhf_helpers() -> None:
    assert encode_prompt("2+2?", TOK, 16) == [USER_ID, *TOK.encode("2+2?"), EOS_ID]
    assert encode_prompt("x", TOK, 16, style="math")[:2] == [STYLE_ID, *TOK.encode("m")]
    assert encode_response("4", TOK, 16) == [BOS_ID, ASSISTANT_ID, *TOK.encode("4"), EOS_ID]
    pair = encode_prompt_response("2+2?", "4", TOK, 16)
    assert pair.labels == [-100, *TOK.encode("4"), EOS_ID]  # the fixed prefix is not scored
