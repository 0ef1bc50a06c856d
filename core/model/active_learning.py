"""Active learning: pick the most informative and diverse samples of a pool with BADGE.

BADGE (Ash et al., 2020) represents a sample by the gradient of the loss on the output layer
for the model's *own* predicted labels — ``Σ_t (p_t − onehot(argmax p_t)) ⊗ h_t`` with ``p_t``
the softmax and ``h_t`` the final decoder state at position ``t`` — and picks a batch by
k-means++ seeding over those embeddings: large gradients (uncertain samples) and spread-out
directions (diverse samples) both raise the chance of being picked.

Interpretation (model.md §4.5): the ``V × d`` outer product is far too large, so we use its
exact random projection ``Σ_t (R_vᵀ(p_t − y_t)) ⊗ (R_hᵀ h_t)`` with seeded Gaussian ``R_v (V,16)``
and ``R_h (d,16)``: a 256-dimensional embedding whose inner products approximate the full ones.

In the model's forward the manager only records (after the graph is built) each training
sample's pooled state and epistemic score in a 4096-entry ring buffer; it has no parameters and
never changes the hidden states. ``aeron-tui data select`` is the user-facing entry point.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

RING_BUFFER_SIZE = 4096


def _seeded_gaussian(rows: int, cols: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) / cols**0.5


class ActiveLearningManager(nn.Module):
    """BADGE embeddings and k-means++ selection, plus a ring buffer of recent training samples."""

    def __init__(self, config: Any, seed: int = 0, buffer_size: int = RING_BUFFER_SIZE) -> None:
        super().__init__()
        self.proj_dim = int(config.al_proj_dim)
        self.vocab_size = int(config.vocab_size)
        self.d_model = int(config.d_model)
        self.seed = int(seed)
        self.buffer_size = int(buffer_size)
        # The ring buffer is scratch state for the console and the trainer, not a model weight:
        # it is kept out of checkpoints (persistent=False).
        self.register_buffer("pooled", torch.zeros(self.buffer_size, self.d_model), persistent=False)
        self.register_buffer("scores", torch.zeros(self.buffer_size), persistent=False)
        self.register_buffer("position", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("count", torch.zeros((), dtype=torch.long), persistent=False)
        self._projections: tuple[Tensor, Tensor] | None = None

    # ---------------------------------------------------------------- ring buffer
    @torch.no_grad()
    def record(self, pooled: Tensor, scores: Tensor | None = None) -> None:
        """Append ``pooled (B,d)`` and per-sample ``scores (B,)`` (vectorised, wraps around)."""
        n = pooled.shape[0]
        if n == 0:
            return
        if n > self.buffer_size:
            pooled = pooled[-self.buffer_size :]
            scores = None if scores is None else scores[-self.buffer_size :]
            n = self.buffer_size
        idx = (self.position + torch.arange(n, device=self.position.device)) % self.buffer_size
        self.pooled[idx] = pooled.detach().to(self.pooled.dtype)
        values = torch.zeros(n, device=self.scores.device) if scores is None else scores.detach()
        self.scores[idx] = values.to(self.scores.dtype)
        self.position.copy_((self.position + n) % self.buffer_size)
        self.count.copy_(torch.clamp(self.count + n, max=self.buffer_size))

    def buffered(self) -> tuple[Tensor, Tensor]:
        """The recorded ``(pooled (n,d), scores (n,))``, oldest first."""
        n = int(self.count)
        start = int(self.position) - n
        idx = torch.arange(start, start + n, device=self.pooled.device) % self.buffer_size
        return self.pooled[idx], self.scores[idx]

    def reset(self) -> None:
        """Empty the ring buffer."""
        self.pooled.zero_()
        self.scores.zero_()
        self.position.zero_()
        self.count.zero_()

    def reset_state(self) -> None:
        """Alias of :meth:`reset` (the backbone's ``reset_state`` calls it)."""
        self.reset()

    def select(self, embeddings: Tensor, k: int, seed: int | None = None) -> list[int]:
        """BADGE pick of ``k`` pool indices from :meth:`gradient_embeddings` (see :func:`select`)."""
        return select(embeddings, k, self.seed if seed is None else seed)

    def statistics(self) -> dict[str, float | int]:
        """Buffered sample count and mean epistemic score (for step events)."""
        _, scores = self.buffered()
        return {"buffered": int(self.count), "mean_score": float(scores.mean()) if len(scores) else 0.0}

    # ---------------------------------------------------------------- BADGE
    def projections(self) -> tuple[Tensor, Tensor]:
        """The seeded Gaussians ``R_v (V,k)`` and ``R_h (d,k)`` (built once, on CPU)."""
        if self._projections is None:
            self._projections = (
                _seeded_gaussian(self.vocab_size, self.proj_dim, self.seed),
                _seeded_gaussian(self.d_model, self.proj_dim, self.seed + 1),
            )
        return self._projections

    @torch.no_grad()
    def gradient_embeddings(self, logits: Tensor, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """BADGE embeddings ``(B, k·k)`` from decoder ``logits (B,T,V)`` and ``hidden (B,T,d)``.

        Positions where ``mask`` is 0 are left out; ``k = al_proj_dim``.
        """
        if logits.shape[:2] != hidden.shape[:2]:
            raise ValueError(
                f"logits {tuple(logits.shape)} and hidden {tuple(hidden.shape)} must share (B,T)"
            )
        if logits.shape[-1] != self.vocab_size or hidden.shape[-1] != self.d_model:
            raise ValueError(
                f"expected logits (B,T,{self.vocab_size}) and hidden (B,T,{self.d_model}), "
                f"got {tuple(logits.shape)} and {tuple(hidden.shape)}"
            )
        r_v, r_h = (r.to(logits.device) for r in self.projections())
        probs = logits.float().softmax(dim=-1)
        # R_vᵀ(p − onehot(argmax p)) = R_vᵀp − R_v[argmax p]
        err = probs @ r_v - r_v[probs.argmax(dim=-1)]  # (B,T,k)
        feat = hidden.float() @ r_h  # (B,T,k)
        if mask is not None:
            err = err * mask.to(err.dtype).unsqueeze(-1)
        emb = torch.einsum("btk,btl->bkl", err, feat)
        return emb.reshape(emb.shape[0], -1)


def select(embeddings: Tensor, k: int, seed: int = 0) -> list[int]:
    """k-means++ seeding over ``embeddings (n, D)``: ``k`` distinct indices.

    The first pick is the largest-norm embedding (the most uncertain sample); each next pick is
    drawn with probability proportional to its squared distance to the nearest pick so far.
    When every remaining point coincides with a pick, the rest are drawn uniformly.
    """
    n = embeddings.shape[0]
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (n, D), got shape {tuple(embeddings.shape)}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the pool size {n}, got {k}")
    emb = embeddings.detach().double().cpu()
    gen = torch.Generator().manual_seed(seed)
    chosen = [int(emb.norm(dim=1).argmax())]
    taken = torch.zeros(n, dtype=torch.bool)
    taken[chosen[0]] = True
    nearest = ((emb - emb[chosen[0]]) ** 2).sum(dim=1)
    while len(chosen) < k:
        weights = nearest.clone()
        weights[taken] = 0.0
        if float(weights.sum()) <= 0.0:
            weights = (~taken).double()
        pick = int(torch.multinomial(weights, 1, generator=gen))
        chosen.append(pick)
        taken[pick] = True
        nearest = torch.minimum(nearest, ((emb - emb[pick]) ** 2).sum(dim=1))
    return chosen


def mean_pairwise_distance(points: Tensor) -> float:
    """Mean Euclidean distance over distinct pairs — the diversity measure used in the tests."""
    if points.shape[0] < 2:
        return 0.0
    dist = torch.cdist(points.double(), points.double())
    n = points.shape[0]
    return float(dist.sum() / (n * (n - 1)))


@torch.no_grad()
def pool_embeddings(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    manager: ActiveLearningManager | None = None,
) -> Tensor:
    """BADGE embeddings ``(n, k·k)`` of every sample in ``batches`` (collated encoder/decoder
    batches), from the model's final decoder states and its own predicted labels.

    Uses the model's ``active_learning`` manager when it has one (same seeded projections),
    else a fresh one built from ``model.config``. The model's train/eval mode is restored.
    """
    manager = manager or getattr(model, "active_learning", None)
    if manager is None:
        manager = ActiveLearningManager(model.config)  # type: ignore[attr-defined]
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch in batches:
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=batch["decoder_input_ids"],
                decoder_attention_mask=batch.get("decoder_attention_mask"),
                output_hidden_states=True,
            )
            hidden = out["decoder_last_hidden_state"]
            chunks.append(
                manager.gradient_embeddings(out["logits"], hidden, batch.get("decoder_attention_mask")).cpu()
            )
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("pool_embeddings: the pool is empty")
    return torch.cat(chunks)
