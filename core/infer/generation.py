"""Text generation with the KV cache (spec rlhf.md §6 "Generation").

The prompt goes through ``model.encode`` once; the decoder then runs one cached step per new
token, starting from the fixed prefix ``<s> <|assistant|>`` (the layout the model is trained
on). Decoding strategies: greedy, temperature, top-k, top-p, repetition penalty; stop ids and
stop strings; batches with padding and per-row finished flags; a streaming callback. The cache
is the contiguous per-layer one of ``model.decode`` or, with ``GenerationConfig(paged_blocks=N)``,
the block-paged :class:`core.infer.paged_kv.PagedKVCache`.

Two layers:

* :func:`generate_ids` — tensors in, tensors out (used by PPO rollouts, best-of-N, the bench).
* :func:`generate` — text prompts in, :class:`Generation` results out (CLI, chat).

Bad input is reported, never a crash mid-generation:

* a prompt longer than the encoder context is **truncated from the left** (the end of a prompt
  is what the answer depends on) and the result says so (``prompt_truncated``,
  ``prompt_tokens_dropped``); ``overflow="error"`` raises a :class:`ConfigError` instead;
* a stop string that never appears simply ends at ``max_new_tokens`` with finish reason
  ``"length"``;
* ``max_new_tokens`` beyond the decoder's position limit is a ConfigError before any work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from core.data.tokenizer import (
    ASSISTANT_ID,
    BOS_ID,
    EOS_ID,
    PAD_ID,
    PROVIDER_ID,
    STYLE_ID,
    USER_ID,
)
from core.errors import ConfigError

DECODER_PREFIX = (BOS_ID, ASSISTANT_ID)  # `<s> <|assistant|>`: the reply starts after these

FINISH_STOP = "stop"  # a stop id was generated
FINISH_STOP_STRING = "stop_string"  # a stop string appeared in the text
FINISH_LENGTH = "length"  # max_new_tokens reached
OVERFLOW_POLICIES = ("truncate", "error")

# (step, new token per row (B,), finished flags (B,)) -> None; called after every step.
StepCallback = Callable[[int, Tensor, Tensor], None]


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. ``temperature == 0`` (or ``do_sample=False``) is greedy.

    ``top_k`` 0 and ``top_p`` 1.0 switch those filters off; ``repetition_penalty`` 1.0 too.
    ``stop_ids`` end a row when generated (the id is kept in the token output, not in the
    text); ``stop_strings`` end a row when its decoded text contains one (the text is cut before
    it). ``overflow`` is what happens to a prompt longer than the encoder context.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    do_sample: bool = True
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_ids: tuple[int, ...] = (EOS_ID,)
    stop_strings: tuple[str, ...] = ()
    use_cache: bool = True
    overflow: str = "truncate"
    max_prompt_tokens: int | None = None  # default: the model's max_position_embeddings
    # 0: the contiguous per-layer cache of ``model.decode``; N > 0: a paged KV cache of N
    # blocks of 16 tokens (core.infer.paged_kv), finished rows leave the batch and free their blocks.
    paged_blocks: int = 0
    # The prompt head training used: ``<|provider|> provider <|style|> style <|user|> prompt``
    # (None leaves that part out). ``generate`` reads them from the checkpoint by default.
    style: str | None = None
    provider: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0.0

    def validate(self) -> GenerationConfig:
        """ConfigError naming the option for every out-of-range value."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError(
                f"--repetition-penalty must be > 0 (1.0 = off), got {self.repetition_penalty}"
            )
        if self.overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"overflow must be one of {OVERFLOW_POLICIES}, got {self.overflow!r}")
        if any(not s for s in self.stop_strings):
            raise ConfigError("--stop strings must not be empty")
        if self.paged_blocks < 0:
            raise ConfigError(f"--paged-blocks must be >= 0 (0 = off), got {self.paged_blocks}")
        if self.paged_blocks and not self.use_cache:
            raise ConfigError("--paged-blocks needs the KV cache (use_cache=True)")
        return self


# ----------------------------------------------------------------------------- sampling
def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL-style penalty on ids already generated: positive logits ÷ penalty, negative ×.

    ``logits (B,V)``; ``seen (B,V)`` bool. Returns a new tensor.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits per row (ties at the boundary are kept), rest → −inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely ids whose probability sum ≥ ``p``."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    # An id is dropped when the mass *before* it already reaches p (the top id always stays).
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_token_logits(logits: Tensor, seen: Tensor | None, config: GenerationConfig) -> Tensor:
    """The processed logits one token is drawn from: penalty → temperature → top-k → top-p.

    Greedy decoding takes the argmax of the penalised logits (the filters cannot change it).
    """
    out = logits.float()
    if seen is not None and config.repetition_penalty != 1.0:
        out = apply_repetition_penalty(out, seen, config.repetition_penalty)
    if config.greedy:
        return out
    out = out / config.temperature
    out = top_k_filter(out, config.top_k)
    return top_p_filter(out, config.top_p)


def next_token_probs(logits: Tensor, seen: Tensor | None, config: GenerationConfig) -> Tensor:
    """The distribution the next token is drawn from, ``(B,V)`` (one-hot when greedy)."""
    processed = next_token_logits(logits, seen, config)
    if config.greedy:
        return torch.nn.functional.one_hot(
            processed.argmax(-1), processed.shape[-1]
        ).to(torch.float32)
    return torch.softmax(processed, dim=-1)


def pick_tokens(
    logits: Tensor, seen: Tensor | None, config: GenerationConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token per row ``(B,)`` from last-position logits ``(B,V)``."""
    processed = next_token_logits(logits, seen, config)
    if config.greedy:
        return processed.argmax(-1)
    probs = torch.softmax(processed, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- KV cache
def cache_length(past: Any) -> int:
    """Decoder positions held by a cache from ``model.decode(..., use_cache=True)``."""
    return 0 if past is None else int(past[0][0].shape[2])


def crop_cache(past: Any, length: int) -> Any:
    """The cache cut back to its first ``length`` decoder positions (speculative rollback)."""
    return tuple((k[:, :, :length], v[:, :, :length], ck, cv) for k, v, ck, cv in past)


def select_cache_rows(past: Any, rows: Tensor) -> Any:
    """The cache of a subset of batch rows."""
    return tuple(
        (k[rows], v[rows], None if ck is None else ck[rows], None if cv is None else cv[rows])
        for k, v, ck, cv in past
    )


# ----------------------------------------------------------------------------- generation
@dataclass
class GenerationOutput:
    """Token-level result of :func:`generate_ids`.

    ``tokens (B,L)`` are the generated ids after the prefix, padded with ``PAD_ID`` after a
    row's end; ``lengths (B,)`` count each row's real tokens (its stop id included);
    ``finish_reasons`` per row; ``steps`` decoder steps run; ``cache_stats`` the paged
    cache's counters (peak blocks in use, allocations, reuses) when one was used.
    """

    tokens: Tensor
    lengths: Tensor
    finish_reasons: list[str]
    steps: int
    cache_stats: dict[str, int] | None = None

    @property
    def mask(self) -> Tensor:
        """``(B,L)`` 1 on real generated tokens."""
        positions = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return (positions[None, :] < self.lengths[:, None]).long()

    def row(self, i: int) -> list[int]:
        return self.tokens[i, : int(self.lengths[i])].tolist()


def _max_new_tokens(model: Any, config: GenerationConfig, prefix_len: int) -> int:
    limit = int(model.config.max_position_embeddings) - prefix_len
    if config.max_new_tokens > limit:
        raise ConfigError(
            f"--max-new-tokens {config.max_new_tokens} does not fit the decoder context "
            f"({model.config.max_position_embeddings} positions, {prefix_len} used by the "
            f"reply prefix); use at most {limit}"
        )
    return config.max_new_tokens


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the previous mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@torch.no_grad()
def generate_ids(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
    stop_check: Callable[[int, list[int]], bool] | None = None,
    prefix: Sequence[int] = DECODER_PREFIX,
    commit_scratchpad: bool = False,
    inputs: dict[str, Any] | None = None,
) -> GenerationOutput:
    """Generate for a batch of encoder inputs (right-padded, ``attention_mask`` 1 = real).

    Every row decodes from ``prefix``; a row finishes at a stop id, when ``stop_check(row,
    tokens)`` says so (stop strings), or after ``max_new_tokens``. Finished rows keep stepping
    with padding (their outputs are ignored) so the batch stays rectangular; the loop ends when
    every row is finished. ``use_cache=False`` recomputes the whole decoder every step (the
    reference the cache is tested against). ``config.paged_blocks`` N > 0 keeps the cache in a
    :class:`core.infer.paged_kv.PagedKVCache` of N blocks instead: finished rows leave the batch and
    free their blocks (same tokens; :class:`core.infer.paged_kv.PagedCacheExhausted` when N is too
    small). ``inputs`` are the encoder's extra arguments (``input_entities``,
    ``knowledge_graph``, ``vision_inputs``, ``task_id``; see :func:`expand_inputs`).
    """
    config = config or GenerationConfig()
    device = input_ids.device
    b = int(input_ids.shape[0])
    max_new = _max_new_tokens(model, config, len(prefix))
    with eval_mode(model):
        encoded = model.encode(input_ids, attention_mask, commit_scratchpad=commit_scratchpad,
                               **expand_inputs(inputs, b))
        vocab = int(model.config.vocab_size)
        stop_ids = torch.tensor(sorted(set(config.stop_ids)), device=device, dtype=torch.long)
        seq = torch.tensor([list(prefix)] * b, device=device, dtype=torch.long)
        out = torch.full((b, max_new), PAD_ID, device=device, dtype=torch.long)
        lengths = torch.zeros(b, device=device, dtype=torch.long)
        finished = torch.zeros(b, device=device, dtype=torch.bool)
        reasons = [FINISH_LENGTH] * b
        seen = (
            torch.zeros(b, vocab, device=device, dtype=torch.bool)
            if config.repetition_penalty != 1.0 else None
        )
        past = None
        paged = None
        if config.paged_blocks:
            from core.infer.paged_kv import PagedDecoder

            # The last generated token is never fed back: prefix + max_new - 1 positions.
            paged = PagedDecoder(model, encoded, config.paged_blocks,
                                 max_length=len(prefix) + max_new - 1)
        step_input = seq
        steps = 0
        for step in range(max_new):
            if paged is not None:
                logits = paged.step(step_input, finished)
            elif config.use_cache:
                dec = model.decode(step_input, encoded, past_key_values=past, use_cache=True)
                past = dec["past_key_values"]
                logits = dec["logits"][:, -1, :]
            else:
                logits = model.decode(seq, encoded)["logits"][:, -1, :]
            token = pick_tokens(logits, seen, config, generator)
            token = torch.where(finished, torch.full_like(token, PAD_ID), token)
            active = ~finished
            out[:, step] = token
            lengths += active.long()
            if seen is not None:
                seen[active, token[active]] = True
            hit_stop = active & torch.isin(token, stop_ids)
            for i in hit_stop.nonzero().flatten().tolist():
                reasons[i] = FINISH_STOP
            finished |= hit_stop
            if stop_check is not None:
                for i in (active & ~hit_stop).nonzero().flatten().tolist():
                    if stop_check(i, out[i, : int(lengths[i])].tolist()):
                        reasons[i] = FINISH_STOP_STRING
                        finished[i] = True
            steps = step + 1
            if on_step is not None:
                on_step(step, token, finished.clone())
            if bool(finished.all()):
                break
            step_input = token[:, None]
            if not config.use_cache:
                seq = torch.cat((seq, step_input), dim=1)
        cache_stats = None
        if paged is not None:
            paged.finish()
            cache_stats = paged.cache.stats()
    width = int(lengths.max()) if b else 0
    return GenerationOutput(out[:, : max(width, 1)].clone(), lengths, reasons, steps, cache_stats)


# ----------------------------------------------------------------------------- text level
@dataclass
class Generation:
    """One prompt's result: the reply text and how generation ended."""

    prompt: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    prompt_truncated: bool = False
    prompt_tokens_dropped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedPrompt:
    """Encoder ids of one prompt and whether it had to be cut to fit."""

    ids: list[int]
    truncated: bool
    dropped: int


def encode_prompt_ids(
    tokenizer: Any,
    prompt: str,
    max_tokens: int,
    overflow: str = "truncate",
    style: str | None = None,
    provider: str | None = None,
    history: Sequence[tuple[str, str]] = (),
    system: str = "",
) -> EncodedPrompt:
    """``[<|provider|> p] [<|style|> s] <|user|> prompt </s>`` (the training layout) fitted to
    ``max_tokens``; with ``history`` / ``system``, the chat template of
    ``core.data.formatting`` (what multi-turn data trains on).

    Too long: the oldest history turns go first (whole); then ``overflow="truncate"`` drops
    tokens from the start of the prompt text (the control tokens and ``</s>`` stay); ``"error"``
    raises a ConfigError naming both lengths.
    """
    from core.data.formatting import chat_encoder_ids, encoder_ids

    if history or system:
        full = chat_encoder_ids(tokenizer, prompt, 10**9, history=history, system=system,
                                style=style, provider=provider)
        if len(full) <= max_tokens:
            return EncodedPrompt(full, False, 0)
        fitted = chat_encoder_ids(tokenizer, prompt, max_tokens, history=history, system=system,
                                  style=style, provider=provider)
        tail = [USER_ID, *tokenizer.encode(prompt), EOS_ID]
        if fitted[-len(tail):] == tail:  # the question itself survived whole
            return EncodedPrompt(fitted, True, len(full) - len(fitted))
    full = encoder_ids(tokenizer, prompt, 10**9, style=style, provider=provider)
    if len(full) <= max_tokens:
        return EncodedPrompt(full, False, 0)
    if overflow == "error":
        raise ConfigError(
            f"the prompt is {len(full)} tokens, longer than the model's context of "
            f"{max_tokens}; shorten it (or allow left truncation)"
        )
    head = [PROVIDER_ID, *tokenizer.encode(provider)] if provider is not None else []
    if style is not None:
        head += [STYLE_ID, *tokenizer.encode(style)]
    head.append(USER_ID)
    room = max_tokens - len(head) - 1
    if room < 1:
        raise ConfigError(f"the context of {max_tokens} tokens cannot hold any prompt text")
    text_ids = full[len(head) : -1]
    kept = text_ids[-room:]
    return EncodedPrompt([*head, *kept, EOS_ID], True, len(text_ids) - len(kept))


def pad_batch(rows: Sequence[Sequence[int]], device: Any = "cpu") -> tuple[Tensor, Tensor]:
    """Right-pad id lists into ``(ids, mask)`` int64 tensors."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop_strings if s in text]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


class TextStreamer:
    """Turns per-step tokens of one row into text pieces (multi-byte characters held back until
    complete). ``push(token)`` returns the new text, possibly ``""``."""

    def __init__(self, tokenizer: Any, stop_ids: Sequence[int] = (EOS_ID,)) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        if token in self.stop_ids or token == PAD_ID:
            return ""
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        piece = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return piece

    def remainder(self, final_text: str) -> str:
        """What of ``final_text`` has not been streamed yet (call once, at the end)."""
        if not final_text.startswith(self.emitted):
            return ""
        rest = final_text[len(self.emitted):]
        self.emitted = final_text
        return rest


def expand_inputs(inputs: dict[str, Any] | None, batch: int) -> dict[str, Any]:
    """Encoder extra inputs with one row repeated to ``batch`` rows (tensors with batch size 1;
    the knowledge-graph dict's tensors too)."""
    if not inputs:
        return {}

    def grow(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: grow(v) for k, v in value.items()}
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == 1 and batch > 1:
            return value.expand(batch, *value.shape[1:])
        return value

    return {k: grow(v) for k, v in inputs.items()}


def _to_device(inputs: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: (_to_device(v, device) if isinstance(v, dict) else
                v.to(device) if isinstance(v, Tensor) else v) for k, v in inputs.items()}


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    config: GenerationConfig | None = None,
    *,
    seed: int | None = None,
    on_text: Callable[[int, str], None] | None = None,
    style: str | None = None,
    device: Any = None,
    history: Sequence[tuple[str, str]] = (),
    system: str = "",
    inputs: dict[str, Any] | None = None,
) -> list[Generation]:
    """Generate a reply to every prompt (one padded batch).

    ``inputs``: knowledge-graph / image / task inputs for the encoder, one row shared by every
    prompt (``core.infer.inference.prompt_inputs`` builds them from names and paths).

    ``on_text(row, piece)`` streams decoded text as it is produced (``chat`` uses it).
    Raises ConfigError for bad options, a too-long prompt with ``overflow="error"``, or a
    tokenizer whose vocabulary does not fit the model.
    """
    if not prompts:
        raise ConfigError("no prompt to generate from")
    config = config or GenerationConfig()
    check_tokenizer_fits(model, tokenizer)
    device = device if device is not None else next(model.parameters()).device
    limit = config.max_prompt_tokens or int(model.config.max_position_embeddings)
    style = style if style is not None else config.style
    encoded = [encode_prompt_ids(tokenizer, p, limit, config.overflow, style, config.provider,
                                 history, system)
               for p in prompts]
    ids, mask = pad_batch([e.ids for e in encoded], device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=ids.device)
        generator.manual_seed(seed)
    stop_check = None
    if config.stop_strings:
        longest = max(len(s) for s in config.stop_strings)

        def stop_check(row: int, tokens: list[int]) -> bool:
            # Only the tail can hold a new match; decode a window long enough for any string.
            tail = tokenizer.decode(tokens[-(longest + 8) :])
            return any(s in tail for s in config.stop_strings)

    streamers = [TextStreamer(tokenizer, config.stop_ids) for _ in prompts]
    done_streaming = [False] * len(prompts)

    def on_step(step: int, tokens: Tensor, finished: Tensor) -> None:
        if on_text is None:
            return
        for i, tok in enumerate(tokens.tolist()):
            if done_streaming[i]:
                continue
            piece = streamers[i].push(tok)
            if config.stop_strings:
                # Never stream text past a stop string.
                cut, hit = _cut_at_stop(streamers[i].emitted, config.stop_strings)
                if hit:
                    already = len(streamers[i].emitted) - len(piece)
                    piece = cut[already:] if len(cut) > already else ""
                    done_streaming[i] = True
            if piece:
                on_text(i, piece)
            if bool(finished[i]):
                done_streaming[i] = True

    moved = None if inputs is None else _to_device(inputs, ids.device)
    out = generate_ids(
        model, ids, mask, config, generator=generator, on_step=on_step, stop_check=stop_check,
        inputs=moved,
    )
    results = []
    for i, prompt in enumerate(prompts):
        tokens = out.row(i)
        text = tokenizer.decode([t for t in tokens if t not in config.stop_ids])
        text, _ = _cut_at_stop(text, config.stop_strings)
        if on_text is not None:
            # A reply may end inside a multi-byte character the streamer held back: flush it.
            rest = streamers[i].remainder(text)
            if rest:
                on_text(i, rest)
        results.append(
            Generation(
                prompt=prompt,
                text=text,
                token_ids=tokens,
                finish_reason=out.finish_reasons[i],
                prompt_tokens=len(encoded[i].ids),
                prompt_truncated=encoded[i].truncated,
                prompt_tokens_dropped=encoded[i].dropped,
                extra={"paged_cache": out.cache_stats} if out.cache_stats else {},
            )
        )
    return results


def check_tokenizer_fits(model: Any, tokenizer: Any) -> None:
    """ConfigError when the tokenizer has ids the model's embedding cannot take."""
    if int(tokenizer.vocab_size) > int(model.config.vocab_size):
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary is "
            f"{model.config.vocab_size}; use the tokenizer saved with the checkpoint"
        )


def with_overrides(config: GenerationConfig, **changes: Any) -> GenerationConfig:
    """A copy of ``config`` with the given non-None fields replaced."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
