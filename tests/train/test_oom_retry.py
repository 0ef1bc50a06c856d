"""Out of memory in a step: the engine splits the micro-batch, keeps the effective batch, and
the run goes on — or stops with a message that says what to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import run_config, tiny_model_config

from core.errors import ResourceError
from core.runs.events import ParseProblem, read_events


def _oom_above(limit: int, times: int | None = None) -> type:
    """A simple trainer whose step runs out of memory while the micro-batch exceeds ``limit``
    (the first ``times`` such steps only, if given) — what a GPU does at a fixed memory size."""
    from core.train.simple import SimpleTrainer

    class OomTrainer(SimpleTrainer):
        ooms = 0

        def train_step(self) -> None:
            if self.micro_batch > limit and (times is None or type(self).ooms < times):
                type(self).ooms += 1
                # Like a real OOM, mid-step: some gradients exist already.
                first = next(iter(self.model.parameters()))
                first.grad = torch.ones_like(first)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            super().train_step()

    return OomTrainer


def _events(run_dir: Path) -> list[dict[str, Any]]:
    events = list(read_events(run_dir / "events.jsonl"))
    assert not [e for e in events if isinstance(e, ParseProblem)]
    return events  # type: ignore[return-value]


def _losses(run_dir: Path) -> dict[int, float]:
    return {e["global_step"]: e["loss"] for e in _events(run_dir) if e["type"] == "step"}


@pytest.mark.parametrize("packing", ["on", "off"])
def test_oom_splits_the_micro_batch_and_trains_like_the_smaller_batch(
    tmp_path: Path, small_corpus: Path, packing: str
) -> None:
    trainer = _oom_above(2)(run_config(tmp_path / "oom", small_corpus, steps=6, micro_batch=8,
                                       packing=packing), tiny_model_config())
    assert trainer.run() == "finished"
    assert (trainer.micro_batch, trainer.grad_accum) == (2, 4)
    events = _events(tmp_path / "oom")
    changes = [e for e in events if e["type"] == "batch_change"]
    assert [(e["micro_batch"], e["grad_accum"], e["reason"]) for e in changes] == [
        (4, 2, "oom"), (2, 4, "oom")]
    warnings = [e["message"] for e in events if e.get("code") == "oom_retry"]
    assert len(warnings) == 2 and "same effective batch" in warnings[0]

    # Same samples, same effective batch: the run follows the trajectory the 8 × 1 run takes
    # without any OOM. Not bit-equal: four micro-batch means of 2 are averaged instead of one
    # token mean over 8 (the sequences differ in length), a ~1e-4 relative difference.
    reference = _oom_above(99)(run_config(tmp_path / "ref", small_corpus, steps=6, micro_batch=8,
                                          packing=packing), tiny_model_config())
    assert reference.run() == "finished"
    got, want = _losses(tmp_path / "oom"), _losses(tmp_path / "ref")
    assert got.keys() == want.keys() and len(got) == 6
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-3)
    assert got[6] < got[1] - 0.1  # and it learns


def test_the_split_survives_a_resume(tmp_path: Path, small_corpus: Path) -> None:
    run_dir = tmp_path / "r"
    cfg = run_config(run_dir, small_corpus, steps=4, micro_batch=4, checkpoint_every=2)
    assert _oom_above(2, times=1)(cfg, tiny_model_config()).run() == "finished"
    resumed = _oom_above(99)(
        run_config(run_dir, small_corpus, steps=6, micro_batch=4, checkpoint_every=2,
                   resume="latest"),
        tiny_model_config())
    assert resumed.run() == "finished"
    assert (resumed.micro_batch, resumed.grad_accum) == (2, 2)


def test_oom_at_micro_batch_one_says_what_to_do(tmp_path: Path, small_corpus: Path) -> None:
    cfg = run_config(tmp_path / "r", small_corpus, steps=3, micro_batch=1)
    with pytest.raises(ResourceError, match=r"out of memory .* at micro-batch 1 .*--seq-len"):
        _oom_above(0)(cfg, tiny_model_config()).run()
    errors = [e for e in _events(tmp_path / "r") if e["type"] == "error"]
    assert errors and "smaller --profile" in errors[0]["message"]


def test_retries_are_bounded(tmp_path: Path, small_corpus: Path) -> None:
    cfg = run_config(tmp_path / "r", small_corpus, steps=3, micro_batch=8, oom_retries=1)
    with pytest.raises(ResourceError, match="after 1 micro-batch split"):
        _oom_above(1)(cfg, tiny_model_config()).run()
