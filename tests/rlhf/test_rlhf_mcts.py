"""MCTS generation (rlhf.md §6): PUCT visits and mean backups on a tiny tree by hand; with a
reward that prefers a token, the search finds a reply greedy decoding misses; the
`generate --mcts` and `generate --paged-blocks` commands on real checkpoints, and bad input."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from rlhf_helpers import save_model_checkpoint, small_config
from typer.testing import CliRunner

from aeron_tui.cli import app
from core.data.tokenizer import EOS_ID, AeronTokenizer
from core.errors import ConfigError
from core.infer.generation import GenerationConfig, generate
from core.infer.inference import reward_scores
from core.infer.mcts import MCTS, MCTSGenerator, MCTSNode
from core.model.model import TransformerNeuralNetBackbone
from core.train.rlhf.reward import RewardModel


# ---------------------------------------------------------------- the search by hand
def test_puct_visits_and_mean_backup_on_a_tiny_tree() -> None:
    """Priors a 0.5, b 0.3, c 0.2 everywhere; top-2 kept → a 0.625, b 0.375 after
    renormalising. Value 1 for replies starting with b, else 0. Replies of 2 tokens.

    sim 1: root is a leaf → expand, value(()) = 0.               root N1 W0
    sim 2: a: 0 + .625·√1/1 = .625 > b .375 → a; expand; 0.      root N2 W0, a N1 W0
    sim 3: a: .625·√2/2 = .442 < b: .375·√2/1 = .530 → b; 1.     root N3 W1, b N1 W1
    sim 4: a: .625·√3/2 = .541 < b: 1 + .375·√3/2 = 1.325 → b; b is expanded: ba .625 > bb
           .375 → ba (2 tokens: terminal); value 1.             root N4 W2, b N2 W2, ba N1
    """
    a, b, c = 1, 2, 3
    calls: list[tuple[int, ...]] = []

    def priors(prefix: tuple[int, ...]) -> list[tuple[int, float]]:
        calls.append(prefix)
        return [(a, 0.5), (b, 0.3), (c, 0.2)]

    def value(prefix: tuple[int, ...]) -> float:
        return 1.0 if prefix[:1] == (b,) else 0.0

    search = MCTS(priors, value, simulations=4, c_puct=1.0, top_k=2, max_new_tokens=2)
    root = MCTSNode(())
    values = [search.simulate(root) for _ in range(4)]
    assert values == [0.0, 0.0, 1.0, 1.0]
    assert set(root.children) == {a, b}  # top 2 only
    assert root.children[a].prior == pytest.approx(0.625)
    assert root.children[b].prior == pytest.approx(0.375)
    assert (root.visits, root.value_sum) == (4, 2.0)
    na, nb = root.children[a], root.children[b]
    assert (na.visits, na.value_sum, nb.visits, nb.value_sum) == (1, 0.0, 2, 2.0)
    assert nb.children[a].visits == 1 and nb.children[a].terminal
    assert nb.children[b].visits == 0
    assert root.q == pytest.approx(0.5) and nb.q == 1.0
    assert search.puct(root, na) == pytest.approx(0.625 * math.sqrt(4) / 2)
    assert calls == [(), (a,), (b,)]  # each prefix expanded once
    assert MCTS.most_visited(root) is nb


def test_search_emits_the_most_visited_child_until_the_end() -> None:
    # A policy that prefers 1, a value that prefers 2 everywhere; stop id 9 ends a reply.
    search = MCTS(lambda p: [(1, 0.6), (2, 0.3), (9, 0.1)],
                  lambda p: p.count(2) / max(1, len(p)), simulations=12, max_new_tokens=3,
                  stop_ids=(9,))
    tokens, reason, steps = search.run()
    assert tokens == [2, 2, 2] and reason == "length"
    assert len(steps) == 3
    for step in steps:
        assert step.token == max(step.visits, key=lambda t: step.visits[t])
    with pytest.raises(ConfigError, match="--simulations must be >= 1"):
        MCTS(lambda p: [], lambda p: 0.0, simulations=0)


# ---------------------------------------------------------------- on a real policy
@pytest.fixture(scope="module")
def tok() -> AeronTokenizer:
    return AeronTokenizer.byte_level()


@pytest.fixture(scope="module")
def policy(tok: AeronTokenizer) -> TransformerNeuralNetBackbone:
    torch.manual_seed(11)
    m = TransformerNeuralNetBackbone(small_config(tok.vocab_size, tie_word_embeddings=False))
    assert m.output_projection is not None
    with torch.no_grad():  # untrained models are near-uniform; a scaled head gives peaks
        m.output_projection.weight.mul_(8.0)
    return m.eval()


def _root_top5(policy: TransformerNeuralNetBackbone, tok: AeronTokenizer, prompt: str) -> list[int]:
    from core.infer.generation import encode_prompt_ids, pad_batch
    from core.infer.mcts import PolicyOracle

    ids, mask = pad_batch([encode_prompt_ids(tok, prompt, 64).ids])
    return [t for t, _ in PolicyOracle(policy, ids, mask, 8, (EOS_ID,)).priors(())]


def test_mcts_finds_the_rewarded_token_greedy_misses(policy, tok) -> None:
    prompt = "pick a letter"
    cfg = GenerationConfig(max_new_tokens=8, do_sample=False)
    [greedy] = generate(policy, tok, [prompt], cfg)
    # The preferred token: among the policy's top 5 at the start, but not in the greedy reply.
    preferred = next(t for t in _root_top5(policy, tok, prompt)[1:]
                     if t not in greedy.token_ids)

    def scorer(_prompt: str, replies):
        return [float(preferred in r) for r in replies]

    found = MCTSGenerator(policy, tok, scorer, simulations=8).generate(prompt, cfg)
    assert preferred in found.generation.token_ids
    assert preferred not in greedy.token_ids
    assert found.generation.extra["mcts_value"] == 1.0
    assert found.simulations == 8 * len(found.steps)
    # A reward that prefers nothing leaves the policy's own choice: visits follow the priors.
    flat = MCTSGenerator(policy, tok, lambda _p, rs: [0.0] * len(rs), simulations=8)
    assert flat.generate(prompt, cfg).generation.token_ids == greedy.token_ids


def test_mcts_with_a_reward_model_scores_its_reply(policy, tok) -> None:
    torch.manual_seed(12)
    rm = RewardModel(small_config(tok.vocab_size)).eval()

    def scorer(prompt: str, replies):
        return reward_scores(rm, tok, prompt, replies)

    cfg = GenerationConfig(max_new_tokens=6, do_sample=False)
    found = MCTSGenerator(policy, tok, scorer, simulations=4).generate("hello", cfg)
    [expected] = scorer("hello", [found.generation.token_ids])
    assert found.generation.extra["mcts_value"] == pytest.approx(expected, abs=1e-5)
    assert 1 <= len(found.generation.token_ids) <= 6


# ---------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, policy, tok) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mcts_ckpts")
    torch.manual_seed(13)
    rm = RewardModel(small_config(tok.vocab_size))
    other_tok = AeronTokenizer.train(["a different corpus " * 20, "other words"], vocab_size=300)
    return {
        "policy": save_model_checkpoint(root / "policy", policy, tok),
        "reward": save_model_checkpoint(root / "reward", rm, tok, trainer="reward"),
        "reward2": save_model_checkpoint(root / "reward2", RewardModel(small_config(
            tok.vocab_size)), tok, trainer="reward"),
        "other_reward": save_model_checkpoint(
            root / "other", RewardModel(small_config(other_tok.vocab_size)), other_tok,
            trainer="reward"),
    }


def test_generate_mcts_command(checkpoints, policy, tok) -> None:
    from core.train.rlhf.reward import load_reward_model

    result = CliRunner().invoke(app, [
        "generate", "--checkpoint", str(checkpoints["policy"]), "--prompt", "hello",
        "--mcts", "--reward", str(checkpoints["reward"]), "--simulations", "4",
        "--max-new-tokens", "6", "--temperature", "0"])
    assert result.exit_code == 0, result.output
    assert "mcts: 4 simulations per token" in result.output
    rm, _, _ = load_reward_model(checkpoints["reward"])
    expected = MCTSGenerator(
        policy, tok, lambda p, rs: reward_scores(rm, tok, p, rs), simulations=4,
    ).generate("hello", GenerationConfig(max_new_tokens=6, temperature=0.0))
    assert expected.generation.text in result.stdout
    notes = " ".join(result.output.split())  # rich wraps stderr lines at the terminal width
    assert f"reward of the reply {expected.generation.extra['mcts_value']:+.3f}" in notes


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mcts"], "--mcts needs a reward-model checkpoint"),
        (["--mcts", "--reward", "{reward}", "--simulations", "0"], "--simulations must be >= 1"),
        (["--mcts", "--reward", "{other_reward}"], "different tokenizer"),
        (["--mcts", "--reward", "{reward}", "--best-of", "2"], "cannot be combined"),
        (["--mcts", "--reward", "{policy}"], "not a reward-model checkpoint"),
        (["--paged-blocks", "1", "--draft", "{policy}"], "drop it with --draft"),
        (["--paged-blocks", "-2"], "--paged-blocks must be >= 0"),
        (["--mcts", "--reward", "{reward}", "--reward", "{other_reward}"],
         "tokenizer differs from the ensemble's first member"),
    ],
)
def test_generate_command_bad_mcts_and_paged_input(checkpoints, args, message) -> None:
    args = [a.format(**{k: str(v) for k, v in checkpoints.items()}) for a in args]
    result = CliRunner().invoke(app, ["generate", "--checkpoint", str(checkpoints["policy"]),
                                      "--prompt", "x", "--max-new-tokens", "4", *args])
    assert result.exit_code != 0
    assert message in str(result.exception)


def test_generate_paged_command_equals_contiguous(checkpoints) -> None:
    runner = CliRunner()
    base = ["generate", "--checkpoint", str(checkpoints["policy"]), "--prompt", "hello there",
            "--temperature", "0", "--max-new-tokens", "20"]
    plain = runner.invoke(app, base)
    paged = runner.invoke(app, [*base, "--paged-blocks", "2"])
    assert plain.exit_code == 0 and paged.exit_code == 0, paged.output
    assert paged.stdout == plain.stdout
    assert "paged KV cache: peak 2 of 2 blocks of 16 tokens" in " ".join(paged.output.split())
    small = runner.invoke(app, [*base, "--paged-blocks", "1"])
    assert small.exit_code != 0 and "paged KV cache exhausted" in str(small.exception)
    best = runner.invoke(app, ["generate", "--checkpoint", str(checkpoints["policy"]),
                               "--prompt", "hi", "--best-of", "3", "--reward",
                               str(checkpoints["reward"]), "--max-new-tokens", "8",
                               "--seed", "1", "--paged-blocks", "3"])
    assert best.exit_code == 0, best.output
    assert best.output.count("reward ") == 3 and "paged KV cache: peak" in best.output


# ---------------------------------------------------------------- reward ensembles (--reward ×K)
def test_best_of_and_mcts_with_a_reward_ensemble(checkpoints, policy, tok) -> None:
    from core.infer.inference import BestOfNSampler
    from core.train.rlhf.ensemble import load_reward_scorer
    from core.train.rlhf.reward import load_reward_model

    paths = [checkpoints["reward"], checkpoints["reward2"]]
    ensemble, _, _ = load_reward_scorer(paths)
    members = [load_reward_model(p)[0] for p in paths]
    # Best-of-N ranks by the members' mean and reports their spread per candidate.
    result = BestOfNSampler(policy, ensemble, tok, n=3).sample(
        "hi", GenerationConfig(max_new_tokens=8), seed=1)
    each = [reward_scores(m, tok, "hi", [c.token_ids for c in result.candidates])
            for m in members]
    assert result.rewards == pytest.approx([(a + b) / 2 for a, b in zip(*each, strict=True)],
                                           abs=1e-5)
    assert result.reward_stds == pytest.approx([abs(a - b) / 2 for a, b in zip(*each, strict=True)],
                                               abs=1e-5)
    assert result.best_index == max(range(3), key=lambda i: result.rewards[i])
    runner = CliRunner()
    best = runner.invoke(app, ["generate", "--checkpoint", str(checkpoints["policy"]),
                               "--prompt", "hi", "--best-of", "3", "--reward", str(paths[0]),
                               "--reward", str(paths[1]), "--max-new-tokens", "8", "--seed", "1"])
    assert best.exit_code == 0, best.output
    notes = " ".join(best.output.split())
    assert "ensemble of 2 reward models" in notes
    assert len(re.findall(r"reward [+-]\d+\.\d{3} ± \d+\.\d{3}", notes)) == 3
    # MCTS values are the ensemble mean.
    found = MCTSGenerator(policy, tok, lambda p, rs: reward_scores(ensemble, tok, p, rs),
                          simulations=3).generate("hello", GenerationConfig(max_new_tokens=5))
    reply = found.generation.token_ids
    mean = sum(reward_scores(m, tok, "hello", [reply])[0] for m in members) / 2
    assert found.generation.extra["mcts_value"] == pytest.approx(mean, abs=1e-5)
    res = runner.invoke(app, ["generate", "--checkpoint", str(checkpoints["policy"]),
                              "--prompt", "hello", "--mcts", "--simulations", "3",
                              "--max-new-tokens", "5", "--reward", str(paths[0]),
                              "--reward", str(paths[1])])
    assert res.exit_code == 0, res.output
    notes = " ".join(res.output.split())
    assert "mean of an ensemble of 2 reward models" in notes
    assert f"reward of the reply {mean:+.3f}" in notes
    assert found.generation.text in res.stdout
