"""UncertaintyQuantification: shapes, MC variance, entropy identity, loss, ECE."""

from __future__ import annotations

import math

import pytest
import torch
from enh_common import tiny_config

from core.model.uncertainty import (
    UncertaintyQuantification,
    evidential_loss,
    expected_calibration_error,
    nll_to_bins,
    sequence_nll,
    uncertainty_loss,
    uncertainty_targets,
)


def _uq(**overrides: object) -> UncertaintyQuantification:
    torch.manual_seed(0)
    return UncertaintyQuantification(tiny_config(**overrides))


def test_shapes_and_passes_cheap_in_training_n_in_eval() -> None:
    uq = _uq()
    x = torch.randn(3, 5, 32)
    est = uq.train()(x)
    assert est["mc_passes"] == 1 and est["mc_logits"].shape == (1, 3, 15)
    est = uq.eval()(x)
    assert est["mc_passes"] == 4 and est["mc_logits"].shape == (4, 3, 15)
    assert est["ensemble_logits"].shape == (2, 3, 15) and est["alpha"].shape == (3, 15)
    for key in ("predictive_entropy", "aleatoric", "epistemic", "evidential_uncertainty",
                "expected_nll", "mc_variance"):
        assert est[key].shape == (3,), key
    assert est["probs"].shape == (3, 15)
    assert torch.allclose(est["probs"].sum(-1), torch.ones(3))
    assert uq(x, mc_samples=7)["mc_logits"].shape[0] == 7


def test_mc_variance_zero_without_dropout_positive_with_it() -> None:
    x = torch.randn(4, 6, 32)
    off = _uq(uq_mc_dropout=0.0).eval()(x)
    on = _uq(uq_mc_dropout=0.3).eval()(x)
    assert torch.all(off["mc_variance"] == 0)
    assert torch.all(on["mc_variance"] > 0)


def test_entropy_decomposition_identity_and_ranges() -> None:
    est = _uq(uq_mc_dropout=0.3).eval()(torch.randn(4, 6, 32) * 3)
    assert torch.allclose(est["predictive_entropy"], est["aleatoric"] + est["epistemic"], atol=1e-6)
    assert torch.all(est["epistemic"] >= 0)
    assert torch.all(est["predictive_entropy"] <= math.log(15) + 1e-6)
    assert torch.all(est["evidential_uncertainty"] > 0) and torch.all(est["evidential_uncertainty"] <= 1)
    assert torch.all((est["expected_nll"] >= 0) & (est["expected_nll"] <= math.log(96)))


def test_module_does_not_change_x_and_masked_positions_are_ignored() -> None:
    uq = _uq(uq_mc_dropout=0.0).eval()
    x = torch.randn(2, 4, 32)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    x2 = x.clone()
    x2[0, 2:] = 100.0  # padding content must not matter
    a, b = uq(x, mask), uq(x2, mask)
    assert torch.allclose(a["probs"], b["probs"])


def test_loss_gradients_reach_every_head_and_training_fits_targets() -> None:
    uq = _uq().train()
    x = torch.randn(8, 5, 32)
    targets = torch.arange(8) % 15
    est = uq(x)
    loss = uncertainty_loss(est, targets, step=10)
    loss.backward()
    for name, p in uq.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt = torch.optim.Adam(uq.parameters(), lr=1e-2)
    first = float(loss.detach())
    for _ in range(40):
        opt.zero_grad()
        loss = uncertainty_loss(uq(x), targets, step=10)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    # the heads learn the targets: the mean prediction picks the right bin
    assert bool((uq.eval()(x)["probs"].argmax(-1) == targets).all())
    # the loss is weighted by 0.01
    assert first < 0.01 * (2 * math.log(15) + 3)


def test_evidential_loss_kl_annealing() -> None:
    alpha = torch.tensor([[5.0, 1.0, 1.0]])
    y = torch.tensor([1])
    assert float(evidential_loss(alpha, y, 0)) < float(evidential_loss(alpha, y, 1000))
    assert float(evidential_loss(alpha, y, 1000)) == pytest.approx(float(evidential_loss(alpha, y, 5000)))


def test_targets_from_logits_and_labels() -> None:
    vocab = 96
    logits = torch.zeros(2, 3, vocab)  # uniform: NLL = ln V -> last bin
    labels = torch.tensor([[5, 6, -100], [-100, -100, -100]])
    nll = sequence_nll(logits, labels)
    assert nll[0] == pytest.approx(math.log(vocab)) and nll[1] == 0
    assert uncertainty_targets(logits, labels).tolist() == [14, 0]
    assert nll_to_bins(torch.tensor([0.0, 0.5 * math.log(vocab), 99.0]), vocab).tolist() == [0, 7, 14]


def test_diverged_nll_gives_valid_bins_and_a_nonfinite_loss_not_a_crash() -> None:
    # Diverged weights (NaN logits) must not crash the UQ loss with a garbage class index: the
    # trainer needs a non-finite loss so it can skip the update or roll back.
    nan = float("nan")
    bins = nll_to_bins(torch.tensor([nan, float("inf"), -float("inf")]), 96)
    assert bins.tolist() == [14, 14, 0]
    uq = _uq()
    est = uq(torch.full((2, 4, 32), nan))
    loss = uncertainty_loss(est, nll_to_bins(torch.tensor([nan, nan]), 96), step=1)
    assert not torch.isfinite(loss)


def test_ece_of_perfect_and_overconfident_predictions() -> None:
    targets = torch.tensor([0, 1, 2, 3])
    perfect = torch.eye(15)[targets]
    assert expected_calibration_error(perfect, targets) == 0.0
    wrong = torch.eye(15)[(targets + 1) % 15]
    assert expected_calibration_error(wrong, targets) == pytest.approx(1.0)
    half = torch.full((4, 15), 0.5 / 14)
    half[torch.arange(4), targets] = 0.5
    half_targets = torch.tensor([0, 1, 9, 9])  # two right, two wrong at confidence 0.5
    assert expected_calibration_error(half, half_targets) == pytest.approx(0.0, abs=1e-6)
