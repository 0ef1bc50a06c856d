"""CompressedAdamW, component grouping and breath-safety (training.md §6)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.train.compressed import (
    GROUP_BITS,
    BreathSafety,
    CompressedAdamW,
    compressed_param_groups,
    fp32_adamw_state_bytes,
    group_parameters,
)


class _Named(nn.Module):
    """A module tree using the spec's state-dict names (model.md §4-6), tiny sizes."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(40, d)
        layer = nn.Module()
        layer.self_attn_norm = nn.LayerNorm(d, bias=False)
        layer.self_attn = nn.Module()
        layer.self_attn.q_proj = nn.Linear(d, d, bias=False)
        layer.ffn = nn.Module()
        layer.ffn.gate_proj = nn.Linear(d, 2 * d, bias=False)
        layer.ffn.down_proj = nn.Linear(2 * d, d, bias=False)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([layer])
        self.encoder_norm = nn.LayerNorm(d, bias=False)
        self.knowledge_graph = nn.Module()
        self.knowledge_graph.entity_embedding = nn.Embedding(100, 16)
        self.knowledge_graph.kg_proj = nn.Linear(16, d)
        self.knowledge_graph.gate = nn.Linear(2 * d, 1)
        self.neural_memory = nn.Module()
        self.neural_memory.q_proj = nn.Linear(d, 16, bias=False)
        self.neural_memory.norm = nn.LayerNorm(d)
        self.continual_learning = nn.Module()
        self.continual_learning.task_embedding = nn.Embedding(4, d)
        self.reasoning_engine = nn.Module()
        self.reasoning_engine.task_proj = nn.Linear(d, d, bias=False)
        self.reasoning_engine.complexity_gate = nn.Linear(d, 1)
        self.reasoning_engine.scratchpad = nn.Module()
        self.reasoning_engine.scratchpad.slot_values = nn.Parameter(torch.randn(8, d))
        self.reasoning_engine.scratchpad.write_gate = nn.Linear(2 * d, 1)
        self.reasoning_engine.rho = nn.Parameter(torch.zeros(()))


def test_group_parameters_follows_the_spec_components() -> None:
    groups = {g: {n for n, _ in named} for g, named in group_parameters(_Named()).items()}
    assert list(groups) == list(GROUP_BITS)
    assert groups["bulk"] == {
        "token_embedding.weight",
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.ffn.gate_proj.weight",  # SwiGLU's gate_proj is bulk, not a gate
        "encoder.layers.0.ffn.down_proj.weight",
    }
    assert groups["knowledge_graph"] == {
        "knowledge_graph.entity_embedding.weight",
        "knowledge_graph.kg_proj.weight",
    }
    assert groups["memory"] == {
        "neural_memory.q_proj.weight",
        "continual_learning.task_embedding.weight",
        "reasoning_engine.scratchpad.slot_values",
    }
    assert groups["reasoning"] == {"reasoning_engine.task_proj.weight"}
    assert groups["protected"] == {
        "encoder.layers.0.self_attn_norm.weight",
        "encoder_norm.weight",
        "knowledge_graph.kg_proj.bias",
        "knowledge_graph.gate.weight",
        "knowledge_graph.gate.bias",
        "neural_memory.norm.weight",
        "neural_memory.norm.bias",
        "reasoning_engine.complexity_gate.weight",
        "reasoning_engine.complexity_gate.bias",
        "reasoning_engine.scratchpad.write_gate.weight",
        "reasoning_engine.scratchpad.write_gate.bias",
        "reasoning_engine.rho",
    }


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(), nn.Linear(256, 8)
    )


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(32, 64, generator=g)
    return x, torch.sin(2 * x[:, :8]) + x[:, 8:16] ** 2


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for i in steps:
        x, y = _batch(i)
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _torch_adamw(model: nn.Module) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
        weight_decay=0.01,
    )


def _compressed(model: nn.Module, bits: int) -> CompressedAdamW:
    return CompressedAdamW(
        model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01, bits=bits
    )


def _distance(a: nn.Module, b: nn.Module) -> float:
    return math.sqrt(
        sum(
            float((x - y).detach().norm() ** 2)
            for x, y in zip(a.parameters(), b.parameters(), strict=True)
        )
    )


def test_fp32_storage_is_exactly_torch_adamw() -> None:
    ref, ours = _mlp(), _mlp()
    ref_losses = _train(ref, _torch_adamw(ref), range(30))
    our_losses = _train(ours, _compressed(ours, 32), range(30))
    assert our_losses == pytest.approx(ref_losses, rel=1e-6, abs=1e-7)
    assert _distance(ref, ours) < 1e-5


@pytest.mark.parametrize(("bits", "max_rel_distance"), [(8, 0.15), (12, 0.02), (16, 0.02)])
def test_quantised_moments_track_torch_adamw(bits: int, max_rel_distance: float) -> None:
    init, ref, ours = _mlp(), _mlp(), _mlp()
    ref_losses = _train(ref, _torch_adamw(ref), range(120))
    our_losses = _train(ours, _compressed(ours, bits), range(120))
    travelled = _distance(init, ref)
    assert _distance(ref, ours) < max_rel_distance * travelled
    # Loss over the last 20 steps within 2 % of AdamW's, and it did fall.
    ours_end, ref_end = sum(our_losses[-20:]) / 20, sum(ref_losses[-20:]) / 20
    assert abs(ours_end - ref_end) < 0.02 * ref_end
    assert ours_end < 0.8 * sum(our_losses[:5]) / 5


def test_state_bytes_measured_per_group() -> None:
    model = _Named(d=64)
    opt = CompressedAdamW(compressed_param_groups(model), lr=1e-3)
    model.token_embedding.weight.sum().backward()  # only some params get a gradient
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    opt.step()
    got = opt.state_bytes()
    groups = group_parameters(model)

    def expected(comp: str, per_value: float, blocks: bool) -> int:
        total = 0
        for _, p in groups[comp]:
            n = p.numel()
            nb = math.ceil(n / 256)
            if blocks:  # codes over whole blocks (12-bit: 3 bytes per pair) + fp32 scales
                total += 2 * (int(nb * 256 * per_value) + 4 * nb)
            else:
                total += 2 * int(n * per_value)
            total += 4  # step counter
        return total

    assert got["bulk"] == expected("bulk", 1.0, True)
    assert got["reasoning"] == expected("reasoning", 1.5, True)
    assert got["memory"] == expected("memory", 2.0, False)
    assert got["knowledge_graph"] == expected("knowledge_graph", 2.0, False)
    assert got["protected"] == expected("protected", 4.0, False)
    bulk_params = [p for _, p in groups["bulk"]]
    assert fp32_adamw_state_bytes(bulk_params) / got["bulk"] > 3.8


def test_state_dict_round_trip_resumes_exactly_with_weights_only_load() -> None:
    a = _mlp()
    opt_a = CompressedAdamW(
        [
            {"params": [a[0].weight, a[0].bias], "bits": 12, "component": "reasoning"},
            {"params": list(a[2].parameters()) + list(a[4].parameters()), "bits": 8},
        ],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    _train(a, opt_a, range(10))
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    b = _mlp()
    b.load_state_dict(loaded["model"])
    opt_b = CompressedAdamW(
        [
            {"params": [b[0].weight, b[0].bias], "bits": 8, "component": "reasoning"},
            {"params": list(b[2].parameters()) + list(b[4].parameters()), "bits": 8},
        ],
        lr=5.0,  # overwritten by the loaded hyper-parameters
    )
    opt_b.load_state_dict(loaded["opt"])
    assert opt_b.components() == opt_a.components() == {"reasoning": 12, "default": 8}
    assert opt_b.state_bytes() == opt_a.state_bytes()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        sa, sb = opt_a.state[pa], opt_b.state[pb]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key])
    assert _train(a, opt_a, range(10, 20)) == _train(b, opt_b, range(10, 20))
    assert _distance(a, b) == 0.0


def test_load_state_dict_rejects_a_different_model() -> None:
    a = _mlp()
    opt = _compressed(a, 8)
    _train(a, opt, range(2))
    state = opt.state_dict()
    other = CompressedAdamW([a[0].weight], lr=1e-3)
    with pytest.raises(ValueError, match="parameters"):
        other.load_state_dict(state)
    two = CompressedAdamW([{"params": [a[0].weight]}, {"params": [a[0].bias]}], lr=1e-3)
    with pytest.raises(ValueError, match="param groups"):
        two.load_state_dict(state)
    state["param_groups"][0]["bits"] = 12  # codes are int8, 12-bit storage is packed uint8
    fresh = _compressed(_mlp(), 8)
    with pytest.raises(ValueError, match="codes"):
        fresh.load_state_dict(state)


def test_breath_safety_promotes_a_group_over_a_forced_bound() -> None:
    model = _mlp()
    opt = _compressed(model, 8)
    _train(model, opt, range(5))
    safety = BreathSafety(bounds={8: 1e-6})  # no 8-bit storage can meet this
    opt.request_error_measurement()
    _train(model, opt, range(5, 6))
    assert 0 < opt.last_errors["default"] < 0.03
    before = opt.state_bytes()["default"]
    check = safety.check(opt)
    assert check.promoted == {"default": (8, 12)} and not check.rollback
    assert opt.components() == {"default": 12}
    assert opt.state_bytes()["default"] > before
    # The promoted group keeps training and is now measured at 12 bits, within its real bound.
    opt.request_error_measurement()
    losses = _train(model, opt, range(6, 40))
    assert all(math.isfinite(x) for x in losses)
    assert 0 < opt.last_errors["default"] < 0.004
    for expected in (16, 32):
        opt.promote("default")
        assert opt.components() == {"default": expected}
    opt.request_error_measurement()
    _train(model, opt, range(40, 41))
    assert opt.last_errors["default"] == 0.0
    assert safety.check(opt).promoted == {}  # 32 bits is lossless, nothing left to promote


def test_breath_safety_sees_nonfinite_state_and_loss_spikes() -> None:
    model = _mlp()
    opt = _compressed(model, 8)
    _train(model, opt, range(3))
    safety = BreathSafety(arm_after=5, spike_factor=3.0)
    assert not safety.check(opt).rollback
    first = next(iter(opt.state.values()))
    first["exp_avg_scales"][0] = float("nan")
    check = safety.check(opt)
    assert check.nonfinite == ["default"] and check.rollback

    opt.nonfinite_components = lambda: []  # type: ignore[method-assign]  # loss checks only
    for _ in range(30):
        safety.observe_loss(2.0)
    assert not safety.check(opt).loss_spike and safety.best_ema == pytest.approx(2.0)
    for _ in range(60):
        safety.observe_loss(20.0)
    restored = BreathSafety(arm_after=5, spike_factor=3.0)
    restored.load_state(safety.state())
    check = safety.check(opt)
    assert check.loss_spike and check.rollback
    # Distributed: the decision uses the rank-averaged EMA (7 other ranks whose EMA is 2.0).
    assert not restored.check(opt, reduce=lambda v: (v + 7 * 2.0) / 8).loss_spike
    assert restored.check(opt).loss_spike
    restored.reset_loss_tracking()
    restored.observe_loss(20.0)
    assert not restored.check(opt).loss_spike  # not armed again yet


def _compressed_trainer(cfg: Any, **kwargs: Any) -> Any:
    from train_helpers import tiny_model_config

    from core.train.compressed import CompressedTrainer

    return CompressedTrainer(cfg, tiny_model_config(), **kwargs)


def _run_events(run_dir: Path) -> list[dict[str, Any]]:
    from core.runs.events import ParseProblem, read_events

    events = list(read_events(run_dir / "events.jsonl"))
    assert not any(isinstance(e, ParseProblem) for e in events)
    return events  # type: ignore[return-value]


def _losses(run_dir: Path) -> dict[int, float]:
    return {e["global_step"]: e["loss"] for e in _run_events(run_dir) if e["type"] == "step"}


def _warnings(run_dir: Path, code: str) -> list[dict[str, Any]]:
    return [e for e in _run_events(run_dir) if e["type"] == "warning" and e.get("code") == code]


def test_compressed_trainer_resume_equals_uninterrupted(tmp_path: Path, small_corpus: Path) -> None:
    from train_helpers import run_config

    opts = {"bound_8": 1e-6}  # forces a promotion at the first check (step 4, a checkpoint)
    full_dir = tmp_path / "full"
    assert _compressed_trainer(run_config(full_dir, small_corpus, options=opts)).run() == "finished"
    full = _losses(full_dir)
    assert sorted(full) == list(range(1, 13))
    promoted = _warnings(full_dir, "precision_promoted")
    assert promoted and promoted[0]["global_step"] == 4 and "bulk" in promoted[0]["message"]

    part_dir = tmp_path / "part"
    box: dict[str, Any] = {}

    def stop_at_7(event: dict[str, Any]) -> None:
        if event["type"] == "step" and event["global_step"] == 7:
            box["trainer"].control.put("stop")

    box["trainer"] = first = _compressed_trainer(
        run_config(part_dir, small_corpus, options=opts), listeners=[stop_at_7]
    )
    assert first.run() == "stopped"
    second = _compressed_trainer(run_config(part_dir, small_corpus, resume="latest", options=opts))
    assert second.run() == "finished"
    resumed = _losses(part_dir)
    for step in range(1, 13):
        assert abs(resumed[step] - full[step]) <= 1e-6, (step, resumed[step], full[step])
    # The promotion lives in the checkpoint: the resumed optimizer kept 12-bit bulk moments.
    assert second.optimizer.components()["bulk"] == 12
    state = json.loads(
        (part_dir / "checkpoints" / "step_000012" / "trainer_state.json").read_text()
    )
    assert state["controllers"]["compressed"]["promotions"][0]["component"] == "bulk"


def test_cli_compressed_run_stores_quantised_state(tmp_path: Path, small_corpus: Path) -> None:
    from train_helpers import cli_train_args
    from typer.testing import CliRunner

    from aeron_tui.cli import app

    args = cli_train_args(tmp_path / "run", small_corpus, 12)
    args[1] = "compressed"
    result = CliRunner().invoke(app, [*args, "--quiet"])
    assert result.exit_code == 0, result.output
    events = _run_events(tmp_path / "run")
    started = next(e for e in events if e["type"] == "run_started")
    assert started["trainer"] == "compressed"
    steps = [e for e in events if e["type"] == "step"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    # This very small model has many protected/16-bit parameters; the tiny profile gets ~3.9x.
    assert steps[-1]["metrics"]["optimizer_state_ratio"] > 2.5
    ckpt = tmp_path / "run" / "checkpoints" / "step_000012"
    opt_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    by_component = {g["component"]: g for g in opt_state["param_groups"]}
    assert by_component["bulk"]["bits"] == 8 and by_component["protected"]["bits"] == 32
    bulk_first = opt_state["state"][by_component["bulk"]["params"][0]]
    assert bulk_first["exp_avg_codes"].dtype == torch.int8
    assert bulk_first["exp_avg_sq_codes"].dtype == torch.uint8


def test_nonfinite_state_rolls_back_to_the_last_checkpoint(
    tmp_path: Path, small_corpus: Path
) -> None:
    from train_helpers import run_config

    box: dict[str, Any] = {}

    def poison_at_6(event: dict[str, Any]) -> None:
        if event["type"] == "step" and event["global_step"] == 6 and not box.get("done"):
            box["done"] = True
            opt = box["trainer"].optimizer
            state = next(s for s in opt.state.values() if s["exp_avg_scales"].numel())
            state["exp_avg_scales"][0] = float("nan")

    run_dir = tmp_path / "run"
    box["trainer"] = trainer = _compressed_trainer(
        run_config(run_dir, small_corpus, steps=8, eval_every=1000), listeners=[poison_at_6]
    )
    assert trainer.run() == "finished"
    rollback = _warnings(run_dir, "rollback")
    assert len(rollback) == 1 and "step_000004" in rollback[0]["message"]
    assert rollback[0]["global_step"] == 4  # the run went back to the checkpoint ...
    steps = [e["global_step"] for e in _run_events(run_dir) if e["type"] == "step"]
    assert steps.count(5) == 2 and steps[-1] == 8  # ... and trained steps 5-8 again
    assert trainer.lr_multiplier == 0.5 and trainer.rollbacks == 1
    assert all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
    assert trainer.optimizer.nonfinite_components() == []
    state = json.loads((run_dir / "checkpoints" / "step_000008" / "trainer_state.json").read_text())
    assert state["controllers"]["compressed"]["lr_multiplier"] == 0.5


def test_persistent_loss_spikes_end_the_run_with_a_clear_error(
    tmp_path: Path, small_corpus: Path
) -> None:
    from train_helpers import run_config

    from core.train.compressed import TrainingDiverged

    # A spike factor below 1 makes every armed check a spike: rollback once, then give up.
    opts = {
        "rail_spike_factor": 0.5,
        "rail_arm_after": 1,
        "check_every": 2,
        "rail_max_rollbacks": 1,
    }
    run_dir = tmp_path / "run"
    trainer = _compressed_trainer(run_config(run_dir, small_corpus, options=opts))
    with pytest.raises(TrainingDiverged, match="diverged"):
        trainer.run()
    assert len(_warnings(run_dir, "rollback")) == 1
    events = _run_events(run_dir)
    assert events[-2]["type"] == "error" and "rail_max_rollbacks=1" in events[-2]["message"]
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "failed"


def test_group_parameters_on_the_real_model() -> None:
    from train_helpers import tiny_model_config

    from core.model.model import TransformerNeuralNetBackbone

    model = TransformerNeuralNetBackbone(tiny_model_config())
    groups = group_parameters(model)
    named = {n for _, members in groups.items() for n, _ in members}
    assert named == {n for n, p in model.named_parameters() if p.requires_grad}
    where = {n: g for g, members in groups.items() for n, _ in members}
    for name, param in model.named_parameters():
        group = where[name]
        if param.ndim < 2 or "norm" in name.split(".")[-2]:
            assert group == "protected", name
        elif ".ffn.gate_proj." in name:
            assert group in ("bulk", "reasoning"), name  # SwiGLU weight, never "protected"
        elif "scratchpad" in name or name.startswith(("neural_memory.", "continual_learning.")):
            assert group in ("memory", "protected"), name
        elif name.startswith("knowledge_graph."):
            assert group in ("knowledge_graph", "protected"), name
        elif name.startswith("reasoning_engine."):
            assert group in ("reasoning", "protected"), name
        elif name.startswith(("encoder.", "decoder.", "token_embedding")):
            assert group == "bulk", name
    assert groups["bulk"] and groups["reasoning"] and groups["protected"]
