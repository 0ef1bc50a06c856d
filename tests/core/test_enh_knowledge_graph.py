"""KnowledgeGraphAttention: entities/triples change the output, validation, the LRU cache."""

from __future__ import annotations

import pytest
import torch
from enh_common import tiny_config

from core.model.knowledge_graph import KnowledgeGraphAttention, validate_kg_inputs


def _kg(**overrides: object) -> KnowledgeGraphAttention:
    torch.manual_seed(0)
    return KnowledgeGraphAttention(tiny_config(**overrides))


def test_output_changes_with_entities_and_not_without() -> None:
    kg = _kg()
    x = torch.randn(2, 5, 32)
    same, flag = kg(x)
    assert torch.equal(same, x) and flag is False
    a, flag_a = kg(x, input_entities=torch.tensor([[1, 2], [3, -1]]))
    b, _ = kg(x, input_entities=torch.tensor([[4, 5], [6, 7]]))
    assert flag_a is True and a.shape == x.shape
    assert not torch.allclose(a, x) and not torch.allclose(a, b)


def test_all_padding_entities_leave_x_unchanged_and_flag_false() -> None:
    kg = _kg()
    x = torch.randn(2, 3, 32)
    out, flag = kg(x, input_entities=torch.full((2, 3), -1))
    assert flag is False and torch.equal(out, x)
    # One sample with entities, the other only padding: the padded sample is untouched.
    out, flag = kg(x, input_entities=torch.tensor([[1, -1, -1], [-1, -1, -1]]))
    assert flag is True
    assert torch.equal(out[1], x[1]) and not torch.allclose(out[0], x[0])


def test_triples_change_output_and_masked_triples_do_not() -> None:
    kg = _kg()
    x = torch.randn(1, 4, 32)
    triples = torch.tensor([[[1, 0, 2], [3, 4, 5]]])
    with_both, flag = kg(x, knowledge_graph={"triples": triples})
    assert flag is True and not torch.allclose(with_both, x)
    masked = {"triples": torch.tensor([[[1, 0, 2], [-1, -1, -1]]]),
              "triple_mask": torch.tensor([[True, False]])}
    only_first, _ = kg(x, knowledge_graph=masked)
    alone, _ = kg(x, knowledge_graph={"triples": triples[:, :1]})
    assert torch.allclose(only_first, alone, atol=1e-6)


def test_gradients_reach_used_rows_and_all_weights() -> None:
    kg = _kg()
    x = torch.randn(2, 4, 32, requires_grad=True)
    out, _ = kg(x, input_entities=torch.tensor([[1, 2], [3, -1]]),
                knowledge_graph={"triples": torch.tensor([[[4, 1, 5]], [[6, 2, 7]]])})
    out.square().sum().backward()
    for name, p in kg.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    used = {1, 2, 3, 4, 5, 6, 7}
    rows = kg.entity_embedding.weight.grad.abs().sum(dim=1)
    assert all(rows[i] > 0 for i in used)
    assert all(rows[i] == 0 for i in range(20) if i not in used)


@pytest.mark.parametrize(
    ("entities", "graph", "needle"),
    [
        (torch.tensor([[1, 20]]), None, "input_entities contains id 20"),
        (torch.tensor([1, 2]), None, "input_entities must be"),
        (torch.tensor([[1.0, 2.0]]), None, "input_entities must be"),
        (None, [[1, 0, 2]], "knowledge_graph must be a dict"),
        (None, {"edges": torch.zeros(1, 1, 3, dtype=torch.long)}, "unknown key 'edges'"),
        (None, {"triple_mask": torch.ones(1, 1, dtype=torch.bool)}, "missing 'triples'"),
        (None, {"triples": torch.zeros(1, 2, 2, dtype=torch.long)}, "(B, Tk, 3)"),
        (None, {"triples": torch.tensor([[[1, 5, 2]]])}, "relation id 5"),
        (None, {"triples": torch.tensor([[[1, 0, 99]]])}, "tail id 99"),
        (None, {"triples": torch.tensor([[[-1, 0, 2]]])}, "head id -1"),
        (None, {"triples": torch.zeros(1, 1, 3, dtype=torch.long),
                "triple_mask": torch.ones(1, 1)}, "BoolTensor"),
        (None, {"triples": torch.zeros(1, 1, 3, dtype=torch.long),
                "triple_mask": torch.ones(1, 2, dtype=torch.bool)}, "triple_mask'] must have shape"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(entities, graph, needle) -> None:
    with pytest.raises(ValueError) as err:
        validate_kg_inputs(entities, graph, 1, 20, 5)
    assert needle in str(err.value)


def test_out_of_range_ids_raise_in_forward() -> None:
    kg = _kg()
    with pytest.raises(ValueError, match="input_entities"):
        kg(torch.randn(1, 2, 32), input_entities=torch.tensor([[25]]))


def test_entity_cache_hits_and_matches_uncached_output() -> None:
    kg = _kg(kg_cache_size=3).eval()
    x = torch.randn(1, 3, 32)
    ents = torch.tensor([[1, 2, 1]])
    reference, _ = kg(x, input_entities=ents)  # grad enabled: no cache
    assert kg.get_stats() == {"hits": 0, "misses": 0, "hit_rate": 0.0, "size": 0}
    with torch.no_grad():
        first, _ = kg(x, input_entities=ents)
        assert kg.get_stats()["misses"] == 2 and kg.get_stats()["size"] == 2
        second, _ = kg(x, input_entities=ents)
        stats = kg.get_stats()
        assert stats["hits"] == 2 and stats["hit_rate"] == 0.5
        kg(x, input_entities=torch.tensor([[3, 4, -1]]))  # evicts the least recently used
        assert kg.get_stats()["size"] == 3
    assert torch.allclose(first, reference, atol=1e-6) and torch.equal(first, second)


def test_entity_cache_is_invalidated_when_weights_change() -> None:
    kg = _kg().eval()
    x = torch.randn(1, 2, 32)
    ents = torch.tensor([[1, 2]])
    with torch.no_grad():
        before, _ = kg(x, input_entities=ents)
        kg.entity_embedding.weight.add_(1.0)  # an optimizer step is an in-place update too
        after, _ = kg(x, input_entities=ents)
    assert kg.get_stats()["hits"] == 0 and kg.get_stats()["misses"] == 4
    assert not torch.allclose(before, after)
