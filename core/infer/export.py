"""ONNX export of the Aeron model: a logits-only graph of the plain encoder-decoder.

``export_model_to_onnx`` switches the model to export mode (eval; multimodal fusion, the
enhancement stages and the reasoning engine are skipped — they hold Python-side state and
data-dependent control flow that ONNX cannot express), traces a wrapper that returns only the
logits, with dynamic batch and sequence axes, and restores the model's previous mode. The ONNX
packages are an optional extra (``pip install 'aeron-tui[onnx]'``); without them the function
raises :class:`ExportError` saying so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import AeronError

INPUT_NAMES = ("input_ids", "attention_mask", "decoder_input_ids")
OUTPUT_NAMES = ("logits",)


class ExportError(AeronError):
    """The model could not be exported (missing optional packages, bad arguments)."""


class LogitsOnly(nn.Module):
    """``(input_ids, attention_mask, decoder_input_ids) -> logits``: the exported signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, decoder_input_ids: Tensor) -> Tensor:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
        )
        return out["logits"]


def require_onnx() -> None:
    """ExportError unless ``onnx`` and ``onnxscript`` (the exporter's backends) are importable."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs the optional package(s) {', '.join(missing)}: "
            "install them with `pip install 'aeron-tui[onnx]'` (or `pip install onnx onnxscript`)"
        )


def _check_inputs(input_ids: Any, attention_mask: Any, decoder_input_ids: Any) -> None:
    for name, value in zip(INPUT_NAMES, (input_ids, attention_mask, decoder_input_ids), strict=True):
        if not isinstance(value, Tensor) or value.dim() != 2:
            raise ExportError(f"{name} must be a 2-D tensor (batch, length) example input")
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ExportError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if decoder_input_ids.shape[0] != input_ids.shape[0]:
        raise ExportError("decoder_input_ids and input_ids must have the same batch size")
    if input_ids.shape[1] < 2 or decoder_input_ids.shape[1] < 2:
        # A length-1 example would be specialised to a constant by the tracer.
        raise ExportError("example inputs need a sequence length of at least 2")


def export_model_to_onnx(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    decoder_input_ids: Tensor,
    export_path: str | os.PathLike[str],
    opset: int = 17,
) -> Path:
    """Write a logits-only ONNX graph of ``model`` to ``export_path``; returns the path.

    The example inputs fix dtypes only: batch, encoder length and decoder length are dynamic.
    The file is written to a temporary name next to ``export_path`` and renamed into place.
    """
    _check_inputs(input_ids, attention_mask, decoder_input_ids)  # bad input first: no onnx needed
    require_onnx()
    path = Path(export_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    set_export = getattr(model, "set_export_mode", None)
    was_export = bool(getattr(model, "export_mode", False))
    if callable(set_export):
        set_export(True)
    model.eval()
    wrapper = LogitsOnly(model).eval()
    batch = torch.export.Dim("batch", min=1)
    src_len = torch.export.Dim("src_len", min=1)
    tgt_len = torch.export.Dim("tgt_len", min=1)
    dynamic_shapes = {
        "input_ids": {0: batch, 1: src_len},
        "attention_mask": {0: batch, 1: src_len},
        "decoder_input_ids": {0: batch, 1: tgt_len},
    }
    # Save under the final name inside a private temporary directory, then move the graph
    # (and an external-data file, which a model over 2 GB gets) into place.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper,
                (input_ids, attention_mask, decoder_input_ids),
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                verbose=False,
            )
            if program is None:
                raise ExportError("torch.onnx.export returned no program")
            program.save(tmp_dir / path.name)
        for produced in sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name):
            os.replace(produced, path.parent / produced.name)  # the graph itself last
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if callable(set_export):
            set_export(was_export)
        model.train(was_training)
    return path


def example_inputs(config: Any, batch: int = 2, length: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Example ``(input_ids, attention_mask, decoder_input_ids)`` for tracing (valid ids only)."""
    length = max(2, min(length, int(config.max_position_embeddings)))
    gen = torch.Generator().manual_seed(0)
    low = min(3, int(config.vocab_size) - 1)
    ids = torch.randint(low, int(config.vocab_size), (batch, length), generator=gen)
    dec = torch.randint(low, int(config.vocab_size), (batch, length), generator=gen)
    return ids, torch.ones_like(ids), dec


def verify_onnx_export(
    model: nn.Module, export_path: str | os.PathLike[str], inputs: tuple[Tensor, Tensor, Tensor]
) -> float | None:
    """Max |ONNX − PyTorch| of the logits on ``inputs`` (None when onnxruntime is missing).

    The model runs in export mode for the comparison; its previous mode is restored.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(export_path), providers=["CPUExecutionProvider"])
    feeds = {name: t.cpu().numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
    got = torch.from_numpy(session.run(None, feeds)[0])
    was_training = model.training
    was_export = bool(getattr(model, "export_mode", False))
    set_export = getattr(model, "set_export_mode", None)
    try:
        if callable(set_export):
            set_export(True)
        model.eval()
        with torch.no_grad():
            expected = LogitsOnly(model)(*inputs).float().cpu()
    finally:
        if callable(set_export):
            set_export(was_export)
        model.train(was_training)
    return float((got - expected).abs().max())
