"""`aeron-tui ckpt inspect|diff` against statistics computed by hand, on small real checkpoints."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from aeron_tui.cli import app
from core.errors import CheckpointError
from core.runs.analysis import diff_checkpoints, group_of, inspect_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SEED = 7


def _config(**over: object):
    from core.model.config import NeuralNetConfig

    fields: dict[str, object] = dict(
        vocab_size=268, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=2,
        num_decoder_layers=2, dim_feedforward=64, max_position_embeddings=64, num_tot_branches=2,
        num_scratchpad_slots=4, memory_slots=8, memory_dim=16, memory_heads=2, kg_num_entities=16,
        kg_dim=8, num_tasks=2, enable_multimodal=False)
    fields.update(over)
    return NeuralNetConfig(**fields)


def _save(path: Path, state: dict[str, torch.Tensor] | None = None, seed: int = SEED, **over: object) -> Path:
    """A checkpoint of the model as the trainer builds it (manual_seed, then the constructor),
    with ``state`` replacing some tensors (as training would)."""
    from core.data.tokenizer import AeronTokenizer
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import save_checkpoint

    cfg = _config(**over)
    torch.manual_seed(seed)
    model = TransformerNeuralNetBackbone(cfg)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd.update(state or {})
    return save_checkpoint(path, model=sd, config=cfg, tokenizer=AeronTokenizer.byte_level(),
                           trainer_state={"global_step": 3, "data": {"seed": seed}},
                           extra={"global_step": 3})


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("ckpt") / "base")


def _trained(base: Path, path: Path, moved: dict[str, float]) -> Path:
    """``base`` with every tensor whose name starts with a key of ``moved`` scaled by its value
    plus a small shift (the "continued" checkpoint)."""
    sd = load_file(str(base / "model.safetensors"))
    out = {}
    for name, t in sd.items():
        for prefix, factor in moved.items():
            if name.startswith(prefix) and t.is_floating_point():
                out[name] = t * factor + 0.001
    return _save(path, out)


def test_group_names() -> None:
    assert group_of("encoder.layers.3.ffn.up_proj.weight") == ("encoder", "encoder.layers.3")
    assert group_of("reasoning_engine.tree_of_thought.x.weight") == (
        "reasoning_engine", "reasoning_engine.tree_of_thought")
    assert group_of("token_embedding.weight") == ("token_embedding", "token_embedding")


def test_inspect_matches_statistics_by_hand(base: Path) -> None:
    report = inspect_checkpoint(base)
    sd = load_file(str(base / "model.safetensors"))
    by_name = {t.name: t for t in report.tensors}
    for name in ("token_embedding.weight", "encoder.layers.1.ffn.up_proj.weight"):
        x = sd[name].double()
        s = by_name[name]
        assert s.numel == x.numel() and s.shape == list(x.shape) and s.dtype == "float32"
        assert s.norm == pytest.approx(float(x.norm()), rel=1e-9)
        assert s.mean == pytest.approx(float(x.mean()), rel=1e-9, abs=1e-12)
        assert s.std == pytest.approx(float(x.std(unbiased=False)), rel=1e-9)
        assert (s.min, s.max) == (float(x.min()), float(x.max()))
        assert s.zero_frac == float((x == 0).double().mean())
        assert sum(s.hist) == x.numel()
        assert s.hist == [int(c) for c in torch.histc(x, bins=16, min=float(x.min()), max=float(x.max()))]
    # A layer's norm is the root of its tensors' squared norms; its count is theirs.
    layer = next(g for g in report.layers if g.name == "encoder.layers.1")
    members = [t for t in report.tensors if t.name.startswith("encoder.layers.1.")]
    assert layer.params == sum(t.numel for t in members)
    assert layer.norm == pytest.approx(math.sqrt(sum(t.norm**2 for t in members)), rel=1e-9)
    assert report.manifest_ok and report.tokenizer_vocab == 268 and report.global_step == 3


def test_untouched_groups_are_found_from_the_seed(base: Path, tmp_path: Path) -> None:
    fresh = inspect_checkpoint(base)
    assert fresh.init_check == "done"
    assert all(c.untouched for c in fresh.components)  # nothing trained yet
    trained = inspect_checkpoint(_trained(base, tmp_path / "t", {"encoder.": 1.01, "decoder.": 1.01,
                                                                  "token_embedding": 1.01}))
    states = {c.name: c.untouched for c in trained.components}
    assert states["encoder"] is False and states["decoder"] is False
    assert states["knowledge_graph"] is True and states["continual_learning"] is True
    assert "bit-identical to their initialisation (seed 7)" in trained.verdict
    listed = trained.verdict.split("(seed 7): ")[1].split(", ")
    assert "knowledge_graph" in listed and "encoder" not in listed and "decoder" not in listed
    # Without the seed nothing can be told, and the report says why.
    off = inspect_checkpoint(base, init_check=False)
    assert off.init_check.startswith("turned off") and all(c.untouched is None for c in off.components)


def test_nan_tensor_is_flagged_red(base: Path, tmp_path: Path) -> None:
    sd = load_file(str(base / "model.safetensors"))
    bad = sd["decoder.layers.0.ffn.down_proj.weight"].clone()
    bad[0, :3] = float("nan")
    bad[1, 0] = float("inf")
    ckpt = _save(tmp_path / "nan", {"decoder.layers.0.ffn.down_proj.weight": bad})
    report = inspect_checkpoint(ckpt)
    s = next(t for t in report.tensors if t.name == "decoder.layers.0.ffn.down_proj.weight")
    assert (s.nan, s.inf) == (3, 1)
    finite = bad[torch.isfinite(bad)].double()
    assert s.mean == pytest.approx(float(finite.mean()), rel=1e-9)  # NaN/Inf left out of the stats
    assert report.verdict.startswith("suspicious: 1 tensor(s) hold NaN/Inf (decoder.layers.0")
    out = CliRunner().invoke(app, ["ckpt", "inspect", str(ckpt)], env={"FORCE_COLOR": "1"})
    assert out.exit_code == 0, out.output
    assert "NaN 3 Inf 1" in out.output, out.output
    assert "\x1b[31mNaN 3 Inf 1" in out.output  # in red


def test_exploding_and_dead_weights(base: Path, tmp_path: Path) -> None:
    sd = load_file(str(base / "model.safetensors"))
    ckpt = _save(tmp_path / "x", {
        "encoder.layers.0.ffn.up_proj.weight": sd["encoder.layers.0.ffn.up_proj.weight"] * 1000,
        "decoder.layers.1.ffn.up_proj.weight": torch.zeros_like(sd["decoder.layers.1.ffn.up_proj.weight"]),
    })
    verdict = inspect_checkpoint(ckpt).verdict
    assert "1 weight(s) are all zeros (decoder.layers.1.ffn.up_proj.weight)" in verdict
    assert "RMS over 50× the median" in verdict and "encoder.layers.0.ffn.up_proj.weight" in verdict


def test_diff_with_itself_is_all_zeros(base: Path) -> None:
    report = diff_checkpoints(base, base)
    assert all(t.rel_change == 0 and t.cosine == pytest.approx(1.0) and t.sign_agreement == 1.0
               for t in report.tensors)
    assert report.summary() == "identical: no parameter changed"


def test_diff_names_the_layers_a_continued_checkpoint_moved(base: Path, tmp_path: Path) -> None:
    moved = _trained(base, tmp_path / "moved", {"decoder.layers.1.": 1.2, "encoder.layers.0.": 1.001})
    report = diff_checkpoints(base, moved)
    a = load_file(str(base / "model.safetensors"))
    b = load_file(str(moved / "model.safetensors"))
    name = "decoder.layers.1.ffn.up_proj.weight"
    x, y = a[name].double(), b[name].double()
    t = next(d for d in report.tensors if d.name == name)
    assert t.rel_change == pytest.approx(float((y - x).norm() / x.norm()), rel=1e-9)
    assert t.cosine == pytest.approx(float((x * y).sum() / (x.norm() * y.norm())), rel=1e-9)
    assert report.layers[0].name == "decoder.layers.1"  # most moved first
    assert {lay.name for lay in report.layers if lay.rel_change > 0} == {"decoder.layers.1", "encoder.layers.0"}
    summary = report.summary()
    assert "decoder layers 1 moved" in summary and "encoder" in summary.split(";")[-1]  # "< 1 %"


def test_diff_refuses_different_architectures(base: Path, tmp_path: Path) -> None:
    other = _save(tmp_path / "wide", d_model=48)
    with pytest.raises(CheckpointError, match="different architectures: .*d_model"):
        diff_checkpoints(base, other)
    out = subprocess.run([sys.executable, "-m", "aeron_tui", "ckpt", "diff", str(base), str(other)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1 and "d_model" in out.stderr


def test_cli_json_and_run_directory(base: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    moved = _trained(base, run / "checkpoints" / "step_000003", {"decoder.": 1.05})
    out = CliRunner().invoke(app, ["ckpt", "inspect", str(run), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["path"] == str(moved) and data["manifest_ok"] is True
    assert {c["name"] for c in data["components"]} >= {"encoder", "decoder", "token_embedding"}
    out = CliRunner().invoke(app, ["ckpt", "diff", str(base), str(run), "--json"])
    assert out.exit_code == 0, out.output
    diff = json.loads(out.output)
    assert diff["components"][0]["name"] == "decoder" and diff["summary"].startswith("overall")
