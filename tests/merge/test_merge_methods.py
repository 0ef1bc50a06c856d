"""Merge methods against hand-computed results on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from core.evolve.merge import (
    MergeError,
    MergeParams,
    dare_drop,
    merge_state_dicts,
    merge_tensor,
    slerp,
    ties_combine,
    trim_top_density,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_soup_is_weighted_mean() -> None:
    out, _ = merge_tensor("w", [t(1, 2), t(3, 6)], None, MergeParams("soup", weights=[1, 3]))
    assert torch.allclose(out, t(2.5, 5.0))


def test_task_arithmetic_scales_summed_task_vectors() -> None:
    base = t(1, 1, 1)
    a, b = t(2, 1, 0), t(1, 3, 1)  # τ_a = (1,0,-1), τ_b = (0,2,0)
    out, _ = merge_tensor("w", [a, b], base, MergeParams("task_arithmetic", lam=2.0))
    # base + 2 * mean(τ) = 1 + 2*(0.5, 1, -0.5)
    assert torch.allclose(out, t(2, 3, 0))


def test_trim_keeps_top_density_by_magnitude() -> None:
    tau = t(0.1, -5, 2, -0.3, 4)
    assert torch.equal(trim_top_density(tau, 0.6), t(0, -5, 2, 0, 4))
    assert torch.equal(trim_top_density(tau, 1.0), tau)


def test_ties_sign_election_and_disjoint_mean() -> None:
    # Column 0: +3 and -1 → elected +, mean over agreeing (+3) = 3.
    # Column 1: -2 and -4 → elected -, mean = -3. Column 2: +1 and 0 → 1 (zero does not count).
    taus = [t(3, -2, 1), t(-1, -4, 0)]
    merged, conflict = ties_combine(taus, [1.0, 1.0])
    assert torch.allclose(merged, t(3, -3, 1))
    assert conflict == pytest.approx(1 / 3)


def test_ties_full_method_with_trim() -> None:
    base = t(0, 0, 0, 0)
    a = t(4, -1, 0.5, 2)  # density 0.5 keeps 4, 2
    b = t(-3, -2, 1, 0.1)  # keeps -3, -2
    out, stats = merge_tensor("w", [a, b], base, MergeParams("ties", density=0.5, lam=1.0))
    # col0: 4 vs -3 → + → 4; col1: 0 vs -2 → -2; col2: 0,0 → 0; col3: 2 vs 0 → 2
    assert torch.allclose(out, t(4, -2, 0, 2))
    assert stats.trimmed_frac == pytest.approx(0.5)


def test_dare_is_unbiased_in_expectation() -> None:
    tau = torch.full((200_000,), 2.0)
    g = torch.Generator().manual_seed(0)
    dropped, frac = dare_drop(tau, density=0.3, generator=g)
    assert frac == pytest.approx(0.7, abs=0.01)
    assert dropped.mean().item() == pytest.approx(2.0, rel=0.02)
    kept = dropped[dropped != 0]
    assert torch.allclose(kept, torch.full_like(kept, 2.0 / 0.3))


def test_dare_is_deterministic_per_tensor_name() -> None:
    base = torch.zeros(50)
    models = [torch.randn(50, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    p = MergeParams("dare_linear", density=0.5, seed=7)
    o1, _ = merge_tensor("enc.w", models, base, p)
    o2, _ = merge_tensor("enc.w", models, base, p)
    o3, _ = merge_tensor("dec.w", models, base, p)
    assert torch.equal(o1, o2)
    assert not torch.equal(o1, o3)


def test_slerp_endpoints_and_midpoint() -> None:
    a, b = t(1, 0), t(0, 1)
    assert torch.allclose(slerp(a, b, 0.0), a)
    assert torch.allclose(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, t(math.sqrt(0.5), math.sqrt(0.5)), atol=1e-6)
    assert mid.norm().item() == pytest.approx(1.0, abs=1e-6)  # stays on the sphere


def test_slerp_falls_back_to_linear_for_parallel_vectors() -> None:
    a, b = t(1, 2, 3), t(2, 4, 6)
    assert torch.allclose(slerp(a, b, 0.25), 0.75 * a + 0.25 * b)
    z = torch.zeros(3)
    assert torch.allclose(slerp(z, b, 0.5), 0.5 * b)


def test_layerwise_ramp_over_layer_index() -> None:
    names = [f"encoder.layers.{i}.ffn.up_proj.weight" for i in range(3)] + ["token_embedding.weight"]
    a = {n: torch.zeros(2) for n in names}
    b = {n: torch.ones(2) for n in names}
    out, _ = merge_state_dicts([a, b], MergeParams("layerwise", alpha_start=0.0, alpha_end=1.0, alpha_default=0.25))
    assert torch.allclose(out[names[0]], torch.zeros(2))
    assert torch.allclose(out[names[1]], torch.full((2,), 0.5))
    assert torch.allclose(out[names[2]], torch.ones(2))
    assert torch.allclose(out["token_embedding.weight"], torch.full((2,), 0.25))


def test_fisher_weighting() -> None:
    out, _ = merge_tensor(
        "w", [t(0, 10), t(10, 0)], None, MergeParams("fisher"), fishers=[t(3, 1), t(1, 1)]
    )
    assert torch.allclose(out, t(2.5, 5.0), atol=1e-5)


def test_state_buffers_and_integers_are_copied_from_base() -> None:
    base = {"neural_memory.mem_keys": torch.ones(2), "counter": torch.tensor([3]), "w": torch.zeros(2)}
    m = {"neural_memory.mem_keys": torch.full((2,), 9.0), "counter": torch.tensor([7]), "w": torch.ones(2)}
    out, report = merge_state_dicts([m, m], MergeParams("task_arithmetic"), base=base)
    assert torch.equal(out["neural_memory.mem_keys"], torch.ones(2))
    assert torch.equal(out["counter"], torch.tensor([3]))
    assert torch.allclose(out["w"], torch.ones(2))
    assert report.summary()["tensors_copied"] == 2


def _identical_models() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A state dict and a Fisher for it shaped like a real one: spread over orders of magnitude,
    exactly zero for a module that got no gradient, and far below 1e-8 in places."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "encoder.layers.0.w": torch.randn(8, 8, generator=g),
        "decoder.layers.1.w": torch.randn(8, generator=g).to(torch.bfloat16),
        "token_embedding.weight": torch.randn(16, 8, generator=g),
        "knowledge_graph.entity_embedding.weight": torch.randn(5, 8, generator=g),
    }
    fisher = {k: torch.rand(v.shape, generator=g) ** 6 * 1e-3 for k, v in sd.items()}
    fisher["knowledge_graph.entity_embedding.weight"].zero_()
    fisher["encoder.layers.0.w"][0] = 1e-12
    return sd, fisher


@pytest.mark.parametrize("method, base, settings", [
    ("soup", None, {}),
    ("task_arithmetic", "self", {}),
    ("task_arithmetic", "other", {}),  # base + mean(θ − base) = θ
    ("ties", "self", {}),
    ("ties", "other", {"density": 1.0}),
    ("dare_linear", "self", {}),
    ("dare_linear", "other", {"density": 1.0}),
    ("dare_ties", "self", {}),
    ("slerp", None, {}),
    ("slerp", "other", {}),
    ("layerwise", None, {}),
    ("fisher", None, {}),
    ("fisher", None, {"weights": [0.9, 0.1]}),
])
def test_merging_identical_models_is_identity(method: str, base: str | None, settings: dict) -> None:
    sd, fisher = _identical_models()
    base_sd = None
    if base == "self":
        base_sd = sd
    elif base == "other":
        base_sd = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(9)).to(v.dtype) for k, v in sd.items()}
    fishers = [fisher, fisher] if method == "fisher" else None
    out, report = merge_state_dicts([sd, sd], MergeParams(method, **settings), base=base_sd, fishers=fishers)
    for name, tensor in sd.items():
        assert out[name].dtype == tensor.dtype
        # Within a few float32 roundings of the input (|θ| < 5 here); a Fisher merge that
        # divides by ΣF + 1e-8 moved these by up to 100 %.
        assert torch.allclose(out[name].float(), tensor.float(), rtol=1e-6, atol=2e-6), name
    if base != "other":  # the change is measured from the base
        assert report.summary()["mean_relative_change"] < 2e-6


def test_fisher_entries_without_information_get_the_plain_average() -> None:
    a = {"w": t(0, 10, 4), "kg": t(2, 2, 2), "v": t(1, 1, 1)}
    b = {"w": t(10, 0, 8), "kg": t(4, 6, 8), "v": t(3, 3, 3)}
    fa = {"w": t(3, 1, 0), "kg": t(0, 0, 0), "v": t(1, 1, 1)}
    fb = {"w": t(1, 1, 0), "kg": t(0, 0, 0)}  # b has no Fisher for v at all
    out, report = merge_state_dicts([a, b], MergeParams("fisher", weights=[1, 3]), fishers=[fa, fb])
    # kg: no information in either model → the weighted plain average 0.25·a + 0.75·b
    assert torch.allclose(out["kg"], t(3.5, 5.0, 6.5))
    # v: a Fisher in one model only → plain average (unknown is not unimportant)
    assert torch.allclose(out["v"], t(2.5, 2.5, 2.5))
    # w: Fisher-weighted where there is information; the last entry has none → plain average
    # F̂ = F / mean(F) over each model's Fisher: a's mean is 7/9 (w, kg and v), b's 1/3.
    fa_w = t(3, 1) / (7 / 9) * 0.25
    fb_w = t(1, 1) / (2 / 6) * 0.75
    expected = (fa_w * t(0, 10) + fb_w * t(10, 0)) / (fa_w + fb_w)
    assert torch.allclose(out["w"][:2], expected, rtol=1e-5)
    assert out["w"][2].item() == pytest.approx(0.25 * 4 + 0.75 * 8)
    stats = {s.name: s for s in report.tensors}
    assert stats["kg"].fisher_fallback_frac == 1.0 and stats["v"].fisher_fallback_frac == 1.0
    assert stats["w"].fisher_fallback_frac == pytest.approx(1 / 3)
    assert report.summary()["tensors_plain_average"] == 2


def test_fisher_scale_of_one_model_does_not_decide_the_merge() -> None:
    # Each Fisher is compared to its own model's mean: a model whose Fisher is 1000× larger
    # overall (longer sequences, a worse fit) does not win every entry.
    a, b = {"w": t(0, 10)}, {"w": t(10, 0)}
    fa, fb = {"w": t(3, 1)}, {"w": t(1, 3)}
    same, _ = merge_state_dicts([a, b], MergeParams("fisher"), fishers=[fa, fb])
    scaled, _ = merge_state_dicts([a, b], MergeParams("fisher"), fishers=[fa, {"w": fb["w"] * 1000}])
    assert torch.allclose(same["w"], scaled["w"], rtol=1e-5)
    assert torch.allclose(same["w"], t(2.5, 2.5), rtol=1e-5)


def test_fisher_merge_refuses_a_model_without_any_fisher() -> None:
    with pytest.raises(MergeError, match="model 2 has no Fisher"):
        merge_state_dicts([{"w": t(1)}, {"w": t(2)}], MergeParams("fisher"), fishers=[{"w": t(1)}, {}])


def test_bad_parameters_are_rejected_before_any_work() -> None:
    sd = {"w": torch.zeros(2)}
    with pytest.raises(MergeError, match="density"):
        merge_state_dicts([sd, sd], MergeParams("ties", density=1.5), base=sd)
    with pytest.raises(MergeError, match="needs a base"):
        merge_state_dicts([sd, sd], MergeParams("ties"))
    with pytest.raises(MergeError, match="sum to a positive"):
        merge_state_dicts([sd, sd], MergeParams("task_arithmetic", weights=[1, -1]), base=sd)
    with pytest.raises(MergeError, match="one weight per model"):
        merge_state_dicts([sd, sd], MergeParams("soup", weights=[1]))
    with pytest.raises(MergeError, match="exactly two"):
        merge_state_dicts([sd, sd, sd], MergeParams("slerp"))
    with pytest.raises(MergeError, match="unknown merge method"):
        merge_state_dicts([sd], MergeParams("magic"))


def test_mismatched_shapes_and_keys_name_the_tensor() -> None:
    a = {"w": torch.zeros(2), "v": torch.zeros(3)}
    with pytest.raises(MergeError, match="'w'"):
        merge_state_dicts([a, {"w": torch.zeros(3), "v": torch.zeros(3)}], MergeParams("soup"))
    with pytest.raises(MergeError, match="missing"):
        merge_state_dicts([a, {"w": torch.zeros(2)}], MergeParams("soup"))


@pytest.mark.parametrize("method", ["ties", "dare_ties", "slerp"])
def test_streaming_merge_equals_in_memory(tmp_path, method: str) -> None:
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(1)
    names = ["encoder.layers.0.w", "encoder.layers.1.w", "decoder_norm.weight"]
    sds = [{n: torch.randn(6, 5, generator=g) for n in names} for _ in range(3)]
    paths = []
    for i, sd in enumerate(sds):
        paths.append(tmp_path / f"m{i}.safetensors")
        save_file(sd, str(paths[-1]))
    from core.evolve.merge import merge_safetensors

    params = MergeParams(method, density=0.5, seed=3)
    base = sds[0] if method != "slerp" else None
    expected, _ = merge_state_dicts(sds[1:], params, base=base)
    out = tmp_path / "out" / "model.safetensors"
    report = merge_safetensors(paths[1:], params, out, base_file=paths[0] if base is not None else None)
    got = load_file(str(out))
    assert set(got) == set(expected)
    for n in names:
        assert torch.equal(got[n], expected[n]), n
    assert report.method == method


def test_streaming_merge_writes_nothing_on_mismatch(tmp_path) -> None:
    from safetensors.torch import save_file

    from core.evolve.merge import merge_safetensors

    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.zeros(3)}, str(tmp_path / "b.safetensors"))
    out = tmp_path / "merged.safetensors"
    with pytest.raises(MergeError, match="'w'"):
        merge_safetensors([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], MergeParams("soup"), out)
    assert not out.exists()
    with pytest.raises(MergeError, match="no such"):
        merge_safetensors([tmp_path / "missing.safetensors"], MergeParams("soup"), out)


def test_ewc_state_is_carried_not_merged_and_feeds_fisher_merge(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    from core.evolve.merge import fisher_key, merge_safetensors

    a = {"w": t(0, 10), fisher_key("w"): t(3, 1), "continual_learning.ewc_state.anchor.w": t(0, 10)}
    b = {"w": t(10, 0), fisher_key("w"): t(1, 1)}  # only the first model has an anchor
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    out = tmp_path / "m.safetensors"
    merge_safetensors([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], MergeParams("fisher"), out)
    got = load_file(str(out))
    # F̂: a's Fisher over its mean 2 is (1.5, 0.5), b's is (1, 1).
    assert torch.allclose(got["w"], t(10 / 2.5, 5 / 1.5), atol=1e-5)
    assert torch.equal(got["continual_learning.ewc_state.anchor.w"], t(0, 10))


def _tiny_model(seed: int):
    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone

    torch.manual_seed(seed)
    cfg = NeuralNetConfig(vocab_size=40, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=1,
                          num_decoder_layers=1, dim_feedforward=64, max_position_embeddings=64,
                          num_tot_branches=2, num_scratchpad_slots=4, memory_slots=8, memory_dim=16,
                          memory_heads=2, kg_num_entities=16, kg_dim=8, num_tasks=2, enable_multimodal=False)
    return TransformerNeuralNetBackbone(cfg).eval()


def test_ensemble_policy_averages_probabilities_and_generates_with_cache() -> None:
    from core.evolve.merge import EnsemblePolicy
    from core.infer.generation import GenerationConfig, generate_ids

    a, b = _tiny_model(0), _tiny_model(1)
    ids = torch.tensor([[5, 6, 7, 8]])
    dec = torch.tensor([[1, 8, 9]])
    ens = EnsemblePolicy([a, b]).eval()
    with torch.no_grad():
        got = ens(input_ids=ids, decoder_input_ids=dec)["logits"]
        pa = torch.softmax(a(input_ids=ids, decoder_input_ids=dec)["logits"], -1)
        pb = torch.softmax(b(input_ids=ids, decoder_input_ids=dec)["logits"], -1)
    assert torch.allclose(got.exp(), (pa + pb) / 2, atol=1e-6)
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.0)
    cached = generate_ids(ens, ids, config=cfg)
    uncached = generate_ids(ens, ids, config=GenerationConfig(max_new_tokens=6, temperature=0.0, use_cache=False))
    assert torch.equal(cached.tokens, uncached.tokens)
    solo = generate_ids(EnsemblePolicy([a]), ids, config=cfg)
    assert torch.equal(solo.tokens, generate_ids(a, ids, config=cfg).tokens)


def test_ensemble_rejects_mismatched_vocabularies() -> None:
    from core.evolve.merge import EnsemblePolicy

    a = _tiny_model(0)
    a.config = a.config.replace(vocab_size=41)
    with pytest.raises(MergeError, match="vocabularies"):
        EnsemblePolicy([a, _tiny_model(1)])
