"""The engine trains the uncertainty heads (training.md §3: loss = CE + 0.01 · UQ loss).

The UQ stage never changes the hidden states, so without the trainer-side loss its heads get no
gradient at all; these tests pin that the engine adds it, reports it, and that the task loss
still falls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import run_config, tiny_model_config

from core.runs.events import read_events


def _uq_biases(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Biases: 1-D, so AdamW applies no weight decay to them; they move only through a gradient.
    return {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if name.startswith("uncertainty.") and name.endswith(".bias")
    }


def _trainer_class() -> type:
    from core.train.simple import SimpleTrainer

    class Watching(SimpleTrainer):
        """Snapshots the UQ biases before training and the UQ gradient norms after each step."""

        start: dict[str, torch.Tensor]
        grad_norms: list[float]

        def build_model(self) -> torch.nn.Module:
            model = super().build_model()
            self.start = _uq_biases(model)
            self.grad_norms = []
            return model

        def on_step_end(self, step: int, loss: Any) -> None:
            super().on_step_end(step, loss)
            grads = [p.grad for n, p in self.model.named_parameters()
                     if n.startswith("uncertainty.") and p.grad is not None]
            self.grad_norms.append(float(sum(g.float().norm() for g in grads)) if grads else 0.0)

    return Watching


def test_uncertainty_heads_learn_and_the_loss_still_falls(tmp_path: Path, small_corpus: Path) -> None:
    trainer = _trainer_class()(run_config(tmp_path / "r", small_corpus, steps=12, eval_every=1000,
                                          learning_rate=2e-3, warmup_steps=1),
                               tiny_model_config())
    assert trainer.run() == "finished"
    assert trainer.start, "the tiny model has uncertainty heads"
    assert all(g > 0 for g in trainer.grad_norms), trainer.grad_norms
    end = _uq_biases(trainer.model)
    moved = [n for n in trainer.start if not torch.equal(trainer.start[n], end[n])]
    assert len(moved) == len(trainer.start), sorted(set(trainer.start) - set(moved))

    steps = [e for e in read_events(tmp_path / "r" / "events.jsonl")
             if isinstance(e, dict) and e["type"] == "step"]
    assert len(steps) == 12
    uq = [e["metrics"]["uq_loss"] for e in steps]
    # Weighted × 0.01: CE of the MC and ensemble heads (≈ ln 15 each at init) + evidential term.
    assert all(0.0 < v < 0.2 for v in uq), uq
    ece = [e["metrics"]["uq_ece"] for e in steps]  # the spec's 15-bin calibration error
    assert all(0.0 <= v <= 1.0 for v in ece) and any(v > 0 for v in ece), ece
    losses = [e["loss"] for e in steps]
    # The reported loss is the task loss alone, and it falls with the UQ term in the objective.
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses


def test_without_the_auxiliary_loss_the_heads_get_no_gradient(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counterfactual: it is the engine's UQ term, not some other path, that trains them."""
    import core.train.engine as engine

    monkeypatch.setattr(engine, "auxiliary_loss", lambda *a, **k: None)
    trainer = _trainer_class()(run_config(tmp_path / "r", small_corpus, steps=3, eval_every=1000),
                               tiny_model_config())
    assert trainer.run() == "finished"
    assert trainer.grad_norms == [0.0, 0.0, 0.0]
    end = _uq_biases(trainer.model)
    assert all(torch.equal(trainer.start[n], end[n]) for n in trainer.start)
    steps = [e for e in read_events(tmp_path / "r" / "events.jsonl")
             if isinstance(e, dict) and e["type"] == "step"]
    assert all(not {"uq_loss", "uq_ece"} & set(e.get("metrics") or {}) for e in steps)


def test_a_failing_stage_is_bypassed_and_reported_once_as_a_warning(
    tmp_path: Path, small_corpus: Path
) -> None:
    """Production mode (strict_modules off): the run goes on, the failure is not silent."""
    from core.train.simple import SimpleTrainer

    class BrokenMemory(SimpleTrainer):
        def build_model(self) -> torch.nn.Module:
            model = super().build_model()
            # A real failure: a bank whose width no longer fits the memory projections.
            model.neural_memory.mem_keys = torch.zeros(8, 7)  # type: ignore[union-attr]
            model.neural_memory.written[:2] = True  # type: ignore[union-attr,index]
            return model

    trainer = BrokenMemory(run_config(tmp_path / "r", small_corpus, steps=3, eval_every=1000),
                           tiny_model_config())
    assert trainer.run() == "finished"
    events = [e for e in read_events(tmp_path / "r" / "events.jsonl") if isinstance(e, dict)]
    warnings = [e for e in events if e["type"] == "warning" and e.get("code") == "enhancement_error"]
    assert len(warnings) == 1, warnings  # once per stage, not once per step
    assert "neural_memory" in warnings[0]["message"] and "RuntimeError" in warnings[0]["message"]
    assert sum(e["type"] == "step" for e in events) == 3
