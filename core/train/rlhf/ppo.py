"""PPO and GRPO on prompts (spec rlhf.md §4; ``aeron-tui rlhf ppo [--grpo]``).

One engine step is one PPO iteration: sample completions for ``micro_batch`` prompts with the KV
cache (:func:`core.infer.generation.generate_ids`, temperature 1.0), score them — with a reward-model
checkpoint (option ``reward_model``; its tokenizer must equal the policy's; a list of
checkpoints is a :class:`core.train.rlhf.ensemble.RewardEnsemble` — mean score, std reported as
``reward_std``) or the verifiable
reward (1 when the reply's last ``Answer: ...`` equals the prompt's ``answer``, else 0) — then
``ppo_epochs`` (4) passes of minibatch updates.

PPO: per-token reward ``−β_KL (log π_old − log π_ref)`` plus the score on the last token, a
value head ``Linear(d,1)`` on the policy's decoder states, GAE (γ 1, λ 0.95), whitened
advantages, clipped surrogate + clipped value loss, adaptive β_KL (0.2 → target 6 nats/sequence).
GRPO (option ``grpo = true``): ``group_size`` (8) completions per prompt, group-relative
advantages on every token, no value head, the k3 KL penalty (β 0.04) in the loss.

The policy checkpoint stays a plain backbone checkpoint (``generate``, ``merge``, ``export``
read it); the value head's weights and the KL controller live in the trainer state.

Step events carry ``metrics`` ``{reward, kl, kl_coef, clip_frac, value_loss, entropy,
approx_kl, response_len}`` (GRPO: no value numbers; an ensemble adds ``reward_std``, the
mean across rollouts of the members' std); eval events the held-out ``reward`` and ``kl`` (and
``reward_std``), and the eval ``loss`` is the negated mean held-out reward (so "best" = highest reward).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from core.data.formatting import IGNORE_INDEX, encode_prompt
from core.data.loader import BatchLoader
from core.data.tokenizer import ASSISTANT_ID, BOS_ID, EOS_ID
from core.errors import ConfigError, DataError
from core.infer.generation import GenerationConfig, generate_ids, pad_batch
from core.train.rlhf.common import RLHFTrainer, check_same_tokenizer
from core.train.rlhf.losses import (
    AdaptiveKLController,
    entropy_from_logits,
    gae,
    grpo_advantages,
    grpo_loss,
    kl_penalised_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    token_logprobs,
    whiten,
)


@dataclass(frozen=True)
class PromptExample:
    """An encoded prompt and its known answer (None without one)."""

    input_ids: list[int]
    answer: str | None
    text: str

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


class PromptLoader(BatchLoader):
    """The engine's resumable loader, yielding lists of :class:`PromptExample`."""

    def __next__(self) -> list[PromptExample]:  # type: ignore[override]
        return self.next_pairs()  # type: ignore[return-value]


def verifiable_reward(text: str, answer: str | None) -> float:
    """1.0 when the reply's final ``Answer: ...`` equals ``answer`` (trimmed), else 0.0."""
    from core.data.sample import extract_answer

    if answer is None:
        return 0.0
    found = extract_answer(text)
    return 1.0 if found is not None and found.strip() == answer.strip() else 0.0


@dataclass
class Rollout:
    """One batch of sampled completions with everything the updates need (all detached)."""

    input_ids: Tensor  # (N,S) prompts (repeated per completion)
    attention_mask: Tensor
    decoder_input_ids: Tensor  # (N,T) `<s> <|assistant|> g_1 .. g_{n-1}`
    decoder_attention_mask: Tensor
    labels: Tensor  # (N,T) `-100, g_1 .. g_n`
    mask: Tensor  # (N,T) 1 on response tokens
    scores: Tensor  # (N,) sequence rewards R(x,y)
    old_logprobs: Tensor  # (N,T)
    ref_logprobs: Tensor
    values: Tensor | None = None
    advantages: Tensor | None = None  # (N,T) PPO, (N,) GRPO
    returns: Tensor | None = None


def decoder_tensors(tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(decoder inputs, their mask, labels) of generated rows (see :class:`Rollout`)."""
    rows = []
    labels = []
    for i in range(tokens.shape[0]):
        n = max(1, int(lengths[i]))
        gen = tokens[i, :n].tolist()
        rows.append([BOS_ID, ASSISTANT_ID, *gen[:-1]])
        labels.append([IGNORE_INDEX, *gen])
    dec, dec_mask = pad_batch(rows, tokens.device)
    lab = torch.full_like(dec, IGNORE_INDEX)
    for i, row in enumerate(labels):
        lab[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return dec, dec_mask, lab


class PPOTrainer(RLHFTrainer):
    """PPO (value head, GAE, adaptive KL) or GRPO (``grpo = true``) with the KV-cache sampler."""

    name = "ppo"
    description = "PPO on prompts (reward model or verifiable reward, adaptive KL, GAE; GRPO option)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reference: nn.Module | None = None
        self.value_head: nn.Linear | None = None
        self.reward_model: Any = None
        self.kl_ctl = AdaptiveKLController()
        self.train_prompts: list[PromptExample] = []
        self._eval_on_train = False
        self.val_prompts: list[PromptExample] = []

    # -- options -----------------------------------------------------------------------------
    @property
    def grpo(self) -> bool:
        value = self.option("grpo", False)
        if not isinstance(value, bool):
            raise ConfigError(f"option 'grpo' should be true or false, got {value!r}")
        return value

    def settings(self) -> dict[str, Any]:
        """Every PPO/GRPO hyper-parameter, validated (spec defaults)."""
        s = {
            "max_new_tokens": self.int_option("max_new_tokens", 128),
            "temperature": self.float_option("temperature", 1.0),
            "group_size": self.int_option("group_size", 8, minimum=2),
            "ppo_epochs": self.int_option("ppo_epochs", 4),
            "minibatch_size": self.int_option("minibatch_size", 0, minimum=0),
            "clip": self.float_option("clip", 0.2),
            "vf_clip": self.float_option("vf_clip", 0.2),
            "vf_coef": self.float_option("vf_coef", 0.5),
            "entropy_coef": self.float_option("entropy_coef", 0.0),
            "gamma": self.float_option("gamma", 1.0),
            "lam": self.float_option("lam", 0.95),
            "kl_coef": self.float_option("kl_coef", 0.2),
            "kl_target": self.float_option("kl_target", 6.0),
            "kl_horizon": self.int_option("kl_horizon", 10000),
            "adaptive_kl": bool(self.option("adaptive_kl", True)),
            "whiten_rewards": bool(self.option("whiten_rewards", False)),
            "grpo_beta": self.float_option("grpo_beta", 0.04),
            "samples_per_prompt": self.int_option("samples_per_prompt", 1),
            "eval_prompts": self.int_option("eval_prompts", 32),
            "eval_samples": self.int_option("eval_samples", 2),
        }
        if s["temperature"] <= 0:
            raise ConfigError("option 'temperature' must be > 0 (PPO samples its rollouts)")
        if not 0 < s["clip"] < 1:
            raise ConfigError(f"option 'clip' must be in (0, 1), got {s['clip']}")
        return s

    # -- setup -------------------------------------------------------------------------------
    def build_data(self) -> None:
        from core.data.preferences import read_prompts, split_records

        self.cfg = self.settings()
        _ = self.grpo
        path = self.data_file("prompts", "prompts")
        self.data_path = str(path)
        records = read_prompts(path)
        reward_paths = self.reward_paths()
        if reward_paths:
            self._load_reward_model(reward_paths)
        else:
            records = [r for r in records if r.answer is not None]
            if not records:
                raise DataError(
                    f"{path}: no prompt has an 'answer', so there is no verifiable reward; "
                    "add answers or give a reward model (--reward CKPT)"
                )
        if self.config.max_samples is not None:
            records = records[: self.config.max_samples]
        train, val = split_records(records)
        if not train:
            train, val = val, []
        self._eval_on_train = not val
        provider = self.option("provider")
        max_prompt = max(4, self.seq_len)

        def enc(r: Any) -> PromptExample:
            ids = encode_prompt(r.prompt, self.tokenizer, max_prompt,
                                style=r.style_label or None,
                                provider=str(provider) if provider else None)
            return PromptExample(ids, r.answer, r.prompt)

        self.train_prompts = [enc(r) for r in train]
        # A prompt file too small for a held-out split is evaluated on its training prompts.
        self.val_prompts = [enc(r) for r in val] or list(self.train_prompts)
        self.train_loader = PromptLoader(
            self.train_prompts, self.micro_batch, self.config.seed,
            rank=self.rank, world_size=self.world_size,
        )
        from core.data.sample import corpus_manifest

        self.corpus = corpus_manifest([path])
        self.corpus.update(train_samples=len(train), val_samples=len(val))

    def setup(self) -> None:
        super().setup()
        if self._eval_on_train:
            self.emit("warning", message=f"{self.data_path}: too few prompts for a held-out "
                      "split; evaluating on the training prompts", code="no_validation",
                      global_step=self.global_step)

    def reward_paths(self) -> list[str]:
        """Option ``reward_model``: one checkpoint path or a list of them (an ensemble)."""
        value = self.option("reward_model")
        if not value:
            return []
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and v for v in values):
            raise ConfigError(
                f"option 'reward_model' should be a checkpoint path or a list of paths, "
                f"got {value!r}"
            )
        return list(values)

    def _load_reward_model(self, paths: list[str]) -> None:
        from core.train.rlhf.ensemble import load_reward_scorer

        model, tokenizer, loaded = load_reward_scorer(paths, "cpu")
        # Checked before any training: a reward model reading other token ids scores garbage.
        # (Ensemble members were checked against each other while loading.)
        check_same_tokenizer(self.tokenizer, tokenizer, loaded[0].path, "reward")
        for p in model.parameters():
            p.requires_grad_(False)
        self.reward_model = model

    def resolve_model_config(self, resume: Any) -> Any:
        config = super().resolve_model_config(resume)
        needed = self.cfg["max_new_tokens"] + 2
        if config.max_position_embeddings < needed:
            raise ConfigError(
                f"option max_new_tokens={self.cfg['max_new_tokens']} does not fit the model's "
                f"{config.max_position_embeddings} positions; lower it"
            )
        return config

    def build_model(self) -> nn.Module:
        from core.model.model import TransformerNeuralNetBackbone

        model = TransformerNeuralNetBackbone(self.model_config)
        self.init_weights(model)
        self.reference = copy.deepcopy(model).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.reference.to(self.device)
        if self.reward_model is not None:
            self.reward_model.to(self.device)
        if not self.grpo:
            self.value_head = nn.Linear(self.model_config.d_model, 1).to(self.device)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        self.kl_ctl = AdaptiveKLController(
            self.cfg["kl_coef"], self.cfg["kl_target"], self.cfg["kl_horizon"]
        )
        return model

    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = super().parameter_groups()
        if self.value_head is not None:
            groups.append({"params": list(self.value_head.parameters()), "weight_decay": 0.0})
        return groups

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kl_ctl": self.kl_ctl.state_dict()}
        if self.value_head is not None:
            state["value_head"] = {
                "weight": self.value_head.weight.detach().cpu().flatten().tolist(),
                "bias": self.value_head.bias.detach().cpu().tolist(),
            }
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "kl_ctl" in state:
            self.kl_ctl.load_state_dict(state["kl_ctl"])
        vh = state.get("value_head")
        if vh is not None and self.value_head is not None:
            with torch.no_grad():
                w = torch.tensor(vh["weight"], dtype=self.value_head.weight.dtype)
                self.value_head.weight.copy_(w.view_as(self.value_head.weight))
                self.value_head.bias.copy_(torch.tensor(vh["bias"]))

    # -- rollouts ----------------------------------------------------------------------------
    def _forward(self, model: nn.Module, r: Rollout, rows: Tensor | None = None,
                 hidden: bool = False) -> dict[str, Any]:
        sel = (lambda t: t) if rows is None else (lambda t: t[rows])
        return model(  # type: ignore[no-any-return]
            input_ids=sel(r.input_ids),
            attention_mask=sel(r.attention_mask),
            decoder_input_ids=sel(r.decoder_input_ids),
            decoder_attention_mask=sel(r.decoder_attention_mask),
            output_hidden_states=hidden,
        )

    def _values(self, outputs: dict[str, Any]) -> Tensor:
        assert self.value_head is not None
        h = outputs["decoder_last_hidden_state"]
        return self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()

    @torch.no_grad()
    def _score(self, prompts: Sequence[PromptExample], input_ids: Tensor, attention_mask: Tensor,
               tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """Sequence rewards ``(N,)`` and, for a reward ensemble, the members' std ``(N,)``."""
        if self.reward_model is None:
            texts = [
                self.tokenizer.decode([t for t in tokens[i, : int(lengths[i])].tolist()
                                       if t != EOS_ID])
                for i in range(tokens.shape[0])
            ]
            return torch.tensor(
                [verifiable_reward(t, p.answer) for t, p in zip(texts, prompts, strict=True)],
                device=tokens.device,
            ), None
        seqs = [[BOS_ID, ASSISTANT_ID, *tokens[i, : int(lengths[i])].tolist()]
                for i in range(tokens.shape[0])]
        dec, dec_mask = pad_batch(seqs, tokens.device)
        rewards, outputs = self.reward_model.score(input_ids, attention_mask, dec, dec_mask)
        std = outputs.get("reward_std")
        return rewards.float(), (std.float() if isinstance(std, Tensor) else None)

    @torch.no_grad()
    def sample(self, prompts: Sequence[PromptExample], repeats: int,
               generator: torch.Generator | None = None) -> tuple[list[PromptExample], Any, Tensor,
                                                                  Tensor]:
        """Sampled completions: (prompt per row, generation output, prompt ids, prompt mask)."""
        rows = [p for p in prompts for _ in range(repeats)]
        ids, mask = pad_batch([p.input_ids for p in rows], self.device)
        gen_cfg = GenerationConfig(
            max_new_tokens=self.cfg["max_new_tokens"], temperature=self.cfg["temperature"],
            stop_ids=(EOS_ID,),
        )
        with self.autocast():
            out = generate_ids(self.model, ids, mask, gen_cfg, generator=generator)
        return rows, out, ids, mask

    @torch.no_grad()
    def rollout(self, prompts: Sequence[PromptExample]) -> Rollout:
        repeats = self.cfg["group_size"] if self.grpo else self.cfg["samples_per_prompt"]
        rows, out, ids, mask = self.sample(prompts, repeats)
        scores, std = self._score(rows, ids, mask, out.tokens, out.lengths)
        if std is not None:
            self.metrics.add_metric("reward_std", std.mean())
        dec, dec_mask, labels = decoder_tensors(out.tokens, out.lengths)
        r = Rollout(ids, mask, dec, dec_mask, labels, (labels != IGNORE_INDEX).long(), scores,
                    torch.empty(0), torch.empty(0))
        was_training = self.model.training
        self.model.eval()
        with self.autocast():
            pol = self._forward(self.model, r, hidden=not self.grpo)
            assert self.reference is not None
            ref = self._forward(self.reference, r)
        self.model.train(was_training)
        r.old_logprobs = token_logprobs(pol["logits"], labels)
        r.ref_logprobs = token_logprobs(ref["logits"], labels)
        if self.grpo:
            r.advantages = grpo_advantages(scores, self.cfg["group_size"])
            return r
        r.values = self._values(pol) * r.mask
        score = scores
        if self.cfg["whiten_rewards"] and scores.numel() > 1:
            score = (scores - scores.mean()) / (scores.std() + 1e-8)
        rewards, _ = kl_penalised_rewards(r.old_logprobs, r.ref_logprobs, r.mask, score,
                                          self.kl_ctl.value)
        adv, ret = gae(rewards, r.values, r.mask, self.cfg["gamma"], self.cfg["lam"])
        r.advantages = whiten(adv, r.mask)
        r.returns = ret
        return r

    # -- the step ----------------------------------------------------------------------------
    def train_step(self) -> None:
        """One PPO iteration: a rollout batch, then ``ppo_epochs`` passes of minibatch updates."""
        assert self.optimizer is not None
        prompts: list[PromptExample] = next(self.train_loader)
        r = self.rollout(prompts)
        n = r.input_ids.shape[0]
        lr = self.lr_at(self.global_step)
        self.apply_lr(lr)
        self._last_lr = lr
        mb = self.cfg["minibatch_size"] or n
        self.train_model.train()
        sums: dict[str, float] = {}
        updates = 0
        losses = []
        for _ in range(self.cfg["ppo_epochs"]):
            order = torch.randperm(n, device=r.input_ids.device)
            for start in range(0, n, mb):
                rows = order[start : start + mb]
                self.optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    loss, stats = self._update_loss(r, rows)
                loss.backward()
                grad_norm, applied = self.optimizer_step(loss.detach().float())
                self.metrics.add_optimizer_step(grad_norm)
                if not applied:
                    self.nonfinite_skipped += 1
                    self.emit("warning", message=f"non-finite PPO loss at step "
                              f"{self.global_step + 1}: update skipped", code="nonfinite",
                              global_step=self.global_step + 1)
                losses.append(loss.detach().float())
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                updates += 1
        mean_loss = torch.stack(losses).mean()
        tokens = int(r.attention_mask.sum()) + int(r.mask.sum())
        self.metrics.add_micro_batch(mean_loss, None, tokens, n)
        self._last_step_loss = mean_loss
        seq_kl = ((r.old_logprobs - r.ref_logprobs) * r.mask).sum(-1).mean().item()
        self.metrics.add_metric("reward", r.scores.mean())
        self.metrics.add_metric("kl", seq_kl)
        self.metrics.add_metric("response_len", r.mask.sum(-1).float().mean())
        for k, v in sums.items():
            self.metrics.add_metric(k, v / max(1, updates))
        if not self.grpo:
            self.metrics.add_metric("kl_coef", self.kl_ctl.value)
            if self.cfg["adaptive_kl"] and math.isfinite(seq_kl):
                self.kl_ctl.update(seq_kl, n)

    def _update_loss(self, r: Rollout, rows: Tensor) -> tuple[Tensor, dict[str, float]]:
        out = self._forward(self.train_model, r, rows, hidden=not self.grpo)
        labels, mask = r.labels[rows], r.mask[rows]
        logprobs = token_logprobs(out["logits"], labels)
        with torch.no_grad():
            entropy = masked_mean(entropy_from_logits(out["logits"]), mask).item()
        assert r.advantages is not None
        if self.grpo:
            g = grpo_loss(logprobs, r.old_logprobs[rows], r.ref_logprobs[rows],
                          r.advantages[rows], mask, self.cfg["clip"], self.cfg["grpo_beta"])
            return g.loss, {"clip_frac": g.clip_fraction.item(), "approx_kl": g.approx_kl.item(),
                            "grpo_kl": g.kl.item(), "entropy": entropy}
        assert r.values is not None and r.returns is not None
        pol = ppo_policy_loss(logprobs, r.old_logprobs[rows], r.advantages[rows], mask,
                              self.cfg["clip"])
        values = self._values(out)
        v_loss = ppo_value_loss(values, r.values[rows], r.returns[rows], mask,
                                self.cfg["vf_clip"])
        loss = pol.loss + self.cfg["vf_coef"] * v_loss
        if self.cfg["entropy_coef"]:
            loss = loss - self.cfg["entropy_coef"] * masked_mean(
                entropy_from_logits(out["logits"]), mask)
        return loss, {"policy_loss": pol.loss.item(), "value_loss": v_loss.item(),
                      "clip_frac": pol.clip_fraction.item(), "approx_kl": pol.approx_kl.item(),
                      "entropy": entropy}

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: list[dict[str, Tensor]] | None = None) -> dict[str, Any]:
        """Mean reward and KL (nats/sequence) on held-out prompts, sampled with a fixed seed so
        every evaluation of the run draws comparably."""
        prompts = self.val_prompts[: self.cfg["eval_prompts"]]
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.config.seed + 1)
        scores, kls, lengths, stds = [], [], [], []
        was_training = self.model.training
        for i in range(0, len(prompts), self.micro_batch):
            chunk = prompts[i : i + self.micro_batch]
            rows, out, ids, mask = self.sample(chunk, self.cfg["eval_samples"], generator)
            score, std = self._score(rows, ids, mask, out.tokens, out.lengths)
            scores.append(score)
            if std is not None:
                stds.append(std)
            dec, dec_mask, labels = decoder_tensors(out.tokens, out.lengths)
            r = Rollout(ids, mask, dec, dec_mask, labels, (labels != IGNORE_INDEX).long(),
                        scores[-1], torch.empty(0), torch.empty(0))
            self.model.eval()
            assert self.reference is not None
            with self.autocast():
                lp = token_logprobs(self._forward(self.model, r)["logits"], labels)
                ref = token_logprobs(self._forward(self.reference, r)["logits"], labels)
            kls.append(((lp - ref) * r.mask).sum(-1))
            lengths.append(r.mask.sum(-1).float())
        self.model.train(was_training)
        reward = torch.cat(scores).mean().item()
        extra = {"reward_std": torch.cat(stds).mean().item()} if stds else {}
        return self.eval_result(
            -reward, float(torch.cat(lengths).sum()),
            reward=reward, kl=torch.cat(kls).mean().item(),
            response_len=torch.cat(lengths).mean().item(), **extra,
        )
