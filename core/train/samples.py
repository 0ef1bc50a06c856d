"""Live samples: greedy continuations of a few fixed validation prompts while a run trains.

The prompts are encoder id sequences formatted exactly as the training samples are (they *are*
validation samples' encoder inputs, or the user's texts behind the corpus's most common
``<|provider|> p <|style|> s`` head), so what a user reads is what the model was trained to
answer. The engine emits them as a ``sample`` event after an evaluation.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.data.formatting import EncodedPair
from core.data.tokenizer import EOS_ID, PROVIDER_ID, STYLE_ID, USER_ID

MIN_PROMPT_TOKENS = 3  # a prompt shorter than this (text ids) says too little to show learning
CONTINUATION_CHARS = 160  # how much of a plain-text prompt's end the event keeps


@dataclass(frozen=True)
class SamplePrompt:
    """One fixed prompt: encoder ids as in training, the text a user reads, and its style."""

    ids: tuple[int, ...]
    text: str
    style: str | None = None


def split_head(ids: Sequence[int]) -> tuple[tuple[int, ...], list[int]]:
    """(the ``[<|provider|> p] [<|style|> s] <|user|>`` head, the text ids) of encoder ids.

    Ids without ``<|user|>`` (plain-text continuation windows) have an empty head.
    """
    body = list(ids[:-1]) if ids and ids[-1] == EOS_ID else list(ids)
    if USER_ID not in body:
        return (), body
    cut = body.index(USER_ID) + 1
    return tuple(body[:cut]), body[cut:]


def head_style(tokenizer: Any, head: Sequence[int]) -> str | None:
    """The style label inside a head (None when it has none)."""
    if STYLE_ID not in head:
        return None
    start = list(head).index(STYLE_ID) + 1
    end = start
    while end < len(head) and head[end] not in (USER_ID, PROVIDER_ID):
        end += 1
    return tokenizer.decode(list(head[start:end])).strip() or None


def choose_prompts(pairs: Sequence[EncodedPair], tokenizer: Any, count: int) -> list[SamplePrompt]:
    """``count`` fixed prompts from the validation pairs: one per style, most common styles
    first, each the first sample of its style (in corpus order) with some text to it."""
    by_head: dict[tuple[int, ...], list[EncodedPair]] = {}
    for pair in pairs:
        head, text = split_head(pair.input_ids)
        if len(text) >= MIN_PROMPT_TOKENS:
            by_head.setdefault(head, []).append(pair)
    groups = sorted(by_head.items(), key=lambda kv: -len(kv[1]))
    chosen: list[EncodedPair] = []
    depth = 0
    while len(chosen) < count and any(len(g) > depth for _, g in groups):
        for _, group in groups:
            if len(group) > depth and len(chosen) < count:
                chosen.append(group[depth])
        depth += 1
    return [_prompt(tokenizer, p.input_ids) for p in chosen]


def prompts_from_texts(texts: Sequence[str], pairs: Sequence[EncodedPair], tokenizer: Any,
                       max_length: int) -> list[SamplePrompt]:
    """The user's prompt texts behind the most common training head (provider and style), so
    they are formatted as the training samples are."""
    heads = Counter(split_head(p.input_ids)[0] for p in pairs)
    head = heads.most_common(1)[0][0] if heads else ()
    out = []
    for text in texts:
        body = list(head) + list(tokenizer.encode(text)) if head else list(tokenizer.encode(text))
        ids = body[: max_length - 1] + [EOS_ID]
        out.append(_prompt(tokenizer, ids))
    return out


def head_provider(tokenizer: Any, head: Sequence[int]) -> str | None:
    """The provider inside a head (None when it has none)."""
    if PROVIDER_ID not in head:
        return None
    start = list(head).index(PROVIDER_ID) + 1
    end = start
    while end < len(head) and head[end] not in (STYLE_ID, USER_ID):
        end += 1
    return tokenizer.decode(list(head[start:end])).strip() or None


def prompt_format(pairs: Sequence[EncodedPair], tokenizer: Any) -> dict[str, Any]:
    """How the training prompts look, for checkpoints (``generate`` formats prompts alike):
    ``{"kind": "styles", "provider": p, "style": s, "styles": [...]}`` with the most common
    provider and style, or ``{"kind": "text"}`` for plain-text continuation windows."""
    heads = Counter(split_head(p.input_ids)[0] for p in pairs)
    if not heads or all(not h for h in heads):
        return {"kind": "text"}
    head = heads.most_common(1)[0][0]
    styles = sorted({s for h in heads if (s := head_style(tokenizer, h)) is not None})
    out: dict[str, Any] = {"kind": "styles", "styles": styles}
    provider, style = head_provider(tokenizer, head), head_style(tokenizer, head)
    if provider is not None:
        out["provider"] = provider
    if style is not None:
        out["style"] = style
    return out


def _prompt(tokenizer: Any, ids: Sequence[int]) -> SamplePrompt:
    head, text_ids = split_head(ids)
    text = tokenizer.decode(text_ids).strip()
    if not head and len(text) > CONTINUATION_CHARS:
        # A plain-text window: the reply continues its end, so the end is what to show.
        text = "…" + text[-CONTINUATION_CHARS:]
    return SamplePrompt(tuple(int(i) for i in ids), text, head_style(tokenizer, head))


def generate_samples(model: Any, tokenizer: Any, prompts: Sequence[SamplePrompt],
                     max_new_tokens: int, device: Any,
                     autocast: contextlib.AbstractContextManager[Any] | None = None
                     ) -> list[dict[str, str]]:
    """Greedy replies to ``prompts`` in one batch: ``[{"prompt", "text"[, "style"]}]``."""
    import torch

    from core.infer.generation import GenerationConfig, generate_ids, pad_batch

    if not prompts:
        return []
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, temperature=0.0)
    ids, mask = pad_batch([p.ids for p in prompts], device)
    with torch.no_grad(), torch.random.fork_rng(devices=[]), (autocast or contextlib.nullcontext()):
        out = generate_ids(model, ids, mask, config)
    samples = []
    for i, prompt in enumerate(prompts):
        tokens = [t for t in out.row(i) if t not in config.stop_ids]
        sample = {"prompt": prompt.text, "text": tokenizer.decode(tokens)}
        if prompt.style:
            sample["style"] = prompt.style
        samples.append(sample)
    return samples
