"""``compile_model``: ``torch.compile`` per encoder/decoder layer (spec rlhf.md §6).

Only the repeated transformer layers are compiled; everything around them (embedding, the
enhancement stages, the reasoning engine's data-dependent control flow, the KV-cache bookkeeping)
stays eager, so a graph break there never costs a recompile of the whole model. The compiled
layer replaces the layer's ``forward`` on the instance, so parameter names, ``state_dict`` and
checkpoints are unchanged. A layer whose compilation fails (when ``torch.compile`` is set up or
on a call) runs eagerly from then on, with a :class:`RuntimeWarning`; the model never prints.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["compile_model", "compiled_layers"]


class _GuardedForward:
    """A layer's forward: the compiled one, or the eager one once compiling has failed."""

    def __init__(self, eager: Callable[..., Any], name: str, backend: str | Callable[..., Any],
                 mode: str | None) -> None:
        self.eager = eager
        self.name = name
        self.backend = backend
        self.compiled: Callable[..., Any] | None = None
        try:
            self.compiled = torch.compile(eager, backend=backend, mode=mode)
        except Exception as exc:  # bad backend / mode, no compiler available
            self._fall_back(exc)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:
            # Decide whether the compiler or the input is at fault: if eager fails too, the
            # error is the caller's and is raised unchanged (the layer stays compiled).
            out = self.eager(*args, **kwargs)
            self._fall_back(exc)
            return out

    def _fall_back(self, exc: BaseException) -> None:
        self.compiled = None
        root: BaseException = exc
        inner = getattr(exc, "inner_exception", None)  # dynamo wraps the compiler's own error
        while isinstance(inner, BaseException):
            root, inner = inner, getattr(inner, "inner_exception", None)
        first_line = (str(root).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"compile_model: {self.name} could not be compiled with backend "
            f"{_backend_name(self.backend)!r} ({type(root).__name__}: {first_line}); "
            "running it eagerly",
            RuntimeWarning,
            stacklevel=3,
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # A deep copy of the model (reference policy, teacher) gets the plain eager forward,
        # bound to the copied layer; compiled code is tied to the original's parameters.
        return copy.deepcopy(self.eager, memo)


def _backend_name(backend: str | Callable[..., Any]) -> str:
    return backend if isinstance(backend, str) else getattr(backend, "__name__", repr(backend))


def _layer_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """``(name, layers)`` of every Aeron encoder and decoder stack inside ``model``."""
    from core.model.model import AeronDecoder, AeronEncoder

    return [(f"{name}.layers" if name else "layers", module.layers)
            for name, module in model.named_modules()
            if isinstance(module, (AeronEncoder, AeronDecoder))]


def compiled_layers(model: nn.Module) -> dict[str, bool]:
    """``{layer name: runs compiled}`` for every layer :func:`compile_model` wrapped."""
    out: dict[str, bool] = {}
    for stack_name, layers in _layer_stacks(model):
        for i, layer in enumerate(layers):
            guard = layer.__dict__.get("forward")
            if isinstance(guard, _GuardedForward):
                out[f"{stack_name}.{i}"] = guard.compiled is not None
    return out


def compile_model(model: nn.Module, backend: str | Callable[..., Any] = "inductor",
                  mode: str | None = None) -> nn.Module:
    """Compile each encoder/decoder layer of ``model`` in place with ``torch.compile``.

    ``backend`` and ``mode`` go to ``torch.compile`` (``mode`` only matters for inductor:
    ``"default"``, ``"reduce-overhead"``, ``"max-autotune"``). Layers already compiled are left
    as they are. Returns ``model``. Compilation is lazy: the first call of each input shape pays
    for it; a failure then (or here) makes that layer eager with a ``RuntimeWarning``.
    """
    stacks = _layer_stacks(model)
    if not stacks:
        raise TypeError(
            f"compile_model: {type(model).__name__} has no Aeron encoder/decoder layers")
    for stack_name, layers in stacks:
        for i, layer in enumerate(layers):
            if isinstance(layer.__dict__.get("forward"), _GuardedForward):
                continue
            # An instance attribute shadows the class's forward for nn.Module.__call__.
            layer.forward = _GuardedForward(layer.forward, f"{stack_name}.{i}", backend, mode)
    return model
