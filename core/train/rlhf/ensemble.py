"""K-model reward ensemble (spec rlhf.md §2): the mean score of K reward checkpoints, with their
standard deviation as the uncertainty.

:class:`RewardEnsemble` has the scorer interface of :class:`core.train.rlhf.reward.RewardModel`
(``score(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask) -> (rewards,
outputs)``, ``config.max_position_embeddings``, ``parameters()``, ``eval()``), so it goes wherever
one reward model goes: PPO's reward, best-of-N's scorer. ``outputs`` carries ``reward_std``
``(B,)`` and ``member_rewards`` ``(K, B)``; :meth:`RewardEnsemble.score_with_std` returns both
numbers directly.

All members must share one tokenizer (SHA-256 of ``tokenizer.json``):
:func:`load_reward_ensemble` refuses a mismatch naming the checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import CheckpointError
from core.train.rlhf.reward import RewardModel, load_reward_model


class RewardEnsemble(nn.Module):
    """Mean of K reward models' scores; population std across members as uncertainty.

    With K = 1 (or K identical members) the mean is the single model's score and the std is 0.
    """

    def __init__(self, members: Sequence[RewardModel], names: Sequence[str] = ()) -> None:
        super().__init__()
        if not members:
            raise CheckpointError("a reward ensemble needs at least one reward-model checkpoint")
        self.members = nn.ModuleList(members)
        self.names = [str(n) for n in names] or [f"member {i}" for i in range(len(members))]
        # Sequences are cut to what every member can read.
        limit = min(int(m.config.max_position_embeddings) for m in members)
        self.config = dataclasses.replace(members[0].config, max_position_embeddings=limit)

    def __len__(self) -> int:
        return len(self.members)

    def member_scores(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        decoder_input_ids: Tensor,
        decoder_attention_mask: Tensor | None,
    ) -> Tensor:
        """Every member's rewards, ``(K, B)`` float32."""
        rows = []
        for member in self.members:
            assert isinstance(member, RewardModel)
            r, _ = member.score(input_ids, attention_mask, decoder_input_ids,
                                decoder_attention_mask)
            rows.append(r.float())
        return torch.stack(rows)

    def score_with_std(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        decoder_input_ids: Tensor,
        decoder_attention_mask: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` over members, each ``(B,)``."""
        scores = self.member_scores(input_ids, attention_mask, decoder_input_ids,
                                    decoder_attention_mask)
        return scores.mean(0), scores.std(0, correction=0)

    def score(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        decoder_input_ids: Tensor,
        decoder_attention_mask: Tensor | None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Mean rewards ``(B,)`` and ``{"reward_std": (B,), "member_rewards": (K, B)}`` — the
        same call as :meth:`RewardModel.score`."""
        scores = self.member_scores(input_ids, attention_mask, decoder_input_ids,
                                    decoder_attention_mask)
        return scores.mean(0), {"reward_std": scores.std(0, correction=0),
                                "member_rewards": scores}


def reward_std(outputs: dict[str, Any], like: Tensor) -> Tensor:
    """The ensemble std from a scorer's ``outputs`` (zeros for a single reward model)."""
    std = outputs.get("reward_std")
    return std.float() if isinstance(std, Tensor) else torch.zeros_like(like, dtype=torch.float32)


def load_reward_ensemble(
    paths: Sequence[str | Path], device: str | torch.device = "cpu"
) -> tuple[RewardEnsemble, Any, list[Any]]:
    """``(ensemble, tokenizer, loaded checkpoints)`` of K reward checkpoints, in eval mode.

    Each checkpoint must be a reward model (CheckpointError otherwise) and use the first one's
    tokenizer (CheckpointError naming the differing checkpoint).
    """
    if not paths:
        raise CheckpointError("a reward ensemble needs at least one reward-model checkpoint")
    members: list[RewardModel] = []
    loaded_all: list[Any] = []
    tokenizer: Any = None
    first_path: Path | None = None
    for path in paths:
        model, tok, loaded = load_reward_model(path, device)
        if tokenizer is None:
            tokenizer, first_path = tok, loaded.path
        elif tok.sha256 != tokenizer.sha256:
            raise CheckpointError(
                f"{loaded.path}: this reward model's tokenizer differs from the ensemble's first "
                f"member {first_path} (sha256 {tok.sha256[:12]} vs {tokenizer.sha256[:12]}, "
                f"vocabulary {tok.vocab_size} vs {tokenizer.vocab_size}); every ensemble member "
                "must be trained with one tokenizer (train them from one checkpoint with --from)"
            )
        members.append(model)
        loaded_all.append(loaded)
    ensemble = RewardEnsemble(members, [str(lo.path) for lo in loaded_all])
    ensemble.to(device)
    ensemble.eval()
    return ensemble, tokenizer, loaded_all


def load_reward_scorer(
    paths: str | Path | Sequence[str | Path], device: str | torch.device = "cpu"
) -> tuple[RewardModel | RewardEnsemble, Any, list[Any]]:
    """One reward checkpoint → its :class:`RewardModel`; several → a :class:`RewardEnsemble`.

    Returns ``(scorer, tokenizer, loaded checkpoints)``; both scorers have the same ``score``.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if len(paths) == 1:
        model, tok, loaded = load_reward_model(paths[0], device)
        return model, tok, [loaded]
    return load_reward_ensemble(paths, device)


@torch.no_grad()
def evaluate_reward_scorer(
    scorer: RewardModel | RewardEnsemble,
    tokenizer: Any,
    pairs: Sequence[Any],
    batch_size: int = 16,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Pairwise accuracy, mean margin ``r_c − r_r`` and (ensemble) mean std of a scorer on
    :class:`core.data.preferences.PreferencePair` s, overall and per ``source`` and per
    ``source/rejection`` group (when the pairs name their rejection kind).

    ``reward_std`` is the members' std averaged over every scored reply (0 for one model).
    """
    from core.train.rlhf.common import collate_preferences, encode_preferences

    if not pairs:
        raise ValueError("evaluate_reward_scorer needs at least one preference pair")
    limit = int(scorer.config.max_position_embeddings)
    length = min(limit, max_length) if max_length else limit
    device = next(scorer.parameters()).device
    examples = encode_preferences(pairs, tokenizer, length)
    was_training = scorer.training
    scorer.eval()
    chosen_all, rejected_all, std_all = [], [], []
    for i in range(0, len(examples), batch_size):
        batch = collate_preferences(examples[i : i + batch_size], full_sequence=True)
        batch = {k: v.to(device) for k, v in batch.items()}
        rewards, outputs = scorer.score(batch["input_ids"], batch["attention_mask"],
                                        batch["decoder_input_ids"],
                                        batch["decoder_attention_mask"])
        b = rewards.shape[0] // 2
        chosen_all.append(rewards[:b].float().cpu())
        rejected_all.append(rewards[b:].float().cpu())
        std_all.append(reward_std(outputs, rewards).cpu())
    scorer.train(was_training)
    chosen, rejected, std = torch.cat(chosen_all), torch.cat(rejected_all), torch.cat(std_all)
    margin = chosen - rejected
    correct = (margin > 0).float()
    per_source: dict[str, dict[str, float]] = {}
    sources = [getattr(p, "source", "") or "-" for p in pairs]
    groups = [getattr(p, "group", "-/-") for p in pairs]
    per_group: dict[str, dict[str, float]] = {}
    for keys, table in ((sources, per_source), (groups, per_group)):
        for name in sorted(set(keys)):
            idx = torch.tensor([j for j, s in enumerate(keys) if s == name])
            table[name] = {"pairs": float(idx.numel()),
                           "accuracy": correct[idx].mean().item(),
                           "margin": margin[idx].mean().item()}
    return {
        "pairs": len(pairs),
        "members": len(scorer) if isinstance(scorer, RewardEnsemble) else 1,
        "accuracy": correct.mean().item(),
        "margin": margin.mean().item(),
        "reward_chosen": chosen.mean().item(),
        "reward_rejected": rejected.mean().item(),
        "reward_std": std.mean().item(),
        "per_source": per_source,
        "per_group": per_group if any(not g.endswith("/-") for g in groups) else {},
    }
