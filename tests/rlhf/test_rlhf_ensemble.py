"""Reward ensemble (rlhf.md §2): mean score over K reward checkpoints with their std as the
uncertainty; usable wherever one reward model is (best-of-N scorer, PPO ``--reward`` repeated,
``rlhf reward-eval``); members with another tokenizer are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rlhf_helpers import read_events, save_model_checkpoint, small_config
from typer.testing import CliRunner

from aeron_tui.cli import app
from core.data.tokenizer import AeronTokenizer
from core.errors import CheckpointError
from core.infer.generation import pad_batch
from core.train.rlhf.ensemble import (
    RewardEnsemble,
    evaluate_reward_scorer,
    load_reward_ensemble,
    load_reward_scorer,
)
from core.train.rlhf.reward import RewardModel, load_reward_model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ensemble")
    tok = AeronTokenizer.byte_level()
    other = AeronTokenizer.train(["another corpus entirely " * 30], vocab_size=290)
    torch.manual_seed(0)
    a = RewardModel(small_config(tok.vocab_size))
    torch.manual_seed(1)
    b = RewardModel(small_config(tok.vocab_size))
    torch.manual_seed(2)
    from core.model.model import TransformerNeuralNetBackbone

    policy = TransformerNeuralNetBackbone(small_config(tok.vocab_size))
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(
        json.dumps({"prompt": f"What is {i} plus {i}?", "chosen": f"Answer: {2 * i}",
                    "rejected": f"Answer: {2 * i + 1}", "id": f"p{i}",
                    "source": "even" if i % 2 else "odd"}) + "\n"
        for i in range(40)
    ))
    return {
        "a": save_model_checkpoint(root / "a", a, tok, trainer="reward"),
        "b": save_model_checkpoint(root / "b", b, tok, trainer="reward"),
        "other": save_model_checkpoint(root / "other",
                                       RewardModel(small_config(other.vocab_size)), other,
                                       "reward"),
        "policy": save_model_checkpoint(root / "policy", policy, tok),
        "prefs": prefs,
    }


def _batch() -> tuple[torch.Tensor, ...]:
    ids, mask = pad_batch([[7, 40, 41, 2], [7, 50, 2], [7, 60, 61, 62, 2]])
    dec, dec_mask = pad_batch([[1, 8, 60, 61, 62, 2], [1, 8, 70, 2], [1, 8, 2]])
    return ids, mask, dec, dec_mask


def test_ensemble_of_identical_models_is_the_single_model_with_zero_std(ckpts) -> None:
    single, _, _ = load_reward_model(ckpts["a"])
    ensemble, tok, loaded = load_reward_ensemble([ckpts["a"], ckpts["a"], ckpts["a"]])
    assert len(ensemble) == 3 and len(loaded) == 3
    with torch.no_grad():
        expected, _ = single.score(*_batch())
        mean, outputs = ensemble.score(*_batch())
        mean2, std = ensemble.score_with_std(*_batch())
    assert torch.allclose(mean, expected, atol=1e-6)
    assert torch.allclose(mean2, expected, atol=1e-6)
    assert outputs["reward_std"].abs().max().item() == 0.0
    assert std.abs().max().item() == 0.0
    assert outputs["member_rewards"].shape == (3, 3)


def test_ensemble_of_two_models_is_their_mean_and_half_their_gap(ckpts) -> None:
    a, _, _ = load_reward_model(ckpts["a"])
    b, _, _ = load_reward_model(ckpts["b"])
    ensemble, _, _ = load_reward_scorer([ckpts["a"], ckpts["b"]])
    assert isinstance(ensemble, RewardEnsemble)
    with torch.no_grad():
        ra, _ = a.score(*_batch())
        rb, _ = b.score(*_batch())
        mean, std = ensemble.score_with_std(*_batch())
    assert not torch.allclose(ra, rb)
    assert torch.allclose(mean, (ra + rb) / 2, atol=1e-6)
    assert torch.allclose(std, (ra - rb).abs() / 2, atol=1e-6)  # population std of two
    single, _, _ = load_reward_scorer(ckpts["a"])
    assert isinstance(single, RewardModel)


def test_member_with_another_tokenizer_is_refused_by_name(ckpts) -> None:
    with pytest.raises(CheckpointError) as err:
        load_reward_ensemble([ckpts["a"], ckpts["other"]])
    message = str(err.value)
    assert str(ckpts["other"]) in message and "tokenizer differs" in message
    assert str(ckpts["a"]) in message  # the member it was compared with
    result = CliRunner().invoke(app, [
        "rlhf", "reward-eval", "--reward", str(ckpts["a"]), "--reward", str(ckpts["other"]),
        "--prefs", str(ckpts["prefs"]),
    ])
    assert result.exit_code != 0 and str(ckpts["other"]) in str(result.exception)
    with pytest.raises(CheckpointError, match="not a reward-model checkpoint"):
        load_reward_ensemble([ckpts["a"], ckpts["policy"]])


def test_best_of_n_takes_the_ensemble_as_its_scorer(ckpts) -> None:
    from core.infer.inference import BestOfNSampler, load_policy

    policy, tok, _ = load_policy(ckpts["policy"])
    single, _, _ = load_reward_model(ckpts["a"])
    ensemble, _, _ = load_reward_ensemble([ckpts["a"], ckpts["a"]])
    replies = [[60, 61, 2], [70, 2], [2]]
    by_single = BestOfNSampler(policy, single, tok, n=3).score("What is 2 plus 2?", replies)
    by_ensemble = BestOfNSampler(policy, ensemble, tok, n=3).score("What is 2 plus 2?", replies)
    assert by_ensemble == pytest.approx(by_single, abs=1e-6)
    result = BestOfNSampler(policy, ensemble, tok, n=3).sample("What is 2 plus 2?", seed=0)
    assert len(result.rewards) == 3 and result.best_index in range(3)


def test_reward_eval_reports_accuracy_and_ensemble_std(ckpts) -> None:
    from core.data.preferences import read_preferences

    pairs = read_preferences(ckpts["prefs"])
    scorer, tok, _ = load_reward_scorer([ckpts["a"], ckpts["b"]])
    report = evaluate_reward_scorer(scorer, tok, pairs, batch_size=7)
    assert report["members"] == 2 and report["pairs"] == 40
    assert report["reward_std"] > 0
    assert set(report["per_source"]) == {"even", "odd"}
    # The accuracy is the fraction of pairs the ensemble mean orders right.
    a, _, _ = load_reward_model(ckpts["a"])
    b, _, _ = load_reward_model(ckpts["b"])
    ra = evaluate_reward_scorer(a, tok, pairs)
    rb = evaluate_reward_scorer(b, tok, pairs)
    assert ra["reward_std"] == 0.0
    assert report["margin"] == pytest.approx((ra["margin"] + rb["margin"]) / 2, abs=1e-5)
    result = CliRunner().invoke(app, [
        "rlhf", "reward-eval", "--reward", str(ckpts["a"]), "--reward", str(ckpts["b"]),
        "--prefs", str(ckpts["prefs"]), "--split", "all", "--json",
    ])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["accuracy"] == pytest.approx(report["accuracy"])
    assert shown["reward_std"] == pytest.approx(report["reward_std"], abs=1e-6)


@pytest.mark.slow  # a 2-step PPO run (~15 s importing torch._dynamo for the first AdamW)
def test_ppo_with_a_reward_ensemble_reports_its_std(tmp_path: Path, ckpts) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {a} plus {a}?"}) + "\n"
                               for a in range(40)))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "rlhf", "ppo", "--from", str(ckpts["policy"]), "--prompts", str(prompts),
        "--reward", str(ckpts["a"]), "--reward", str(ckpts["b"]), "--run-dir", str(run),
        "--steps", "2", "--quiet", "--profile", "tiny", "--micro-batch", "2",
        "--max-new-tokens", "8", "--set", "log_every=1", "--set", "eval_every=2",
        "--set", "eval_prompts=4", "--set", "eval_samples=1", "--set", "ppo_epochs=1",
    ])
    assert result.exit_code == 0, result.output
    events = read_events(run)
    step = [e for e in events if e["type"] == "step"][-1]["metrics"]
    final = [e for e in events if e["type"] == "eval"][-1]["metrics"]
    assert step["reward_std"] > 0 and final["reward_std"] > 0
    assert "reward" in final
    from core.train.config import RunConfig

    options = RunConfig.load(run / "run.toml").options
    assert options["reward_model"] == [str(ckpts["a"]), str(ckpts["b"])]
