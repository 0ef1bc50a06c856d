"""Size profile catalog: built-ins load, user profiles override, bad files name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from profiles.catalog import TrainSettings, load_profile, load_profile_file, user_profile_dir

BUILTINS = ("tiny", "small", "medium", "large", "default")


def _user_profile(text: str, name: str = "mine") -> Path:
    folder = user_profile_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_profiles_load_with_spec_shapes(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.model.vocab_size == 50000
    assert isinstance(profile.train, TrainSettings)
    assert profile.source.name == f"{name}.toml"
    assert profile.model.use_gradient_checkpointing == profile.train.gradient_checkpointing


def test_spec_table_dimensions() -> None:
    small, large = load_profile("small").model, load_profile("large").model
    assert (small.d_model, small.nhead, small.num_kv_heads, small.num_encoder_layers) == (512, 8, 2, 6)
    assert (large.d_model, large.nhead, large.num_kv_heads, large.num_decoder_layers) == (1536, 24, 8, 24)


def test_unknown_profile_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="known: .*tiny"):
        load_profile("huge")


def test_user_profile_overrides_builtin_and_inherits_base() -> None:
    _user_profile('name = "small"\ndescription = "my small"\n[model]\nd_model = 256\nnhead = 4\nnum_kv_heads = 2\n', "small")
    _user_profile('base = "tiny"\n[train]\nseq_len = 64\n', "mine")
    assert load_profile("small").description == "my small"
    assert load_profile("small").model.d_model == 256
    mine = load_profile("mine")
    assert mine.model.d_model == 256 and mine.model.num_encoder_layers == 2
    assert mine.train.seq_len == 64 and mine.train.micro_batch == load_profile("tiny").train.micro_batch
    assert not mine.builtin


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('[model]\nd_modle = 256\n', r"unknown key 'model\.d_modle'"),
        ('[model]\nd_model = "big"\n', r"key 'model\.d_model' must be an integer"),
        ('[model]\nuse_gradient_checkpointing = 1\n', r"model\.use_gradient_checkpointing' must be true/false"),
        ('[model]\nd_model = 256\nnhead = 3\n', r"key 'model\.nhead'.*not divisible"),
        ('[model]\nd_model = 256\nnhead = 4\nnum_kv_heads = 3\n', r"key 'model\.num_kv_heads'"),
        ('[model]\nd_model = 96\nnhead = 32\nnum_kv_heads = 8\n', r"head_dim .* must be even"),
        ('[train]\nseq_len = 0\n', r"\[train\] seq_len must be >= 1"),
        ('[train]\nprecision = "int4"\n', r"precision must be one of"),
        ('colour = "red"\n', r"unknown key 'colour'"),
        ('model = 3\n', r"key 'model' must be a table"),
        ('[model]\nmemory_dim = 500\nmemory_heads = 8\n', r"\[model\] memory_dim"),
        ('base = "nope"\n', r"key 'base': unknown profile"),
    ],
)
def test_bad_profiles_name_file_and_key(text: str, pattern: str) -> None:
    path = _user_profile(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_profile_file(path)
    assert str(path) in str(info.value)


def test_toml_syntax_error_names_file_and_line() -> None:
    path = _user_profile('name = "mine"\n[model]\nd_model = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_profile("mine")
    assert str(path) in str(info.value) and "line 3" in str(info.value)
