"""Decoder KV cache: incremental decoding equals the full pass (spec §6, 1e-5 in fp32)."""

from __future__ import annotations

import pytest
import torch
from model_common import VOCAB, batch, build


@pytest.mark.parametrize("overrides", [{}, {"num_kv_heads": 1}, {"enable_reasoning": False}])
def test_token_by_token_decoding_equals_full_forward(overrides: dict) -> None:
    model = build(**overrides).eval()
    inputs = batch(pad=True)
    ids, mask, dec = inputs["input_ids"], inputs["attention_mask"], inputs["decoder_input_ids"]
    dec = dec.clamp_min(3)  # every decoder token real
    with torch.no_grad():
        full = model(ids, mask, decoder_input_ids=dec)["logits"]
        enc = model.encode(ids, mask)
        steps, past = [], None
        for t in range(dec.shape[1]):
            out = model.decode(dec[:, t:t + 1], enc, past_key_values=past, use_cache=True)
            past = out["past_key_values"]
            steps.append(out["logits"])
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_prefix_then_steps_through_forward() -> None:
    model = build().eval()
    inputs = batch(pad=True)
    ids, mask, dec = inputs["input_ids"], inputs["attention_mask"], inputs["decoder_input_ids"]
    dec = dec.clamp_min(3)
    with torch.no_grad():
        full = model(ids, mask, decoder_input_ids=dec)["logits"]
        first = model(ids, mask, decoder_input_ids=dec[:, :4], use_cache=True)
        enc = model.encode(ids, mask)
        rest = model(decoder_input_ids=dec[:, 4:], encoder_outputs=enc,
                     past_key_values=first["past_key_values"], use_cache=True)
    torch.testing.assert_close(first["logits"], full[:, :4], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rest["logits"], full[:, 4:], rtol=1e-5, atol=1e-5)


def test_cache_layout_and_cross_kv_computed_once() -> None:
    model = build().eval()
    cfg = model.config
    inputs = batch(pad=False)
    with torch.no_grad():
        enc = model.encode(inputs["input_ids"])
        out = model.decode(inputs["decoder_input_ids"][:, :2], enc, use_cache=True)
        past = out["past_key_values"]
        assert len(past) == cfg.num_decoder_layers
        self_k, self_v, cross_k, cross_v = past[0]
        g, hd = cfg.num_kv_heads, cfg.head_dim
        assert self_k.shape == self_v.shape == (3, g, 2, hd)
        assert cross_k.shape == cross_v.shape == (3, g, 9, hd)
        calls = []
        handle = model.decoder.layers[0].cross_attn.k_proj.register_forward_hook(
            lambda *a: calls.append(1))
        nxt = model.decode(inputs["decoder_input_ids"][:, 2:3], enc, past_key_values=past,
                           use_cache=True)
        handle.remove()
    assert calls == []  # the cached cross K/V were reused, not recomputed
    assert nxt["past_key_values"][0][0].shape == (3, g, 3, hd)
    assert nxt["past_key_values"][0][2] is cross_k


def test_cache_with_padded_decoder_mask_matches_full() -> None:
    model = build().eval()
    inputs = batch(pad=True)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    dec, dmask = inputs["decoder_input_ids"], inputs["decoder_attention_mask"]
    with torch.no_grad():
        full = model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dmask)["logits"]
        enc = model.encode(ids, mask)
        first = model.decode(dec[:, :3], enc, dmask[:, :3], use_cache=True)
        rest = model.decode(dec[:, 3:], enc, dmask, past_key_values=first["past_key_values"],
                            use_cache=True)
    real = dmask.bool()
    logits = torch.cat((first["logits"], rest["logits"]), dim=1)
    torch.testing.assert_close(logits[real], full[real], rtol=1e-5, atol=1e-5)


def test_bad_cache_is_rejected_by_name() -> None:
    model = build().eval()
    inputs = batch(pad=False)
    enc = model.encode(inputs["input_ids"])
    with pytest.raises(ValueError, match="past_key_values"):
        model.decode(inputs["decoder_input_ids"], enc, past_key_values=((),))
    past = model.decode(inputs["decoder_input_ids"], enc, use_cache=True)["past_key_values"]
    long = torch.full((3, 60), 5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.decode(long, enc, past_key_values=past)
    with pytest.raises(ValueError, match="past_key_values"):
        model(inputs["input_ids"], past_key_values=past)
    assert VOCAB == model.config.vocab_size
