"""PNCEC phase schedule (training.md §5.4) and AKAP domains (§5.3)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.errors import DataError
from lonpt.akap import (
    assign_domains,
    build_domains,
    format_tokens,
    order_domains,
    select_fraction,
)
from lonpt.config import DEFAULT_STYLE_MAP
from lonpt.pncec import PhaseSchedule


def test_phases_change_every_25_steps_at_cycle_100_and_run_across_domains() -> None:
    s = PhaseSchedule(True, 100, 0.75, 1.25)
    phases = [s.phase_at(g) for g in range(200)]
    changes = [g for g in range(1, 200) if phases[g] != phases[g - 1]]
    assert changes == [25, 50, 75, 100, 125, 150, 175]
    assert s.phase_at(25) == "stabilize"  # the log's "Step 0025 | phase=  stabilize"
    assert s.phase_at(150) == "expansion" and s.phase_at(300) == "compression"
    assert [s.scale_at(g) for g in (0, 25, 50, 75)] == [0.75, 1.0, 1.25, 1.0]
    assert s.changes_at(25) and not s.changes_at(26)


def test_phase_with_cycle_not_divisible_by_four_and_disabled() -> None:
    s = PhaseSchedule(True, 10)
    assert [s.phase_index(g) for g in range(10)] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    off = PhaseSchedule(False, 100)
    assert off.scale_at(60) == 1.0 and off.phase_at(60) == "off"


@dataclass(frozen=True)
class Sample:
    style_label: str
    key: int = 0


def test_equal_assignment_reproduces_the_log_counts() -> None:
    corpus = [Sample("qa", i) for i in range(7842)]
    chosen = select_fraction(corpus, 0.6, None, seed=42)
    assert len(chosen) == 4705
    names = ["syntactic", "semantic", "reasoning"]
    assigned = assign_domains(chosen, names, "equal", seed=42)
    assert [len(assigned[n]) for n in names] == [1569, 1568, 1568]
    # Every sample lands in exactly one domain.
    assert sorted(s.key for part in assigned.values() for s in part) == sorted(s.key for s in chosen)
    domains = build_domains(assigned, 896, lambda s: s.key % 5 == 0)
    assert [d.tokens for d in domains] == [1569 * 896, 1568 * 896, 1568 * 896]
    assert format_tokens(domains[1].tokens) == "~1.40M" and format_tokens(domains[0].tokens) == "~1.41M"
    ordered = order_domains(domains, "tokens_asc")
    assert [d.name for d in ordered] == ["semantic", "reasoning", "syntactic"]
    assert [d.name for d in order_domains(domains, "declared")] == names
    by_loss = order_domains(domains, "loss_desc", {"semantic": 2.6, "reasoning": 2.8, "syntactic": 2.7})
    assert [d.name for d in by_loss] == ["reasoning", "syntactic", "semantic"]
    partly = order_domains(domains, "loss_desc", {"semantic": 9.0})
    assert [d.name for d in partly] == ["reasoning", "syntactic", "semantic"]


def test_style_map_assignment_and_per_domain_split() -> None:
    labels = ["code", "qa", "math", "Translation", "chat", "planning", "format", "qa"]
    samples = [Sample(label, i) for i, label in enumerate(labels * 5)]
    assigned = assign_domains(samples, ["syntactic", "semantic", "reasoning"], "style_map",
                              DEFAULT_STYLE_MAP, "semantic")
    assert {s.style_label for s in assigned["syntactic"]} == {"code", "Translation", "format"}
    assert {s.style_label for s in assigned["reasoning"]} == {"math", "planning"}
    assert {s.style_label for s in assigned["semantic"]} == {"qa", "chat"}
    domains = build_domains(assigned, 64, lambda s: s.key % 5 == 0)
    for d in domains:
        assert len(d.train) + len(d.val) == len(d.samples)
        assert {s.key for s in d.val} == {s.key for s in d.samples if s.key % 5 == 0}


def test_empty_domain_is_an_error_before_training() -> None:
    assigned = assign_domains([Sample("qa", i) for i in range(20)],
                              ["syntactic", "semantic", "reasoning"], "style_map",
                              DEFAULT_STYLE_MAP, "semantic")
    with pytest.raises(DataError, match="domain 'syntactic' has no samples"):
        build_domains(assigned, 64, lambda s: s.key % 5 == 0)
