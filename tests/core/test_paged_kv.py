"""core.infer.paged_kv: the block pool and its tables by hand; paged generation gives the tokens of
the contiguous cache and of full recomputation (rows finishing at different steps); finished
rows free their blocks for reuse; a too-small pool is a clear error."""

from __future__ import annotations

import pytest
import torch

from core.data.tokenizer import AeronTokenizer
from core.errors import ConfigError
from core.infer.generation import (
    FINISH_LENGTH,
    FINISH_STOP,
    GenerationConfig,
    encode_prompt_ids,
    generate,
    generate_ids,
    pad_batch,
)
from core.infer.paged_kv import BLOCK_SIZE, PagedCacheExhausted, PagedKVCache, blocks_needed
from core.model.config import NeuralNetConfig
from core.model.model import TransformerNeuralNetBackbone


@pytest.fixture(scope="module")
def model() -> TransformerNeuralNetBackbone:
    torch.manual_seed(0)
    cfg = NeuralNetConfig(
        vocab_size=268, d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=2,
        num_decoder_layers=2, dim_feedforward=128, max_position_embeddings=96,
        num_tot_branches=2, num_scratchpad_slots=4, tie_word_embeddings=False,
    )
    m = TransformerNeuralNetBackbone(cfg)
    assert m.output_projection is not None
    with torch.no_grad():  # peaked, prompt-dependent distributions (see test_generation)
        m.output_projection.weight.mul_(100.0)
    return m.eval()


@pytest.fixture(scope="module")
def tok() -> AeronTokenizer:
    return AeronTokenizer.byte_level()


PROMPTS = ["What is two plus two?", "Hi", "A longer prompt, padded less than the rest.",
           "zz top", "Name a colour."]
MAX_NEW = 40


@pytest.fixture(scope="module")
def batch(tok: AeronTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_batch([encode_prompt_ids(tok, t, 64).ids for t in PROMPTS])


@pytest.fixture(scope="module")
def staggered_stops(model, batch) -> tuple[int, ...]:
    """Stop ids that end the rows at different steps, one row running to the limit (chosen
    greedily from a free-running greedy pass)."""
    ids, mask = batch
    free = generate_ids(model, ids, mask, GenerationConfig(max_new_tokens=MAX_NEW,
                                                           do_sample=False, stop_ids=()))
    rows = [free.row(i) for i in range(len(PROMPTS))]

    def ends(stops: set[int]) -> list[int]:
        return [next((j + 1 for j, t in enumerate(r) if t in stops), MAX_NEW) for r in rows]

    def quality(stops: set[int]) -> tuple[int, int]:
        e = ends(stops)
        return (len(set(e)) if MAX_NEW in e else 0, -len(stops))

    chosen: set[int] = set()
    for _ in range(3):
        best = max({t for r in rows for t in r} - chosen, key=lambda t: quality(chosen | {t}))
        if quality(chosen | {best}) > quality(chosen):
            chosen.add(best)
    assert len(set(ends(chosen))) >= 4 and MAX_NEW in ends(chosen), ends(chosen)
    return tuple(sorted(chosen))


# ----------------------------------------------------------------------- the pool by hand
def test_pool_layout_write_gather_across_blocks() -> None:
    cache = PagedKVCache(num_layers=2, num_kv_heads=2, head_dim=4, num_blocks=5, block_size=4)
    assert cache.pool.shape == (2, 2, 5, 4, 2, 4)  # (L, 2, blocks, block size, G, hd)
    cache.add("a")
    cache.add("b")
    k = torch.arange(2 * 2 * 6 * 4, dtype=torch.float32).view(2, 2, 6, 4)  # (B, G, T, hd)
    cache.write(1, ["a", "b"], 0, k, -k)
    # 6 positions in blocks of 4: two blocks each, handed out on demand (lowest id first).
    assert cache.tables == {"a": [0, 1], "b": [2, 3]}
    assert cache.blocks_in_use == 4
    got_k, got_v = cache.gather(1, ["a", "b"], 6)
    assert torch.equal(got_k, k) and torch.equal(got_v, -k)
    # Position 5 of "b" sits in its second block (3) at offset 1.
    assert torch.equal(cache.pool[1, 0, 3, 1], k[1, :, 5])
    # One more position for "a" fits its second block; for a 9th position it needs a third.
    cache.write(1, ["a"], 6, k[:1, :, :1], k[:1, :, :1])
    assert cache.tables["a"] == [0, 1]
    cache.reserve("a", 9)
    assert cache.tables["a"] == [0, 1, 4]
    assert cache.peak_blocks_in_use == 5


def test_freed_blocks_are_reused_and_exhaustion_is_a_clear_error() -> None:
    cache = PagedKVCache(num_layers=1, num_kv_heads=1, head_dim=2, num_blocks=3, block_size=2)
    cache.add(0)
    cache.add(1)
    cache.reserve(0, 4)  # blocks 0, 1
    cache.reserve(1, 2)  # block 2
    with pytest.raises(PagedCacheExhausted) as err:
        cache.reserve(1, 3)
    msg = str(err.value)
    assert "exhausted" in msg and "all 3 blocks of 2 tokens" in msg
    assert "2 running sequence(s)" in msg and "--paged-blocks" in msg
    assert isinstance(err.value, ConfigError)  # the CLI prints it as one red line
    cache.free(0)
    assert cache.blocks_in_use == 1
    cache.reserve(1, 6)  # takes the two freed blocks
    assert sorted(cache.tables[1]) == [0, 1, 2]
    assert cache.blocks_reused == 2 and cache.blocks_allocated == 5


def test_blocks_needed() -> None:
    assert blocks_needed(3, 16) == 3
    assert blocks_needed(3, 17) == 6
    assert BLOCK_SIZE == 16


# ----------------------------------------------------------------------- generation
@pytest.mark.parametrize(
    "kw",
    [dict(do_sample=False),
     dict(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.3)],
    ids=["greedy", "sampled"],
)
def test_paged_equals_contiguous_equals_uncached(model, batch, staggered_stops, kw) -> None:
    ids, mask = batch
    base = GenerationConfig(max_new_tokens=MAX_NEW, stop_ids=staggered_stops, **kw)
    runs = {}
    for name, cfg in (
        ("contiguous", base),
        ("uncached", GenerationConfig(**{**base.__dict__, "use_cache": False})),
        ("paged", GenerationConfig(**{**base.__dict__, "paged_blocks": 64})),
    ):
        runs[name] = generate_ids(model, ids, mask, cfg, generator=torch.Generator().manual_seed(3))
    paged = runs["paged"]
    for other in ("contiguous", "uncached"):
        assert torch.equal(paged.tokens, runs[other].tokens), other
        assert torch.equal(paged.lengths, runs[other].lengths)
        assert paged.finish_reasons == runs[other].finish_reasons
    if kw.get("do_sample", True):
        return
    # Greedy: the rows really end at different steps, some on a stop id, one at the limit.
    assert len(set(paged.lengths.tolist())) >= 4
    assert FINISH_STOP in paged.finish_reasons and FINISH_LENGTH in paged.finish_reasons
    stats = paged.cache_stats
    assert stats is not None and stats["blocks_in_use"] == 0  # everything freed at the end


def test_finished_rows_free_blocks_that_later_rows_reuse(model, batch, staggered_stops) -> None:
    ids, mask = batch
    b = len(PROMPTS)
    worst = blocks_needed(b, 2 + MAX_NEW - 1)  # every row to the limit: 5 rows × 3 blocks
    base = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, stop_ids=staggered_stops)
    contiguous = generate_ids(model, ids, mask, base)
    # Fewer blocks than the worst case: only enough because early rows give theirs back.
    paged = generate_ids(model, ids, mask,
                         GenerationConfig(**{**base.__dict__, "paged_blocks": worst - 5}))
    assert torch.equal(paged.tokens, contiguous.tokens)
    stats = paged.cache_stats
    assert stats is not None
    assert stats["peak_blocks_in_use"] <= worst - 5 < worst
    assert stats["blocks_reused"] > 0  # a block freed by a finished row served another row
    assert stats["blocks_in_use"] == 0
    # The pool size the batch needs is the peak of the blocks *live* at once.
    again = generate_ids(model, ids, mask, GenerationConfig(
        **{**base.__dict__, "paged_blocks": stats["peak_blocks_in_use"]}))
    assert torch.equal(again.tokens, contiguous.tokens)


def test_too_small_pool_is_a_clear_error(model, batch, tok) -> None:
    ids, mask = batch
    cfg = GenerationConfig(max_new_tokens=MAX_NEW, do_sample=False, stop_ids=(),
                           paged_blocks=len(PROMPTS) + 1)
    with pytest.raises(PagedCacheExhausted, match=r"exhausted: all 6 blocks of 16 tokens .* "
                       r"raise --paged-blocks \(this batch never needs more than 15\)"):
        generate_ids(model, ids, mask, cfg)
    with pytest.raises(PagedCacheExhausted, match="cannot start 5 sequences"):
        generate_ids(model, ids, mask, GenerationConfig(max_new_tokens=4, paged_blocks=3))
    with pytest.raises(ConfigError, match="--paged-blocks must be >= 0"):
        GenerationConfig(paged_blocks=-1)


def test_text_generation_reports_the_paged_cache(model, tok) -> None:
    cfg = GenerationConfig(max_new_tokens=20, do_sample=False, stop_ids=())
    plain = generate(model, tok, PROMPTS[:3], cfg)
    paged = generate(model, tok, PROMPTS[:3], GenerationConfig(**{**cfg.__dict__,
                                                                  "paged_blocks": 6}))
    assert [g.text for g in paged] == [g.text for g in plain]
    assert paged[0].extra["paged_cache"]["peak_blocks_in_use"] == 6  # 3 rows × 2 blocks
