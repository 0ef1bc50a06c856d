"""Dataset formats: detect what a file holds and turn each record into the canonical record.

Formats (detected from the fields of the first records, or forced with ``--format``):

==================  =======================================================  ==============
format              fields (``?`` optional)                                  canonical kind
==================  =======================================================  ==============
styles              user_input, assistant_reply, provider?, style_label?,    sft
                    turn_id?, system?, history?, conversation_id?
alpaca              instruction, output (or response), input? (or context),  sft
                    system?, history? ([[user, assistant], ...])
sharegpt            conversations: [{from, value}, ...], system?             sft
messages            messages: [{role, content, weight?}, ...]                sft
prompt_completion   prompt, completion                                       sft
preferences         prompt, chosen, rejected (strings or message lists),     preferences
                    id?, source?, rejection?
prompts             prompt, answer?, id?, style_label?                       prompts
text                text (one document per record), or .txt/.md files        text
==================  =======================================================  ==============

Every format may also carry ``provider``, ``style_label`` (``category`` in Dolly-style data) and
``id``. ``sft`` records become :class:`core.data.styles.StyleSample` — a multi-turn conversation
becomes one sample per assistant turn, each with the turns before it as ``history`` (the chat
template in :mod:`core.data.formatting` puts them on the encoder side, so only assistant tokens
are ever scored). The records may sit in JSONL, a JSON array, CSV/TSV (list-valued fields as
JSON in the cell) or Parquet (:mod:`core.data.containers`).

Errors name ``file:line``, the format and every missing field at once. Readers stream: nothing
here holds more than one record of a file unless the caller keeps them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.containers import (
    Problem,
    RawRecord,
    container_of,
    data_files,
    iter_file,
)
from core.data.jsonl import canonical_json
from core.errors import DataError


@dataclass(frozen=True)
class FormatSpec:
    """One record format: its required and optional fields and the kind of record it gives."""

    name: str
    kind: str  # sft | preferences | prompts | text
    required: tuple[str, ...]
    optional: tuple[str, ...]
    summary: str

    @property
    def expects(self) -> str:
        """``a, b; optional c, d`` — said in every error about this format."""
        req = ", ".join(self.required)
        return f"{req}; optional {', '.join(self.optional)}" if self.optional else req


_COMMON = ("provider", "style_label", "id")
FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("styles", "sft", ("user_input", "assistant_reply"),
                   ("provider", "style_label", "turn_id", "system", "history", "conversation_id"),
                   "Aeron's styles.jsonl"),
        FormatSpec("alpaca", "sft", ("instruction", "output"),
                   ("input", "system", "history", *_COMMON), "Alpaca / Dolly instructions"),
        FormatSpec("sharegpt", "sft", ("conversations",), ("system", *_COMMON),
                   "ShareGPT conversations ({from, value} turns)"),
        FormatSpec("messages", "sft", ("messages",), _COMMON,
                   "OpenAI-style chat messages ({role, content} turns)"),
        FormatSpec("prompt_completion", "sft", ("prompt", "completion"), ("system", *_COMMON),
                   "prompt/completion pairs"),
        FormatSpec("preferences", "preferences", ("prompt", "chosen", "rejected"),
                   ("id", "source", "rejection"), "preference pairs for reward models and DPO"),
        FormatSpec("prompts", "prompts", ("prompt",), ("answer", "id", "style_label"),
                   "prompts for PPO/GRPO rollouts"),
        FormatSpec("text", "text", ("text",), (), "plain text documents"),
    )
}
SFT_FORMATS = tuple(name for name, spec in FORMATS.items() if spec.kind == "sft")
KIND_WORDS = {
    "sft": "supervised records (styles, alpaca, sharegpt, messages, prompt_completion)",
    "preferences": "preference pairs (prompt, chosen, rejected)",
    "prompts": "prompts (prompt, answer?)",
    "text": "plain text",
}

# Role names seen in the wild → the four roles of the chat template.
ROLES: dict[str, str] = {
    "system": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "function_call": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
}
DETECT_RECORDS = 20


def detect_format(keys: set[str]) -> str | None:
    """The format whose signature fields ``keys`` (the union over the first records) hold."""
    if "chosen" in keys or "rejected" in keys:
        return "preferences"
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys:
        return "alpaca"
    if "user_input" in keys or "assistant_reply" in keys:
        return "styles"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "prompt" in keys:
        return "prompts"
    if "text" in keys:
        return "text"
    return None


def _undetected(path: Path, keys: set[str]) -> DataError:
    shown = ", ".join(sorted(keys)[:12]) or "none"
    formats = "; ".join(f"{s.name} ({', '.join(s.required)})" for s in FORMATS.values())
    return DataError(
        f"{path}: cannot tell the data format from the fields {shown}; expected one of: "
        f"{formats} — rename the fields or give --format NAME"
    )


@dataclass
class DataSource:
    """A data path resolved: its files, each file's container and format."""

    path: Path
    files: list[Path]
    formats: dict[Path, str]
    containers: dict[Path, str]
    forced: bool = False

    @property
    def format(self) -> str:
        names = sorted(set(self.formats.values()))
        return names[0] if len(names) == 1 else "+".join(names)

    @property
    def container(self) -> str:
        names = sorted(set(self.containers.values()))
        return names[0] if len(names) == 1 else "+".join(names)

    @property
    def kind(self) -> str:
        return FORMATS[next(iter(self.formats.values()))].kind

    @property
    def is_text(self) -> bool:
        return self.kind == "text"

    def describe(self) -> str:
        """``alpaca in jsonl`` — how the messages and ``data stats`` name it."""
        how = "forced" if self.forced else "detected"
        return f"{self.format} ({how}) in {self.container}"


def open_source(path: str | os.PathLike[str], format: str | None = None) -> DataSource:
    """Resolve ``path`` to its files and detect (or check) the format of each."""
    if format is not None and format not in FORMATS:
        raise DataError(
            f"--format {format!r} is not a known format; choose one of {', '.join(FORMATS)}"
        )
    p = Path(path).expanduser()
    files = data_files(p)
    formats: dict[Path, str] = {}
    containers: dict[Path, str] = {}
    for f in files:
        container = container_of(f)
        containers[f] = container
        if container == "text":
            if format not in (None, "text"):
                raise DataError(f"{f}: a .txt/.md file is plain text, not {format!r} records; "
                                "drop --format or convert the file")
            formats[f] = "text"
        else:
            formats[f] = format or _detect_file(f)
    kinds = {FORMATS[fmt].kind for fmt in formats.values()}
    if len(kinds) > 1:
        listing = ", ".join(f"{f.name}: {fmt}" for f, fmt in formats.items())
        raise DataError(f"{p}: the files hold different kinds of data ({listing}); "
                        "train on one kind at a time")
    return DataSource(p, files, formats, containers, forced=format is not None)


def _detect_file(path: Path) -> str:
    keys: set[str] = set()
    seen = 0
    first_problem: Problem | None = None
    for item in iter_file(path):
        if isinstance(item, Problem):
            first_problem = first_problem or item
            continue
        keys.update(item.obj)
        seen += 1
        if seen >= DETECT_RECORDS:
            break
    if seen == 0:
        if first_problem is not None:
            raise DataError(str(first_problem))
        raise DataError(f"{path}: file is empty (no records); give a file with data")
    fmt = detect_format(keys)
    if fmt is None:
        raise _undetected(path, keys)
    return fmt


# ----------------------------------------------------------------------------------------------
# Field checks: every message names where, the format and what it expects
# ----------------------------------------------------------------------------------------------


class _Ctx:
    """Where a record is and which format reads it; builds the messages."""

    def __init__(self, raw: RawRecord, fmt: str) -> None:
        self.raw = raw
        self.obj = raw.obj
        self.fmt = fmt
        self.where = raw.where

    def error(self, message: str) -> DataError:
        return DataError(f"{self.where}: {message} (format {self.fmt}: "
                         f"{FORMATS[self.fmt].expects})")

    def require(self, *names: str, aliases: dict[str, str] | None = None) -> None:
        """All missing required fields in one message (an alias counts as present)."""
        aliases = aliases or {}
        missing = [n for n in names if n not in self.obj and aliases.get(n) not in self.obj]
        if missing:
            noun = "field" if len(missing) == 1 else "fields"
            raise self.error(f"missing {noun} {', '.join(repr(m) for m in missing)}")

    def text(self, name: str, value: Any = None, *, optional: bool = False,
             allow_empty: bool = False) -> str:
        """A string field (numbers are read as text in CSV-like data only when optional)."""
        if value is None:
            value = self.obj.get(name)
        if value is None:
            if optional:
                return ""
            raise self.error(f"missing field {name!r}")
        if not isinstance(value, str):
            raise self.error(f"field {name!r} must be a string, got {type(value).__name__}")
        if not value.strip() and not (allow_empty or (optional and value == "")):
            raise self.error(f"field {name!r} is empty; give a non-empty string")
        return value


def _record_extras(ctx: _Ctx) -> dict[str, Any]:
    """Optional per-record fields owned by the model-input work (triples, entities, image, task).

    One call per record in every format, so those fields pass through whatever the container.
    """
    from core.data.extras import parse_record_extras

    return parse_record_extras(ctx.obj, ctx.raw.file, ctx.raw.line)


def _split_key(ctx: _Ctx, seen: dict[str, int]) -> str:
    """The split key of a non-styles record: its ``id``, else a digest of its content; a key seen
    before gets ``#n`` so identical records keep distinct, stable keys."""
    rid = ctx.obj.get("id")
    if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip():
        key = str(rid)
    else:
        key = "sha256:" + hashlib.sha256(canonical_json(ctx.obj).encode("utf-8")).hexdigest()[:32]
    n = seen.get(key, 0)
    seen[key] = n + 1
    return key if n == 0 else f"{key}#{n}"


def _meta(ctx: _Ctx) -> tuple[str, str]:
    provider = ctx.text("provider", optional=True)
    style = ctx.obj.get("style_label", ctx.obj.get("category"))
    style = ctx.text("style_label", style, optional=True)
    return provider, style


# ----------------------------------------------------------------------------------------------
# sft formats → StyleSample
# ----------------------------------------------------------------------------------------------

Turn = tuple[str, str, bool]  # (role, text, trainable)


def _sample(ctx: _Ctx, user: str, reply: str, *, key: str, turn_id: str,
            system: str = "", history: tuple[tuple[str, str], ...] = (),
            conversation_id: str = "") -> Any:
    from core.data.styles import StyleSample

    provider, style = _meta(ctx)
    return StyleSample(
        provider, style, user, reply, turn_id, ctx.raw.line, key,
        system=system, history=history, conversation_id=conversation_id,
        **_record_extras(ctx),
    )


def _conversation(ctx: _Ctx, turns: list[Turn], system: str, key: str, field_name: str) -> list[Any]:
    """One sample per trainable assistant turn that has context before it."""
    if turns and turns[0][0] == "system" and not system:
        system, turns = turns[0][1], turns[1:]
    targets = [k for k, (role, _, train) in enumerate(turns) if role == "assistant" and train and k]
    if not targets:
        raise ctx.error(f"{field_name!r} has no assistant turn after a user turn to train on")
    multi = len(targets) > 1
    samples = []
    for n, k in enumerate(targets):
        context = turns[:k]
        if context[-1][0] == "user":
            user, history = context[-1][1], context[:-1]
        else:
            user, history = "", context
        samples.append(_sample(
            ctx, user, turns[k][1], key=key, turn_id=f"{key}/{n}" if multi else key,
            system=system, history=tuple((r, t) for r, t, _ in history),
            conversation_id=key if multi else "",
        ))
    return samples


def _message_text(ctx: _Ctx, where: str, content: Any, msg: dict[str, Any]) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = "\n".join(p for p in parts if isinstance(p, str))
    if content is None and msg.get("tool_calls") is not None:
        content = json.dumps(msg["tool_calls"], ensure_ascii=False, sort_keys=True)
    if not isinstance(content, str):
        raise ctx.error(f"{where} must be a string, got {type(content).__name__}")
    if not content.strip():
        raise ctx.error(f"{where} is empty")
    return content


def _turns(ctx: _Ctx, name: str, role_key: str, text_key: str) -> list[Turn]:
    value = ctx.obj[name]
    if not isinstance(value, list) or not value:
        raise ctx.error(f"field {name!r} must be a non-empty list of {{{role_key}, {text_key}}} "
                        "objects")
    turns: list[Turn] = []
    for i, msg in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(msg, dict):
            raise ctx.error(f"{where} must be an object with {role_key!r} and {text_key!r}")
        missing = [k for k in (role_key, text_key) if k not in msg]
        if text_key in missing and msg.get("tool_calls") is not None:
            missing.remove(text_key)
        if missing:
            raise ctx.error(f"{where} is missing {', '.join(repr(m) for m in missing)}")
        raw_role = msg[role_key]
        role = ROLES.get(str(raw_role).lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise ctx.error(f"{where} has role {raw_role!r}; known roles: {', '.join(ROLES)}")
        text = _message_text(ctx, f"{where}.{text_key}", msg.get(text_key), msg)
        weight = msg.get("weight", 1)
        if weight not in (0, 1) or isinstance(weight, bool):
            raise ctx.error(f"{where}.weight must be 0 or 1, got {weight!r}")
        turns.append((role, text, weight == 1))
    return turns


def _read_styles_record(ctx: _Ctx, seen: dict[str, int], seen_ids: set[str]) -> list[Any]:
    from core.data.styles import parse_style_record

    return [parse_style_record(ctx.obj, ctx.raw.file, ctx.raw.line, seen_ids,
                               where=ctx.where, extras=_record_extras(ctx))]


def _read_alpaca(ctx: _Ctx, seen: dict[str, int], _ids: set[str]) -> list[Any]:
    ctx.require("instruction", "output", aliases={"output": "response"})
    instruction = ctx.text("instruction")
    reply = ctx.text("output" if "output" in ctx.obj else "response")
    extra = ctx.text("input", ctx.obj.get("input", ctx.obj.get("context")), optional=True,
                     allow_empty=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = ctx.text("system", optional=True, allow_empty=True)
    key = _split_key(ctx, seen)
    history: list[tuple[str, str]] = []
    raw_history = ctx.obj.get("history") or []
    if not isinstance(raw_history, list):
        raise ctx.error("field 'history' must be a list of [user, assistant] pairs")
    for i, pair in enumerate(raw_history):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(t, str) for t in pair)):
            raise ctx.error(f"history[{i}] must be a [user, assistant] pair of strings")
        history += [("user", pair[0]), ("assistant", pair[1])]
    return [_sample(ctx, user, reply, key=key, turn_id=key, system=system,
                    history=tuple(history))]


def _read_sharegpt(ctx: _Ctx, seen: dict[str, int], _ids: set[str]) -> list[Any]:
    ctx.require("conversations")
    turns = _turns(ctx, "conversations", "from", "value")
    system = ctx.text("system", optional=True, allow_empty=True)
    return _conversation(ctx, turns, system, _split_key(ctx, seen), "conversations")


def _read_messages(ctx: _Ctx, seen: dict[str, int], _ids: set[str]) -> list[Any]:
    ctx.require("messages")
    turns = _turns(ctx, "messages", "role", "content")
    return _conversation(ctx, turns, "", _split_key(ctx, seen), "messages")


def _read_prompt_completion(ctx: _Ctx, seen: dict[str, int], _ids: set[str]) -> list[Any]:
    ctx.require("prompt", "completion")
    key = _split_key(ctx, seen)
    system = ctx.text("system", optional=True, allow_empty=True)
    return [_sample(ctx, ctx.text("prompt"), ctx.text("completion"), key=key, turn_id=key,
                    system=system)]


# ----------------------------------------------------------------------------------------------
# preferences, prompts, text
# ----------------------------------------------------------------------------------------------


def _reply_of(ctx: _Ctx, name: str) -> tuple[str, str]:
    """A preference side: a string, or a message list (its last assistant turn; the last user
    turn before it is the prompt when the record has none)."""
    value = ctx.obj[name]
    if isinstance(value, list) and isinstance(ctx.obj.get("chosen"), list) and isinstance(
            ctx.obj.get("rejected"), list):
        turns = _turns(ctx, name, "role", "content")
        last = max((k for k, t in enumerate(turns) if t[0] == "assistant"), default=None)
        if last is None:
            raise ctx.error(f"{name!r} has no assistant message")
        prompt = next((t[1] for t in reversed(turns[:last]) if t[0] == "user"), "")
        return turns[last][1], prompt
    return ctx.text(name), ""


def _optional_text(ctx: _Ctx, name: str) -> str:
    value = ctx.obj.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ctx.text(name, optional=True, allow_empty=True)


def _read_preference(ctx: _Ctx) -> Any:
    from core.data.preferences import PreferencePair

    has_list = isinstance(ctx.obj.get("chosen"), list)
    ctx.require(*(("chosen", "rejected") if has_list else ("prompt", "chosen", "rejected")))
    chosen, prompt_c = _reply_of(ctx, "chosen")
    rejected, _ = _reply_of(ctx, "rejected")
    prompt = ctx.text("prompt") if "prompt" in ctx.obj else prompt_c
    if not prompt.strip():
        raise ctx.error("missing field 'prompt' (and no user message before the chosen reply)")
    if chosen == rejected:
        raise ctx.error("'chosen' and 'rejected' are identical; a preference pair needs two "
                        "different responses")
    return PreferencePair(prompt, chosen, rejected, _optional_text(ctx, "id"),
                          ctx.text("source", optional=True, allow_empty=True), ctx.raw.line,
                          ctx.text("rejection", optional=True, allow_empty=True))


def _read_prompt(ctx: _Ctx) -> Any:
    from core.data.preferences import PromptSample

    ctx.require("prompt")
    prompt = ctx.text("prompt")
    answer: str | None = None
    if ctx.obj.get("answer") is not None:
        answer = _optional_text(ctx, "answer")
        if not answer.strip():
            raise ctx.error("field 'answer' is empty; omit it or give a value")
    return PromptSample(prompt, answer, _optional_text(ctx, "id"), ctx.raw.line,
                        ctx.text("style_label", optional=True, allow_empty=True))


_SFT_READERS: dict[str, Callable[[_Ctx, dict[str, int], set[str]], list[Any]]] = {
    "styles": _read_styles_record,
    "alpaca": _read_alpaca,
    "sharegpt": _read_sharegpt,
    "messages": _read_messages,
    "prompt_completion": _read_prompt_completion,
}


@dataclass
class Item:
    """What one raw record became: its canonical records (samples, a pair, a prompt or a doc)."""

    raw: RawRecord | None
    records: list[Any]
    format: str


def iter_items(source: DataSource, *, strict: bool = True) -> Iterator[Item | Problem]:
    """Canonical records of every file, in order. ``strict``: raise DataError at the first bad
    line; otherwise yield it as a :class:`Problem` and go on (``data stats``)."""
    for f in source.files:
        fmt = source.formats[f]
        if source.containers[f] == "text":
            from core.data.text import iter_file_documents

            for line, doc in iter_file_documents(f):
                yield Item(RawRecord({"text": doc}, f, line), [doc], "text")
            continue
        seen: dict[str, int] = {}
        seen_ids: set[str] = set()
        for raw in iter_file(f):
            if isinstance(raw, Problem):
                if strict:
                    raise DataError(str(raw))
                yield raw
                continue
            ctx = _Ctx(raw, fmt)
            try:
                if fmt in _SFT_READERS:
                    records = _SFT_READERS[fmt](ctx, seen, seen_ids)
                elif fmt == "preferences":
                    records = [_read_preference(ctx)]
                elif fmt == "prompts":
                    records = [_read_prompt(ctx)]
                else:
                    ctx.require("text")
                    records = [ctx.text("text")]
            except DataError as exc:
                if strict:
                    raise
                yield Problem(raw.where, str(exc).removeprefix(f"{raw.where}: "))
                continue
            yield Item(raw, records, fmt)


def require_kind(source: DataSource, kinds: tuple[str, ...], who: str) -> None:
    """DataError in one line unless the source holds one of ``kinds`` (saying what it holds)."""
    if source.kind not in kinds:
        wanted = " or ".join(KIND_WORDS[k] for k in kinds)
        raise DataError(
            f"{source.path}: holds {KIND_WORDS[source.kind]} (format {source.format}), but "
            f"{who} needs {wanted}"
        )


def _records(source: DataSource) -> list[Any]:
    out: list[Any] = []
    for item in iter_items(source):
        assert isinstance(item, Item)
        out.extend(item.records)
    if not out:
        raise DataError(f"{source.path}: file is empty (no records); give a file with data")
    return out


def read_samples(path: str | os.PathLike[str], format: str | None = None,
                 who: str = "supervised training") -> list[Any]:
    """Every sft record of ``path`` as StyleSamples (one per assistant turn)."""
    source = open_source(path, format)
    require_kind(source, ("sft",), who)
    return _records(source)


def read_preference_pairs(path: str | os.PathLike[str], format: str | None = None,
                          who: str = "this trainer") -> list[Any]:
    source = open_source(path, format)
    require_kind(source, ("preferences",), who)
    return _records(source)


def read_prompt_samples(path: str | os.PathLike[str], format: str | None = None,
                        who: str = "PPO") -> list[Any]:
    source = open_source(path, format)
    require_kind(source, ("prompts",), who)
    return _records(source)


def read_documents(path: str | os.PathLike[str], format: str | None = None) -> list[str]:
    source = open_source(path, format)
    require_kind(source, ("text",), "text training")
    return _records(source)


def corpus_texts(path: str | os.PathLike[str], format: str | None = None) -> Iterator[str]:
    """Every text of a corpus a tokenizer should see (prompts, history, replies, documents)."""
    source = open_source(path, format)
    for item in iter_items(source):
        assert isinstance(item, Item)
        for r in item.records:
            if isinstance(r, str):
                yield r
            elif source.kind == "sft":
                if r.system:
                    yield r.system
                for _, t in r.history:
                    yield t
                if r.user_input:
                    yield r.user_input
                yield r.assistant_reply
            elif source.kind == "preferences":
                yield r.prompt
                yield r.chosen
                yield r.rejected
            else:
                yield r.prompt


# ----------------------------------------------------------------------------------------------
# The canonical form (`data convert`)
# ----------------------------------------------------------------------------------------------


def canonical_record(record: Any, raw: RawRecord | None, fmt: str) -> dict[str, Any]:
    """The canonical JSON object of a record: styles.jsonl for sft, the preference / prompt
    JSONL, ``{"text"}`` for documents. A styles record is kept as it was (its split key is its
    own content); other formats write their split key as ``turn_id`` (``conversation_id`` for
    the turns of one conversation), so a converted file splits exactly like its source."""
    if isinstance(record, str):
        return {"text": record}
    from core.data.preferences import PreferencePair, PromptSample
    from core.data.styles import StyleSample

    if isinstance(record, StyleSample):
        if fmt == "styles" and raw is not None:
            return dict(raw.obj)
        out: dict[str, Any] = {}
        if record.provider:
            out["provider"] = record.provider
        if record.style_label:
            out["style_label"] = record.style_label
        if record.system:
            out["system"] = record.system
        if record.history:
            out["history"] = [{"role": r, "content": t} for r, t in record.history]
        out["user_input"] = record.user_input
        out["assistant_reply"] = record.assistant_reply
        out["turn_id"] = record.turn_id
        if record.conversation_id:
            out["conversation_id"] = record.conversation_id
        out.update(record_extras_json(record))
        return out
    if isinstance(record, PreferencePair):
        out = {"prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected}
        for name in ("id", "source", "rejection"):
            if getattr(record, name):
                out[name] = getattr(record, name)
        return out
    if isinstance(record, PromptSample):
        out = {"prompt": record.prompt}
        if record.answer is not None:
            out["answer"] = record.answer
        if record.id:
            out["id"] = record.id
        if record.style_label:
            out["style_label"] = record.style_label
        return out
    raise TypeError(f"not a canonical record: {type(record).__name__}")


def record_extras_json(record: Any) -> dict[str, Any]:
    """The optional model-input fields of a sample as JSON (``image`` as its resolved path)."""
    out: dict[str, Any] = {}
    if record.triples:
        out["triples"] = [list(t) for t in record.triples]
    if record.entities:
        out["entities"] = list(record.entities)
    if record.image:
        out["image"] = record.image
    if record.task:
        out["task"] = record.task
    return out


@dataclass
class ConvertResult:
    source: DataSource
    records_in: int
    records_out: int
    out: Path


def convert(path: str | os.PathLike[str], out: str | os.PathLike[str],
            format: str | None = None) -> ConvertResult:
    """Write the canonical JSONL of ``path`` to ``out`` (atomically: a temp file, then rename).

    Strict: the first bad line stops it with the usual message and leaves ``out`` untouched.
    """
    import tempfile

    source = open_source(path, format)
    target = Path(out).expanduser()
    if target.suffix.lower() != ".jsonl":
        raise DataError(f"{target}: the canonical form is JSON lines; name the output *.jsonl")
    if any(target.resolve() == f.resolve() for f in source.files):
        raise DataError(f"{target}: is the input; write the canonical form to another file")
    target.parent.mkdir(parents=True, exist_ok=True)
    n_in = n_out = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for item in iter_items(source):
                assert isinstance(item, Item)
                n_in += 1
                for record in item.records:
                    fh.write(json.dumps(canonical_record(record, item.raw, item.format),
                                        ensure_ascii=False) + "\n")
                    n_out += 1
        if n_out == 0:
            raise DataError(f"{source.path}: no records to convert")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return ConvertResult(source, n_in, n_out, target)


# ----------------------------------------------------------------------------------------------
# Statistics (`data stats`), streamed
# ----------------------------------------------------------------------------------------------


class ByteTokenizer:
    """The untrained byte-level tokenizer's ids (one per UTF-8 byte), for lengths without a
    trained BPE: exactly what an untrained ``AeronTokenizer`` produces."""

    vocab_size = 268

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def count_bytes(self, ids: Any) -> int:
        return len(ids)


def _percentiles(counts: Counter[int]) -> dict[str, float]:
    total = sum(counts.values())
    if not total:
        return {}
    out: dict[str, float] = {}
    marks = {"p50": 0.50, "p90": 0.90, "p99": 0.99}
    ordered = sorted(counts.items())
    for name, q in marks.items():
        rank = max(1, int(q * total + 0.999999))
        acc = 0
        for value, n in ordered:
            acc += n
            if acc >= rank:
                out[name] = value
                break
    out["max"] = ordered[-1][0]
    out["mean"] = sum(v * n for v, n in ordered) / total
    return out


@dataclass
class _Lengths:
    encoder: Counter[int] = field(default_factory=Counter)
    decoder: Counter[int] = field(default_factory=Counter)


def collect_stats(path: str | os.PathLike[str], format: str | None = None, *,
                  tokenizer: Any = None, seq_len: int | None = None,
                  max_problems: int = 10) -> dict[str, Any]:
    """Everything ``data stats`` shows, streamed over the data (one record in memory at a time).

    Keys: ``format``, ``container``, ``kind``, ``files``, ``records`` (read), ``problems`` (bad
    lines) and ``first_problems``, ``fields`` (records holding each field), the kind's counts
    (``samples``/``pairs``/``prompts``/``documents``, train/val split, per style, provider and
    role), ``lengths`` (token-length percentiles of the encoder and decoder sequences, in the
    given tokenizer's tokens or byte-level tokens) and, with ``seq_len``, how many would be cut.
    """
    from core.data import formatting as fm
    from core.data.styles import hash_is_validation, is_validation

    source = open_source(path, format)
    tok = tokenizer or ByteTokenizer()
    big = 10**9
    fields: Counter[str] = Counter()
    per_style: Counter[str] = Counter()
    per_provider: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    split: dict[str, list[int]] = {}
    lengths = _Lengths()
    records = problems = n = val = with_answer = multi_turn = 0
    chars = {"user": 0, "reply": 0, "max_user": 0, "max_reply": 0}
    first_problems: list[str] = []
    doc_index = 0
    for item in iter_items(source, strict=False):
        if isinstance(item, Problem):
            problems += 1
            if len(first_problems) < max_problems:
                first_problems.append(str(item))
            continue
        records += 1
        if item.raw is not None and source.kind != "text":
            fields.update(item.raw.obj.keys())
            for name in ("conversations", "messages"):
                msgs = item.raw.obj.get(name)
                if isinstance(msgs, list):
                    for m in msgs:
                        if isinstance(m, dict):
                            raw_role = m.get("from" if name == "conversations" else "role")
                            roles[ROLES.get(str(raw_role).lower(), str(raw_role))] += 1
        for r in item.records:
            n += 1
            if isinstance(r, str):
                is_val = hash_is_validation(f"doc:{doc_index}:{r[:200]}")
                doc_index += 1
                ids = tok.encode(r)
                lengths.encoder[len(ids)] += 1
                chars["user"] += len(r)
                chars["max_user"] = max(chars["max_user"], len(r))
            elif source.kind == "sft":
                is_val = is_validation(r)
                label = r.style_label or "-"
                per_style[label] += 1
                per_provider[r.provider or "-"] += 1
                split.setdefault(label, [0, 0])[1 if is_val else 0] += 1
                multi_turn += bool(r.history)
                enc = fm.sample_encoder_ids(r, tok, big)
                dec, _ = fm.decoder_sequence(tok, r.assistant_reply, big)
                lengths.encoder[len(enc)] += 1
                lengths.decoder[len(dec) - 1] += 1
                chars["user"] += len(r.user_input)
                chars["reply"] += len(r.assistant_reply)
                chars["max_user"] = max(chars["max_user"], len(r.user_input))
                chars["max_reply"] = max(chars["max_reply"], len(r.assistant_reply))
            elif source.kind == "preferences":
                from core.data.preferences import split_key

                is_val = hash_is_validation(split_key(r))
                per_source[r.source or "-"] += 1
                lengths.encoder[len(fm.encoder_ids(tok, r.prompt, big))] += 1
                for reply in (r.chosen, r.rejected):
                    lengths.decoder[len(fm.decoder_sequence(tok, reply, big)[0]) - 1] += 1
                chars["user"] += len(r.prompt)
                chars["reply"] += len(r.chosen)
            else:
                from core.data.preferences import split_key

                is_val = hash_is_validation(split_key(r))
                with_answer += r.answer is not None
                lengths.encoder[len(fm.encoder_ids(tok, r.prompt, big))] += 1
                chars["user"] += len(r.prompt)
            val += is_val
    if n == 0 and not problems:
        raise DataError(f"{source.path}: no records")
    unit = "byte-level tokens" if tokenizer is None else "tokens"
    out: dict[str, Any] = {
        "path": str(source.path),
        "format": source.format,
        "detected": not source.forced,
        "container": source.container,
        "kind": source.kind,
        "files": len(source.files),
        "records": records,
        "problems": problems,
        "first_problems": first_problems,
        "train": n - val,
        "val": val,
        "lengths": {"unit": unit, "encoder": _percentiles(lengths.encoder),
                    "decoder": _percentiles(lengths.decoder)},
    }
    if source.kind != "text":
        out["fields"] = dict(sorted(fields.items()))
    if seq_len is not None:
        out["over_seq_len"] = {
            "seq_len": seq_len,
            "encoder": sum(c for v, c in lengths.encoder.items() if v > seq_len),
            "decoder": sum(c for v, c in lengths.decoder.items() if v > seq_len),
        }
    d = max(n, 1)
    if source.kind == "sft":
        out.update(
            samples=n, multi_turn_samples=multi_turn,
            per_style=dict(sorted(per_style.items())),
            per_provider=dict(sorted(per_provider.items())),
            per_style_split={k: list(v) for k, v in sorted(split.items())},
            mean_user_chars=chars["user"] / d, mean_reply_chars=chars["reply"] / d,
            max_user_chars=chars["max_user"], max_reply_chars=chars["max_reply"],
        )
        if roles:
            out["roles"] = dict(sorted(roles.items()))
        from core.data.extras import input_coverage

        # A second streamed pass: which records carry triples, entities, images, tasks.
        out["inputs"] = input_coverage(
            r for item in iter_items(source, strict=False) if isinstance(item, Item)
            for r in item.records).to_dict()
    elif source.kind == "preferences":
        out.update(pairs=n, per_source=dict(sorted(per_source.items())),
                   mean_prompt_chars=chars["user"] / d, mean_chosen_chars=chars["reply"] / d)
    elif source.kind == "prompts":
        out.update(prompts=n, with_answer=with_answer, mean_prompt_chars=chars["user"] / d)
    else:
        out.update(documents=n, split="documents split by file and by blank lines"
                   if source.container == "text" else "one document per record",
                   chars=chars["user"], mean_document_chars=chars["user"] / d,
                   max_document_chars=chars["max_user"])
    return out
