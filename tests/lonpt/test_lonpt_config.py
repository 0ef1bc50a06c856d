"""LONPT presets and adapter-key validation (training.md §5.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from lonpt.config import LonptConfig, available_presets, load_config, save_config


def test_bundled_presets_load_and_follow_the_spec() -> None:
    assert set(available_presets()) >= {"smoke", "light", "standard", "heavy"}
    heavy = load_config("heavy")
    assert (heavy.dataset_fraction, heavy.max_length, heavy.batch_size) == (0.6, 896, 4)
    assert (heavy.domain_cycles, heavy.steps_per_domain, heavy.pncec_cycle_length) == (6, 150, 100)
    assert heavy.learning_rate == 5e-5 and heavy.hpf_lowrank_ratio == 0.15
    assert heavy.hpf_enable and heavy.pncec_enable and heavy.akap_enable and heavy.act_enable
    smoke = load_config("smoke")
    assert smoke.profile == "tiny" and smoke.dataset_fraction == 0.02 and smoke.max_length == 64
    assert smoke.domain_cycles == 1 and smoke.steps_per_domain == 10 and not smoke.hpf_enable
    light, standard = load_config("light"), load_config("standard")
    assert (light.dataset_fraction, light.max_length, light.domain_cycles, light.steps_per_domain) == (0.2, 256, 2, 50)
    assert (standard.dataset_fraction, standard.max_length, standard.domain_cycles,
            standard.steps_per_domain) == (0.6, 512, 4, 100)


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown LONPT preset 'hevy'.*heavy.*smoke"):
        load_config("hevy")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("steps_per_domain", 0, r"'steps_per_domain' must be >= 1"),
        ("hpf_lowrank_ratio", 1.5, r"'hpf_lowrank_ratio' must be in \(0, 1\]"),
        ("dataset_fraction", 0.0, r"'dataset_fraction' must be in \(0, 1\]"),
        ("target_memory_utilization", 1.2, r"'target_memory_utilization' must be in \(0, 1\]"),
        ("akap_order", "random", r"'akap_order' must be one of"),
        ("pncec_cycle_length", 2, r"'pncec_cycle_length' must be >= 4"),
        ("batch_size", "four", r"'batch_size' should be int"),
        ("hpf_enable", 1, r"'hpf_enable' should be bool"),
        ("domain_names", [], r"'domain_names' must list at least one"),
        ("akap_style_map", {"code": "syntax"}, r"sends 'code' to 'syntax'"),
        ("pncec_cycle", 100, r"unknown LONPT key 'pncec_cycle' \(did you mean 'pncec_cycle_length'"),
    ],
)
def test_bad_values_are_config_errors_naming_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("standard", {key: value}, source="--set")


def test_user_preset_round_trips_through_a_copied_file(tmp_path: Path) -> None:
    cfg = load_config("standard", {"steps_per_domain": 7, "akap_order": "declared"})
    path = save_config(cfg, tmp_path / "mine.toml")
    again = load_config(str(path))
    assert again == cfg
    # Copy of a bundled preset, edited by hand.
    text = (Path(__file__).parents[2] / "lonpt" / "presets" / "light.toml").read_text()
    edited = tmp_path / "edited.toml"
    edited.write_text(text.replace("steps_per_domain = 50", "steps_per_domain = 0"))
    with pytest.raises(ConfigError, match=rf"{edited}.*'steps_per_domain' must be >= 1"):
        load_config(str(edited))


def test_defaults_are_the_heavy_run_values() -> None:
    cfg = LonptConfig().validate()
    assert cfg.domain_names == ["syntactic", "semantic", "reasoning"]
    assert cfg.rail_spike_factor == 3.0 and cfg.rail_max_nonfinite == 3 and cfg.val_max_batches == 50
    assert cfg.act_probe_steps == 2 and cfg.act_max_growth == 2.0


def test_preset_profile_suggestion() -> None:
    from lonpt.config import preset_profile

    assert preset_profile("smoke") == "tiny"
    assert preset_profile("heavy") is None  # the hardware (or --profile) decides
