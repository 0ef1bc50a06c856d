"""Engine pieces with fakes: precision choice, OOM hook, non-finite skip, step statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import run_config, tiny_model_config

from core.runs.events import read_events
from core.train.metrics import StepMetrics, memory_stats
from core.train.simple import SimpleTrainer


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, dict)]


@pytest.mark.parametrize("major,expected", [(8, "bf16"), (9, "bf16"), (7, "fp16")])
def test_auto_precision_on_cuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, major: int,
                                expected: str) -> None:
    # A fake CUDA device: compute capability >= 8.0 gives bf16, older GPUs fp16 + GradScaler.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (major, 0))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    trainer = SimpleTrainer(run_config(tmp_path, tmp_path, precision="auto"), tiny_model_config())
    trainer.device = torch.device("cuda")
    assert trainer.resolve_precision() == expected


def test_explicit_bf16_on_old_gpu_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    trainer = SimpleTrainer(run_config(tmp_path, tmp_path, precision="bf16"), tiny_model_config())
    trainer.device = torch.device("cuda")
    with pytest.raises(ConfigError, match="bf16"):
        trainer.resolve_precision()


def test_auto_precision_on_cpu_follows_the_measured_default(tmp_path: Path) -> None:
    from core.model.precision import default_precision

    trainer = SimpleTrainer(run_config(tmp_path, tmp_path, precision="auto"), tiny_model_config())
    assert trainer.resolve_precision() == default_precision("cpu")
    explicit = SimpleTrainer(run_config(tmp_path, tmp_path, precision="fp32"), tiny_model_config())
    assert explicit.resolve_precision() == "fp32"


def test_cuda_memory_stats_use_allocator_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 100)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: 200)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 150)
    assert memory_stats("cuda") == {"allocated": 100, "reserved": 200, "peak": 150}
    cpu = memory_stats("cpu")
    assert cpu["allocated"] > 0 and cpu["peak"] >= cpu["allocated"]


class _OomOnce(SimpleTrainer):
    """Raises OutOfMemoryError on the first forward of step 3; recovers by halving the batch."""

    fired = False
    retried_on: list[int] = []

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> Any:
        if self.global_step == 2 and not self.fired:
            self.fired = True
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        if self.global_step == 2:
            self.retried_on.append(int(batch["input_ids"].shape[0]))
        return super().compute_loss(batch)

    def handle_oom(self, exc: BaseException) -> bool:
        self.set_micro_batch(self.micro_batch // 2, self.grad_accum * 2, reason="out of memory")
        return True


def test_oom_hook_retries_with_a_smaller_batch(tmp_path: Path, small_corpus: Path) -> None:
    trainer = _OomOnce(run_config(tmp_path / "r", small_corpus, steps=4), tiny_model_config())
    trainer.retried_on = []
    assert trainer.run() == "finished"
    assert trainer.retried_on == [2, 2]  # micro-batch 4 → 2, accumulation 1 → 2
    events = _events(tmp_path / "r")
    change = [e for e in events if e["type"] == "batch_change"]
    assert change and change[0]["micro_batch"] == 2 and change[0]["grad_accum"] == 2
    assert events[-1]["global_step"] == 4


def test_oom_that_persists_fails_the_run_with_advice(tmp_path: Path, small_corpus: Path) -> None:
    class Oom(SimpleTrainer):
        def compute_loss(self, batch: dict[str, torch.Tensor]) -> Any:
            raise torch.OutOfMemoryError("out of memory (fake)")

    from core.errors import ResourceError

    with pytest.raises(ResourceError, match="out of memory") as info:
        Oom(run_config(tmp_path / "r", small_corpus, steps=2), tiny_model_config()).run()
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    events = _events(tmp_path / "r")
    # micro-batch 4 -> 2 -> 1 (two splits, each a batch_change), then the error
    assert [e["micro_batch"] for e in events if e["type"] == "batch_change"] == [2, 1]
    assert events[-2]["type"] == "error" and "out of memory" in events[-2]["message"]
    assert "gradient_checkpointing" in events[-2]["message"] and "traceback" in events[-2]
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "failed"


def test_nonfinite_loss_skips_the_update(tmp_path: Path, small_corpus: Path) -> None:
    class NanAtStep3(SimpleTrainer):
        snapshot: dict[str, torch.Tensor] = {}

        def compute_loss(self, batch: dict[str, torch.Tensor]) -> Any:
            loss, outputs, n = super().compute_loss(batch)
            if self.global_step == 2:
                self.snapshot = {k: v.detach().clone() for k, v in self.model.state_dict().items()
                                 if v.dtype.is_floating_point}
                loss = loss * float("nan")
            return loss, outputs, n

        def on_step_end(self, step: int, loss: Any) -> None:
            if step == 3:
                params = dict(self.model.named_parameters())
                for name, before in self.snapshot.items():
                    if name in params:
                        assert torch.equal(params[name].detach(), before), name

    trainer = NanAtStep3(run_config(tmp_path / "r", small_corpus, steps=5), tiny_model_config())
    assert trainer.run() == "finished"
    events = _events(tmp_path / "r")
    warnings = [e for e in events if e["type"] == "warning" and e.get("code") == "nonfinite"]
    assert len(warnings) == 1 and "step 3" in warnings[0]["message"]
    steps = {e["global_step"]: e for e in events if e["type"] == "step"}
    assert 3 not in steps  # no finite loss in that interval: no invented number
    assert steps[5]["nonfinite_skipped"] == 1


def test_step_metrics_average_model_outputs() -> None:
    m = StepMetrics("cpu")
    for scores, keep in (([[0.2, 0.8], [0.4, 0.6]], [[0, 1], [1, 1]]), ([[0.6, 0.0]], [[1, 0]])):
        outputs = {
            "tot_branch_scores": torch.tensor(scores),
            "reasoning_info": {"branch_keep_mask": torch.tensor(keep, dtype=torch.bool),
                               "complexity_mean": 0.5, "skip_mask": torch.tensor([1.0, 0.0])},
            "scratchpad_stats": {"used_slots": 3, "total_slots": 8, "step_counter": 7,
                                 "slot_types": [1, 2, 0, 0, 0, 0, 0, 0]},
            "memory_statistics": {"slots_used": 5},
            "uncertainty_estimates": {"epistemic": torch.tensor([0.1, 0.3])},
        }
        m.add_micro_batch(torch.tensor(2.0), outputs, tokens=100, samples=len(scores))
    m.add_micro_batch(torch.tensor(float("nan")), None, tokens=0, samples=0)
    m.add_optimizer_step(torch.tensor(1.5))
    f = m.flush()
    assert f["loss"] == pytest.approx(2.0)  # the NaN micro-batch is not averaged in
    assert f["branch_scores_mean"] == pytest.approx([0.4, 14 / 30])
    assert f["branch_keep_frac"] == pytest.approx([2 / 3, 2 / 3])
    assert f["complexity_mean"] == pytest.approx(0.5)
    assert f["reasoning_skipped_frac"] == pytest.approx(0.5)
    assert f["epistemic_mean"] == pytest.approx(0.2)
    assert f["scratchpad"]["used_slots"] == 3 and f["memory_slots_used"] == 5
    assert f["grad_norm"] == pytest.approx(1.5)
    assert f["tokens_per_s"] > 0
