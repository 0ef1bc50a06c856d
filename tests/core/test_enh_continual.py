"""ContinualLearningModule (task FiLM) and EWC: penalty, retention, persistence, validation."""

from __future__ import annotations

import pytest
import torch
from enh_common import tiny_config
from torch import Tensor, nn

from core.model.continual import ContinualLearningModule, ElasticWeightConsolidation


class ToyClassifier(nn.Module):
    """A two-layer MLP classifier returning ``{"loss"}`` like the backbone does."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return {"loss": nn.functional.cross_entropy(self.net(x), labels)}


def _task(seed: int, n: int = 256) -> list[dict[str, Tensor]]:
    """Labels drawn from a random linear teacher's softmax: noisy, like next-token targets."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(8, 4, generator=gen) * 2.0
    x = torch.randn(n, 8, generator=gen)
    y = torch.multinomial((x @ teacher).softmax(-1), 1, generator=gen).squeeze(-1)
    return [{"x": x[i : i + 32], "labels": y[i : i + 32]} for i in range(0, n, 32)]


def _train(model: nn.Module, batches: list[dict[str, Tensor]], steps: int,
           ewc: ElasticWeightConsolidation | None = None) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        loss = model(**batches[step % len(batches)])["loss"]
        if ewc is not None:
            loss = loss + ewc.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _loss(model: nn.Module, batches: list[dict[str, Tensor]]) -> float:
    with torch.no_grad():
        return sum(float(model(**b)["loss"]) for b in batches) / len(batches)


def test_penalty_is_zero_at_the_anchor_and_grows_with_distance() -> None:
    torch.manual_seed(0)
    model = ToyClassifier()
    ewc = ElasticWeightConsolidation(ewc_lambda=5.0)
    assert ewc.consolidate(model, _task(1)) == 256  # per-sample gradients
    assert float(ewc.penalty().detach()) == 0.0
    direction = [torch.randn_like(p) for p in model.parameters()]
    values = []
    for scale in (0.01, 0.1, 1.0):
        with torch.no_grad():
            for p, anchor, d in zip(model.parameters(), ewc.anchor.values(), direction, strict=True):
                p.copy_(anchor + scale * d)
        values.append(float(ewc.penalty().detach()))
    assert 0 < values[0] < values[1] < values[2]
    # quadratic in the distance: ×10 distance -> ×100 penalty
    assert values[2] / values[1] == pytest.approx(100.0, rel=1e-3)


def test_penalty_matches_the_formula_and_is_differentiable() -> None:
    torch.manual_seed(0)
    model = ToyClassifier()
    ewc = ElasticWeightConsolidation(ewc_lambda=3.0)
    ewc.consolidate(model, _task(1), param_pattern=r"^net\.2\.", per_sample=False)
    assert set(ewc.fisher) == {"net.2.weight", "net.2.bias"}
    with torch.no_grad():
        model.net[2].weight.add_(0.5)
    expected = 1.5 * sum(
        float((ewc.fisher[n] * (p.detach() - ewc.anchor[n]) ** 2).sum())
        for n, p in model.named_parameters() if n in ewc.fisher
    )
    penalty = ewc.penalty()
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    assert model.net[2].weight.grad is not None and model.net[0].weight.grad is None


def test_repeated_consolidation_adds_fishers_and_moves_the_anchor() -> None:
    torch.manual_seed(0)
    model = ToyClassifier()
    ewc = ElasticWeightConsolidation(1.0)
    ewc.consolidate(model, _task(1))
    first = {n: f.clone() for n, f in ewc.fisher.items()}
    with torch.no_grad():
        model.net[0].weight.add_(0.3)
    ewc.consolidate(model, _task(2))
    assert ewc.num_consolidations == 2
    for n, f in ewc.fisher.items():
        assert torch.all(f >= first[n]) and not torch.equal(f, first[n])
    assert torch.equal(ewc.anchor["net.0.weight"], model.net[0].weight.detach())


def test_ewc_keeps_first_task_loss_lower_than_plain_fine_tuning() -> None:
    task_a, task_b = _task(1), _task(2)
    results = {}
    for use_ewc in (False, True):
        torch.manual_seed(0)
        model = ToyClassifier()
        _train(model, task_a, 150)
        ewc = None
        if use_ewc:
            ewc = ElasticWeightConsolidation(ewc_lambda=5.0)
            ewc.consolidate(model, task_a)
        _train(model, task_b, 150, ewc)
        results[use_ewc] = (_loss(model, task_a), _loss(model, task_b))
    plain_a, _ = results[False]
    ewc_a, ewc_b = results[True]
    assert ewc_a < 0.7 * plain_a, results
    # ... while still learning the second task
    assert ewc_b < _loss_untrained(task_b)


def _loss_untrained(batches: list[dict[str, Tensor]]) -> float:
    torch.manual_seed(0)
    return _loss(ToyClassifier(), batches)


def test_state_round_trips_through_a_file(tmp_path) -> None:
    torch.manual_seed(0)
    model = ToyClassifier()
    ewc = ElasticWeightConsolidation(7.0)
    ewc.consolidate(model, _task(1))
    with torch.no_grad():
        model.net[0].bias.add_(0.2)
    path = tmp_path / "ewc_state.safetensors"
    ewc.save(str(path))
    restored = ElasticWeightConsolidation(1.0)
    restored.load(str(path))
    assert restored.ewc_lambda == 7.0 and restored.num_consolidations == 1
    assert float(restored.penalty(model).detach()) == pytest.approx(float(ewc.penalty().detach()), rel=1e-6)
    bad = {k: v for k, v in ewc.state_dict().items() if not k.startswith("anchor.net.0.bias")}
    with pytest.raises(ValueError, match="net.0.bias"):
        ElasticWeightConsolidation(1.0).load_state_dict(bad)


def test_penalty_without_a_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no model bound"):
        ElasticWeightConsolidation(1.0).penalty()


def test_task_film_is_identity_at_init_then_conditions_per_task() -> None:
    torch.manual_seed(0)
    cl = ContinualLearningModule(tiny_config())
    x = torch.randn(2, 4, 32)
    same, e = cl(x)
    assert torch.equal(same, x) and e is None
    out, e = cl(x, task_id=1)
    assert torch.equal(out, x) and e.shape == (2, 32)  # zero-init FiLM
    out.square().sum().backward()
    assert cl.film.weight.grad.abs().sum() > 0
    with torch.no_grad():
        cl.film.weight.normal_(std=0.1)
    a, _ = cl(x, task_id=torch.tensor([0, 1]))
    b, _ = cl(x, task_id=torch.tensor([2, 1]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    a.sum().backward()
    assert cl.task_embedding.weight.grad[[0, 1]].abs().sum() > 0


@pytest.mark.parametrize(
    ("task_id", "needle"),
    [(3, "task_id 3 is out of range"), (-1, "out of range"), (torch.tensor([0, 5]), "contains 5"),
     (torch.tensor([0, 1, 2]), "shape"), (torch.tensor([0.0, 1.0]), "dtype"), (1.5, "float"),
     (True, "bool")],
)
def test_task_id_out_of_range_or_malformed_raises(task_id, needle) -> None:
    cl = ContinualLearningModule(tiny_config())
    with pytest.raises(ValueError, match="task_id") as err:
        cl(torch.randn(2, 3, 32), task_id=task_id)
    assert needle in str(err.value)
    assert "[0, 3)" in str(err.value)


def test_ewc_state_travels_in_the_module_state_dict() -> None:
    torch.manual_seed(0)
    host = nn.Module()
    host.continual_learning = ContinualLearningModule(tiny_config())
    host.head = nn.Linear(4, 1)
    assert not any("ewc_state" in k for k in host.state_dict())

    def loss_fn(model: nn.Module, batch: Tensor) -> Tensor:
        e = model.continual_learning.task_embedding.weight[:1, :4]
        return model.head(batch * e).square().mean()

    host.continual_learning.consolidate(host, [torch.randn(3, 4) for _ in range(2)], loss_fn=loss_fn)
    state = host.state_dict()
    assert "continual_learning.ewc_state.fisher.head.weight" in state
    assert "continual_learning.ewc_state.anchor.continual_learning.film.bias" in state
    copy = nn.Module()
    copy.continual_learning = ContinualLearningModule(tiny_config())
    copy.head = nn.Linear(4, 1)
    copy.load_state_dict(state)  # strict: the EWC keys are consumed, not "unexpected"
    restored = copy.continual_learning.ewc
    assert restored.num_consolidations == 1
    assert torch.equal(restored.fisher["head.weight"], host.continual_learning.ewc.fisher["head.weight"])
    with torch.no_grad():
        copy.head.weight.add_(0.1)
        host.head.weight.add_(0.1)
    assert float(copy.continual_learning.penalty(copy).detach()) == pytest.approx(
        float(host.continual_learning.penalty().detach()), rel=1e-6)
