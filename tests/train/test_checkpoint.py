"""Checkpoint format: atomic save, verified load, clear errors, retention (small nn.Module)."""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import core.runs.checkpoint as ckpt_mod
from core.errors import CheckpointError
from core.runs.checkpoint import (
    build_model_from_checkpoint,  # noqa: F401 - imported to check it exists at module level
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    step_checkpoint_name,
)

TOKENIZER_JSON = json.dumps({"version": "1.0", "model": {"type": "BPE"}})


def _config(**changes: object) -> dict:
    from core.model.config import NeuralNetConfig

    base = {"vocab_size": 10, "d_model": 8, "nhead": 2, "num_kv_heads": 1}
    return NeuralNetConfig(**{**base, **changes}).to_dict()


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 10, bias=False)
        self.proj.weight = self.embed.weight  # tied, like the backbone's output projection
        self.norm = nn.LayerNorm(4)
        self.register_buffer("counter", torch.zeros(3))


def _save(path: Path, model: nn.Module, step: int = 1, config: dict | None = None) -> Path:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model.proj(model.embed(torch.tensor([1, 2]))).sum()
    loss.backward()
    opt.step()
    return save_checkpoint(
        path,
        model=model,
        config=config or _config(),
        tokenizer=TOKENIZER_JSON,
        trainer_state={"global_step": step},
        optimizer_state=opt.state_dict(),
        parents=[{"id": "abc", "relation": "resumed"}],
        corpus={"files": []},
        extra={"global_step": step},
    )


def test_round_trip_keeps_tied_weight_once_and_buffers(tmp_path: Path) -> None:
    model = Tied()
    model.counter += 5
    path = _save(tmp_path / "checkpoints" / "step_000001", model)
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(["model.safetensors", "config.json", "tokenizer.json",
                            "trainer_state.json", "optimizer.pt", "manifest.json"])
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        stored = set(fh.keys())
    assert "counter" in stored
    assert len({"embed.weight", "proj.weight"} & stored) == 1
    loaded = load_checkpoint(path)
    fresh = Tied()
    load_model_state(fresh, loaded.model_state, path)
    assert fresh.proj.weight is fresh.embed.weight
    assert torch.equal(fresh.embed.weight, model.embed.weight)
    assert torch.equal(fresh.counter, torch.full((3,), 5.0))
    assert loaded.optimizer_state is not None and "state" in loaded.optimizer_state
    assert loaded.manifest["parents"] == [{"id": "abc", "relation": "resumed"}]
    assert len(loaded.manifest["version"]) == 36
    assert loaded.manifest["tokenizer_sha256"] == loaded.manifest["files"]["tokenizer.json"]["sha256"]


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = _save(tmp_path / "c", Tied())
    (path / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match="trainer_state.json.*missing"):
        load_checkpoint(path)


def test_wrong_checksum_names_file_and_tensor(tmp_path: Path) -> None:
    path = _save(tmp_path / "c", Tied())
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    tensors["norm.weight"] = tensors["norm.weight"] + 1.0
    meta = ckpt_mod._safetensors_metadata(path / "model.safetensors")
    save_file(tensors, str(path / "model.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*checksum.*norm\.weight"):
        load_checkpoint(path)


def test_different_config_names_fields(tmp_path: Path) -> None:
    path = _save(tmp_path / "c", Tied())
    with pytest.raises(CheckpointError, match="d_model: checkpoint 8, this run 16"):
        load_checkpoint(path, expect_config=_config(d_model=16))


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_malicious_optimizer_pickle_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _save(tmp_path / "c", Tied())
    evil = path / "optimizer.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state": _Evil()}, fh)
    # Make the checksums agree so it is the unpickling check that refuses the file.
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["optimizer.pt"] = {"sha256": ckpt_mod.file_sha256(evil),
                                         "size": evil.stat().st_size}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="optimizer.pt.*refused"):
        load_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out


def test_disk_full_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "step_000001"
    _save(path, Tied(), step=1)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "_write_tensor_file", full)
    with pytest.raises(CheckpointError, match="disk full at .*intact"):
        _save(path, Tied(), step=2)
    after = {p.name: p.read_bytes() for p in path.iterdir()}
    assert after == before
    assert [p.name for p in path.parent.iterdir()] == ["step_000001"]  # no temp dir left


def test_latest_skips_corrupt_and_prune_keeps_best(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        _save(run / "checkpoints" / step_checkpoint_name(step), Tied(), step=step)
    (run / "checkpoints" / "step_000004" / "model.safetensors").write_bytes(b"garbage")
    skipped: list[str] = []
    latest = latest_checkpoint(run, on_skip=skipped.append)
    assert latest is not None and latest.name == "step_000003"
    assert skipped and "step_000004" in skipped[0]
    removed = prune_checkpoints(run, keep_last=2, protect={"step_000001"})
    assert [p.name for p in removed] == ["step_000002"]
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["step_000001", "step_000003", "step_000004"]


def test_rng_state_round_trip() -> None:
    import random

    import numpy as np

    state = json.loads(json.dumps(capture_rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b
