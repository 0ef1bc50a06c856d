"""Continual learning: task conditioning and Elastic Weight Consolidation (EWC).

Two independent parts (model.md §4.3, continual.md §2):

- :class:`ContinualLearningModule` (in the forward): a ``task_embedding (num_tasks, d)`` and a
  zero-initialised FiLM layer. With a ``task_id`` the encoder states become
  ``x ⊙ (1 + γ) + β`` with ``(γ, β) = film(e)``, and ``e`` goes on to condition the reasoning
  engine's Tree-of-Thought branches; without one the stage is the identity.
- :class:`ElasticWeightConsolidation` (outside the forward): ``consolidate(model, batches)``
  accumulates the diagonal empirical Fisher ``F = mean_samples (∂L/∂θ)²`` (``L`` a sample's
  negative log-likelihood) over the named parameters and anchors ``θ*``; ``penalty()`` is
  ``(λ/2)·Σ F·(θ − θ*)²``. Repeated calls add Fishers (one per consolidated task) and move the
  anchor to the latest weights. Its state (``ewc_state``) is a flat dict of tensors, saved next
  to the model weights in a checkpoint.

The Fisher's scale is not portable: it grows with the tokens per sample and with how badly the
old model fits its corpus (measured on two tiny models: mean F 1.0e-3 on short, well-fit
sequences vs 0.21 on the sample corpus's longer ones — 200×), so a raw λ that protects one
model freezes another. With ``normalize=True`` the penalty uses ``F / mean(F)`` (the mean over
every consolidated element): λ then weighs the *relative* importance only and one default
works across corpora and model sizes. The stored Fisher stays the raw one.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

LossFn = Callable[[nn.Module, Any], Tensor]
EWC_STATE_KEY = "ewc_state"


def validate_task_id(task_id: Any, num_tasks: int, batch_size: int) -> None:
    """ValueError naming ``task_id`` unless it is an int or ``(B,)`` integer tensor in range."""
    expected = f"an int or an integer tensor of shape ({batch_size},) with values in [0, {num_tasks})"
    if isinstance(task_id, bool):
        raise ValueError(f"task_id must be {expected}, got a bool")
    if isinstance(task_id, int):
        if not 0 <= task_id < num_tasks:
            raise ValueError(f"task_id {task_id} is out of range: expected {expected}")
        return
    if not isinstance(task_id, Tensor):
        raise ValueError(f"task_id must be {expected}, got {type(task_id).__name__}")
    if task_id.dtype.is_floating_point or task_id.dtype.is_complex or task_id.dtype == torch.bool:
        raise ValueError(f"task_id must be {expected}, got dtype {task_id.dtype}")
    if task_id.dim() == 0:
        value = int(task_id)
        if not 0 <= value < num_tasks:
            raise ValueError(f"task_id {value} is out of range: expected {expected}")
        return
    if tuple(task_id.shape) != (batch_size,):
        raise ValueError(f"task_id must be {expected}, got shape {tuple(task_id.shape)}")
    low, high = int(task_id.min()), int(task_id.max())
    if low < 0 or high >= num_tasks:
        bad = low if low < 0 else high
        raise ValueError(f"task_id contains {bad}, out of range: expected {expected}")


class ContinualLearningModule(nn.Module):
    """Task embeddings with FiLM conditioning; holds the model's EWC state in ``self.ewc``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        d = config.d_model
        self.num_tasks = int(config.num_tasks)
        self.task_embedding = nn.Embedding(self.num_tasks, d)
        with torch.no_grad():  # N(0,1) from nn.Embedding scaled to N(0, initializer_range²)
            self.task_embedding.weight.mul_(float(config.initializer_range))
        self.film = nn.Linear(d, 2 * d)
        # Zero init: a new task starts as the identity and learns its modulation.
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.ewc = ElasticWeightConsolidation(float(config.ewc_lambda))

    def task_vector(self, task_id: int | Tensor, batch_size: int, device: torch.device) -> Tensor:
        """The task embedding per sample, ``(B, d)``."""
        validate_task_id(task_id, self.num_tasks, batch_size)
        ids = torch.as_tensor(task_id, device=device, dtype=torch.long)
        if ids.dim() == 0:
            ids = ids.expand(batch_size)
        return self.task_embedding(ids)

    def forward(self, x: Tensor, task_id: int | Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(x ⊙ (1+γ) + β, e)`` with a task, ``(x, None)`` without."""
        if task_id is None:
            return x, None
        e = self.task_vector(task_id, x.shape[0], x.device)
        gamma, beta = self.film(e).unsqueeze(1).chunk(2, dim=-1)
        return x * (1.0 + gamma) + beta, e

    # The EWC state travels in the model's state dict as ``<prefix>ewc_state.{fisher,anchor}.<name>``
    # and ``<prefix>ewc_state.meta.*`` tensors, so every checkpoint that saves the weights also
    # saves the consolidation; an unconsolidated module adds nothing.
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.ewc.active:
            for key, value in self.ewc.state_dict().items():
                destination[f"{prefix}{EWC_STATE_KEY}.{key}"] = value

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        marker = f"{prefix}{EWC_STATE_KEY}."
        keys = [k for k in state_dict if k.startswith(marker)]
        if keys:
            self.ewc.load_state_dict({k[len(marker) :]: state_dict.pop(k) for k in keys})
        else:
            self.ewc = ElasticWeightConsolidation(self.ewc.ewc_lambda, self.ewc.storage_device,
                                                  self.ewc.normalize)
        super()._load_from_state_dict(state_dict, prefix, *args)

    # EWC conveniences: the module is where a checkpoint finds the model's consolidation state.
    def consolidate(self, model: nn.Module, batches: Iterable[Any], **kwargs: Any) -> int:
        """See :meth:`ElasticWeightConsolidation.consolidate`."""
        return self.ewc.consolidate(model, batches, **kwargs)

    def penalty(self, model: nn.Module | None = None) -> Tensor:
        """See :meth:`ElasticWeightConsolidation.penalty`."""
        return self.ewc.penalty(model)


def split_batch(batch: Any) -> list[Any]:
    """Single-sample batches: every tensor with the batch's leading size is sliced along axis 0.

    Works for a tensor, a mapping of tensors (``{"input_ids": ..., "labels": ...}``) or a
    tuple/list of them; other values (None, ints, dicts of tensors with another leading size) are passed as is.
    """
    if isinstance(batch, Tensor):
        return [batch[i : i + 1] for i in range(batch.shape[0])] if batch.dim() else [batch]
    values = list(batch.values()) if isinstance(batch, Mapping) else list(batch)
    sizes = [v.shape[0] for v in values if isinstance(v, Tensor) and v.dim() > 0]
    if not sizes:
        return [batch]
    n = max(set(sizes), key=sizes.count)

    def pick(v: Any, i: int) -> Any:
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n:
            return v[i : i + 1]
        if isinstance(v, Mapping):
            return {k: pick(x, i) for k, x in v.items()}
        return v

    if isinstance(batch, Mapping):
        return [{k: pick(v, i) for k, v in batch.items()} for i in range(n)]
    return [type(batch)(pick(v, i) for v in values) for i in range(n)]


def _default_loss(model: nn.Module, batch: Any) -> Tensor:
    """The batch's summed negative log-likelihood: the model's mean token loss × label tokens.

    EWC's Fisher is that of a sample's log-likelihood — for a sequence, the sum over its tokens;
    the squared gradient of a per-token *mean* would be smaller by the squared length.
    """
    out = model(**batch) if isinstance(batch, Mapping) else model(*batch)
    loss = out["loss"] if isinstance(out, Mapping) else out
    if loss is None:
        raise ValueError("consolidate: the model returned no loss; give batches with labels")
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if isinstance(labels, Tensor) and labels.dim() > 1:  # token labels (B, T): -100 is ignored
        return loss * (labels != -100).sum().clamp_min(1)
    return loss


def _batch_size(batch: Any) -> int:
    return len(split_batch(batch)) if isinstance(batch, (Tensor, Mapping, list, tuple)) else 1


class _EWCPenalty(torch.autograd.Function):
    """``scale · Σ F·(θ − θ*)²`` with a hand-written backward ``2·scale·F·(θ − θ*)``.

    Autograd through the plain expression keeps every ``θ − θ*`` alive until backward (a second
    copy of the model) and runs six elementwise passes; this recomputes the difference instead.
    """

    @staticmethod
    def forward(ctx: Any, scale: float, fishers: list[Tensor], anchors: list[Tensor],
                *params: Tensor) -> Tensor:
        ctx.scale, ctx.fishers, ctx.anchors = scale, fishers, anchors
        ctx.save_for_backward(*params)
        total = torch.zeros((), dtype=torch.float32, device=params[0].device)
        for p, f, a in zip(params, fishers, anchors, strict=True):
            d = p.detach().float() - a.to(p.device)
            total += torch.dot((f.to(p.device) * d).reshape(-1), d.reshape(-1))
        return total * scale

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Any, ...]:
        params = ctx.saved_tensors
        grads = []
        for p, f, a, needs in zip(params, ctx.fishers, ctx.anchors, ctx.needs_input_grad[3:], strict=True):
            if not needs:
                grads.append(None)
                continue
            d = p.detach().float() - a.to(p.device)
            d.mul_(f.to(p.device)).mul_(grad_out * (2.0 * ctx.scale))
            grads.append(d.to(p.dtype))
        return (None, None, None, *grads)


class ElasticWeightConsolidation:
    """Diagonal-Fisher EWC over named parameters.

    ``consolidate`` binds the model (weakly); ``penalty()`` then needs no argument. After loading a
    checkpoint call :meth:`bind` (or pass the model to ``penalty``).
    """

    def __init__(self, ewc_lambda: float, storage_device: str | torch.device | None = None,
                 normalize: bool = False) -> None:
        self.ewc_lambda = float(ewc_lambda)
        self.storage_device = storage_device
        self.normalize = bool(normalize)
        self._fisher_mean: float | None = None  # cached; reset whenever the Fisher changes
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.num_consolidations = 0
        self.batches_seen = 0
        self._model: weakref.ReferenceType[nn.Module] | None = None

    @property
    def active(self) -> bool:
        """True once something has been consolidated."""
        return bool(self.fisher)

    def fisher_mean(self) -> float:
        """The mean of the Fisher over every consolidated element (0.0 before consolidation)."""
        if self._fisher_mean is not None:
            return self._fisher_mean
        total = sum(float(f.double().sum()) for f in self.fisher.values())
        count = sum(f.numel() for f in self.fisher.values())
        self._fisher_mean = total / count if count else 0.0
        return self._fisher_mean

    def effective_lambda(self) -> float:
        """The factor on ``Σ F·(θ − θ*)²``: ``λ``, or ``λ / mean(F)`` when normalising."""
        if not self.normalize:
            return self.ewc_lambda
        mean = self.fisher_mean()
        return self.ewc_lambda / mean if mean > 0 else 0.0

    def bind(self, model: nn.Module) -> None:
        """Use ``model``'s parameters in :meth:`penalty` calls without an argument."""
        self._model = weakref.ref(model)

    def consolidate(
        self,
        model: nn.Module,
        batches: Iterable[Any],
        loss_fn: LossFn | None = None,
        param_pattern: str | None = None,
        max_batches: int | None = None,
        per_sample: bool = True,
    ) -> int:
        """Add the empirical Fisher of ``model`` on ``batches`` and anchor the current weights.

        ``loss_fn(model, batch)`` returns the batch's summed negative log-likelihood; the default
        is ``model(**batch)["loss"]`` times the number of label tokens (``labels != -100``).
        ``param_pattern`` is a regex over parameter names (``re.search``; default: all trainable
        parameters). With ``per_sample`` (default) each batch is split along its first axis and
        ``F`` is the mean over samples of their squared gradients — the textbook empirical
        Fisher. ``per_sample=False`` is B× cheaper: ``F ≈ Σ G²/Σ B`` from whole-batch gradients
        ``G`` (exact in expectation only for independent, zero-mean sample gradients; it
        under-protects near a minimum). Returns the number of samples used. The model's
        train/eval mode is restored.
        """
        loss_fn = loss_fn or _default_loss
        pattern = re.compile(param_pattern) if param_pattern else None
        params = {
            name: p
            for name, p in model.named_parameters()
            if p.requires_grad and (pattern is None or pattern.search(name))
        }
        if not params:
            raise ValueError(f"consolidate: no trainable parameter matches {param_pattern!r}")
        sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
        count = 0
        was_training = model.training
        model.eval()
        try:
            for n_batch, batch in enumerate(batches):
                if max_batches is not None and n_batch >= max_batches:
                    break
                for part in split_batch(batch) if per_sample else [batch]:
                    grads = torch.autograd.grad(
                        loss_fn(model, part), list(params.values()), allow_unused=True
                    )
                    for (name, _), g in zip(params.items(), grads, strict=True):
                        if g is not None:
                            sums[name].add_(g.detach().float().square())
                    count += 1 if per_sample else _batch_size(part)
        finally:
            model.train(was_training)
        if count == 0:
            raise ValueError("consolidate: the batch iterable was empty")
        store = self.storage_device
        for name, p in params.items():
            fisher = (sums[name] / count).to(store or p.device)
            self.fisher[name] = self.fisher[name] + fisher if name in self.fisher else fisher
            self.anchor[name] = p.detach().float().clone().to(store or p.device)
        self._fisher_mean = None
        self.num_consolidations += 1
        self.batches_seen += count
        self.bind(model)
        return count

    def penalty(self, model: nn.Module | None = None) -> Tensor:
        """``(ewc_lambda / 2) · Σ F·(θ − θ*)²`` — differentiable in the model's parameters.

        With ``normalize`` the Fisher is divided by its mean (see :meth:`effective_lambda`).
        """
        if model is None:
            model = self._model() if self._model is not None else None
        if model is None:
            raise ValueError("penalty: no model bound; call consolidate(model, ...) or bind(model)")
        if not self.fisher:
            return torch.zeros((), device=next(model.parameters()).device)
        params = dict(model.named_parameters())
        missing = [n for n in self.fisher if n not in params]
        if missing:
            raise ValueError(f"penalty: the model has no parameter {missing[0]!r} from the EWC state")
        names = list(self.fisher)
        tensors = [params[n] for n in names]
        return _EWCPenalty.apply(
            0.5 * self.effective_lambda(), [self.fisher[n] for n in names], [self.anchor[n] for n in names],
            *tensors,
        )

    # ---------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Tensor]:
        """Flat tensors: ``fisher.<name>``, ``anchor.<name>`` and ``meta.*`` scalars."""
        state: dict[str, Tensor] = {}
        for name, fisher in self.fisher.items():
            state[f"fisher.{name}"] = fisher.detach().cpu().contiguous()
            state[f"anchor.{name}"] = self.anchor[name].detach().cpu().contiguous()
        state["meta.ewc_lambda"] = torch.tensor(self.ewc_lambda, dtype=torch.float64)
        state["meta.normalize"] = torch.tensor(self.normalize)
        state["meta.num_consolidations"] = torch.tensor(self.num_consolidations)
        state["meta.batches_seen"] = torch.tensor(self.batches_seen)
        return state

    def load_state_dict(self, state: Mapping[str, Tensor], device: str | torch.device | None = None) -> None:
        """Restore from :meth:`state_dict`; ValueError naming the key when it is inconsistent."""
        fisher = {k[len("fisher.") :]: v for k, v in state.items() if k.startswith("fisher.")}
        anchor = {k[len("anchor.") :]: v for k, v in state.items() if k.startswith("anchor.")}
        if set(fisher) != set(anchor):
            odd = sorted(set(fisher) ^ set(anchor))[0]
            raise ValueError(f"ewc_state: 'fisher.{odd}' and 'anchor.{odd}' must both be present")
        for name, f in fisher.items():
            if f.shape != anchor[name].shape:
                raise ValueError(f"ewc_state: shapes of fisher/anchor for {name!r} differ")
        dev = device or self.storage_device or "cpu"
        self.fisher = {n: t.float().to(dev) for n, t in fisher.items()}
        self.anchor = {n: t.float().to(dev) for n, t in anchor.items()}
        self._fisher_mean = None
        if "meta.ewc_lambda" in state:
            self.ewc_lambda = float(state["meta.ewc_lambda"])
        if "meta.normalize" in state:
            self.normalize = bool(state["meta.normalize"])
        self.num_consolidations = int(state.get("meta.num_consolidations", torch.tensor(0)))
        self.batches_seen = int(state.get("meta.batches_seen", torch.tensor(0)))

    def save(self, path: str) -> None:
        """Write the state to ``path`` (safetensors), atomically."""
        import os

        from safetensors.torch import save_file

        tmp = f"{path}.tmp"
        save_file(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str, device: str | torch.device | None = None) -> None:
        """Read a state written by :meth:`save`."""
        from safetensors.torch import load_file

        self.load_state_dict(load_file(path), device=device)
