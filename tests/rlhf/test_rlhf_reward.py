"""Reward model: the head reads the last real decoder token, Bradley–Terry training reaches
high held-out accuracy, bad preference files and mismatched tokenizers are clear errors."""

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
from core.train.rlhf.common import PreferenceExample, collate_preferences
from core.train.rlhf.reward import RewardModel, load_reward_model


def test_score_reads_the_last_real_token_and_ignores_padding() -> None:
    torch.manual_seed(0)
    model = RewardModel(small_config(268)).eval()
    prompts = [[7, 40, 41, 2], [7, 50, 2]]
    replies = [[1, 8, 60, 61, 62, 2], [1, 8, 70, 2]]
    ids, mask = pad_batch(prompts)
    dec, dec_mask = pad_batch(replies)
    with torch.no_grad():
        batched, _ = model.score(ids, mask, dec, dec_mask)
        for i in range(2):
            alone, _ = model.score(torch.tensor([prompts[i]]), None, torch.tensor([replies[i]]),
                                   None)
            assert batched[i].item() == pytest.approx(alone.item(), abs=1e-5)
        dec2 = dec.clone()
        dec2[1, 4:] = 99  # different padding ids, same mask
        again, _ = model.score(ids, mask, dec2, dec_mask)
    assert again[1].item() == pytest.approx(batched[1].item(), abs=1e-6)


def test_collate_puts_chosen_then_rejected_and_masks_the_prefix_label() -> None:
    ex = [PreferenceExample([7, 30, 2], [1, 8, 40, 2], [1, 8, 50, 51, 2]),
          PreferenceExample([7, 31, 32, 2], [1, 8, 41, 42, 43, 2], [1, 8, 2])]
    full = collate_preferences(ex, full_sequence=True)
    assert full["decoder_input_ids"][:, :3].tolist() == [[1, 8, 40], [1, 8, 41], [1, 8, 50],
                                                         [1, 8, 2]]
    assert full["decoder_attention_mask"].sum(-1).tolist() == [4, 6, 5, 3]
    assert torch.equal(full["input_ids"][:2], full["input_ids"][2:])
    lp = collate_preferences(ex, full_sequence=False)
    assert lp["decoder_input_ids"][0].tolist()[:3] == [1, 8, 40]
    assert lp["labels"][0].tolist()[:3] == [-100, 40, 2]  # `<|assistant|>` not scored, `</s>` is
    assert lp["labels"][3].tolist()[:2] == [-100, 2]


OPTIONAL_MODULES = ("knowledge_graph", "memory", "continual", "uncertainty", "active_learning",
                    "multimodal")
REWARD_STEPS = 200


@pytest.mark.slow
def test_reward_model_reaches_80_percent_held_out(sample_corpus_dir: Path, sample_tokenizer: Path,
                                                 tmp_path: Path) -> None:
    """The tiny profile from scratch on the whole bundled sample preference set (2100 pairs, the
    ~410 hash-split held-out pairs share no question with training).

    Recipe: 200 steps of 8 pairs, lr 1e-3 (20 warmup steps, cosine to 10 %; held-out accuracy
    0.835 / 0.844 / 0.844 over seeds 42 / 1 / 2, where lr 2e-3 gave 0.808-0.820), fp32 (bf16 autocast on CPU is slower and rounds
    close rewards into ties), the backbone + reasoning engine with the optional enhancement
    modules off (as in the GRPO test; they roughly double the time). ~40 s of CPU.

    What the model learns and what it does not (per rejection kind, ``rlhf reward-eval``):
    rejections visible in the reply — premature stops, guesses without working, truncated
    summaries/signatures, non-answers — reach 0.9-1.0; arithmetic slips, contradicting final
    answers, off-topic replies and another object's docstring stay near chance (they need
    arithmetic, cross-checking or stdlib knowledge a tiny model does not pick up in CPU
    minutes). "Longer reply wins" scores ~0.6 on the same pairs.
    """
    run = tmp_path / "rm"
    prefs = sample_corpus_dir / "preferences.jsonl"
    result = CliRunner().invoke(app, [
        "rlhf", "reward", "--profile", "tiny", "--prefs", str(prefs),
        "--steps", str(REWARD_STEPS), "--lr", "1e-3", "--precision", "fp32",
        "--set", "warmup_steps=20",
        "--run-dir", str(run), "--quiet", "--set", f"tokenizer={sample_tokenizer}",
        "--set", f"eval_every={REWARD_STEPS}", "--set", "log_every=50",
        "--set", f"checkpoint_every={REWARD_STEPS}", "--set", "eval_max_batches=1000",
        *[arg for name in OPTIONAL_MODULES for arg in ("--set", f"model.enable_{name}=false")],
    ])
    assert result.exit_code == 0, result.output
    events = read_events(run)
    evals = [e for e in events if e["type"] == "eval"]
    steps = [e for e in events if e["type"] == "step"]
    assert {"accuracy", "margin"} <= set(steps[-1]["metrics"])
    assert "branch_scores_mean" not in steps[-1]  # the console shows the metrics instead
    final = evals[-1]["metrics"]
    from core.data.preferences import read_preferences, split_records

    _, val = split_records(read_preferences(prefs))
    assert final["tokens"] == len(val)  # every held-out pair was scored
    print(f"reward model held-out after {REWARD_STEPS} steps:", final)
    assert final["accuracy"] >= 0.80, final
    assert final["margin"] > 0.5
    # The run's checkpoint is a reward model the other commands can load.
    ckpt = run / "checkpoints" / f"step_{REWARD_STEPS:06d}"
    model, tok, loaded = load_reward_model(ckpt)
    assert isinstance(model, RewardModel) and loaded.manifest["trainer"] == "reward"


def test_bad_preference_file_names_the_line(tmp_path: Path) -> None:
    tok_dir = AeronTokenizer.byte_level().save(tmp_path / "tok")
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n"
        + json.dumps({"prompt": "p", "chosen": "", "rejected": "b"}) + "\n"
    )
    result = CliRunner().invoke(app, [
        "rlhf", "reward", "--profile", "tiny", "--prefs", str(prefs), "--steps", "2",
        "--run-dir", str(tmp_path / "run"), "--quiet", "--set", f"tokenizer={tok_dir}",
    ])
    assert result.exit_code != 0
    message = str(result.exception)
    assert f"{prefs}:2" in message and "chosen" in message
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    result = CliRunner().invoke(app, [
        "rlhf", "dpo", "--profile", "tiny", "--prefs", str(missing), "--steps", "2",
        "--run-dir", str(tmp_path / "run2"), "--quiet", "--set", f"tokenizer={tok_dir}",
    ])
    assert f"{missing}:1" in str(result.exception) and "rejected" in str(result.exception)


def test_load_reward_model_refuses_a_policy_checkpoint(tmp_path: Path) -> None:
    from core.model.model import TransformerNeuralNetBackbone

    tok = AeronTokenizer.byte_level()
    ckpt = save_model_checkpoint(tmp_path / "policy",
                                 TransformerNeuralNetBackbone(small_config(tok.vocab_size)), tok)
    with pytest.raises(CheckpointError, match="not a reward-model checkpoint"):
        load_reward_model(ckpt)
