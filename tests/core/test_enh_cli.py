"""`aeron-tui data select` (BADGE over a styles.jsonl pool) and `aeron-tui model export`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from enh_common import tiny_config
from typer.testing import CliRunner

from aeron_tui.cli import app
from core.data.tokenizer import AeronTokenizer
from core.model.model import TransformerNeuralNetBackbone
from core.runs.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh all-modules model with the 268-symbol byte-level tokenizer, saved as a checkpoint."""
    tok = AeronTokenizer.byte_level()
    config = tiny_config(vocab_size=tok.vocab_size, max_position_embeddings=128, strict_modules=False)
    torch.manual_seed(0)
    model = TransformerNeuralNetBackbone(config)
    path = tmp_path_factory.mktemp("ckpt") / "step_000000"
    return save_checkpoint(path, model=model, config=config, tokenizer=tok,
                           trainer_state={"global_step": 0})


def _pool(path: Path, n: int = 12) -> Path:
    rows = [
        {"provider": ["claude", "gemini", "chatgpt"][i % 3], "style_label": ["qa", "code"][i % 2],
         "user_input": f"question {i} " + "x" * (i * 3), "assistant_reply": f"answer {i} " + "y" * i,
         "turn_id": f"t{i}"}
        for i in range(n)
    ]
    text = "\n".join(json.dumps(r) for r in rows[:6]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[6:]) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def test_data_select_writes_k_distinct_pool_lines(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pool = _pool(tmp_path / "pool.jsonl")
    out = tmp_path / "picked" / "chosen.jsonl"
    result = CliRunner().invoke(app, ["data", "select", "--checkpoint", str(tiny_checkpoint),
                                      "--pool", str(pool), "-k", "4", "--out", str(out),
                                      "--max-length", "32"])
    assert result.exit_code == 0, result.output
    chosen = out.read_text(encoding="utf-8").splitlines()
    pool_lines = [line for line in pool.read_text(encoding="utf-8").splitlines() if line]
    assert len(chosen) == 4 and len(set(chosen)) == 4
    assert all(line in pool_lines for line in chosen)  # copied verbatim
    assert "BADGE picked 4 of 12" in result.output
    # deterministic for a seed
    again = tmp_path / "again.jsonl"
    CliRunner().invoke(app, ["data", "select", "--checkpoint", str(tiny_checkpoint), "--pool",
                             str(pool), "-k", "4", "--out", str(again), "--max-length", "32"])
    assert again.read_text(encoding="utf-8").splitlines() == chosen


def test_data_select_rejects_k_larger_than_the_pool(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pool = _pool(tmp_path / "pool.jsonl", n=3)
    out = tmp_path / "chosen.jsonl"
    result = CliRunner().invoke(app, ["data", "select", "--checkpoint", str(tiny_checkpoint),
                                      "--pool", str(pool), "-k", "5", "--out", str(out)])
    assert result.exit_code != 0
    assert "-k must be between 1 and the pool size 3" in str(result.exception or result.output)
    assert not out.exists()


def test_data_select_bad_input_names_the_file_and_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from core.errors import CheckpointError, DataError

    pool = _pool(tmp_path / "pool.jsonl", n=4)
    with pool.open("a", encoding="utf-8") as fh:
        fh.write('{"provider": "claude", "style_label": "qa", "user_input": 3}\n')  # line 7 (after a blank line 5, 6)
    out = tmp_path / "chosen.jsonl"
    args = ["data", "select", "--checkpoint", str(tiny_checkpoint), "--pool", str(pool), "-k", "2",
            "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, DataError)
    assert f"{pool}:7" in str(result.exception) and "user_input" in str(result.exception)
    missing = CliRunner().invoke(app, [*args[:3], str(tmp_path / "nope"), *args[4:5],
                                       str(_pool(tmp_path / "ok.jsonl", n=4)), *args[6:]])
    assert isinstance(missing.exception, CheckpointError) and "nope" in str(missing.exception)
    assert not out.exists()  # nothing half-written


def test_model_export_refuses_an_unsupported_opset_in_one_line_before_loading(tmp_path: Path) -> None:
    from core.infer.export import ExportError

    # The default used to be 17: a RuntimeError traceback, then an opset-18 file anyway.
    missing = tmp_path / "no-such-checkpoint"  # refused before the checkpoint is looked at
    result = CliRunner().invoke(app, ["model", "export", "--checkpoint", str(missing), "--opset", "17",
                                      "--out", str(tmp_path / "m.onnx")])
    assert isinstance(result.exception, ExportError)
    message = str(result.exception)
    assert "\n" not in message and "--opset 17 is not supported" in message and "--opset 18" in message
    assert not (tmp_path / "m.onnx").exists()


def test_model_export_help_keeps_the_install_hint() -> None:
    result = CliRunner().invoke(app, ["model", "export", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "pip install 'aeron-tui[onnx]'" in result.output  # Rich markup used to eat "[onnx]"


def test_model_export_rejects_other_formats_and_says_why_there_is_no_gguf(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["model", "export", "--checkpoint", str(tiny_checkpoint),
                                      "--format", "gguf", "--out", str(tmp_path / "m.gguf")])
    assert result.exit_code != 0
    assert "--format 'gguf' is not supported" in str(result.exception)
    assert "no GGUF runtime implements this architecture" in str(result.exception)
    assert not (tmp_path / "m.gguf").exists()
