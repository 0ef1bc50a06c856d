"""PPO/GRPO: rollouts and rewards, events, checkpoints that stay plain policies, resume equals
uninterrupted, tokenizer checks, and (slow) GRPO raising a verifiable reward."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rlhf_helpers import read_events, save_model_checkpoint, small_config
from typer.testing import CliRunner

from aeron_tui.cli import app
from aeron_tui.commands.train import build_run_config
from core.data.tokenizer import AeronTokenizer
from core.errors import CheckpointError
from core.infer.inference import load_policy
from core.model.model import TransformerNeuralNetBackbone
from core.train.rlhf.ppo import PPOTrainer, decoder_tensors, verifiable_reward
from core.train.rlhf.reward import RewardModel


def test_verifiable_reward() -> None:
    assert verifiable_reward("Step.\nAnswer: 42", "42") == 1.0
    assert verifiable_reward("Answer: 41\nAnswer: 42 ", "42") == 1.0  # the last answer counts
    assert verifiable_reward("Answer: 41", "42") == 0.0
    assert verifiable_reward("forty-two", "42") == 0.0
    assert verifiable_reward("Answer: 42", None) == 0.0


def test_decoder_tensors_shift_and_mask() -> None:
    tokens = torch.tensor([[30, 31, 2], [40, 0, 0]])
    dec, mask, labels = decoder_tensors(tokens, torch.tensor([3, 1]))
    assert dec.tolist() == [[1, 8, 30, 31], [1, 8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert labels.tolist() == [[-100, 30, 31, 2], [-100, 40, -100, -100]]


@pytest.fixture(scope="module")
def setup_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ppo")
    tok = AeronTokenizer.byte_level()
    torch.manual_seed(0)
    policy = TransformerNeuralNetBackbone(small_config(tok.vocab_size))
    rm = RewardModel(small_config(tok.vocab_size))
    other = AeronTokenizer.train(["another corpus entirely " * 30], vocab_size=290)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(
        json.dumps({"prompt": f"What is {a} plus {a}?", "answer": str(2 * a)}) + "\n"
        for a in range(40)
    ))
    return {
        "policy": save_model_checkpoint(root / "policy", policy, tok),
        "reward": save_model_checkpoint(root / "reward", rm, tok, trainer="reward"),
        "other_reward": save_model_checkpoint(
            root / "other_reward", RewardModel(small_config(other.vocab_size)), other, "reward"),
        "prompts": prompts,
    }


def _trainer(run_dir: Path, files: dict[str, Path], steps: int = 3, resume: str | None = None,
             listeners: tuple[Any, ...] = (), **options: Any) -> PPOTrainer:
    run_config, model_config = build_run_config(
        "ppo", profile="tiny", resume=resume,
        flags={"run_dir": str(run_dir), "steps": steps, "micro_batch": 2, "seq_len": 32},
        sets=["log_every=1", "eval_every=1000", "checkpoint_every=1000"],
    )
    opts = {"from": str(files["policy"]), "prompts": str(files["prompts"]),
            "max_new_tokens": 8, "eval_prompts": 4, "eval_samples": 1, "ppo_epochs": 2,
            **options}
    return PPOTrainer(run_config.with_overrides(options=opts), model_config,
                      listeners=listeners)


@pytest.mark.slow  # ~3 s of PPO, plus ~15 s importing torch._dynamo for the first AdamW
def test_ppo_with_a_reward_model_emits_its_numbers(tmp_path: Path, setup_files) -> None:
    trainer = _trainer(tmp_path / "run", setup_files, steps=2,
                       reward_model=str(setup_files["reward"]))
    assert trainer.run() == "finished"
    events = read_events(tmp_path / "run")
    step = [e for e in events if e["type"] == "step"][-1]
    for key in ("reward", "kl", "kl_coef", "clip_frac", "value_loss", "entropy", "approx_kl"):
        assert key in step["metrics"], key
    assert step["metrics"]["reward"] != 0.0  # scored by the reward model
    evals = [e for e in events if e["type"] == "eval"]
    assert {"reward", "kl"} <= set(evals[-1]["metrics"])
    # The checkpoint is a plain policy: generate loads it (value head kept in trainer state).
    model, _, _ = load_policy(tmp_path / "run")
    assert not any(k.startswith("value_head") for k in model.state_dict())
    state = json.loads((tmp_path / "run/checkpoints/step_000002/trainer_state.json").read_text())
    assert len(state["controllers"]["value_head"]["weight"]) == 64
    assert state["controllers"]["kl_ctl"]["value"] != 0.2  # the adaptive controller moved


def _final_weights(trainer: PPOTrainer) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    if trainer.value_head is not None:
        state["value_head"] = trainer.value_head.weight.detach().clone()
    return state


@pytest.mark.slow
@pytest.mark.parametrize("grpo", [False, True], ids=["ppo", "grpo"])
def test_resume_equals_uninterrupted(tmp_path: Path, setup_files, grpo: bool) -> None:
    opts: dict[str, Any] = {"grpo": True, "group_size": 2} if grpo else {}
    full = _trainer(tmp_path / "full", setup_files, **opts)
    assert full.run() == "finished"
    box: dict[str, Any] = {}

    def stop_at_2(event: dict[str, Any]) -> None:
        if event["type"] == "step" and event["global_step"] == 2:
            box["t"].control.put("stop")

    box["t"] = first = _trainer(tmp_path / "part", setup_files, listeners=(stop_at_2,), **opts)
    assert first.run() == "stopped"
    second = _trainer(tmp_path / "part", setup_files, resume="latest", **opts)
    assert second.run() == "finished"
    a, b = _final_weights(full), _final_weights(second)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert full.kl_ctl.value == pytest.approx(second.kl_ctl.value)
    losses = {e["global_step"]: e["loss"] for e in read_events(tmp_path / "full")
              if e["type"] == "step"}
    resumed = {e["global_step"]: e["loss"] for e in read_events(tmp_path / "part")
               if e["type"] == "step"}
    assert resumed == pytest.approx(losses, abs=1e-6)


def test_reward_model_with_another_tokenizer_fails_before_the_run(tmp_path: Path,
                                                                  setup_files) -> None:
    result = CliRunner().invoke(app, [
        "rlhf", "ppo", "--from", str(setup_files["policy"]), "--prompts",
        str(setup_files["prompts"]), "--reward", str(setup_files["other_reward"]),
        "--run-dir", str(tmp_path / "run"), "--steps", "2", "--quiet", "--profile", "tiny",
    ])
    assert result.exit_code != 0
    assert isinstance(result.exception, CheckpointError)
    assert "tokenizer differs" in str(result.exception)
    kinds = [e["type"] for e in read_events(tmp_path / "run")]
    assert "run_started" not in kinds and "step" not in kinds


def test_prompts_without_answers_need_a_reward_model(tmp_path: Path, setup_files) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello"}) + "\n")
    result = CliRunner().invoke(app, [
        "rlhf", "ppo", "--from", str(setup_files["policy"]), "--prompts", str(prompts),
        "--run-dir", str(tmp_path / "run"), "--steps", "1", "--quiet", "--profile", "tiny",
    ])
    assert "no prompt has an 'answer'" in str(result.exception)


OPTIONAL_MODULES = ("knowledge_graph", "memory", "continual", "uncertainty", "active_learning",
                    "multimodal")


def _pass_rate(ckpt: Path, prompts: list[dict[str, Any]], samples: int) -> float:
    """Mean verifiable reward of ``samples`` completions per prompt (fixed seed, T 1.0)."""
    from core.data.formatting import encode_prompt
    from core.infer.generation import GenerationConfig, generate_ids, pad_batch

    model, tok, _ = load_policy(ckpt)
    ids, mask = pad_batch([encode_prompt(p["prompt"], tok, 96, style="reasoning",
                                         provider="aeron-synth") for p in prompts])
    g = torch.Generator().manual_seed(123)
    total = 0.0
    for _ in range(samples):
        out = generate_ids(model, ids, mask, GenerationConfig(max_new_tokens=8), generator=g)
        for j, p in enumerate(prompts):
            total += verifiable_reward(tok.decode([t for t in out.row(j) if t != 2]),
                                       p["answer"])
    return total / (samples * len(prompts))


@pytest.mark.slow
def test_grpo_raises_the_verifiable_reward(sample_corpus_dir: Path, sample_tokenizer: Path,
                                           tmp_path: Path) -> None:
    """A short CPU run (~1-3 min on the shared 2-core box): GRPO fits its training prompts.

    Start: the tiny profile (backbone + reasoning engine; the optional enhancement modules off,
    for speed — they roughly double this test's time) trained for 60 steps on the sample corpus's ordering questions
    ("Who is the tallest?") with the reply cut to its final line ``Answer: NAME`` (the toy
    task), so the policy answers in the verifiable format but mostly with the wrong name.
    Then GRPO with the verifiable reward on four sample prompts of that kind (the hash split
    keeps one back). Measured (seeded): training-prompt pass rate 0.04 → 0.69 after 25 steps
    with 16 completions per prompt, per-sequence KL to the start ~2.6 nats; this test runs a
    cheaper 20 steps × 8 completions (measured 0.05 → 0.26, KL ≤ 2.5 nats, 115 s; with all
    enhancement modules on 0.02 → 0.25, KL ≤ 2.5, 277 s). The per-step rollout rewards (24
    samples each) are printed but too noisy to assert on. What is not claimed: generalisation — the held-out prompt
    stays at chance; a tiny model does not learn to sort heights in CPU minutes.
    """
    from core.data.preferences import read_prompts, split_records
    from core.data.sample import extract_answer

    sft_data = tmp_path / "ordering_direct.jsonl"
    with open(sample_corpus_dir / "styles.jsonl", encoding="utf-8") as src, open(
        sft_data, "w", encoding="utf-8"
    ) as dst:
        for line in src:
            row = json.loads(line)
            if ":ordering:" in row["turn_id"]:
                row["assistant_reply"] = f"Answer: {extract_answer(row['assistant_reply'])}"
                dst.write(json.dumps(row) + "\n")
    runner = CliRunner()
    sft = runner.invoke(app, [
        "train", "simple", "--profile", "tiny", "--data", str(sft_data), "--steps", "60",
        "--seq-len", "48", "--micro-batch", "16", "--lr", "1e-3", "--run-dir",
        str(tmp_path / "sft"), "--quiet", "--set", f"tokenizer={sample_tokenizer}",
        "--set", "eval_every=60", "--set", "checkpoint_every=60",
        *[arg for name in OPTIONAL_MODULES for arg in ("--set", f"model.enable_{name}=false")],
    ])
    assert sft.exit_code == 0, sft.output
    start = tmp_path / "sft" / "checkpoints" / "step_000060"

    rows = [json.loads(line) for line in (sample_corpus_dir / "prompts.jsonl").open()]
    four = [r for r in rows if ":ordering:" in r["id"]][:4]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in four))
    train, _ = split_records(read_prompts(prompts))
    trained = [r for r in four if any(t.prompt == r["prompt"] for t in train)]
    before = _pass_rate(start, trained, 32)

    result = runner.invoke(app, [
        "rlhf", "ppo", "--grpo", "--from", str(start), "--prompts", str(prompts),
        "--steps", "20", "--micro-batch", "4", "--lr", "5e-4", "--max-new-tokens", "8",
        "--run-dir", str(tmp_path / "grpo"), "--quiet", "--set", "options.group_size=8",
        "--set", "options.ppo_epochs=2", "--set", "options.provider=aeron-synth",
        "--set", "log_every=1", "--set", "eval_every=1000",
    ])
    assert result.exit_code == 0, result.output
    after = _pass_rate(tmp_path / "grpo", trained, 32)
    steps = [e for e in read_events(tmp_path / "grpo") if e["type"] == "step"]
    rollout = [e["metrics"]["reward"] for e in steps]
    kl = [e["metrics"]["kl"] for e in steps]
    print(f"GRPO pass rate on its {len(trained)} training prompts: {before:.3f} -> {after:.3f}; "
          f"rollout reward first/last 5 steps {sum(rollout[:5]) / 5:.3f} / "
          f"{sum(rollout[-5:]) / 5:.3f}; max KL {max(kl):.2f} nats/sequence")
    assert after >= before + 0.1, (before, after)
    assert max(kl) < 10.0  # bounded: the β·KL term keeps the policy near its start
