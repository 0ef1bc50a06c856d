"""Turning samples into encoder/decoder id sequences (training.md §1, rlhf.md §1).

Encoder: ``<|provider|> provider <|style|> label <|user|> text </s>`` truncated to
``max_length`` keeping ``</s>`` (provider and style only when the sample has them).

The chat template (multi-turn data, and what ``aeron-tui chat`` feeds the model)::

    encoder  [<|provider|> P] [<|style|> S] [<|system|> SYSTEM]
             (<|user|> U | <|assistant|> A | <|system|> S | <|turn|> TOOL)*  [<|user|> U_last] </s>
    decoder  <s> <|assistant|> REPLY </s>

The turns before the reply sit on the encoder side, so the loss only ever sees assistant tokens
(the reply and its ``</s>``), never the user's. A conversation with k assistant replies gives k
examples. Too long a context loses its oldest turns first, whole; a single turn is cut at the
end as before. A single-turn sample is the special case with no system prompt and no history. Decoder sequence ``y = <s> <|assistant|> reply </s>`` of at most
``max_length + 1`` ids; the model reads ``y[:-1]`` and is scored on ``y[1:]``. User text is
encoded with special-token matching off, and the target never appears on the encoder side
(cross-attention would otherwise see the answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.data.tokenizer import (
    ASSISTANT_ID,
    BOS_ID,
    EOS_ID,
    PROVIDER_ID,
    STYLE_ID,
    SYSTEM_ID,
    TURN_ID,
    USER_ID,
)

IGNORE_INDEX = -100  # label value the loss skips (padding, unscored prefix)
# The chat template's role markers (``tool`` covers tool/function/observation results).
ROLE_TOKEN_IDS = {"user": USER_ID, "assistant": ASSISTANT_ID, "system": SYSTEM_ID, "tool": TURN_ID}


class TokenizerLike(Protocol):
    """What formatting needs from a tokenizer (``AeronTokenizer`` satisfies it)."""

    def encode(self, text: str) -> list[int]: ...

    def count_bytes(self, ids: Sequence[int]) -> int: ...


@dataclass(frozen=True)
class EncodedPair:
    """One training example as id lists (unpadded).

    ``target_bytes`` is the UTF-8 byte count of the scored target text (for bits per byte).
    ``inputs`` are the record's knowledge-graph, image and task inputs
    (:class:`core.data.extras.SampleInputs`), or None.
    """

    input_ids: list[int]
    decoder_input_ids: list[int]
    labels: list[int]
    target_bytes: int
    inputs: Any = None

    def __len__(self) -> int:
        """Bucketing length: the longer of the two sides."""
        return max(len(self.input_ids), len(self.decoder_input_ids))

    @property
    def num_tokens(self) -> int:
        """Encoder plus decoder ids (what tokens/s counts)."""
        return len(self.input_ids) + len(self.decoder_input_ids)


def _check_max_length(max_length: int) -> None:
    if max_length < 4:
        raise ValueError(f"max_length must be at least 4, got {max_length}")


def encoder_ids(
    tok: TokenizerLike,
    text: str,
    max_length: int,
    *,
    style: str | None = None,
    provider: str | None = None,
) -> list[int]:
    """``[<|provider|> p] [<|style|> s] <|user|> text </s>``, cut to ``max_length`` keeping ``</s>``."""
    _check_max_length(max_length)
    ids: list[int] = []
    if provider is not None:
        ids += [PROVIDER_ID, *tok.encode(provider)]
    if style is not None:
        ids += [STYLE_ID, *tok.encode(style)]
    ids += [USER_ID, *tok.encode(text)]
    return ids[: max_length - 1] + [EOS_ID]


def chat_encoder_ids(
    tok: TokenizerLike,
    user: str,
    max_length: int,
    *,
    history: Sequence[tuple[str, str]] = (),
    system: str = "",
    style: str | None = None,
    provider: str | None = None,
) -> list[int]:
    """The chat template's encoder side (module docstring), at most ``max_length`` ids.

    Oldest history turns are dropped whole until it fits; if it still does not, it is cut at
    the end keeping ``</s>``. No history and no system prompt gives :func:`encoder_ids`.
    """
    _check_max_length(max_length)
    head: list[int] = []
    if provider:
        head += [PROVIDER_ID, *tok.encode(provider)]
    if style:
        head += [STYLE_ID, *tok.encode(style)]
    if system:
        head += [SYSTEM_ID, *tok.encode(system)]
    turns = [[ROLE_TOKEN_IDS[role], *tok.encode(text)] for role, text in history]
    tail = [USER_ID, *tok.encode(user)] if user or not history else []
    budget = max_length - 1
    size = len(head) + sum(len(t) for t in turns) + len(tail)
    while turns and size > budget:
        size -= len(turns.pop(0))
    ids = head + [i for t in turns for i in t] + tail
    return ids[:budget] + [EOS_ID]


def sample_encoder_ids(sample: object, tok: TokenizerLike, max_length: int) -> list[int]:
    """Encoder ids of a :class:`core.data.styles.StyleSample` through the chat template."""
    return chat_encoder_ids(
        tok,
        sample.user_input,  # type: ignore[attr-defined]
        max_length,
        history=getattr(sample, "history", ()),
        system=getattr(sample, "system", ""),
        style=sample.style_label or None,  # type: ignore[attr-defined]
        provider=sample.provider or None,  # type: ignore[attr-defined]
    )


def decoder_sequence(tok: TokenizerLike, reply: str, max_length: int) -> tuple[list[int], int]:
    """``y = <s> <|assistant|> reply </s>`` (≤ max_length+1 ids) and the reply bytes it keeps."""
    _check_max_length(max_length)
    body = tok.encode(reply)[: max_length - 2]
    return [BOS_ID, ASSISTANT_ID, *body, EOS_ID], tok.count_bytes(body)


def pair_from_sequences(input_ids: list[int], y: list[int], target_bytes: int) -> EncodedPair:
    """Shift the decoder sequence into (inputs, labels)."""
    return EncodedPair(list(input_ids), y[:-1], y[1:], int(target_bytes))


def encode_styles_sample(
    sample: object, tok: TokenizerLike, max_length: int, vocab: Any = None, source: str = ""
) -> EncodedPair:
    """The ``styles`` formatter for a :class:`core.data.styles.StyleSample` (any sft format):
    the chat template's encoder side, the reply as the decoder target.

    With an input ``vocab`` (:class:`core.data.extras.InputVocab`) the record's triples,
    entities, image and task travel with the pair (``source`` names the file in errors).
    """
    enc = sample_encoder_ids(sample, tok, max_length)
    y, nbytes = decoder_sequence(tok, sample.assistant_reply, max_length)  # type: ignore[attr-defined]
    pair = pair_from_sequences(enc, y, nbytes)
    if vocab is not None:
        where = f"{source}:{sample.line_no}" if source else ""  # type: ignore[attr-defined]
        inputs = vocab.encode(sample, where)
        if inputs is not None:
            pair = EncodedPair(pair.input_ids, pair.decoder_input_ids, pair.labels,
                               pair.target_bytes, inputs)
    return pair


def encode_styles_samples(
    samples: Sequence[object], tok: TokenizerLike, max_length: int, vocab: Any = None,
    source: str = "",
) -> list[EncodedPair]:
    """:func:`encode_styles_sample` over a list."""
    return [encode_styles_sample(s, tok, max_length, vocab, source) for s in samples]


def encode_text_windows(text: str, tok: TokenizerLike, max_length: int) -> list[EncodedPair]:
    """Plain text as continuation pairs.

    The token stream is cut into windows of ``2·(max_length−1)`` ids: the first half (+``</s>``)
    is the encoder input, the second half the decoder target after ``<s>``. ``</s>`` ends the
    decoder only in the window that reaches the end of the document. A document too short for
    one full window is split in half.
    """
    _check_max_length(max_length)
    ids = tok.encode(text)
    half = max_length - 1
    if len(ids) < 2:
        return []
    pairs: list[EncodedPair] = []
    start = 0
    while start < len(ids) - 1:
        window = ids[start : start + 2 * half]
        cut = min(half, len(window) // 2) if len(window) < 2 * half else half
        enc, target = window[:cut], window[cut:]
        last = start + len(window) >= len(ids)
        y = [BOS_ID, *target, *([EOS_ID] if last else [])]
        pairs.append(pair_from_sequences([*enc, EOS_ID], y, tok.count_bytes(target)))
        start += 2 * half
    return pairs


def encode_prompt(
    prompt: str,
    tok: TokenizerLike,
    max_length: int,
    *,
    style: str | None = None,
    provider: str | None = None,
) -> list[int]:
    """Encoder ids of an RLHF prompt (the same layout as training, style/provider optional)."""
    return encoder_ids(tok, prompt, max_length, style=style, provider=provider)


def encode_response(response: str, tok: TokenizerLike, max_length: int) -> list[int]:
    """Decoder sequence ``<s> <|assistant|> response </s>`` of an RLHF response."""
    return decoder_sequence(tok, response, max_length)[0]


def encode_prompt_response(
    prompt: str,
    response: str,
    tok: TokenizerLike,
    max_length: int,
    *,
    style: str | None = None,
    provider: str | None = None,
) -> EncodedPair:
    """A (prompt, response) pair for RLHF: labels score the response tokens and ``</s>`` only —
    the fixed ``<|assistant|>`` prefix (labels[0]) is -100, as rlhf.md §1 requires."""
    enc = encode_prompt(prompt, tok, max_length, style=style, provider=provider)
    y, nbytes = decoder_sequence(tok, response, max_length)
    pair = pair_from_sequences(enc, y, nbytes)
    pair.labels[0] = IGNORE_INDEX
    return pair
