"""RLHF losses as pure tensor functions (spec rlhf.md §2–§4). No modules, no state but the KL
controller; every function takes tensors and returns tensors, so each is testable by hand.

Shapes: ``B`` sequences, ``T`` decoder positions. Masks are 1/True on scored (response) tokens
and 0 on the unscored prefix and padding. Log-probabilities are natural logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
PREFERENCE_LOSSES = ("sigmoid", "hinge", "ipo", "simpo")


# ----------------------------------------------------------------------------- helpers
def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is set (0 when nothing is set)."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp_min(1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance of ``x`` over the masked positions."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x − mean)/std`` over the masked positions (``shift_mean=False`` keeps the mean);
    unmasked positions come back as 0."""
    mean = masked_mean(x, mask)
    out = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def token_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``log p(label_t)`` at every position ``(B,T)``; 0 where the label is ``ignore_index``.

    Computed in fp32 (log-softmax of bf16 logits loses the small differences DPO relies on).
    """
    mask = labels != ignore_index
    safe = labels.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return picked * mask


def sequence_logprobs(
    logits: Tensor, labels: Tensor, average: bool = False, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """``log π(y|x) = Σ_t log p(y_t | y_<t, x)`` over the labelled tokens, shape ``(B,)``.

    ``average=True`` divides by the number of labelled tokens (SimPO's length normalisation).
    """
    per_token = token_logprobs(logits, labels, ignore_index)
    total = per_token.sum(-1)
    if average:
        total = total / (labels != ignore_index).sum(-1).clamp_min(1)
    return total


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax distribution at every position, ``(B,T)``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ----------------------------------------------------------------------------- reward model
@dataclass
class RewardLossOutput:
    """Bradley–Terry loss and its per-pair statistics."""

    loss: Tensor
    delta: Tensor  # r_c − r_r − m, per pair
    accuracy: Tensor  # fraction of pairs with r_c > r_r
    margin: Tensor  # mean r_c − r_r


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: float | Tensor = 0.0,
    label_smoothing: float = 0.0,
) -> RewardLossOutput:
    """``Δ = r_c − r_r − m``; ``L = −(1−ε) log σ(Δ) − ε log σ(−Δ)`` averaged over pairs."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    diff = chosen_rewards.float() - rejected_rewards.float()
    delta = diff - margin
    eps = label_smoothing
    losses = -(1.0 - eps) * F.logsigmoid(delta) - eps * F.logsigmoid(-delta)
    return RewardLossOutput(
        loss=losses.mean(),
        delta=delta.detach(),
        accuracy=(diff > 0).float().mean().detach(),
        margin=diff.mean().detach(),
    )


# ----------------------------------------------------------------------------- DPO family
@dataclass
class PreferenceLossOutput:
    """A preference-optimisation loss with the numbers the console shows."""

    loss: Tensor
    chosen_rewards: Tensor  # implicit rewards β(log π − log π_ref), per pair (SimPO: β/|y| log π)
    rejected_rewards: Tensor
    margin: Tensor  # mean(chosen − rejected)
    accuracy: Tensor  # fraction with chosen > rejected


def preference_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor | None,
    ref_rejected: Tensor | None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    simpo_gamma: float = 1.0,
) -> PreferenceLossOutput:
    """DPO (``sigmoid``), ``hinge``, ``ipo`` or ``simpo`` on sequence log-probabilities.

    With ``h = [log π(y_c) − log π_ref(y_c)] − [log π(y_r) − log π_ref(y_r)]``:
    sigmoid ``−(1−ε) log σ(βh) − ε log σ(−βh)``; hinge ``max(0, 1 − βh)``; IPO
    ``(h − 1/(2β))²``. SimPO needs no reference: ``r(y) = (β/|y|) log π(y|x)`` and
    ``L = −log σ(r_c − r_r − γ)`` (give the response lengths).
    """
    if loss_type not in PREFERENCE_LOSSES:
        raise ValueError(f"loss_type {loss_type!r}; expected one of {', '.join(PREFERENCE_LOSSES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    pc, pr = policy_chosen.float(), policy_rejected.float()
    if loss_type == "simpo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("simpo needs chosen_lengths and rejected_lengths")
        rc = beta * pc / chosen_lengths.float().clamp_min(1.0)
        rr = beta * pr / rejected_lengths.float().clamp_min(1.0)
        losses = -F.logsigmoid(rc - rr - simpo_gamma)
    else:
        if ref_chosen is None or ref_rejected is None:
            raise ValueError(f"{loss_type} needs reference log-probabilities")
        chosen_ratio = pc - ref_chosen.float()
        rejected_ratio = pr - ref_rejected.float()
        h = chosen_ratio - rejected_ratio
        if loss_type == "sigmoid":
            eps = label_smoothing
            losses = -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
        elif loss_type == "hinge":
            losses = torch.relu(1.0 - beta * h)
        else:  # ipo
            losses = (h - 1.0 / (2.0 * beta)) ** 2
        rc, rr = beta * chosen_ratio, beta * rejected_ratio
    rc, rr = rc.detach(), rr.detach()
    return PreferenceLossOutput(
        loss=losses.mean(),
        chosen_rewards=rc,
        rejected_rewards=rr,
        margin=(rc - rr).mean(),
        accuracy=(rc > rr).float().mean(),
    )


# ----------------------------------------------------------------------------- PPO
def kl_penalised_rewards(
    logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, scores: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor]:
    """Per-token rewards ``r_t = −β_KL (log π_old − log π_ref)``, plus the sequence score
    ``R(x,y)`` on each row's last valid token. Returns ``(rewards (B,T), kl (B,T))``."""
    m = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * m
    rewards = -kl_coef * kl
    last = last_valid_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards = rewards.clone()
    rewards[rows, last] += scores.to(rewards.dtype) * (m.sum(-1) > 0).to(rewards.dtype)
    return rewards, kl


def last_valid_index(mask: Tensor) -> Tensor:
    """Index of each row's last set position (0 for an empty row)."""
    t = mask.shape[-1]
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(-1).values


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over right-padded rows.

    ``δ_t = r_t + γ V_{t+1} − V_t`` (``V`` = 0 after a row's end), ``A_t = Σ_l (γλ)^l δ_{t+l}``,
    ``R_t = A_t + V_t``. Returns ``(advantages, returns)``, both 0 on padding.
    """
    m = mask.to(values.dtype)
    values = values * m
    t_len = rewards.shape[-1]
    adv = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(t_len)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m[:, t]
        # A padded position contributes nothing to the positions before it.
        next_value = values[:, t] * m[:, t]
        next_adv = adv[:, t]
    returns = (adv + values) * m
    return adv, returns


@dataclass
class PolicyLossOutput:
    """Clipped surrogate loss and its diagnostics."""

    loss: Tensor
    clip_fraction: Tensor  # mean(|ρ−1| > ε)
    approx_kl: Tensor  # mean((ρ−1) − log ρ)


def ppo_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2
) -> PolicyLossOutput:
    """``L_π = −mean(min(ρA, clip(ρ, 1±ε) A))`` over valid tokens, ``ρ = exp(log π − log π_old)``."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return PolicyLossOutput(loss, clip_fraction, approx_kl)


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2
) -> Tensor:
    """``L_V = 0.5·mean(max((V−R)², (V_old + clip(V−V_old, ±ε) − R)²))`` over valid tokens."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    losses = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(losses, mask)


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019): steer the per-sequence KL to ``target``.

    ``e = clip(KL/target − 1, ±0.2)``; ``β ← β (1 + e·n/horizon)`` after a batch of ``n``.
    """

    def __init__(self, init_kl_coef: float = 0.2, target: float = 6.0, horizon: int = 10000):
        if init_kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError("init_kl_coef must be >= 0, target and horizon > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Update with the batch's mean per-sequence KL over ``n_steps`` samples; new β."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = int(state.get("horizon", self.horizon))


# ----------------------------------------------------------------------------- GRPO
def grpo_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4) -> Tensor:
    """Group-relative advantages ``A_i = (R_i − mean_g)/(std_g + eps)`` per group of
    ``group_size`` consecutive completions (``std`` is the sample standard deviation, as TRL).
    A group whose rewards are all equal gets advantage 0."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, "
            f"got shape {tuple(rewards.shape)}"
        )
    if group_size < 2:
        raise ValueError("GRPO needs group_size >= 2 (the advantage is relative to the group)")
    grouped = rewards.float().view(-1, group_size)
    mean = grouped.mean(-1, keepdim=True)
    std = grouped.std(-1, keepdim=True)
    return ((grouped - mean) / (std + eps)).reshape(-1)


@dataclass
class GRPOLossOutput:
    loss: Tensor
    kl: Tensor  # mean per-token D_t
    clip_fraction: Tensor
    approx_kl: Tensor


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    beta: float = 0.04,
) -> GRPOLossOutput:
    """``L = −mean_i (1/|y_i|) Σ_t [min(ρA_i, clip(ρ)A_i) − β D_t]`` with
    ``D_t = e^{q_t} − q_t − 1``, ``q_t = log π_ref − log π_θ`` (the k3 KL estimator)."""
    m = mask.to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs) * m
    ratio = torch.exp(log_ratio)
    adv = advantages.to(logprobs.dtype)[:, None]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
    q = (ref_logprobs - logprobs) * m
    kl = torch.exp(q) - q - 1.0
    per_seq = masked_mean(surrogate - beta * kl, m, dim=-1)
    loss = -per_seq.mean()
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip).float(), m)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, m)
    return GRPOLossOutput(loss, masked_mean(kl, m).detach(), clip_fraction, approx_kl)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 − Var(R − V)/Var(R)`` over valid tokens (a value-head health number)."""
    var_r = float(masked_var(returns, mask))
    if var_r == 0.0 or not math.isfinite(var_r):
        return float("nan")
    return 1.0 - float(masked_var(returns - values, mask)) / var_r
