"""ACT batch control (§5.5), HPF low-rank layers (§5.6), rails (§5.7), the log formatter (§5.2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from core.errors import ConfigError
from lonpt.act import BatchController, MemoryReading, check_target, next_micro_batch
from lonpt.config import DEFAULT_HPF_TARGETS
from lonpt.hpf import HPFLinear, apply_hpf, apply_structure, hpf_rank, revert_hpf
from lonpt.log import format_lonpt_event
from lonpt.rails import ROLLBACK, SKIP, SafetyRails, UpdateMonitor

GB = 2**30


class FakeMemory:
    """A memory reader that returns scripted readings and counts calls."""

    def __init__(self, *readings: MemoryReading) -> None:
        self.readings = list(readings)
        self.calls = 0

    def __call__(self) -> MemoryReading:
        self.calls += 1
        return self.readings[min(self.calls - 1, len(self.readings) - 1)]


def test_act_grows_4_to_8_like_the_log_after_the_probe_steps() -> None:
    # 80 GB card, 20 GB static, 30 GB peak at b=4: b' = floor(4*(56-20)/(30-20)) = 14 -> clamp 8.
    reader = FakeMemory(MemoryReading(30 * GB, 20 * GB, 80 * GB))
    act = BatchController(4, target=0.7, probe_steps=2, max_growth=2.0, reader=reader)
    assert act.after_step() is None and reader.calls == 0
    change = act.after_step()
    assert change is not None and (change.micro_batch, change.grad_accum) == (8, 1)
    assert reader.calls == 1 and act.after_step() is None  # measured once per domain
    reset = act.start_domain()
    assert reset is not None and reset.micro_batch == 4 and reset.reason == "domain start"


def test_act_shrinks_and_keeps_the_effective_batch() -> None:
    # Peak far over target: b' = floor(8*(0.7*16-2)/(20-2)) = 4 -> power of two 4, accum 2.
    reader = FakeMemory(MemoryReading(20 * GB, 2 * GB, 16 * GB))
    act = BatchController(8, target=0.7, probe_steps=1, keep_effective_batch=True, reader=reader)
    change = act.after_step()
    assert change is not None and (change.micro_batch, change.grad_accum) == (4, 2)
    assert act.micro_batch * act.grad_accum == 8
    assert next_micro_batch(4, MemoryReading(10, 5, 100), 0.7, 2.0) == 8
    assert next_micro_batch(4, MemoryReading(100, 5, 100), 0.7, 2.0) == 2  # 4*65/95 = 2.7 -> 2
    assert next_micro_batch(4, MemoryReading(100, 90, 100), 0.7, 2.0) == 1


def test_act_oom_halves_micro_batch_and_doubles_accumulation() -> None:
    act = BatchController(8)
    change = act.on_oom()
    assert (change.micro_batch, change.grad_accum, change.reason) == (4, 2, "oom")
    act.on_oom(), act.on_oom()
    assert (act.micro_batch, act.grad_accum) == (1, 8)
    with pytest.raises(MemoryError, match="micro-batch 1"):
        act.on_oom()


def test_unreachable_memory_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="target_memory_utilization 0.1"):
        check_target(0.1, static_bytes=5 * GB, total_bytes=24 * GB, device="cpu")
    check_target(0.7, static_bytes=5 * GB, total_bytes=24 * GB, device="cpu")


def test_hpf_rank_and_parameter_count_at_the_default_shape() -> None:
    d, hidden = 2048, 5461  # SwiGLU hidden int(2*8192/3)
    assert hpf_rank(d, hidden, 0.15) == 308
    dense_ffn = 3 * d * hidden
    lowrank_ffn = 3 * 308 * (d + hidden)
    assert (dense_ffn, lowrank_ffn) == (33_552_384, 6_938_316)
    assert 64 * (dense_ffn - lowrank_ffn) == 1_703_300_352
    assert hpf_rank(64, 64, 1.0) is None  # no saving -> not replaced
    assert hpf_rank(256, 512, 0.15) == 39


class TinyFFN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(32, 96, bias=False)
        self.up_proj = nn.Linear(32, 96, bias=False)
        self.down_proj = nn.Linear(96, 32, bias=False)


class TinyStack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([nn.Module() for _ in range(2)])
        for layer in self.encoder.layers:
            layer.ffn = TinyFFN()
            layer.self_attn = nn.Linear(32, 32)
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList([nn.Module()])
        self.decoder.layers[0].ffn = TinyFFN()


def test_hpf_pass_replaces_only_ffn_projections_and_reports_the_saving() -> None:
    torch.manual_seed(0)
    model = TinyStack()
    before = sum(p.numel() for p in model.parameters())
    report = apply_hpf(model, 0.25, DEFAULT_HPF_TARGETS, init="fresh")
    assert len(report.rewrites) == 9  # 3 FFNs x gate/up/down, attention untouched
    assert isinstance(model.encoder.layers[0].ffn.gate_proj, HPFLinear)
    assert isinstance(model.encoder.layers[0].self_attn, nn.Linear)
    per_ffn_dense, per_ffn_low = 3 * 32 * 96, 3 * 8 * (32 + 96)
    assert report.params_before == before
    assert report.saved == 3 * (per_ffn_dense - per_ffn_low)
    assert sum(p.numel() for p in model.parameters()) == report.params_after
    assert "saved" in report.summary()
    # Fresh factors: the product has the dense init's std 0.02 (within sampling noise).
    big = HPFLinear(1024, 1024, 128)
    assert abs(float((big.weight_out @ big.weight_in).detach().std()) - 0.02) < 0.002


def test_hpf_svd_error_densify_and_structure_round_trip() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(40, 60, bias=True)
    low, err = HPFLinear.from_dense(dense, 10)
    s = torch.linalg.svdvals(dense.weight.detach())
    assert err == pytest.approx(float(s[10:].square().sum().sqrt() / s.square().sum().sqrt()), rel=1e-5)
    x = torch.randn(5, 40)
    back = low.densify()
    assert torch.allclose(back(x), low(x), atol=1e-5)
    # Full rank SVD is exact.
    exact, err0 = HPFLinear.from_dense(dense, 40)
    assert err0 < 1e-5 and torch.allclose(exact(x), dense(x), atol=1e-4)
    # A factorised state dict loads into a fresh model after apply_structure; revert densifies.
    model = TinyStack()
    report = apply_hpf(model, 0.25, DEFAULT_HPF_TARGETS, init="svd")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    other = TinyStack()
    apply_structure(other, report.structure)
    other.load_state_dict(state)
    h = torch.randn(3, 32)
    ffn_a, ffn_b = model.decoder.layers[0].ffn, other.decoder.layers[0].ffn
    assert torch.equal(ffn_a.down_proj(ffn_a.up_proj(h)), ffn_b.down_proj(ffn_b.up_proj(h)))
    out_before = ffn_a.up_proj(h)
    assert len(revert_hpf(model)) == 9
    assert isinstance(model.decoder.layers[0].ffn.up_proj, nn.Linear)
    assert torch.allclose(model.decoder.layers[0].ffn.up_proj(h), out_before, atol=1e-5)


def test_rails_skip_non_finite_and_roll_back_after_repeats() -> None:
    rails = SafetyRails(spike_factor=3.0, max_nonfinite=3)
    assert rails.check(2.0).action == "ok"
    assert rails.check(float("nan")).action == SKIP
    assert rails.check(2.0, grads_finite=False).action == SKIP
    verdict = rails.check(float("inf"))
    assert verdict.action == ROLLBACK and "3 consecutive" in verdict.reason
    assert rails.on_rollback() == 0.5 and rails.nonfinite_total == 3


def test_rails_spike_detection_is_armed_after_20_steps_and_halves_lr() -> None:
    rails = SafetyRails(spike_factor=3.0)
    for _ in range(19):
        assert rails.check(2.0).action == "ok"
    assert rails.check(50.0).action == "ok"  # 20th step: not armed yet, folded into the EMA
    ema = rails.ema
    assert ema == pytest.approx(0.95 * 2.0 + 0.05 * 50.0)
    assert rails.check(3.0 * ema + 0.01).action == ROLLBACK
    assert rails.check(3.0 * ema - 0.01).action == "ok"
    rails.on_rollback()
    rails.on_rollback()
    assert rails.lr_multiplier == 0.25
    state = rails.state_dict()
    again = SafetyRails()
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_update_monitor_flags_large_relative_updates() -> None:
    layer = nn.Linear(4, 4)
    mon = UpdateMonitor(layer.named_parameters(), limit=0.1)
    mon.before()
    with torch.no_grad():
        layer.weight.mul_(1.5)
    flagged = mon.after()
    assert [name for name, _ in flagged] == ["weight"] and math.isclose(flagged[0][1], 0.5, rel_tol=1e-5)


def test_log_lines_match_the_seed_format() -> None:
    step = {"type": "step", "global_step": 25, "step": 25, "phase": "stabilize", "lr_scale": 1.0,
            "loss": 4.35704, "lr": 5e-5}
    assert format_lonpt_event(step) == "  Step 0025 | phase=  stabilize | lr_scale=1.00 | loss=4.3570"
    start = {"type": "domain_change", "global_step": 0, "domain": "semantic", "cycle": 1,
             "cycles": 6, "cycle_start": True, "tokens": 1_404_928, "epoch": 1, "epochs": 1}
    assert format_lonpt_event(start) == (
        "=== LONPT Cycle 1/6 ===\n[AKAP] Cycle 1: domain 'semantic' (~1.40M tokens)\n"
        "[Domain:semantic] Epoch 1/1"
    )
    act = {"type": "batch_change", "global_step": 2, "micro_batch": 8, "grad_accum": 1,
           "reason": "act", "domain": "semantic"}
    assert format_lonpt_event(act) == "[ACT] Adjusted batch size for domain 'semantic' -> 8"
    ckpt = {"type": "checkpoint", "global_step": 150, "path": "/x/lonpt_semantic_000150",
            "name": "lonpt_semantic_000150", "val_loss": 3.52094}
    assert format_lonpt_event(ckpt) == "[Checkpoint] Saved lonpt_semantic_000150 (val_loss=3.5209)"
    best = {"type": "eval", "global_step": 150, "loss": 3.52094, "domain": "semantic", "best": True}
    assert format_lonpt_event(best) == "[Domain:semantic] Validation loss: 3.5209 (✓ BEST)"
    worse = {**best, "loss": 3.6, "best": False, "best_loss": 3.50691}
    assert format_lonpt_event(worse) == "[Domain:semantic] Validation loss: 3.6000 (no improvement, best 3.5069)"
    done = {"type": "run_finished", "status": "finished", "global_step": 2700,
            "checkpoint_dir": "checkpoints/lonpt"}
    assert format_lonpt_event(done) == "Done! Checkpoints saved to: checkpoints/lonpt"
    assert format_lonpt_event({**act, "reason": "domain start"}) is None


def test_run_started_line_reports_domains_and_hpf_saving() -> None:
    event = {
        "type": "run_started", "run_id": "r1", "trainer": "lonpt", "total_steps": 2700,
        "preset": "heavy", "model_params": 1000,
        "metrics": {
            "domains": {"semantic": {"samples": 1568, "train": 1254, "val": 314, "tokens": 1}},
            "hpf": {"replaced": 6, "ratio": 0.15, "init": "fresh", "params_before": 2000,
                    "params_after": 1000, "saved": 1000, "max_rel_error": None},
        },
    }
    assert format_lonpt_event(event) == (
        "=== LONPT run r1, preset heavy, 1,000 parameters, 2700 steps ===\n"
        "[AKAP] Domains: semantic 1,568 (1,254 train / 314 val)\n"
        "[HPF] 6 projections low-rank at ratio 0.15 (fresh): 2,000 -> 1,000 parameters "
        "(saved 1,000, 50.0 %)"
    )
