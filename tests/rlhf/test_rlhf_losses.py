"""RLHF losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from core.train.rlhf.losses import (
    AdaptiveKLController,
    bradley_terry_loss,
    gae,
    grpo_advantages,
    grpo_loss,
    kl_penalised_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    preference_loss,
    sequence_logprobs,
    token_logprobs,
    whiten,
)


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_bradley_terry_hand_values() -> None:
    rc = torch.tensor([2.0, 0.5])
    rr = torch.tensor([1.0, 1.5])
    out = bradley_terry_loss(rc, rr)
    expected = (-_logsig(1.0) - _logsig(-1.0)) / 2  # Δ = 1 and −1
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.accuracy.item() == pytest.approx(0.5)
    assert out.margin.item() == pytest.approx(0.0)


def test_bradley_terry_margin_and_label_smoothing() -> None:
    rc, rr = torch.tensor([3.0]), torch.tensor([1.0])
    out = bradley_terry_loss(rc, rr, margin=0.5, label_smoothing=0.1)
    d = 3.0 - 1.0 - 0.5
    expected = -0.9 * _logsig(d) - 0.1 * _logsig(-d)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.delta.tolist() == pytest.approx([1.5])


def test_token_and_sequence_logprobs_mask_prefix_and_padding() -> None:
    # Two positions, vocab 3; uniform logits at t0, peaked at t1. Row 1 has t1 padded.
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]], [[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]]
    )
    labels = torch.tensor([[1, 0], [2, -100]])
    tok = token_logprobs(logits, labels)
    assert tok[0].tolist() == pytest.approx([math.log(1 / 3), math.log(2 / 4)], abs=1e-6)
    assert tok[1, 1].item() == 0.0
    seq = sequence_logprobs(logits, labels)
    assert seq.tolist() == pytest.approx([math.log(1 / 3) + math.log(0.5), math.log(1 / 3)], abs=1e-6)
    avg = sequence_logprobs(logits, labels, average=True)
    assert avg[0].item() == pytest.approx((math.log(1 / 3) + math.log(0.5)) / 2, abs=1e-6)


def test_dpo_sigmoid_hinge_ipo_hand_values() -> None:
    pc, pr = torch.tensor([-10.0]), torch.tensor([-12.0])
    rc, rr = torch.tensor([-11.0]), torch.tensor([-11.5])
    h = (-10.0 + 11.0) - (-12.0 + 11.5)  # 1.5
    beta = 0.1
    out = preference_loss(pc, pr, rc, rr, beta=beta)
    assert out.loss.item() == pytest.approx(-_logsig(beta * h), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.1)
    assert out.rejected_rewards.item() == pytest.approx(-0.05)
    assert out.margin.item() == pytest.approx(0.15)
    assert out.accuracy.item() == 1.0
    smooth = preference_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.2)
    assert smooth.loss.item() == pytest.approx(
        -0.8 * _logsig(beta * h) - 0.2 * _logsig(-beta * h), abs=1e-6
    )
    hinge = preference_loss(pc, pr, rc, rr, beta=beta, loss_type="hinge")
    assert hinge.loss.item() == pytest.approx(1.0 - beta * h, abs=1e-6)
    ipo = preference_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo")
    assert ipo.loss.item() == pytest.approx((h - 1 / (2 * beta)) ** 2, abs=1e-5)


def test_simpo_hand_value() -> None:
    out = preference_loss(
        torch.tensor([-4.0]), torch.tensor([-9.0]), None, None, beta=2.0, loss_type="simpo",
        chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([3]), simpo_gamma=1.0,
    )
    rc, rr = 2.0 * -4.0 / 2, 2.0 * -9.0 / 3  # −4, −6
    assert out.loss.item() == pytest.approx(-_logsig(rc - rr - 1.0), abs=1e-6)
    assert out.accuracy.item() == 1.0


def test_dpo_gradient_raises_chosen_lowers_rejected() -> None:
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    preference_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0])).loss.backward()
    assert pc.grad is not None and pr.grad is not None
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises log π(y_c), lowers log π(y_r)
    assert pc.grad.item() == pytest.approx(-0.1 * 0.5)


def test_gae_hand_values_with_padding() -> None:
    gamma, lam = 0.9, 0.5
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.6, 9.9]])  # row 1: last position is padding
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # Row 0: δ2 = 1 − .3 = .7; δ1 = 0 + .9·.3 − .2 = .07; δ0 = .9·.2 − .1 = .08
    a2 = 0.7
    a1 = 0.07 + gamma * lam * a2
    a0 = 0.08 + gamma * lam * a1
    assert adv[0].tolist() == pytest.approx([a0, a1, a2], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([a0 + 0.1, a1 + 0.2, a2 + 0.3], abs=1e-6)
    # Row 1 ends at t=1: δ1 = 2 − .6 = 1.4 (no bootstrap from the padded 9.9); δ0 = .5 + .54 − .4
    b1 = 1.4
    b0 = (0.5 + gamma * 0.6 - 0.4) + gamma * lam * b1
    assert adv[1].tolist() == pytest.approx([b0, b1, 0.0], abs=1e-6)
    assert ret[1, 2].item() == 0.0


def test_kl_penalised_rewards_put_score_on_last_token() -> None:
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = kl_penalised_rewards(lp, ref, mask, torch.tensor([1.0, 0.0]), kl_coef=0.2)
    assert kl.flatten().tolist() == pytest.approx([0.5, 0.0, -1.0, 1.0, 0.0, 0.0])
    assert rewards.flatten().tolist() == pytest.approx([-0.1, 0.0, 0.2 + 1.0, -0.2, 0.0, 0.0])


def test_ppo_policy_clip_hand_values() -> None:
    # ρ = 1.5 (A>0: clipped to 1.2), ρ = 0.5 (A>0: unclipped min 0.5), ρ = 1.5 (A<0: 1.5·A)
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 1.0]]))
    adv = torch.tensor([[1.0, 1.0, -1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = ppo_policy_loss(new, old, adv, mask, clip=0.2)
    expected = -(1.2 * 1.0 + 0.5 * 1.0 + 1.5 * -1.0) / 3
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(1.0)  # all three |ρ−1| = .5 > .2
    kl = ((0.5 - math.log(1.5)) * 2 + (-0.5 - math.log(0.5))) / 3
    assert out.approx_kl.item() == pytest.approx(kl, abs=1e-6)


def test_ppo_clip_stops_gradient_outside_trust_region() -> None:
    new = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_(True)
    ppo_policy_loss(new, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2)).loss.backward()
    assert new.grad is not None
    assert new.grad[0, 0].item() == 0.0  # clipped: no push further
    assert new.grad[0, 1].item() == pytest.approx(-1.1 / 2)


def test_ppo_value_loss_hand_values() -> None:
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[2.0, 1.0]])
    loss = ppo_value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # t0: unclipped (1−2)² = 1; clipped V = .7 → (.7−2)² = 1.69 → max 1.69. t1: 1 and 1.
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2, abs=1e-6)


def test_adaptive_kl_controller() -> None:
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=100)
    assert ctl.update(12.0, 10) == pytest.approx(0.2 * (1 + 0.2 * 10 / 100))  # error clipped
    ctl2 = AdaptiveKLController(0.2, target=6.0, horizon=100)
    assert ctl2.update(5.4, 10) == pytest.approx(0.2 * (1 - 0.1 * 10 / 100))
    restored = AdaptiveKLController()
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value and restored.horizon == 100


def test_grpo_advantages_hand_values() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = grpo_advantages(r, group_size=4)
    std = math.sqrt(((0.5**2) * 4) / 3)  # sample std of (1,0,0,1)
    a = 0.5 / (std + 1e-4)
    assert adv[:4].tolist() == pytest.approx([a, -a, -a, a], abs=1e-6)
    assert adv[4:].tolist() == [0.0] * 4  # all equal: no signal
    with pytest.raises(ValueError):
        grpo_advantages(torch.ones(5), group_size=4)


def test_grpo_loss_hand_value() -> None:
    lp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 1.0]]))
    old = lp.detach().clone()
    ref = torch.log(torch.tensor([[0.25, 0.5], [0.25, 1.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -2.0])
    out = grpo_loss(lp, old, ref, adv, mask, beta=0.04)
    # ρ = 1. Row 0: q_t = log π_ref − log π = (log .25 − log .5, 0); row 1: q = 0, one token.
    q = math.log(0.25) - math.log(0.5)
    d0 = math.exp(q) - q - 1
    row0 = ((1.0 - 0.04 * d0) + (1.0 - 0.0)) / 2
    row1 = -2.0
    assert out.loss.item() == pytest.approx(-(row0 + row1) / 2, abs=1e-6)
    assert out.kl.item() == pytest.approx(d0 / 3, abs=1e-6)


def test_whiten_ignores_padding() -> None:
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    w = whiten(x, mask)
    assert w[0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-4)
