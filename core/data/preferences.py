"""Preference pairs and prompt sets for reward modelling, DPO and PPO (rlhf.md §1).

Preference JSONL: ``{"prompt", "chosen", "rejected"}`` plus optional ``id``, ``source`` and
``rejection`` (how the rejected reply fails, e.g. ``slip`` or ``truncated``; reports group by it).
Prompt JSONL: ``{"prompt"}`` plus optional ``answer`` (for verifiable rewards), ``id`` and
``style_label``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from core.data.jsonl import canonical_json
from core.data.styles import VAL_PERCENT, hash_is_validation
from core.errors import DataError


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred and a dispreferred response."""

    prompt: str
    chosen: str
    rejected: str
    id: str = ""
    source: str = ""
    line_no: int = 0
    rejection: str = ""

    @property
    def group(self) -> str:
        """``source/rejection`` (``-`` for a missing part): the row of per-kind reports."""
        return f"{self.source or '-'}/{self.rejection or '-'}"


@dataclass(frozen=True)
class PromptSample:
    """A prompt for rollouts; ``answer`` enables a verifiable reward."""

    prompt: str
    answer: str | None = None
    id: str = ""
    line_no: int = 0
    style_label: str = ""  # optional; lets encode_prompt use the training layout


def read_preferences(
    path: str | os.PathLike[str], format: str | None = None
) -> list[PreferencePair]:
    """Every preference pair of ``path`` (JSONL, JSON, CSV/TSV or Parquet; ``chosen`` /
    ``rejected`` as strings or message lists); DataError names file, line and fields."""
    from core.data.formats import read_preference_pairs

    return read_preference_pairs(path, format, who="reward/DPO training")


def read_prompts(path: str | os.PathLike[str], format: str | None = None) -> list[PromptSample]:
    """Every prompt of ``path`` (any container); DataError names file, line and fields."""
    from core.data.formats import read_prompt_samples

    return read_prompt_samples(path, format, who="PPO/GRPO rollouts")


def split_key(record: PreferencePair | PromptSample) -> str:
    """The key hashed for the split: the record's id, else its canonical content."""
    if record.id:
        return record.id
    if isinstance(record, PreferencePair):
        return canonical_json([record.prompt, record.chosen, record.rejected])
    return canonical_json([record.prompt, record.answer])


_T = TypeVar("_T", PreferencePair, PromptSample)


def split_records(
    records: Iterable[_T], val_percent: int = VAL_PERCENT
) -> tuple[list[_T], list[_T]]:
    """(train, val) with the same salted-hash rule as styles.jsonl (stable under appends)."""
    train: list[_T] = []
    val: list[_T] = []
    for r in records:
        (val if hash_is_validation(split_key(r), val_percent) else train).append(r)
    return train, val


def preference_stats(pairs: Sequence[PreferencePair]) -> dict[str, Any]:
    """Counts, split sizes, per-source counts and mean lengths (characters)."""
    if not pairs:
        raise DataError("no preference pairs to summarise")
    train, val = split_records(pairs)
    sources: dict[str, int] = {}
    for p in pairs:
        sources[p.source or "-"] = sources.get(p.source or "-", 0) + 1
    n = len(pairs)
    return {
        "pairs": n,
        "train": len(train),
        "val": len(val),
        "per_source": dict(sorted(sources.items())),
        "mean_prompt_chars": sum(len(p.prompt) for p in pairs) / n,
        "mean_chosen_chars": sum(len(p.chosen) for p in pairs) / n,
        "mean_rejected_chars": sum(len(p.rejected) for p in pairs) / n,
    }
