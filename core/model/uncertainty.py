"""Uncertainty quantification: how sure is the model about its own loss on a sequence?

Interpretation (model.md §4.4): the heads predict which of ``uq_num_bins`` (15) equal bins of
``[0, ln V]`` (the last bin open) the sequence's mean decoder NLL falls into, from the pooled
encoder states. Three families of heads share that target:

- one Monte-Carlo head with dropout that stays on even in eval; ``uq_mc_samples`` passes at
  inference, a single pass while training (the cheap default);
- ``uq_ensemble_size`` independently initialised heads (a small deep ensemble);
- one evidential head whose output parameterises a Dirichlet, ``alpha = softplus(out) + 1``.

With ``p̄`` the mean of the MC and ensemble softmaxes, ``predictive_entropy = H(p̄)``,
``aleatoric = mean_m H(p_m)`` and ``epistemic = predictive - aleatoric`` (the mutual
information, never negative up to rounding). The module never changes the hidden states.

The training engine (``core/train/engine.py``) adds :func:`auxiliary_loss` — :func:`uncertainty_loss`
(× 0.01) against the bins of the batch's own per-sequence NLL — to every micro-batch's objective
and reports it and :func:`batch_calibration_error` (15-bin ECE) as the step-event metrics
``uq_loss`` and ``uq_ece``. :func:`uncertainty_targets` turns logits and labels into target bins.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model.layers import masked_mean_pool

UQ_LOSS_WEIGHT = 0.01
KL_ANNEAL_STEPS = 1000


def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy (nats) over the last axis."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)


def _head(d_model: int, num_bins: int, std: float) -> nn.Sequential:
    hidden = d_model // 2
    # skip_init: no default (Kaiming) draw before the spec's own initialisation.
    first = torch.nn.utils.skip_init(nn.Linear, d_model, hidden)
    last = torch.nn.utils.skip_init(nn.Linear, hidden, num_bins)
    head = nn.Sequential(first, nn.SiLU(), last)
    for layer in (first, last):
        nn.init.normal_(layer.weight, std=std)  # the spec's N(0, initializer_range), zero bias
        nn.init.zeros_(layer.bias)
    return head


class UncertaintyQuantification(nn.Module):
    """MC-dropout, ensemble and evidential heads over the pooled encoder states.

    ``forward(x, mask)`` returns the uncertainty-estimate dict (per sequence). The number of MC
    passes is 1 while training and ``uq_mc_samples`` in eval; pass ``mc_samples`` to choose.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        d = config.d_model
        self.num_bins = int(config.uq_num_bins)
        self.vocab_size = int(config.vocab_size)
        self.mc_samples = int(config.uq_mc_samples)
        self.mc_dropout = float(config.uq_mc_dropout)
        std = float(config.initializer_range)
        self.mc_head = _head(d, self.num_bins, std)
        self.ensemble_heads = nn.ModuleList(
            _head(d, self.num_bins, std) for _ in range(int(config.uq_ensemble_size))
        )
        self.evidential_head = _head(d, self.num_bins, std)
        # Bin centres in nats; the last bin is open, its centre is taken at half a width past
        # its lower edge like the others.
        width = math.log(self.vocab_size) / self.num_bins
        centres = (torch.arange(self.num_bins, dtype=torch.float32) + 0.5) * width
        self.register_buffer("bin_centres", centres, persistent=False)

    def _mc_logits(self, pooled: Tensor, passes: int) -> Tensor:
        """``(passes, B, bins)``: one shared first layer, a fresh dropout mask per pass."""
        first, act, last = self.mc_head[0], self.mc_head[1], self.mc_head[2]
        h = act(first(pooled))
        h = h.unsqueeze(0).expand(passes, *h.shape)
        # Dropout stays on in eval: that is what makes it Monte Carlo.
        h = F.dropout(h, p=self.mc_dropout, training=self.mc_dropout > 0)
        return last(h)

    def forward(self, x: Tensor, mask: Tensor | None = None, mc_samples: int | None = None) -> dict[str, Any]:
        passes = mc_samples if mc_samples is not None else (1 if self.training else self.mc_samples)
        if passes < 1:
            raise ValueError(f"mc_samples must be >= 1, got {passes}")
        pooled = masked_mean_pool(x, mask).float()
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            return self._estimates(pooled, passes)

    def _estimates(self, pooled: Tensor, passes: int) -> dict[str, Any]:
        mc_logits = self._mc_logits(pooled, passes)
        ens_logits = torch.stack([head(pooled) for head in self.ensemble_heads])
        alpha = F.softplus(self.evidential_head(pooled)) + 1.0
        with torch.no_grad():
            member_probs = torch.cat([mc_logits, ens_logits]).softmax(dim=-1)  # (M,B,K)
            mean_probs = member_probs.mean(dim=0)
            predictive = _entropy(mean_probs)
            aleatoric = _entropy(member_probs).mean(dim=0)
            mc_probs = mc_logits.softmax(dim=-1)
            mc_variance = mc_probs.var(dim=0, unbiased=False).mean(dim=-1)
            strength = alpha.sum(dim=-1)
            return {
                "predictive_entropy": predictive,
                "aleatoric": aleatoric,
                "epistemic": (predictive - aleatoric).clamp_min(0.0),
                "evidential_uncertainty": self.num_bins / strength,
                "expected_nll": mean_probs @ self.bin_centres.to(mean_probs.dtype),
                "mc_variance": mc_variance,
                "probs": mean_probs,
                "mc_passes": passes,
                # Differentiable head outputs for the trainer-side loss.
                "mc_logits": mc_logits,
                "ensemble_logits": ens_logits,
                "alpha": alpha,
            }


def nll_to_bins(nll: Tensor, vocab_size: int, num_bins: int = 15) -> Tensor:
    """Bin index of each mean NLL among ``num_bins`` equal bins of ``[0, ln V]`` (last open).

    A non-finite NLL (diverged weights) goes to the last bin: casting NaN to an integer would
    give a garbage class index and crash the loss instead of letting the trainer skip the step.
    """
    width = math.log(vocab_size) / num_bins
    bins = torch.nan_to_num(nll.detach().float() / width, nan=num_bins - 1.0)
    return bins.floor().clamp(0, num_bins - 1).long()


def sequence_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sequence mean token NLL over ``labels != -100`` (0 for a sequence without labels)."""
    nll = F.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    valid = (labels != -100).float()
    return (nll * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


def uncertainty_targets(logits: Tensor, labels: Tensor, num_bins: int = 15) -> Tensor:
    """Target bins ``(B,)`` for :func:`uncertainty_loss` from decoder logits and labels."""
    return nll_to_bins(sequence_nll(logits.detach(), labels), logits.shape[-1], num_bins)


def _dirichlet_kl_to_uniform(alpha: Tensor) -> Tensor:
    """``KL(Dir(alpha) ‖ Dir(1))`` per row."""
    k = alpha.shape[-1]
    strength = alpha.sum(dim=-1)
    return (
        torch.lgamma(strength)
        - math.lgamma(k)
        - torch.lgamma(alpha).sum(dim=-1)
        + ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(strength).unsqueeze(-1))).sum(dim=-1)
    )


def evidential_loss(alpha: Tensor, targets: Tensor, step: int) -> Tensor:
    """Per-row ``Σ(y−p̂)² + p̂(1−p̂)/(S+1) + min(1, step/1000)·KL(Dir(α̃)‖Dir(1))``."""
    y = F.one_hot(targets, alpha.shape[-1]).to(alpha.dtype)
    strength = alpha.sum(dim=-1, keepdim=True)
    p_hat = alpha / strength
    fit = ((y - p_hat) ** 2 + p_hat * (1.0 - p_hat) / (strength + 1.0)).sum(dim=-1)
    alpha_tilde = y + (1.0 - y) * alpha
    anneal = min(1.0, max(step, 0) / KL_ANNEAL_STEPS)
    return fit + anneal * _dirichlet_kl_to_uniform(alpha_tilde)


def uncertainty_loss(estimates: dict[str, Any], target_nll_bins: Tensor, step: int) -> Tensor:
    """Trainer-side UQ loss, already weighted by 0.01.

    Mean cross-entropy of the MC passes and of the ensemble heads to the target bin, plus the
    evidential loss, each averaged over the batch.
    """
    targets = target_nll_bins.long().to(estimates["alpha"].device)
    mc = estimates["mc_logits"]
    ens = estimates["ensemble_logits"]
    ce_mc = F.cross_entropy(mc.reshape(-1, mc.shape[-1]), targets.repeat(mc.shape[0]))
    ce_ens = F.cross_entropy(ens.reshape(-1, ens.shape[-1]), targets.repeat(ens.shape[0]))
    evid = evidential_loss(estimates["alpha"], targets, step).mean()
    return UQ_LOSS_WEIGHT * (ce_mc + ce_ens + evid)


def expected_calibration_error(probs: Tensor, targets: Tensor, num_bins: int = 15) -> float:
    """ECE with ``num_bins`` equal confidence bins: ``Σ_b (n_b/N)·|acc_b − conf_b|``."""
    return float(calibration_error(probs, targets, num_bins))


def calibration_error(probs: Tensor, targets: Tensor, num_bins: int = 15) -> Tensor:
    """:func:`expected_calibration_error` as a 0-d tensor on ``probs``' device (no host sync:
    the trainer averages it into its step events)."""
    probs = probs.detach().float()
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == targets.to(predicted.device)).float()
    edges = torch.linspace(0.0, 1.0, num_bins + 1, device=probs.device)
    # Bin b holds confidences in (edge_b, edge_{b+1}]; confidence 0 cannot occur for a softmax.
    which = torch.bucketize(confidence, edges[1:-1], right=False)
    n = confidence.numel()
    if n == 0:
        return torch.zeros((), device=probs.device)
    counts = torch.zeros(num_bins, device=probs.device).index_add_(0, which, torch.ones_like(confidence))
    acc = torch.zeros(num_bins, device=probs.device).index_add_(0, which, correct)
    conf = torch.zeros(num_bins, device=probs.device).index_add_(0, which, confidence)
    nonzero = counts > 0
    gap = ((acc - conf).abs() * nonzero).sum()  # masked by multiplication: no sync on `nonzero`
    return gap / n


def auxiliary_loss(outputs: dict[str, Any], labels: Tensor | None, step: int) -> Tensor | None:
    """The trainer's UQ term for one forward: :func:`uncertainty_loss` against the bins of this
    batch's own per-sequence NLL, or None when the stage did not run or there are no labels."""
    est = outputs.get("uncertainty_estimates") or {}
    logits = outputs.get("logits")
    if "alpha" not in est or labels is None or logits is None:
        return None
    num_bins = est["alpha"].shape[-1]
    if est.get("sequence_nll") is not None:  # set by the backbone when it computed the loss
        targets = nll_to_bins(est["sequence_nll"], logits.shape[-1], num_bins)
    else:
        targets = uncertainty_targets(logits, labels, num_bins)
    return uncertainty_loss(est, targets, step)


def batch_calibration_error(outputs: dict[str, Any], labels: Tensor | None) -> Tensor | None:
    """15-bin ECE of the UQ heads' mean prediction against this batch's own NLL bins (the
    trainer's calibration figure, averaged over a log interval), or None when the stage did not
    run or there are no labels. Small batches overstate ECE; compare runs at equal batch size."""
    est = outputs.get("uncertainty_estimates") or {}
    logits = outputs.get("logits")
    if "probs" not in est or labels is None or logits is None:
        return None
    num_bins = est["probs"].shape[-1]
    if est.get("sequence_nll") is not None:
        targets = nll_to_bins(est["sequence_nll"], logits.shape[-1], num_bins)
    else:
        targets = uncertainty_targets(logits, labels, num_bins)
    return calibration_error(est["probs"], targets, num_bins)
