"""RunConfig ↔ TOML, validation errors naming file and key, and CLI precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.train.config import RunConfig, parse_set_option
from core.train.schedule import default_warmup_steps, lr_scale, warmup_cosine_scale


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig(steps=50, learning_rate=1e-3, model={"d_model": 64}, options={"shard": True},
                    resume=None, precision="bf16")
    path = cfg.save(tmp_path / "run.toml")
    again = RunConfig.load(path)
    assert again == cfg
    assert "resume" not in path.read_text()  # None values are omitted, not written as ""


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('steps = 10\nlearnig_rate = 0.1\n')
    with pytest.raises(ConfigError, match=r"run\.toml.*'learnig_rate'"):
        RunConfig.load(path)


@pytest.mark.parametrize("text,key", [
    ('steps = "ten"\n', "steps"),
    ("steps = 0\n", "steps"),
    ('precision = "fp8"\n', "precision"),
    ("compile = 1\n", "compile"),
    ("seed = 1.5\n", "seed"),
    ("model = 3\n", "model"),
])
def test_wrong_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"bad\.toml.*'{key}'"):
        RunConfig.load(path)


def test_toml_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("steps = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml.*TOML"):
        RunConfig.load(path)


def test_integer_for_float_is_accepted() -> None:
    cfg = RunConfig.from_dict({"learning_rate": 1, "grad_clip": 2})
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


def test_set_option_parsing() -> None:
    assert parse_set_option("steps=5") == ("steps", 5)
    assert parse_set_option("model.d_model=64") == ("model.d_model", 64)
    assert parse_set_option("name=hello") == ("name", "hello")
    assert parse_set_option("flag=true") == ("flag", True)
    with pytest.raises(ConfigError):
        parse_set_option("nokey")


def test_cli_precedence(tmp_path: Path) -> None:
    from aeron_tui.commands.train import build_run_config

    toml = tmp_path / "run.toml"
    toml.write_text('steps = 77\nseed = 5\nlog_every = 3\n[options]\nfoo = 1\n[model]\nd_model = 64\n')
    cfg, model = build_run_config(
        "simple", profile="tiny", config_path=toml, flags={"seed": 9},
        sets=["options.bar=2", "baz=x", "model.nhead=2", "eval_every=7"],
    )
    assert cfg.steps == 77            # TOML over the profile's max_steps
    assert cfg.seed == 9              # flag over TOML
    assert cfg.seq_len == 128         # from the tiny profile's [train]
    assert cfg.eval_every == 7        # --set over everything
    assert cfg.options == {"foo": 1, "bar": 2, "baz": "x"}
    assert cfg.model == {"d_model": 64, "nhead": 2}
    assert cfg.profile == "tiny" and cfg.trainer == "simple"
    assert model.d_model == 256       # the profile's model; [model] is applied by the trainer


def test_schedule_warmup_then_cosine_to_floor() -> None:
    assert default_warmup_steps(1000) == 50
    assert default_warmup_steps(10000) == 100
    total, warm = 1000, 50
    scales = [warmup_cosine_scale(s, total, warm, 0.1) for s in range(total)]
    assert scales[0] == pytest.approx(1 / 50)
    assert scales[49] == pytest.approx(1.0)
    assert max(scales) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(scales[49:], scales[50:], strict=False))
    assert warmup_cosine_scale(total, total, warm, 0.1) == pytest.approx(0.1)


def test_constant_then_decay_holds_the_peak_and_ends_with_the_run() -> None:
    total, warm = 500, 10
    scales = [lr_scale("constant_decay", s, total, warm, 0.1, 0.2) for s in range(total)]
    assert scales[0] == pytest.approx(1 / 10) and scales[9] == pytest.approx(1.0)
    assert all(x == 1.0 for x in scales[9:400])  # the peak until the last 20 %
    assert scales[400] < 1.0 and scales[-1] == pytest.approx(0.1)  # reaches the floor on the last step
    assert all(a > b for a, b in zip(scales[400:], scales[401:], strict=False))
    assert lr_scale("constant_decay", total + 5, total, warm, 0.1) == pytest.approx(0.1)
    # The decay follows the run's length: a longer run holds the peak longer.
    assert lr_scale("constant_decay", 450, 1000, warm, 0.1) == 1.0
    with pytest.raises(ConfigError, match="lr_schedule"):
        RunConfig(lr_schedule="linear")


def test_profile_defaults_to_saved_choice_then_auto() -> None:
    from aeron_tui.commands.train import build_run_config
    from profiles.settings import SavedChoice, save_choice

    # Nothing saved: --profile auto asks the picker for this machine.
    cfg, _ = build_run_config("simple")
    assert cfg.profile in ("tiny", "small", "medium", "large", "default")
    # The wizard's saved choice (profile and batch layout) is the default when no --profile.
    save_choice(SavedChoice(device="cpu", profile="tiny", micro_batch=2, grad_accum=4))
    cfg, model = build_run_config("simple")
    assert (cfg.profile, cfg.micro_batch, cfg.grad_accum) == ("tiny", 2, 4)
    assert model.d_model == 256
    # An explicit flag still wins over the saved choice.
    cfg, _ = build_run_config("simple", profile="small", flags={"micro_batch": 3})
    assert cfg.profile == "small" and cfg.micro_batch == 3
