"""ONNX export of the Aeron model: the graph of what ``generate`` runs.

``export_model_to_onnx`` traces the model in eval mode — the mode ``generate`` decodes in — as
``(input_ids, attention_mask, decoder_input_ids) -> logits`` (plus ``evidential_uncertainty``
when the model has the uncertainty heads), with dynamic batch and sequence axes:

* the episodic memory is read from the bank as the checkpoint holds it (the unwritten slots
  masked out); ``generate`` does not write to it either, unless the config says
  ``memory_write_mode = "always"`` — then the graph reads the bank as it was at export;
* the reasoning engine runs for every sample and its complexity gate keeps the states of the
  samples under the threshold unchanged, as ``generate``'s early exit does;
* of the uncertainty heads only the deterministic evidential one is an output (the MC-dropout
  and ensemble entropies draw a fresh dropout mask per call);
* the knowledge graph, images and task ids are not inputs of the graph (``generate`` gets none).

The decoder is recomputed over the whole ``decoder_input_ids`` each call (no KV cache input).
The ONNX packages are an optional extra (``pip install 'aeron-tui[onnx]'``); without them the
function raises :class:`ExportError` saying so.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.errors import AeronError

INPUT_NAMES = ("input_ids", "attention_mask", "decoder_input_ids")
OUTPUT_NAMES = ("logits",)
UNCERTAINTY_OUTPUT = "evidential_uncertainty"
DEFAULT_OPSET = 18


class ExportError(AeronError):
    """The model could not be exported (missing optional packages, bad arguments)."""


class InferenceGraph(nn.Module):
    """``(input_ids, attention_mask, decoder_input_ids) -> logits[, evidential_uncertainty]``:
    the model's eval-mode forward, the exported signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.with_uncertainty = getattr(model, "uncertainty", None) is not None

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                decoder_input_ids: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
        )
        if self.with_uncertainty:
            return out["logits"], out["uncertainty_estimates"]["evidential_uncertainty"]
        return out["logits"]


def output_names(model: nn.Module) -> list[str]:
    """The exported graph's outputs for ``model``."""
    names = list(OUTPUT_NAMES)
    if getattr(model, "uncertainty", None) is not None:
        names.append(UNCERTAINTY_OUTPUT)
    return names


def require_onnx() -> None:
    """ExportError unless ``onnx`` and ``onnxscript`` (the exporter's backends) are importable."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs the optional package(s) {', '.join(missing)}: "
            "install them with `pip install 'aeron-tui[onnx]'` (or `pip install onnx onnxscript`)"
        )


def supported_opsets() -> range:
    """The opsets torch's ONNX exporter writes as asked: from its own implementations' opset
    (18) to the highest the onnxscript version converter reaches. Below, it fails to convert and
    keeps 18; above, it writes 18 and claims more."""
    low, high = 18, 25
    try:
        from torch.onnx._internal.exporter import _constants

        low = int(getattr(_constants, "TORCHLIB_OPSET", low))
    except ImportError:
        pass
    try:
        from onnxscript.version_converter import _version_converter

        high = int(getattr(_version_converter, "SUPPORTED_MAX_ONNX_OPSET", high))
    except ImportError:
        pass
    return range(low, high + 1)


def check_opset(opset: int) -> None:
    """ExportError in one line unless the exporter writes ``opset`` as asked."""
    ok = supported_opsets()
    if opset not in ok:
        raise ExportError(
            f"--opset {opset} is not supported: torch's ONNX exporter writes opsets "
            f"{ok.start}-{ok.stop - 1}; use --opset {DEFAULT_OPSET} (the default) or another in that range"
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


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own chatter (opset notes, skipped torchvision ops) is not for the user."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export",
                                               "torch.fx.experimental.symbolic_shapes", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def inference_mode_of(model: nn.Module) -> Iterator[None]:
    """``model`` as ``generate`` runs it (eval, not export mode, no grad); restored after."""
    was_training = model.training
    set_export = getattr(model, "set_export_mode", None)
    was_export = bool(getattr(model, "export_mode", False))
    if callable(set_export):
        set_export(False)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if callable(set_export):
            set_export(was_export)
        model.train(was_training)


def export_model_to_onnx(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    decoder_input_ids: Tensor,
    export_path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the ONNX graph of ``model``'s eval-mode forward to ``export_path``; returns the path.

    The example inputs fix dtypes only: batch, encoder length and decoder length are dynamic (up
    to ``max_position_embeddings``). The file is written to a temporary name next to
    ``export_path`` and renamed into place; a graph of any opset but ``opset`` is never written.
    """
    _check_inputs(input_ids, attention_mask, decoder_input_ids)  # bad input first: no onnx needed
    check_opset(opset)
    require_onnx()
    path = Path(export_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    max_len = int(getattr(config, "max_position_embeddings", 0)) or None
    rotary = getattr(model, "rotary", None)
    batch = torch.export.Dim("batch", min=1)
    src_len = torch.export.Dim("src_len", min=1, max=max_len)
    tgt_len = torch.export.Dim("tgt_len", min=1, max=max_len)
    dynamic_shapes = {
        "input_ids": {0: batch, 1: src_len},
        "attention_mask": {0: batch, 1: src_len},
        "decoder_input_ids": {0: batch, 1: tgt_len},
    }
    # Save under the final name inside a private temporary directory, then move the graph
    # (and an external-data file, which a model over 2 GB gets) into place.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with inference_mode_of(model), _quiet_exporter():
            if rotary is not None and max_len:
                # The rotary tables for every position, built up front: a graph traced from a
                # short example must not capture (or lazily build) a table too short for longer inputs.
                rotary(max_len, 0, input_ids.device)
            program = torch.onnx.export(
                InferenceGraph(model).eval(),
                (input_ids, attention_mask, decoder_input_ids),
                input_names=list(INPUT_NAMES),
                output_names=output_names(model),
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                verbose=False,
            )
            if program is None:
                raise ExportError("torch.onnx.export returned no program")
            written = _main_opset(program.model_proto)
            if written != opset:
                raise ExportError(f"the exporter produced opset {written} instead of --opset {opset}; "
                                  f"use --opset {DEFAULT_OPSET}")
            program.save(tmp_dir / path.name)
        for produced in sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name):
            os.replace(produced, path.parent / produced.name)  # the graph itself last
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export to {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def _main_opset(model_proto: Any) -> int | None:
    for entry in model_proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


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
    """Max |ONNX − PyTorch| over the graph's outputs on ``inputs`` (None without onnxruntime).

    PyTorch runs the model as ``generate`` does (eval mode, the enhancement stages and the
    reasoning engine on). The model's buffers are restored afterwards, so a model whose memory
    writes at inference is left as it was exported.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime as ort

    session = ort.InferenceSession(str(export_path), providers=["CPUExecutionProvider"])
    feeds = {name: t.cpu().numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
    got = [torch.from_numpy(x) for x in session.run(None, feeds)]
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    try:
        with inference_mode_of(model):
            expected = InferenceGraph(model)(*inputs)
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    expected_list = [expected] if isinstance(expected, Tensor) else list(expected)
    if len(got) != len(expected_list):
        raise ExportError(f"{export_path}: the graph has {len(got)} outputs, the model {len(expected_list)}")
    return max(float((g - e.float().cpu()).abs().max()) for g, e in zip(got, expected_list, strict=True))
