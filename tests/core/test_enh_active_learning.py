"""ActiveLearningManager: BADGE embeddings, k-means++ selection diversity, the ring buffer."""

from __future__ import annotations

import pytest
import torch
from enh_common import tiny_config

from core.model.active_learning import ActiveLearningManager, mean_pairwise_distance, select


def _clustered_pool(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One big cluster of 400 points and 9 small ones of 5: a random pick mostly sees the big one."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, 16, generator=gen) * 10
    sizes = [400] + [5] * 9
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    points = centres[labels] + torch.randn(len(labels), 16, generator=gen)
    return points, labels


def test_select_returns_k_distinct_indices_first_is_largest_norm() -> None:
    points, _ = _clustered_pool()
    chosen = select(points, 10, seed=3)
    assert len(chosen) == 10 and len(set(chosen)) == 10
    assert chosen[0] == int(points.norm(dim=1).argmax())
    assert select(points, 10, seed=3) == chosen  # deterministic under a seed
    dup = torch.zeros(5, 4)
    assert sorted(select(dup, 5)) == [0, 1, 2, 3, 4]  # still distinct when all coincide


def test_badge_selection_is_more_diverse_than_random() -> None:
    """Measure: clusters covered and mean pairwise distance, averaged over 5 seeds."""
    points, labels = _clustered_pool()
    gen = torch.Generator().manual_seed(0)
    cover_badge, cover_random, dist_badge, dist_random = [], [], [], []
    for seed in range(5):
        picked = torch.tensor(select(points, 10, seed=seed))
        rand = torch.randperm(len(points), generator=gen)[:10]
        cover_badge.append(len(set(labels[picked].tolist())))
        cover_random.append(len(set(labels[rand].tolist())))
        dist_badge.append(mean_pairwise_distance(points[picked]))
        dist_random.append(mean_pairwise_distance(points[rand]))
    # measured: BADGE covers 7-8 of 10 clusters, a random pick 1-3
    assert sum(cover_badge) / 5 >= sum(cover_random) / 5 + 3
    assert sum(dist_badge) / 5 > 2 * sum(dist_random) / 5


def test_select_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        select(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="k must be"):
        select(torch.zeros(3, 2), 0)


def test_gradient_embedding_equals_projected_outer_product() -> None:
    cfg = tiny_config()
    al = ActiveLearningManager(cfg, seed=7)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, cfg.vocab_size, generator=gen)
    hidden = torch.randn(2, 3, cfg.d_model, generator=gen)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    emb = al.gradient_embeddings(logits, hidden, mask)
    assert emb.shape == (2, cfg.al_proj_dim**2)
    r_v, r_h = al.projections()
    p = logits.softmax(-1)
    err = p - torch.nn.functional.one_hot(p.argmax(-1), cfg.vocab_size).float()
    full = torch.einsum("btv,btd->bvd", err * mask[..., None], hidden)  # the exact gradient
    expected = (r_v.T @ full @ r_h).reshape(2, -1)
    assert torch.allclose(emb, expected, atol=1e-5)
    # confident, correct-looking predictions have small gradient embeddings
    sharp = torch.zeros_like(logits)
    sharp[..., 5] = 30.0
    assert al.gradient_embeddings(sharp, hidden).norm() < 1e-3 * emb.norm()


def test_gradient_embedding_shape_errors() -> None:
    al = ActiveLearningManager(tiny_config())
    with pytest.raises(ValueError, match="share"):
        al.gradient_embeddings(torch.zeros(1, 2, 96), torch.zeros(1, 3, 32))
    with pytest.raises(ValueError, match="expected logits"):
        al.gradient_embeddings(torch.zeros(1, 2, 95), torch.zeros(1, 2, 32))


def test_ring_buffer_wraps_and_keeps_the_newest() -> None:
    al = ActiveLearningManager(tiny_config(), buffer_size=4)
    assert sum(p.numel() for p in al.parameters()) == 0
    for i in range(3):
        al.record(torch.full((2, 32), float(i)), torch.tensor([float(i), float(i)]))
    pooled, scores = al.buffered()
    assert pooled.shape == (4, 32) and scores.tolist() == [1.0, 1.0, 2.0, 2.0]
    assert al.statistics() == {"buffered": 4, "mean_score": 1.5}
    al.reset()
    assert al.statistics()["buffered"] == 0
    assert "pooled" not in al.state_dict()  # scratch state, not checkpointed
