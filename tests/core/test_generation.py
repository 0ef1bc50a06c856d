"""core.infer.generation: KV-cache decoding equals full recomputation, sampling filters against
hand-computed distributions, batching, stop ids/strings, streaming, over-long prompts."""

from __future__ import annotations

import math

import pytest
import torch

from core.data.tokenizer import AeronTokenizer
from core.errors import ConfigError
from core.infer.generation import (
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOP_STRING,
    GenerationConfig,
    apply_repetition_penalty,
    encode_prompt_ids,
    generate,
    generate_ids,
    next_token_probs,
    pad_batch,
    top_k_filter,
    top_p_filter,
)
from core.model.config import NeuralNetConfig
from core.model.model import TransformerNeuralNetBackbone


def small_config(vocab: int = 268, **kw: object) -> NeuralNetConfig:
    base = dict(
        vocab_size=vocab, d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=2,
        num_decoder_layers=2, dim_feedforward=128, max_position_embeddings=96,
        num_tot_branches=2, num_scratchpad_slots=4,
    )
    base.update(kw)
    return NeuralNetConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model() -> TransformerNeuralNetBackbone:
    torch.manual_seed(0)
    m = TransformerNeuralNetBackbone(small_config(tie_word_embeddings=False))
    # A large output projection makes an untrained model's distributions peaked and
    # input-dependent, so greedy paths differ between prompts (a fair test of batching).
    assert m.output_projection is not None
    with torch.no_grad():
        m.output_projection.weight.mul_(100.0)
    return m.eval()


@pytest.fixture(scope="module")
def tok() -> AeronTokenizer:
    return AeronTokenizer.byte_level()


def _batch(tok: AeronTokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_batch([encode_prompt_ids(tok, t, 64).ids for t in texts])


PROMPTS = ["What is two plus two?", "Hi", "A longer prompt, padded less than the rest."]


@pytest.mark.parametrize(
    "cfg",
    [
        GenerationConfig(max_new_tokens=24, do_sample=False, stop_ids=()),
        GenerationConfig(max_new_tokens=24, temperature=0.9, top_k=20, top_p=0.9,
                         repetition_penalty=1.3, stop_ids=()),
    ],
    ids=["greedy", "sampled"],
)
def test_cached_generation_equals_uncached(model, tok, cfg: GenerationConfig) -> None:
    ids, mask = _batch(tok, PROMPTS)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    cached = generate_ids(model, ids, mask, cfg, generator=g1)
    uncached = generate_ids(model, ids, mask, GenerationConfig(**{**cfg.__dict__, "use_cache": False}),
                            generator=g2)
    assert cached.tokens.shape == (3, 24)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert cached.finish_reasons == uncached.finish_reasons == [FINISH_LENGTH] * 3


def test_batched_greedy_equals_one_prompt_at_a_time(model, tok) -> None:
    cfg = GenerationConfig(max_new_tokens=16, do_sample=False, stop_ids=())
    ids, mask = _batch(tok, PROMPTS)
    batched = generate_ids(model, ids, mask, cfg)
    rows = {tuple(batched.row(i)) for i in range(3)}
    assert len(rows) > 1, "prompts should lead to different replies"
    for i, text in enumerate(PROMPTS):
        one_ids, one_mask = _batch(tok, [text])
        alone = generate_ids(model, one_ids, one_mask, cfg)
        assert alone.row(0) == batched.row(i)


def test_stop_id_ends_row_and_others_continue(model, tok) -> None:
    ids, mask = _batch(tok, PROMPTS)
    free = generate_ids(model, ids, mask, GenerationConfig(max_new_tokens=12, do_sample=False,
                                                           stop_ids=()))
    stop_token = free.row(0)[3]
    first_hit = free.row(0).index(stop_token)
    out = generate_ids(model, ids, mask, GenerationConfig(max_new_tokens=12, do_sample=False,
                                                          stop_ids=(stop_token,)))
    assert out.row(0) == free.row(0)[: first_hit + 1]  # the stop id is kept in the tokens
    assert out.finish_reasons[0] == FINISH_STOP
    assert int(out.mask[0].sum()) == first_hit + 1
    for i in (1, 2):  # other rows are unaffected unless they produce the stop id themselves
        row = free.row(i)
        expected = row[: row.index(stop_token) + 1] if stop_token in row else row
        assert out.row(i) == expected


def test_stop_string_cuts_text_and_missing_stop_string_is_length(model, tok) -> None:
    base = GenerationConfig(max_new_tokens=20, do_sample=False, stop_ids=())
    [free] = generate(model, tok, [PROMPTS[0]], base)
    assert free.finish_reason == FINISH_LENGTH
    text = free.text
    stop = text[6:8]
    assert stop and stop in text
    [cut] = generate(model, tok, [PROMPTS[0]], GenerationConfig(**{**base.__dict__,
                                                                    "stop_strings": (stop,)}))
    assert cut.finish_reason == FINISH_STOP_STRING
    assert cut.text == text[: text.find(stop)]
    [never] = generate(model, tok, [PROMPTS[0]], GenerationConfig(
        **{**base.__dict__, "stop_strings": ("\x00never\x00",)}))
    assert never.finish_reason == FINISH_LENGTH and never.text == text


def test_streaming_pieces_add_up_to_the_text(model, tok) -> None:
    pieces: list[str] = []
    cfg = GenerationConfig(max_new_tokens=20, temperature=0.8, stop_ids=())
    [res] = generate(model, tok, ["stream me"], cfg, seed=3,
                     on_text=lambda row, piece: pieces.append(piece))
    assert "".join(pieces) == res.text
    assert len(pieces) > 1


def test_seeded_sampling_is_reproducible(model, tok) -> None:
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, stop_ids=())
    a = generate(model, tok, PROMPTS, cfg, seed=11)
    b = generate(model, tok, PROMPTS, cfg, seed=11)
    c = generate(model, tok, PROMPTS, cfg, seed=12)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_long_prompt_is_truncated_from_the_left_or_rejected(model, tok) -> None:
    long_prompt = "start " + "x" * 200 + " the end"
    cfg = GenerationConfig(max_new_tokens=4, do_sample=False, max_prompt_tokens=40)
    [res] = generate(model, tok, [long_prompt], cfg)
    assert res.prompt_truncated and res.prompt_tokens == 40
    assert res.prompt_tokens_dropped == len(tok.encode(long_prompt)) - 38
    kept = encode_prompt_ids(tok, long_prompt, 40)
    assert tok.decode(kept.ids).endswith("the end")
    with pytest.raises(ConfigError, match="longer than the model's context"):
        generate(model, tok, [long_prompt], GenerationConfig(**{**cfg.__dict__,
                                                                "overflow": "error"}))
    [short] = generate(model, tok, ["short"], cfg)
    assert not short.prompt_truncated and short.prompt_tokens_dropped == 0


def test_bad_options_are_config_errors(model, tok) -> None:
    with pytest.raises(ConfigError, match="max-new-tokens"):
        generate(model, tok, ["x"], GenerationConfig(max_new_tokens=500))
    for bad in ({"top_p": 0.0}, {"top_k": -1}, {"temperature": -1.0},
                {"repetition_penalty": 0.0}, {"stop_strings": ("",)}):
        with pytest.raises(ConfigError):
            GenerationConfig(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- filters, by hand
def test_top_k_keeps_k_largest() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    cfg = GenerationConfig(top_k=2, temperature=1.0)
    probs = next_token_probs(logits, None, cfg)[0]
    z = math.exp(3) + math.exp(2)
    assert probs.tolist() == pytest.approx([0.0, math.exp(3) / z, math.exp(2) / z, 0.0])
    assert torch.isinf(top_k_filter(logits, 2)[0, [0, 3]]).all()


def test_top_p_smallest_set_reaching_p() -> None:
    probs_in = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs_in.log()
    # p = 0.8: 0.5 + 0.3 = 0.8 reaches p → keep two; p = 0.81 needs the third.
    kept = torch.isfinite(top_p_filter(logits, 0.8))[0].tolist()
    assert kept == [True, True, False, False]
    kept = torch.isfinite(top_p_filter(logits, 0.81))[0].tolist()
    assert kept == [True, True, True, False]
    probs = next_token_probs(logits, None, GenerationConfig(top_p=0.8))[0]
    assert probs.tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0], abs=1e-6)
    # Unsorted input: the filter works on sorted order but returns the original order.
    shuffled = probs_in[:, [2, 0, 3, 1]].log()
    assert torch.isfinite(top_p_filter(shuffled, 0.8))[0].tolist() == [False, True, False, True]


def test_repetition_penalty_and_temperature_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    seen = torch.tensor([[True, True, False]])
    pen = apply_repetition_penalty(logits, seen, 2.0)
    assert pen.tolist() == [[1.0, -2.0, 0.5]]  # positive ÷ 2, negative × 2, unseen untouched
    probs = next_token_probs(logits, seen, GenerationConfig(repetition_penalty=2.0,
                                                            temperature=0.5))[0]
    e = [math.exp(1.0 / 0.5), math.exp(-2.0 / 0.5), math.exp(0.5 / 0.5)]
    assert probs.tolist() == pytest.approx([x / sum(e) for x in e], abs=1e-6)
    greedy = next_token_probs(logits, seen, GenerationConfig(repetition_penalty=2.0,
                                                             do_sample=False))[0]
    assert greedy.tolist() == [1.0, 0.0, 0.0]
    # A strong penalty flips the greedy choice.
    flipped = next_token_probs(logits, seen, GenerationConfig(repetition_penalty=5.0,
                                                              do_sample=False))[0]
    assert flipped.tolist() == [0.0, 0.0, 1.0]


def test_sampling_frequencies_match_filtered_distribution() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    cfg = GenerationConfig(top_k=3, top_p=0.9, temperature=1.0)
    expected = next_token_probs(logits, None, cfg)[0]
    from core.infer.generation import pick_tokens

    g = torch.Generator().manual_seed(0)
    draws = torch.stack([pick_tokens(logits, None, cfg, g) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=4).float() / 4000
    assert freq[0].item() == 0.0
    assert freq.tolist() == pytest.approx(expected.tolist(), abs=0.03)
