"""The seed's ``styles.jsonl`` format: reader, deterministic train/val split, statistics.

One object per line: ``user_input`` and ``assistant_reply`` (non-empty strings), optional
``provider`` and ``style_label`` (conditioning tokens on the encoder side when given),
``turn_id`` (string, may be empty), and for multi-turn data ``system`` (a system prompt),
``history`` (the turns before this one: ``[{"role", "content"}, ...]`` with roles ``user``,
``assistant``, ``system``, ``tool``; ``user_input`` may then be empty when the last context turn
is not the user's) and ``conversation_id`` (turns sharing it stay in the same split). Extra
fields are ignored. Optional ``triples``, ``entities``, ``image`` and ``task`` feed the
model's knowledge-graph, vision and task inputs (:mod:`core.data.extras`). Other formats (Alpaca, ShareGPT, messages, CSV, Parquet, ...) are read into
the same :class:`StyleSample` by :mod:`core.data.formats`.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from core.data.extras import Triple, parse_record_extras
from core.data.jsonl import canonical_json
from core.errors import DataError

HISTORY_ROLES = ("user", "assistant", "system", "tool")

VAL_PERCENT = 20
SPLIT_SALT = "aeron-split:"


@dataclass(frozen=True)
class StyleSample:
    """One conversation turn of a styles corpus."""

    provider: str
    style_label: str
    user_input: str
    assistant_reply: str
    turn_id: str = ""
    line_no: int = 0
    # Key hashed for the split: the turn_id, or the canonical JSON of the line when the turn_id
    # is empty or already used by an earlier line (so appending lines never moves old ones).
    split_key: str = ""
    # Multi-turn context (the chat template in core.data.formatting renders it on the encoder).
    system: str = ""
    history: tuple[tuple[str, str], ...] = ()
    conversation_id: str = ""
    # Optional model inputs beside the text (core.data.extras.parse_record_extras fills them).
    triples: tuple[Triple, ...] = ()
    entities: tuple[str, ...] = ()
    image: str | None = None  # resolved path (relative paths are relative to the data file)
    task: str | None = None

    @property
    def has_extras(self) -> bool:
        """True when the record carries any knowledge-graph, image or task input."""
        return bool(self.triples or self.entities or self.image or self.task)


def hash_is_validation(key: str, val_percent: int = VAL_PERCENT) -> bool:
    """The split rule of training.md §1: ``int(sha256("aeron-split:"+key)[:8], 16) % 100 < 20``."""
    digest = hashlib.sha256((SPLIT_SALT + key).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % 100 < val_percent


def _sample_key(sample: StyleSample) -> str:
    if sample.split_key:
        return sample.split_key
    if sample.turn_id:
        return sample.turn_id
    return canonical_json(
        {
            "assistant_reply": sample.assistant_reply,
            "provider": sample.provider,
            "style_label": sample.style_label,
            "turn_id": sample.turn_id,
            "user_input": sample.user_input,
        }
    )


def is_validation(sample: StyleSample, val_percent: int = VAL_PERCENT) -> bool:
    """True when the sample belongs to the validation split (≈ 20 %, stable under appends)."""
    return hash_is_validation(_sample_key(sample), val_percent)


def read_styles(path: str | os.PathLike[str], format: str | None = None) -> list[StyleSample]:
    """Every sample of a supervised dataset: styles.jsonl, or any format and container
    :mod:`core.data.formats` reads (Alpaca, ShareGPT, messages, prompt/completion in JSONL,
    JSON, CSV/TSV, Parquet); DataError names file, line, format and the missing fields."""
    from core.data.formats import read_samples

    return read_samples(path, format)


def _optional(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {key!r} is empty (only whitespace); omit it or give a "
                        "value")
    return value


def _history(obj: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    raw = obj.get("history")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise DataError(f"{where}: field 'history' must be a list of {{role, content}} objects")
    turns = []
    for i, turn in enumerate(raw):
        ok = (isinstance(turn, dict) and turn.get("role") in HISTORY_ROLES
              and isinstance(turn.get("content"), str))
        if not ok:
            raise DataError(f"{where}: history[{i}] must be {{\"role\": one of "
                            f"{', '.join(HISTORY_ROLES)}, \"content\": string}}")
        turns.append((turn["role"], turn["content"]))
    return tuple(turns)


def parse_style_record(
    obj: dict[str, Any],
    path: str | os.PathLike[str],
    line_no: int,
    seen_ids: set[str],
    *,
    where: str | None = None,
    extras: dict[str, Any] | None = None,
) -> StyleSample:
    """Validate one record; ``seen_ids`` tracks turn_ids already used earlier in the file."""
    where = where or f"{path}:{line_no}"
    expects = ("(format styles: user_input, assistant_reply; optional provider, style_label, "
               "turn_id, system, history, conversation_id)")
    missing = [k for k in ("user_input", "assistant_reply") if k not in obj]
    if missing:
        noun = "field" if len(missing) == 1 else "fields"
        raise DataError(f"{where}: missing {noun} {', '.join(repr(m) for m in missing)} {expects}")
    for key in ("user_input", "assistant_reply"):
        if not isinstance(obj[key], str):
            raise DataError(
                f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__}"
            )
    history = _history(obj, where)
    user, reply = obj["user_input"], obj["assistant_reply"]
    if not reply.strip() or not (user.strip() or (history and user == "")):
        key = "assistant_reply" if not reply.strip() else "user_input"
        raise DataError(f"{where}: field {key!r} is empty; give a non-empty string")
    provider = _optional(obj, "provider", where)
    style = _optional(obj, "style_label", where)
    system = _optional(obj, "system", where)
    conversation = _optional(obj, "conversation_id", where)
    turn_id = obj.get("turn_id", "")
    if turn_id is None:
        turn_id = ""
    if not isinstance(turn_id, str):
        raise DataError(
            f"{where}: field 'turn_id' must be a string, got {type(turn_id).__name__}"
        )
    if conversation:
        key = conversation
    elif turn_id and turn_id not in seen_ids:
        key = turn_id
        seen_ids.add(turn_id)
    else:
        key = canonical_json(obj)
    if extras is None:
        extras = parse_record_extras(obj, path, line_no)
    return StyleSample(provider, style, user, reply, turn_id, line_no, key, system=system,
                       history=history, conversation_id=conversation, **extras)


def split_samples(
    samples: Iterable[StyleSample], val_percent: int = VAL_PERCENT
) -> tuple[list[StyleSample], list[StyleSample]]:
    """(train, val) by the hash rule, keeping file order within each split."""
    train: list[StyleSample] = []
    val: list[StyleSample] = []
    for s in samples:
        (val if is_validation(s, val_percent) else train).append(s)
    return train, val


@dataclass(frozen=True)
class StyleStats:
    """Summary of a styles corpus (what `aeron-tui data stats` prints)."""

    samples: int
    train: int
    val: int
    per_style: dict[str, int]
    per_provider: dict[str, int]
    mean_user_chars: float
    mean_reply_chars: float
    max_user_chars: int
    max_reply_chars: int
    per_style_split: dict[str, tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "samples": self.samples,
            "train": self.train,
            "val": self.val,
            "per_style": dict(self.per_style),
            "per_provider": dict(self.per_provider),
            "mean_user_chars": self.mean_user_chars,
            "mean_reply_chars": self.mean_reply_chars,
            "max_user_chars": self.max_user_chars,
            "max_reply_chars": self.max_reply_chars,
            "per_style_split": {k: list(v) for k, v in self.per_style_split.items()},
        }


def style_stats(samples: Sequence[StyleSample]) -> StyleStats:
    """Counts per style and provider, mean/max lengths in characters, split sizes."""
    if not samples:
        raise DataError("no samples to summarise")
    per_style = Counter(s.style_label for s in samples)
    per_provider = Counter(s.provider for s in samples)
    split: dict[str, list[int]] = {k: [0, 0] for k in per_style}
    val_total = 0
    for s in samples:
        v = is_validation(s)
        val_total += v
        split[s.style_label][1 if v else 0] += 1
    n = len(samples)
    return StyleStats(
        samples=n,
        train=n - val_total,
        val=val_total,
        per_style=dict(sorted(per_style.items())),
        per_provider=dict(sorted(per_provider.items())),
        mean_user_chars=sum(len(s.user_input) for s in samples) / n,
        mean_reply_chars=sum(len(s.assistant_reply) for s in samples) / n,
        max_user_chars=max(len(s.user_input) for s in samples),
        max_reply_chars=max(len(s.assistant_reply) for s in samples),
        per_style_split={k: (v[0], v[1]) for k, v in sorted(split.items())},
    )
