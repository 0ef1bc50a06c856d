"""Knowledge-graph attention: tokens attend to the entities and triples given with a batch.

Inputs (both optional; without either the stage is the identity and reports False):

``input_entities``
    Integer tensor ``(B, E)`` of entity ids in ``[0, kg_num_entities)``; a negative id is padding.

``knowledge_graph``
    A dict ``{"triples": LongTensor (B, Tk, 3), "triple_mask": BoolTensor (B, Tk)}``. Each
    triple is ``(head entity id, relation id, tail entity id)`` with entities in
    ``[0, kg_num_entities)`` and relations in ``[0, kg_num_relations)``. ``"triple_mask"`` is
    optional (default: every triple is real); masked-out triples may hold any integer (e.g. -1
    padding). No other keys are accepted.

Every id of a real entity or triple must be in range; anything else is a ``ValueError`` that names
the argument and the expected form (model.md §4.1).

The items ``E[e]`` (entities) and ``E[h] + R[r] + E[t]`` (triples) are projected to the model
width by ``kg_proj`` and the token states read them through grouped-query cross-attention:
``x + σ(gate([x; a]))·a``. The gate's bias starts at −2 so a new module barely perturbs ``x``.
In inference (no autograd) the projected entity vectors come from an LRU cache of
``kg_cache_size`` entries, invalidated whenever the embedding or projection weights change.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from core.model.layers import AeronRMSNorm, AttentionMask, GroupedQueryAttention

TRIPLES_FORM = "a LongTensor of shape (B, Tk, 3) holding (head, relation, tail) ids"


def _check_integer(name: str, value: Any, form: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be {form}, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise ValueError(f"{name} must be {form}, got dtype {value.dtype}")
    return value


def validate_kg_inputs(
    input_entities: Any,
    knowledge_graph: Any,
    batch_size: int,
    num_entities: int,
    num_relations: int,
) -> None:
    """Check ``input_entities`` and ``knowledge_graph`` (see the module docstring)."""
    if input_entities is not None:
        form = f"an integer tensor of shape ({batch_size}, E) with ids in [0, {num_entities}) or negative padding"
        ents = _check_integer("input_entities", input_entities, form)
        if ents.dim() != 2 or ents.shape[0] != batch_size:
            raise ValueError(f"input_entities must be {form}, got shape {tuple(ents.shape)}")
        if ents.numel() and int(ents.max()) >= num_entities:
            raise ValueError(
                f"input_entities contains id {int(ents.max())}, out of range: expected {form}"
            )
    if knowledge_graph is None:
        return
    dict_form = (
        '{"triples": ' + TRIPLES_FORM.replace("(B,", f"({batch_size},")
        + ', "triple_mask": optional BoolTensor (B, Tk)}'
    )
    if not isinstance(knowledge_graph, dict):
        raise ValueError(f"knowledge_graph must be a dict {dict_form}, got {type(knowledge_graph).__name__}")
    unknown = sorted(set(knowledge_graph) - {"triples", "triple_mask"})
    if unknown:
        raise ValueError(f"knowledge_graph has unknown key {unknown[0]!r}: expected {dict_form}")
    if "triples" not in knowledge_graph:
        raise ValueError(f"knowledge_graph is missing 'triples': expected {dict_form}")
    triples = _check_integer("knowledge_graph['triples']", knowledge_graph["triples"], TRIPLES_FORM)
    if triples.dim() != 3 or triples.shape[0] != batch_size or triples.shape[2] != 3:
        raise ValueError(
            f"knowledge_graph['triples'] must be {TRIPLES_FORM} with B = {batch_size}, "
            f"got shape {tuple(triples.shape)}"
        )
    mask = knowledge_graph.get("triple_mask")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise ValueError(
                "knowledge_graph['triple_mask'] must be a BoolTensor of shape (B, Tk), got "
                f"{getattr(mask, 'dtype', type(mask).__name__)}"
            )
        if tuple(mask.shape) != tuple(triples.shape[:2]):
            raise ValueError(
                f"knowledge_graph['triple_mask'] must have shape {tuple(triples.shape[:2])} "
                f"(B, Tk of 'triples'), got {tuple(mask.shape)}"
            )
    real = triples if mask is None else triples[mask]
    real = real.reshape(-1, 3)
    if real.numel() == 0:
        return
    limits = (("head", 0, num_entities), ("relation", 1, num_relations), ("tail", 2, num_entities))
    for role, col, limit in limits:
        column = real[:, col]
        low, high = int(column.min()), int(column.max())
        if low < 0 or high >= limit:
            bad = low if low < 0 else high
            raise ValueError(
                f"knowledge_graph['triples'] has {role} id {bad}, out of range [0, {limit}) "
                "(mask padding triples out with 'triple_mask')"
            )


class EntityCache:
    """LRU cache of projected entity vectors, keyed by entity id.

    ``token`` identifies the weights (and autocast state) the vectors were computed with; a
    different token clears the cache.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.entries: OrderedDict[int, Tensor] = OrderedDict()
        self.token: tuple[Any, ...] | None = None
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Drop the entries (statistics are kept)."""
        self.entries.clear()

    def get_stats(self) -> dict[str, float | int]:
        """``{hits, misses, hit_rate, size}``."""
        total = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
            "size": len(self.entries),
        }


class KnowledgeGraphAttention(nn.Module):
    """Entity/relation embeddings read by the encoder states through gated cross-attention."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        d = config.d_model
        self.num_entities = int(config.kg_num_entities)
        self.num_relations = int(config.kg_num_relations)
        std = float(config.initializer_range)
        self.entity_embedding = nn.Embedding(self.num_entities, config.kg_dim)
        self.relation_embedding = nn.Embedding(self.num_relations, config.kg_dim)
        self.kg_proj = nn.Linear(config.kg_dim, d, bias=False)
        self.norm = AeronRMSNorm(d, config.rms_norm_eps)
        self.attn = GroupedQueryAttention(d, config.nhead, config.num_kv_heads, config.dropout)
        self.gate = nn.Linear(2 * d, 1)
        for emb in (self.entity_embedding, self.relation_embedding):
            nn.init.normal_(emb.weight, std=std)
        for lin in (self.kg_proj, self.attn.q_proj, self.attn.k_proj, self.attn.v_proj,
                    self.attn.out_proj, self.gate):
            nn.init.normal_(lin.weight, std=std)
        nn.init.constant_(self.gate.bias, -2.0)
        self.cache = EntityCache(config.kg_cache_size)

    def reset_state(self) -> None:
        """Drop the cached entity vectors (the backbone's ``reset_state`` calls it)."""
        self.cache.clear()

    def get_stats(self) -> dict[str, float | int]:
        """Entity-cache statistics ``{hits, misses, hit_rate, size}``."""
        return self.cache.get_stats()

    # ------------------------------------------------------------------ items
    def _weights_token(self, device: torch.device) -> tuple[Any, ...]:
        e, p = self.entity_embedding.weight, self.kg_proj.weight
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else None
        return (e.data_ptr(), e._version, p.data_ptr(), p._version, e.device, autocast, dtype)

    def _project_entities(self, ids: Tensor) -> Tensor:
        """``kg_proj(E[ids])`` for non-negative ``ids`` of any shape; cached without autograd."""
        if torch.is_grad_enabled() or self.cache.capacity <= 0:
            return self.kg_proj(self.entity_embedding(ids))
        cache = self.cache
        token = self._weights_token(ids.device)
        if token != cache.token:
            cache.clear()
            cache.token = token
        unique = ids.unique().tolist()
        missing = [i for i in unique if i not in cache.entries]
        cache.hits += len(unique) - len(missing)
        cache.misses += len(missing)
        if missing:
            miss_ids = torch.tensor(missing, device=ids.device, dtype=torch.long)
            vectors = self.kg_proj(self.entity_embedding(miss_ids))
            for i, vec in zip(missing, vectors, strict=True):
                cache.entries[i] = vec
        for i in unique:
            cache.entries.move_to_end(i)
        table = torch.stack([cache.entries[i] for i in unique])
        while len(cache.entries) > cache.capacity:
            cache.entries.popitem(last=False)
        lookup = torch.searchsorted(torch.tensor(unique, device=ids.device), ids)
        return table[lookup]

    def build_items(
        self, input_entities: Tensor | None, knowledge_graph: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor] | None:
        """Projected items ``(B, I, d)`` and their validity ``(B, I)``, or None when empty."""
        ents = input_entities if input_entities is not None and input_entities.shape[1] > 0 else None
        triples = None
        if knowledge_graph is not None and knowledge_graph["triples"].shape[1] > 0:
            triples = knowledge_graph["triples"].long()
        if ents is None and triples is None:
            return None
        items: list[Tensor] = []
        valid: list[Tensor] = []
        if ents is not None and not torch.is_grad_enabled():
            ids = ents.long()
            items.append(self._project_entities(ids.clamp_min(0)))  # cached in inference
            valid.append(ids >= 0)
            ents = None
        if ents is None and triples is None:
            return items[0], valid[0]
        # One lookup for every entity id (entities, heads, tails): each nn.Embedding call
        # materialises a dense gradient of the whole 100k-row table in backward.
        lookups: list[Tensor] = []
        if ents is not None:
            ids = ents.long()
            lookups.append(ids.clamp_min(0))
            valid.append(ids >= 0)
        if triples is not None:
            keep = knowledge_graph.get("triple_mask") if knowledge_graph is not None else None
            if keep is None:
                keep = torch.ones(triples.shape[:2], dtype=torch.bool, device=triples.device)
            safe = torch.where(keep.unsqueeze(-1), triples, torch.zeros_like(triples))
            lookups += [safe[..., 0], safe[..., 2]]
            valid.append(keep)
        vectors = self.entity_embedding(torch.cat(lookups, dim=1))
        if ents is not None:
            n = ents.shape[1]
            items.append(self.kg_proj(vectors[:, :n]))
            vectors = vectors[:, n:]
        if triples is not None:
            heads, tails = vectors.chunk(2, dim=1)
            rel = self.relation_embedding(safe[..., 1])
            items.append(self.kg_proj(heads + rel + tails))
        return torch.cat(items, dim=1), torch.cat(valid, dim=1)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        input_entities: Tensor | None = None,
        knowledge_graph: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, bool]:
        """``(x', enhanced)``; ``enhanced`` is True only when some sample had a real item."""
        if input_entities is None and knowledge_graph is None:
            return x, False
        validate_kg_inputs(input_entities, knowledge_graph, x.shape[0], self.num_entities, self.num_relations)
        built = self.build_items(input_entities, knowledge_graph)
        if built is None:
            return x, False
        items, valid = built
        has_items = valid.any(dim=1)  # (B,)
        if not bool(has_items.any()):
            return x, False
        # A sample without real items attends to its first (padding) item so no softmax row is
        # empty; its result is zeroed below.
        attend = valid.clone()
        attend[:, 0] |= ~has_items
        mask = AttentionMask(attend[:, None, None, :])
        a, _, _ = self.attn(self.norm(x), kv_input=items.to(x.dtype), mask=mask)
        a = a * has_items.to(a.dtype)[:, None, None]
        g = torch.sigmoid(self.gate(torch.cat((x, a), dim=-1)))
        return x + g * a, True
