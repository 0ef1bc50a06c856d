"""AKAP: the domain curriculum of training.md §5.3.

Samples are assigned to named domains (``style_map``: by ``style_label`` through a table;
``equal``: a seeded shuffle cut into equal parts in declared order), each domain is split 80/20
by the corpus-wide hash rule, and every cycle visits the domains in an order chosen by
``akap_order``. Pure functions over sample lists: no model, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from core.errors import ConfigError, DataError


class HasStyle(Protocol):
    """Anything with a ``style_label`` (``core.data.StyleSample`` in practice)."""

    @property
    def style_label(self) -> str: ...


S = TypeVar("S", bound=HasStyle)


@dataclass
class Domain:
    """One AKAP domain: its samples, their train/validation split and the token estimate."""

    name: str
    index: int  # position in the declared ``domain_names``
    samples: list[Any]
    train: list[Any] = field(default_factory=list)
    val: list[Any] = field(default_factory=list)
    tokens: int = 0  # samples × max_length (§5.3)


def select_fraction(samples: Sequence[S], fraction: float, cap: int | None, seed: int) -> list[S]:
    """The first ``⌊fraction·N⌋`` samples (at least 1) of a seeded shuffle, then the cap.

    Keeping the file order of the chosen samples makes the later splits independent of it.
    """
    n = len(samples)
    if n == 0:
        raise DataError("the corpus has no samples; give a styles.jsonl with data")
    if fraction >= 1.0:
        keep = n
    else:
        keep = max(1, int(fraction * n))
    if cap is not None:
        keep = min(keep, cap)
    if keep == n:
        return list(samples)
    order = np.random.default_rng(seed).permutation(n)[:keep]
    return [samples[i] for i in sorted(order.tolist())]


def assign_domains(
    samples: Sequence[S],
    domain_names: Sequence[str],
    assignment: str = "style_map",
    style_map: Mapping[str, str] | None = None,
    default_domain: str | None = None,
    seed: int = 42,
) -> dict[str, list[S]]:
    """Map samples to domains (every declared domain is a key, possibly with an empty list)."""
    out: dict[str, list[S]] = {name: [] for name in domain_names}
    if assignment == "equal":
        # Reproduces the log: 4,705 samples -> 1,569 / 1,568 / 1,568 in declared order.
        order = np.random.default_rng(seed).permutation(len(samples))
        for name, part in zip(domain_names, np.array_split(order, len(domain_names)), strict=True):
            out[name] = [samples[i] for i in part.tolist()]
        return out
    if assignment != "style_map":
        raise ConfigError(f"akap_assignment {assignment!r}: expected 'style_map' or 'equal'")
    table = {k.strip().lower(): v for k, v in (style_map or {}).items()}
    fallback = default_domain if default_domain is not None else domain_names[0]
    for sample in samples:
        domain = table.get(sample.style_label.strip().lower(), fallback)
        if domain not in out:
            raise ConfigError(
                f"akap_style_map sends {sample.style_label!r} to unknown domain {domain!r}; "
                f"domains are {', '.join(domain_names)}"
            )
        out[domain].append(sample)
    return out


def build_domains(
    assigned: Mapping[str, Sequence[S]],
    max_length: int,
    is_validation: Callable[[S], bool],
) -> list[Domain]:
    """Split each domain 80/20 with ``is_validation`` and estimate its tokens.

    A domain without samples is a DataError naming it (before training, §5.3). A domain whose
    hash split leaves no validation sample (tiny corpora) is also an error: a per-domain best
    checkpoint needs a validation loss.
    """
    domains: list[Domain] = []
    for index, (name, samples) in enumerate(assigned.items()):
        if not samples:
            raise DataError(
                f"AKAP domain {name!r} has no samples; raise dataset_fraction, change "
                "akap_style_map / domain_names, or use akap_assignment = \"equal\""
            )
        train = [s for s in samples if not is_validation(s)]
        val = [s for s in samples if is_validation(s)]
        if not train or not val:
            which = "training" if not train else "validation"
            raise DataError(
                f"AKAP domain {name!r} has {len(samples)} sample(s) and none in its {which} "
                "split; raise dataset_fraction (or use fewer domains)"
            )
        domains.append(Domain(name, index, list(samples), train, val, len(samples) * max_length))
    return domains


def order_domains(
    domains: Sequence[Domain],
    order: str = "tokens_asc",
    last_val_loss: Mapping[str, float] | None = None,
) -> list[Domain]:
    """The visiting order of one cycle.

    ``tokens_asc``: ascending token estimate, ties in declared order (the log's semantic →
    reasoning → syntactic). ``declared``: as listed. ``loss_desc``: worst last validation loss
    first; domains not validated yet come first, in ``tokens_asc`` order.
    """
    by_tokens = sorted(domains, key=lambda d: (d.tokens, d.index))
    if order == "tokens_asc":
        return by_tokens
    if order == "declared":
        return sorted(domains, key=lambda d: d.index)
    if order == "loss_desc":
        losses = last_val_loss or {}
        unseen = [d for d in by_tokens if d.name not in losses]
        seen = sorted(
            (d for d in by_tokens if d.name in losses),
            key=lambda d: (-losses[d.name], d.tokens, d.index),
        )
        return unseen + seen
    raise ConfigError(f"akap_order {order!r}: expected tokens_asc, declared or loss_desc")


def format_tokens(n: int) -> str:
    """The log's compact token count: 1,404,928 → ``~1.40M``; 57,344 → ``~57.3K``."""
    if n >= 1_000_000:
        return f"~{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"~{n / 1e3:.1f}K"
    return f"~{n}"
