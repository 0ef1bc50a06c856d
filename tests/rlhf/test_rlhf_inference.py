"""Speculative decoding (greedy equals target greedy; sampling keeps the target distribution),
best-of-N with a reward model, and the generate/chat commands on real checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rlhf_helpers import save_model_checkpoint, small_config
from typer.testing import CliRunner

from aeron_tui.cli import app
from core.data.tokenizer import AeronTokenizer
from core.errors import ConfigError
from core.infer.generation import (
    GenerationConfig,
    encode_prompt_ids,
    generate,
    generate_ids,
    pad_batch,
)
from core.infer.inference import (
    BestOfNSampler,
    SpeculativeDecoder,
    accept_or_resample,
    diversity_bonus,
    edit_distance,
)
from core.model.model import TransformerNeuralNetBackbone
from core.train.rlhf.reward import RewardModel


def peaked(model: TransformerNeuralNetBackbone, scale: float) -> TransformerNeuralNetBackbone:
    """Untrained models are near-uniform; a scaled output head gives input-dependent peaks."""
    assert model.output_projection is not None
    with torch.no_grad():
        model.output_projection.weight.mul_(scale)
    return model.eval()


@pytest.fixture(scope="module")
def tok() -> AeronTokenizer:
    return AeronTokenizer.byte_level()


@pytest.fixture(scope="module")
def target(tok: AeronTokenizer) -> TransformerNeuralNetBackbone:
    torch.manual_seed(1)
    return peaked(TransformerNeuralNetBackbone(
        small_config(tok.vocab_size, tie_word_embeddings=False, num_decoder_layers=3)), 60.0)


@pytest.fixture(scope="module")
def draft(tok: AeronTokenizer) -> TransformerNeuralNetBackbone:
    torch.manual_seed(2)
    return peaked(TransformerNeuralNetBackbone(
        small_config(tok.vocab_size, tie_word_embeddings=False, d_model=32, nhead=2,
                     num_kv_heads=1, num_encoder_layers=1, num_decoder_layers=1)), 60.0)


def _ids(tok: AeronTokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_batch([encode_prompt_ids(tok, text, 64).ids])


@pytest.mark.parametrize("prompt", ["What is two plus two?", "Name a colour.", "x"])
def test_speculative_greedy_equals_target_greedy(target, draft, tok, prompt: str) -> None:
    ids, mask = _ids(tok, prompt)
    cfg = GenerationConfig(max_new_tokens=20, do_sample=False, stop_ids=())
    plain = generate_ids(target, ids, mask, cfg).row(0)
    spec = SpeculativeDecoder(target, draft, gamma=4).generate(ids, mask, cfg)
    assert spec.tokens == plain
    assert spec.stats.drafted > 0
    # Fewer target passes than tokens whenever any draft token was accepted.
    assert spec.stats.target_passes == len(plain) - spec.stats.accepted


def test_speculative_with_itself_as_draft_accepts_everything(target, tok) -> None:
    ids, mask = _ids(tok, "same model")
    cfg = GenerationConfig(max_new_tokens=21, do_sample=False, stop_ids=())
    out = SpeculativeDecoder(target, target, gamma=4).generate(ids, mask, cfg)
    assert out.stats.acceptance_rate == 1.0
    assert out.stats.target_passes == 5  # 4 rounds of 4+1 tokens, then one last token
    assert out.tokens == generate_ids(target, ids, mask, cfg).row(0)


def test_speculative_greedy_with_repetition_penalty_and_stop_id(target, draft, tok) -> None:
    ids, mask = _ids(tok, "penalised")
    free = GenerationConfig(max_new_tokens=24, do_sample=False, repetition_penalty=1.5,
                            stop_ids=())
    plain = generate_ids(target, ids, mask, free).row(0)
    stop = plain[9]
    cfg = GenerationConfig(max_new_tokens=24, do_sample=False, repetition_penalty=1.5,
                           stop_ids=(stop,))
    spec = SpeculativeDecoder(target, draft).generate(ids, mask, cfg)
    assert spec.tokens == generate_ids(target, ids, mask, cfg).row(0)
    assert spec.tokens[-1] == stop and spec.finish_reason == "stop"


def test_accept_or_resample_keeps_the_target_distribution() -> None:
    """The accept/reject rule on explicit distributions: the emitted token ~ p, whatever q."""
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q = torch.tensor([[0.1, 0.1, 0.3, 0.3, 0.2]])
    g = torch.Generator().manual_seed(0)
    n = 20000
    drafts = torch.multinomial(q[0], n, replacement=True, generator=g).tolist()
    counts = torch.zeros(5)
    accepted = 0
    for x in drafts:
        kept, t = accept_or_resample(list(p), list(q), [x], greedy=False, generator=g)
        counts[x if kept else t] += 1
        accepted += kept
    assert (counts / n).tolist() == pytest.approx(p[0].tolist(), abs=0.012)
    # Acceptance probability is Σ min(p, q) = 0.1 + 0.1 + 0.2 + 0.1 + 0 = 0.5.
    assert accepted / n == pytest.approx(0.5, abs=0.015)
    # All accepted: the bonus token comes from the last target distribution.
    kept, t = accept_or_resample(list(p), [p[0]], [0], greedy=False, generator=g)
    assert kept == 1 and 0 <= t < 5


def test_accept_or_resample_greedy() -> None:
    p = [torch.tensor([0.1, 0.7, 0.2]), torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.0, 0.0, 1.0])]
    q = [torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])]
    assert accept_or_resample(p, q, [1, 1], greedy=True) == (1, 0)  # 2nd draft is not argmax
    assert accept_or_resample(p, q, [1, 0], greedy=True) == (2, 2)  # all kept + bonus argmax


def test_speculative_sampling_runs_and_reports(target, draft, tok) -> None:
    ids, mask = _ids(tok, "sampled")
    cfg = GenerationConfig(max_new_tokens=20, temperature=1.0, top_k=8, stop_ids=())
    g = torch.Generator().manual_seed(0)
    out = SpeculativeDecoder(target, draft).generate(ids, mask, cfg, generator=g)
    assert len(out.tokens) == 20 and out.finish_reason == "length"
    assert 0.0 <= out.stats.acceptance_rate <= 1.0 and out.stats.drafted > 0


def test_speculative_rejects_other_vocabulary(target, tok) -> None:
    other = TransformerNeuralNetBackbone(small_config(300))
    with pytest.raises(ConfigError, match="vocabulary"):
        SpeculativeDecoder(target, other)


def test_edit_distance_and_diversity_bonus_by_hand() -> None:
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 5]) == 2
    assert edit_distance([1, 2], [2, 1]) == 2
    bonus = diversity_bonus([[1, 2], [1, 2], [3, 4]])
    # To the other two: (0/2 + 2/2)/2 for the twins, (1 + 1)/2 for the odd one.
    assert bonus == pytest.approx([0.5, 0.5, 1.0])


def test_best_of_n_picks_the_highest_reward(target, tok) -> None:
    torch.manual_seed(5)
    rm = RewardModel(small_config(tok.vocab_size)).eval()
    sampler = BestOfNSampler(target, rm, tok, n=6)
    result = sampler.sample("choose", GenerationConfig(max_new_tokens=12, stop_ids=()), seed=1)
    assert len(result.candidates) == 6 == len(result.rewards)
    assert result.best_index == max(range(6), key=lambda i: result.rewards[i])
    assert result.best is result.candidates[result.best_index]
    # The scores are the reward model's scores of exactly these replies.
    rescored = sampler.score("choose", [c.token_ids for c in result.candidates])
    assert rescored == pytest.approx(result.rewards, abs=1e-5)
    assert len({tuple(c.token_ids) for c in result.candidates}) > 1
    diverse = BestOfNSampler(target, rm, tok, n=6, diversity_weight=10.0).sample(
        "choose", GenerationConfig(max_new_tokens=12, stop_ids=()), seed=1)
    assert diverse.scores == pytest.approx(
        [r + 10.0 * b for r, b in zip(diverse.rewards, diverse.bonuses, strict=True)])


# ---------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, target, draft, tok) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen_ckpts")
    torch.manual_seed(6)
    rm = RewardModel(small_config(tok.vocab_size))
    other_tok = AeronTokenizer.train(["a different corpus " * 20, "other words"], vocab_size=300)
    return {
        "target": save_model_checkpoint(root / "target", target, tok),
        "draft": save_model_checkpoint(root / "draft", draft, tok),
        "reward": save_model_checkpoint(root / "reward", rm, tok, trainer="reward"),
        "other_tok": save_model_checkpoint(
            root / "other", TransformerNeuralNetBackbone(small_config(other_tok.vocab_size)),
            other_tok),
    }


def test_generate_command_streams_the_reply(checkpoints, target, tok) -> None:
    result = CliRunner().invoke(app, ["generate", "--checkpoint", str(checkpoints["target"]),
                                      "--prompt", "hello there", "--temperature", "0",
                                      "--max-new-tokens", "16"])
    assert result.exit_code == 0, result.output
    [expected] = generate(target, tok, ["hello there"],
                          GenerationConfig(max_new_tokens=16, temperature=0.0))
    assert expected.text in result.stdout
    assert "tokens/s" in result.output


def test_generate_command_speculative_and_best_of(checkpoints, target, tok) -> None:
    runner = CliRunner()
    spec = runner.invoke(app, ["generate", "--checkpoint", str(checkpoints["target"]),
                               "--prompt", "hello there", "--temperature", "0",
                               "--max-new-tokens", "16", "--draft", str(checkpoints["draft"])])
    assert spec.exit_code == 0, spec.output
    assert "acceptance rate" in spec.output
    [expected] = generate(target, tok, ["hello there"],
                          GenerationConfig(max_new_tokens=16, temperature=0.0))
    assert expected.text in spec.stdout
    best = runner.invoke(app, ["generate", "--checkpoint", str(checkpoints["target"]),
                               "--prompt", "hi", "--best-of", "3", "--reward",
                               str(checkpoints["reward"]), "--max-new-tokens", "8",
                               "--seed", "1"])
    assert best.exit_code == 0, best.output
    assert best.output.count("reward ") == 3 and "* " in best.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--best-of", "3"], "needs a reward-model checkpoint"),
        (["--max-new-tokens", "500"], "max-new-tokens"),
        (["--top-p", "0"], "top-p"),
    ],
)
def test_generate_command_bad_options(checkpoints, args: list[str], message: str) -> None:
    from aeron_tui.cli import main  # noqa: F401 - the error path is main's; CliRunner shows it

    result = CliRunner().invoke(app, ["generate", "--checkpoint", str(checkpoints["target"]),
                                      "--prompt", "x", *args])
    assert result.exit_code != 0
    assert message in str(result.exception)


def test_generate_refuses_reward_checkpoint_and_other_tokenizer(checkpoints) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["generate", "--checkpoint", str(checkpoints["reward"]),
                              "--prompt", "x"])
    assert "reward-model checkpoint" in str(res.exception)
    res = runner.invoke(app, ["generate", "--checkpoint", str(checkpoints["target"]),
                              "--prompt", "x", "--draft", str(checkpoints["other_tok"])])
    assert "different tokenizer" in str(res.exception)


def test_chat_streams_each_turn(checkpoints, target, tok) -> None:
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.0)
    args = ["chat", "--checkpoint", str(checkpoints["target"]), "--temperature", "0",
            "--max-new-tokens", "8"]
    # Each line alone (--no-history) ...
    result = CliRunner().invoke(app, [*args, "--no-history"], input="first question\nsecond\n\n")
    assert result.exit_code == 0, result.output
    for prompt in ("first question", "second"):
        [expected] = generate(target, tok, [prompt], cfg)
        assert expected.text in result.stdout
    assert result.output.count("tokens/s") == 2
    # ... and by default the conversation so far through the chat template, as trained.
    result = CliRunner().invoke(app, [*args, "--system", "Be brief."],
                                input="first question\nsecond\n\n")
    assert result.exit_code == 0, result.output
    [first] = generate(target, tok, ["first question"], cfg, system="Be brief.")
    [second] = generate(target, tok, ["second"], cfg, system="Be brief.",
                        history=[("user", "first question"), ("assistant", first.text)])
    assert result.stdout == f"{first.text}\n{second.text}\n"
