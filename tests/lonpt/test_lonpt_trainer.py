"""The LONPT trainer end to end on a very small model: curriculum, controllers, rails, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lonpt_helpers import (
    FakeMemory,
    events_of,
    lonpt_run_config,
    tiny_model_config,
    write_domain_corpus,
)

from core.errors import ConfigError, DataError
from lonpt.trainer import LonptTrainer

GB = 2**30
# 80 GB device, 20 GB static, 30 GB peak: ACT doubles 4 -> 8 like the log.
GROW = (30 * GB, 20 * GB, 80 * GB)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_domain_corpus(tmp_path / "styles.jsonl")


def _run(cfg: Any, trainer_cls: type = LonptTrainer, reader: Any = None, **kw: Any) -> Any:
    trainer = trainer_cls(cfg, tiny_model_config(), memory_reader=reader or FakeMemory(*GROW), **kw)
    status = trainer.run()
    return trainer, status


@pytest.mark.slow
def test_curriculum_events_checkpoints_and_falling_loss(tmp_path: Path, corpus: Path) -> None:
    run_dir = tmp_path / "run"
    trainer, status = _run(lonpt_run_config(run_dir, corpus))
    assert status == "finished"
    events = events_of(run_dir)
    starts = [e for e in events if e["type"] == "domain_change"]
    # style_map: qa -> semantic, math -> reasoning, code -> syntactic; equal sizes -> tokens_asc
    # keeps the declared order; two cycles.
    assert [(e["cycle"], e["domain"]) for e in starts] == [
        (1, "syntactic"), (1, "semantic"), (1, "reasoning"),
        (2, "syntactic"), (2, "semantic"), (2, "reasoning"),
    ]
    assert [e["cycle_start"] for e in starts] == [True, False, False, True, False, False]
    steps = [e for e in events if e["type"] == "step"]
    assert steps and all(e["phase"] in ("compression", "stabilize", "expansion", "settle") for e in steps)
    assert all(e["lr_scale"] == pytest.approx({"compression": 0.75, "expansion": 1.25}.get(e["phase"], 1.0))
               for e in steps)
    assert all(e["domain"] in ("syntactic", "semantic", "reasoning") for e in steps)
    # Local step numbers restart per domain pass; the global step never resets.
    assert [e["step"] for e in steps[:3]] == [2, 4, 6]
    assert [e["global_step"] for e in steps] == sorted(e["global_step"] for e in steps)
    # PNCEC with C = 8: a phase change every 2 global steps.
    changes = [e["global_step"] for e in events if e["type"] == "phase_change"]
    assert changes[:4] == [0, 1, 3, 5]
    # ACT grew the micro-batch to 8 at the start of each domain (after 2 probe steps).
    acts = [e for e in events if e["type"] == "batch_change" and e.get("reason") == "act"]
    assert len(acts) == 6 and all(e["micro_batch"] == 8 for e in acts)
    # Per-domain validation and best checkpoints named lonpt_<domain>_<step>.
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["domain"] for e in evals] == [e["domain"] for e in starts]
    ckpts = {e["name"] for e in events if e["type"] == "checkpoint"}
    for e in evals:
        name = f"lonpt_{e['domain']}_{e['global_step']:06d}"
        assert (name in ckpts) == e["best_of_domain"]
        if e["best_of_domain"]:
            assert (run_dir / "checkpoints" / name / "model.safetensors").is_file()
    # The first validation of a domain is always the domain's best; the run's best is one of them.
    assert all(e["best_of_domain"] for e in evals[:3]) and evals[0]["best"]
    # The loss falls: cycle-2 validation of every domain beats cycle 1, and training loss too.
    first = {e["domain"]: e["loss"] for e in evals[:3]}
    second = {e["domain"]: e["loss"] for e in evals[3:]}
    assert all(second[d] < first[d] for d in first)
    assert steps[-1]["loss"] < steps[0]["loss"]
    finished = events[-1]
    assert finished["type"] == "run_finished" and finished["checkpoint_dir"].endswith("checkpoints")


def test_oom_halves_micro_batch_doubles_accumulation_and_retries(tmp_path: Path, corpus: Path) -> None:
    class OomOnce(LonptTrainer):
        raised = False

        def compute_loss(self, batch: dict[str, torch.Tensor]) -> Any:
            if self.global_step == 3 and batch["input_ids"].shape[0] > 2 and not OomOnce.raised:
                OomOnce.raised = True
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return super().compute_loss(batch)

    run_dir = tmp_path / "oom"
    cfg = lonpt_run_config(run_dir, corpus, domain_cycles=1, act_enable=False)
    trainer, status = _run(cfg, OomOnce)
    assert status == "finished" and OomOnce.raised
    events = events_of(run_dir)
    ooms = [e for e in events if e["type"] == "batch_change" and e.get("reason") == "oom"]
    assert len(ooms) == 1
    assert (ooms[0]["micro_batch"], ooms[0]["grad_accum"], ooms[0]["global_step"]) == (2, 2, 3)
    # The step was retried, not lost: the first domain still trains its 6 steps.
    first_eval = next(e for e in events if e["type"] == "eval")
    assert first_eval["global_step"] == 6
    steps = [e for e in events if e["type"] == "step" and e["domain"] == "syntactic"]
    assert steps[-1]["micro_batch"] == 2 and steps[-1]["grad_accum"] == 2


def test_nonfinite_steps_are_skipped_then_rolled_back(tmp_path: Path, corpus: Path) -> None:
    seen: dict[str, Any] = {}

    class NanTrainer(LonptTrainer):
        def _take_snapshot(self) -> None:
            super()._take_snapshot()
            if self.current_domain == "semantic" and "snapshot" not in seen:
                seen["snapshot"] = {k: v.clone() for k, v in self.model.state_dict().items()}

        def compute_loss(self, batch: dict[str, torch.Tensor]) -> Any:
            loss, outputs, n = super().compute_loss(batch)
            if self.current_domain == "semantic" and self.position.local_step in (2, 3, 4):
                loss = loss * float("nan")
            return loss, outputs, n

        def _rollback(self, reason: str) -> None:
            super()._rollback(reason)
            seen["after"] = {k: v.clone() for k, v in self.model.state_dict().items()}
            seen["lr_multiplier"] = self.rails.lr_multiplier

    run_dir = tmp_path / "nan"
    cfg = lonpt_run_config(run_dir, corpus, domain_cycles=1, act_enable=False, rail_max_nonfinite=3)
    trainer, status = _run(cfg, NanTrainer)
    assert status == "finished"
    events = events_of(run_dir)
    skipped = [e for e in events if e["type"] == "warning" and "update skipped" in e["message"]]
    assert [e["global_step"] for e in skipped] == [9, 10, 11]
    assert all(e["domain"] == "semantic" for e in skipped)
    rollbacks = [e for e in events if e["type"] == "warning" and e.get("code") == "rail_rollback"]
    assert len(rollbacks) == 1 and "3 consecutive non-finite" in rollbacks[0]["message"]
    assert rollbacks[0]["global_step"] == 6 + 5  # after the 5th semantic step
    # The weights went back to the domain-start snapshot and the LR multiplier halved.
    for name, value in seen["snapshot"].items():
        assert torch.equal(seen["after"][name], value), name
    assert seen["lr_multiplier"] == 0.5
    later = [e for e in events if e["type"] == "step" and e["global_step"] > 11]
    assert later and all(e["lr_scale"] == pytest.approx(0.5 * {"compression": 0.75, "expansion": 1.25}.get(e["phase"], 1.0))
                         for e in later)
    assert events[-1]["type"] == "run_finished"
    assert max(e["nonfinite_skipped"] for e in events if e["type"] == "step") == 3


def test_loss_spike_rolls_back_and_halves_the_learning_rate(tmp_path: Path, corpus: Path) -> None:
    class Spike(LonptTrainer):
        def compute_loss(self, batch: dict[str, torch.Tensor]) -> Any:
            loss, outputs, n = super().compute_loss(batch)
            if self.global_step == 24:  # the 25th step; the rails arm after 20
                loss = loss * 10.0
            return loss, outputs, n

    run_dir = tmp_path / "spike"
    cfg = lonpt_run_config(run_dir, corpus, domain_cycles=2, steps_per_domain=5, act_enable=False,
                           pncec_enable=False)
    trainer, status = _run(cfg, Spike)
    assert status == "finished"
    events = events_of(run_dir)
    rollbacks = [e for e in events if e["type"] == "warning" and e.get("code") == "rail_rollback"]
    assert len(rollbacks) == 1 and "loss spike" in rollbacks[0]["message"]
    assert rollbacks[0]["global_step"] == 25
    lrs = {e["global_step"]: e["lr"] for e in events if e["type"] == "step"}
    assert lrs[24] == pytest.approx(3e-3) and lrs[27] == pytest.approx(1.5e-3)
    assert trainer.rails.lr_multiplier == 0.5


@pytest.mark.slow
def test_stop_and_resume_continues_the_curriculum_exactly(tmp_path: Path, corpus: Path) -> None:
    full_dir = tmp_path / "full"
    _run(lonpt_run_config(full_dir, corpus, log_every=1))
    full = {e["global_step"]: e["loss"] for e in events_of(full_dir) if e["type"] == "step"}

    part_dir = tmp_path / "part"
    holder: dict[str, Any] = {}

    def stop_at_9(event: dict[str, Any]) -> None:
        if event["type"] == "step" and event["global_step"] == 9:
            holder["t"].control.put("stop")

    cfg = lonpt_run_config(part_dir, corpus, log_every=1)
    trainer = LonptTrainer(cfg, tiny_model_config(), memory_reader=FakeMemory(*GROW),
                           listeners=[stop_at_9])
    holder["t"] = trainer
    assert trainer.run() == "stopped"
    resumed_cfg = lonpt_run_config(part_dir, corpus, log_every=1)
    resumed_cfg.resume = "latest"
    again = LonptTrainer(resumed_cfg, tiny_model_config(), memory_reader=FakeMemory(*GROW))
    assert again.run() == "finished"
    events = events_of(part_dir)
    part = {e["global_step"]: e["loss"] for e in events if e["type"] == "step"}
    assert sorted(part) == sorted(full)
    for step, loss in full.items():
        assert part[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    # The resumed run continued in the second domain of cycle 1 (no repeated domain header).
    starts = [(e["cycle"], e["domain"]) for e in events if e["type"] == "domain_change"]
    assert starts == [(1, "syntactic"), (1, "semantic"), (1, "reasoning"),
                      (2, "syntactic"), (2, "semantic"), (2, "reasoning")]


def test_hpf_model_trains_saves_and_resumes_factorised(tmp_path: Path, corpus: Path) -> None:
    from core.runs.checkpoint import load_checkpoint
    from lonpt.hpf import HPFLinear

    run_dir = tmp_path / "hpf"
    cfg = lonpt_run_config(run_dir, corpus, domain_cycles=1, hpf_enable=True, hpf_lowrank_ratio=0.25)
    trainer, status = _run(cfg)
    assert status == "finished"
    started = next(e for e in events_of(run_dir) if e["type"] == "run_started")
    hpf = started["metrics"]["hpf"]
    # d 64, SwiGLU hidden int(2*128/3) = 85: r = 16, 3 projections x 2 layers.
    assert hpf["replaced"] == 6 and set(hpf["structure"].values()) == {16}
    assert hpf["saved"] == 2 * 3 * (64 * 85 - 16 * (64 + 85))
    assert started["model_params"] == hpf["params_after"]
    ckpt = sorted((run_dir / "checkpoints").glob("lonpt_*"))[0]
    loaded = load_checkpoint(ckpt, load_optimizer=False)
    assert "encoder.layers.0.ffn.up_proj.weight_in" in loaded.model_state
    assert loaded.trainer_state["controllers"]["hpf"]["structure"] == hpf["structure"]
    # A new LONPT run starts from those weights: densified, then factorised again by SVD.
    init_dir = tmp_path / "init"
    cfg2 = lonpt_run_config(init_dir, corpus, domain_cycles=1, steps_per_domain=2,
                            hpf_enable=True, hpf_lowrank_ratio=0.25, init_from=str(ckpt))
    trainer2, status2 = _run(cfg2)
    assert status2 == "finished"
    report2 = next(e for e in events_of(init_dir) if e["type"] == "run_started")["metrics"]["hpf"]
    assert report2["init"] == "svd" and report2["max_rel_error"] < 1e-3  # rank-16 product: exact
    assert isinstance(trainer2.model.encoder.layers[0].ffn.up_proj, HPFLinear)


def test_bad_input_is_a_clear_error_before_training(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(ConfigError, match="unknown LONPT preset 'turbo'.*heavy, light, smoke, standard"):
        LonptTrainer(lonpt_run_config(tmp_path / "a", corpus, preset="turbo"), tiny_model_config())
    with pytest.raises(ConfigError, match="'steps_per_domain' must be >= 1"):
        LonptTrainer(lonpt_run_config(tmp_path / "b", corpus, steps_per_domain=0), tiny_model_config())
    only_qa = write_domain_corpus(tmp_path / "qa.jsonl", labels=("qa", "math"))
    with pytest.raises(DataError, match="domain 'syntactic' has no samples"):
        _run(lonpt_run_config(tmp_path / "c", only_qa))
    with pytest.raises(ConfigError, match="target_memory_utilization 1e-06"):
        _run(lonpt_run_config(tmp_path / "d", corpus, target_memory_utilization=1e-6))
    for name in "bcd":
        assert not list((tmp_path / name).glob("checkpoints/*"))


def test_keep_per_domain_checkpoint_dir_and_akap_off(tmp_path: Path, corpus: Path) -> None:
    run_dir, out_dir = tmp_path / "keep", tmp_path / "published"
    cfg = lonpt_run_config(run_dir, corpus, domain_cycles=3, steps_per_domain=3,
                           keep_per_domain=1, checkpoint_dir=str(out_dir), akap_enable=False)
    trainer, status = _run(cfg)
    assert status == "finished"
    events = events_of(run_dir)
    assert {e["domain"] for e in events if e["type"] == "domain_change"} == {"all"}
    bests = [f"lonpt_all_{e['global_step']:06d}" for e in events if e["type"] == "eval" and e["best_of_domain"]]
    assert len(bests) >= 2  # the loss keeps falling over three passes
    # Only the newest best survives, in the run and in the published directory.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("lonpt_*")) == [bests[-1]]
    assert sorted(p.name for p in out_dir.glob("lonpt_*")) == [bests[-1]]
    assert (out_dir / bests[-1] / "manifest.json").is_file()
    assert events[-1]["checkpoint_dir"] == str(out_dir)


def test_explicit_steps_cut_the_curriculum_and_validate_the_cut_pass(tmp_path: Path, corpus: Path) -> None:
    cfg = lonpt_run_config(tmp_path / "cap", corpus)
    cfg.steps = 8
    trainer, status = _run(cfg)
    assert status == "finished" and trainer.global_step == 8
    events = events_of(tmp_path / "cap")
    started = next(e for e in events if e["type"] == "run_started")
    assert started["total_steps"] == 8
    assert [(e["domain"], e["global_step"]) for e in events if e["type"] == "eval"] == [
        ("syntactic", 6), ("semantic", 8)]
