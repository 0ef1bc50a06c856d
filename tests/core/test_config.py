"""NeuralNetConfig: defaults, derived sizes, validation messages, JSON round-trip."""

from __future__ import annotations

import json
import math

import pytest

from core.errors import ConfigError
from core.model.config import NeuralNetConfig


def test_defaults_are_the_v401_configuration() -> None:
    c = NeuralNetConfig()
    assert (c.vocab_size, c.d_model, c.nhead, c.num_kv_heads) == (50000, 2048, 32, 8)
    assert (c.num_encoder_layers, c.num_decoder_layers, c.dim_feedforward) == (32, 32, 8192)
    assert c.rope_theta == 500000.0 and c.rope_scaling is None
    assert c.max_position_embeddings == 32768
    assert (c.num_tot_branches, c.num_scratchpad_slots) == (4, 64)
    assert (c.memory_slots, c.memory_dim, c.memory_heads) == (1000, 512, 8)
    assert c.memory_write_mode == "train" and c.strict_modules is False
    assert c.enable_reasoning and c.enable_memory and c.enable_multimodal
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id) == (0, 1, 2)
    assert (c.uq_mc_samples, c.uq_ensemble_size, c.uq_num_bins, c.uq_mc_dropout) == (
        10, 5, 15, 0.1)


def test_derived_sizes() -> None:
    c = NeuralNetConfig()
    assert c.head_dim == 64
    assert c.num_kv_groups == 4
    assert c.kv_dim == 512
    assert c.swiglu_hidden == 5461
    assert NeuralNetConfig(ffn_multiple_of=256).swiglu_hidden == 5632
    assert c.tot_keep_k is None and c.effective_tot_keep_k == 2
    assert NeuralNetConfig(num_tot_branches=5).effective_tot_keep_k == math.ceil(5 / 2)
    assert NeuralNetConfig(tot_keep_k=4).effective_tot_keep_k == 4


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"nhead": 7}, "d_model"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"d_model": 96, "nhead": 32}, "head_dim"),
        ({"d_model": 0}, "d_model"),
        ({"num_encoder_layers": -1}, "num_encoder_layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"reasoning_complexity_threshold": 1.5}, "reasoning_complexity_threshold"),
        ({"tot_keep_k": 0}, "tot_keep_k"),
        ({"tot_keep_k": 5}, "tot_keep_k"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
        ({"rope_scaling": {"type": "linear", "factor": 0}}, "rope_scaling"),
        ({"memory_write_mode": "sometimes"}, "memory_write_mode"),
        ({"d_model": "512"}, "d_model"),
        ({"enable_memory": 1}, "enable_memory"),
        ({"vocab_size": 2}, "eos_token_id"),
    ],
)
def test_validation_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        NeuralNetConfig(**changes)
    assert isinstance(info.value, ValueError)


def test_linear_rope_scaling_is_accepted() -> None:
    c = NeuralNetConfig(rope_scaling={"type": "linear", "factor": 4.0})
    assert c.rope_scaling == {"type": "linear", "factor": 4.0}


def test_json_round_trip(tmp_path) -> None:
    c = NeuralNetConfig(d_model=256, nhead=4, num_kv_heads=2, tot_keep_k=3,
                        rope_scaling={"type": "linear", "factor": 2.0}, enable_memory=False)
    path = tmp_path / "sub" / "config.json"
    c.to_json(path)
    assert NeuralNetConfig.from_json(path) == c
    assert json.loads(path.read_text())["d_model"] == 256
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp files left


def test_from_dict_rejects_unknown_key_with_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"'d_modle'.*d_model"):
        NeuralNetConfig.from_dict({"d_modle": 512})


def test_from_json_names_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"nhead": 7}')
    with pytest.raises(ConfigError, match="bad.json.*d_model"):
        NeuralNetConfig.from_json(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  nope")
    with pytest.raises(ConfigError, match="broken.json: line 2"):
        NeuralNetConfig.from_json(broken)


def test_replace_validates_and_keeps_the_rest() -> None:
    c = NeuralNetConfig(d_model=256, nhead=4, num_kv_heads=2)
    r = c.replace(num_encoder_layers=3)
    assert r.num_encoder_layers == 3 and r.d_model == 256 and c.num_encoder_layers == 32
    with pytest.raises(ConfigError, match="num_kv_heads"):
        c.replace(num_kv_heads=3)
    with pytest.raises(ConfigError, match="unknown"):
        c.replace(colour="red")


def test_whole_numbers_accepted_for_float_fields() -> None:
    c = NeuralNetConfig.from_dict({"rope_theta": 10000, "dropout": 0})
    assert isinstance(c.rope_theta, float) and c.rope_theta == 10000.0
    assert c.to_dict()["dropout"] == 0.0
