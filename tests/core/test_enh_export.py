"""ONNX export: a logits-only graph matching PyTorch, dynamic axes, mode restored."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from enh_common import tiny_config

from core.infer.export import ExportError, export_model_to_onnx, require_onnx
from core.model.model import TransformerNeuralNetBackbone

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))
HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None


def _inputs(b: int, s: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 96, (b, s), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, s - 1 :] = 0
    dec = torch.randint(3, 96, (b, t), generator=gen)
    return ids, mask, dec


@pytest.mark.slow
@pytest.mark.skipif(not (HAVE_ONNX and HAVE_ORT),
                    reason="needs the onnx extra: pip install 'aeron-tui[onnx]' (onnx, onnxscript, onnxruntime)")
def test_exported_logits_match_pytorch_for_new_shapes(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = TransformerNeuralNetBackbone(tiny_config()).train()
    path = export_model_to_onnx(model, *_inputs(2, 7, 5, 0), tmp_path / "out" / "model.onnx")
    assert path.is_file() and model.training and not model.export_mode  # previous mode restored
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temp left over
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    model.set_export_mode(True)
    for b, s, t in ((2, 7, 5), (3, 4, 9), (1, 11, 2)):  # batch and both lengths are dynamic
        ids, mask, dec = _inputs(b, s, t, b + s + t)
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)["logits"]
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                 "decoder_input_ids": dec.numpy()})[0]
        assert got.shape == tuple(expected.shape)
        assert float(abs(torch.from_numpy(got) - expected).max()) < 1e-4


def test_export_rejects_bad_example_inputs(tmp_path: Path) -> None:
    model = TransformerNeuralNetBackbone(tiny_config())
    ids, mask, dec = _inputs(2, 5, 4, 0)
    with pytest.raises(ExportError, match="attention_mask"):
        export_model_to_onnx(model, ids, mask[:, :3], dec, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="at least 2"):
        export_model_to_onnx(model, ids[:, :1], mask[:, :1], dec, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_missing_onnx_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake_find_spec(name: str, *args: object):
        return None if name == "onnxscript" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(ExportError, match=r"onnxscript.*aeron-tui\[onnx\]"):
        require_onnx()
