"""Byte-level BPE tokenizer (Hugging Face `tokenizers`) with Aeron's fixed special-token layout.

Layout (training.md §2): ids 0–11 are the special tokens below, ids 12–267 the 256 byte symbols
in byte order, merges from 268. An untrained tokenizer therefore has exactly 268 entries.
User text is always encoded with special-token matching OFF, so a literal ``"</s>"`` typed by a
user is bytes, never the end-of-sequence id; only code that builds sequences inserts specials.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from core.errors import CheckpointError, ConfigError, DataError
from core.fileio import write_bytes_atomically

SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<sep>",
    "<mask>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|style|>",
    "<|provider|>",
    "<|turn|>",
)
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
SEP_ID = 4
MASK_ID = 5
SYSTEM_ID = 6
USER_ID = 7
ASSISTANT_ID = 8
STYLE_ID = 9
PROVIDER_ID = 10
TURN_ID = 11

NUM_SPECIAL = len(SPECIAL_TOKENS)
BYTE_OFFSET = NUM_SPECIAL
BASE_VOCAB_SIZE = NUM_SPECIAL + 256  # 268
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
DEFAULT_MODEL_MAX_LENGTH = 896


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map used by the ByteLevel pre-tokenizer."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """Inverse of :func:`byte_to_unicode`."""
    return {c: b for b, c in byte_to_unicode().items()}


def _byte_symbols() -> list[str]:
    """The 256 byte symbols in byte order (ids 12–267)."""
    table = byte_to_unicode()
    return [table[b] for b in range(256)]


def _build_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def _canonical_sha256(json_text: str) -> str:
    """SHA-256 of the tokenizer JSON with sorted keys and no whitespace (format-independent)."""
    canonical = json.dumps(
        json.loads(json_text), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _chunks(texts: Iterable[str], max_context: int) -> Iterator[str]:
    """Texts cut to at most ``max_context`` characters (the trainer sees bounded pieces)."""
    for text in texts:
        if not isinstance(text, str):
            raise DataError(f"tokenizer training text must be str, got {type(text).__name__}")
        for start in range(0, len(text), max_context):
            yield text[start : start + max_context]


def _atomic_write(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


class AeronTokenizer:
    """A byte-level BPE tokenizer with the fixed Aeron special-token layout."""

    def __init__(self, backend: Any, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> None:
        self._tok = backend
        # User text must never turn into special ids (training.md §1).
        self._tok.encode_special_tokens = True
        self.model_max_length = int(model_max_length)
        self._json = self._tok.to_str()
        self._sha256 = _canonical_sha256(self._json)
        self._check_layout()

    # ----------------------------------------------------------------- construction
    @classmethod
    def byte_level(cls, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> AeronTokenizer:
        """The untrained tokenizer: 12 specials + 256 byte symbols, no merges (268 entries)."""
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        for i, sym in enumerate(_byte_symbols()):
            vocab[sym] = BYTE_OFFSET + i
        return cls(_build_backend(vocab, []), model_max_length)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 50000,
        min_frequency: int = 2,
        max_context: int = 10000,
        progress: bool = False,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
    ) -> AeronTokenizer:
        """Train byte-level BPE merges on ``texts``.

        ``vocab_size`` is an upper bound: training stops earlier when no pair occurs at least
        ``min_frequency`` times. Texts longer than ``max_context`` characters are chunked.
        The result is deterministic for the same texts and settings.
        """
        if vocab_size < BASE_VOCAB_SIZE:
            raise ConfigError(
                f"--vocab-size {vocab_size} is below the byte-level base of {BASE_VOCAB_SIZE} "
                "(12 special tokens + 256 bytes); use at least 268"
            )
        if min_frequency < 1:
            raise ConfigError(f"--min-frequency must be >= 1, got {min_frequency}")
        if max_context < 1:
            raise ConfigError(f"--max-context must be >= 1, got {max_context}")
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        scratch = Tokenizer(models.BPE())
        scratch.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress,
        )
        count = 0

        def counted() -> Iterator[str]:
            nonlocal count
            for piece in _chunks(texts, max_context):
                count += 1
                yield piece

        scratch.train_from_iterator(counted(), trainer=trainer)
        if count == 0:
            raise DataError("tokenizer training corpus is empty: give at least one non-empty text")
        raw_merges = json.loads(scratch.to_str())["model"]["merges"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in raw_merges]
        return cls(_vocab_from_merges(merges, vocab_size), model_max_length)  # type: ignore[arg-type]

    @classmethod
    def from_str(
        cls, json_text: str, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
    ) -> AeronTokenizer:
        """Build from tokenizer.json text (raises DataError if it is not an Aeron tokenizer)."""
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_str(json_text)
        except Exception as exc:  # the Rust error type is not public
            raise DataError(f"not a tokenizer.json: {exc}") from exc
        return cls(backend, model_max_length)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AeronTokenizer:
        """Load a ``tokenizer.json`` file or a directory containing one."""
        p = Path(path)
        file = p / TOKENIZER_FILE if p.is_dir() else p
        if not file.exists():
            raise CheckpointError(
                f"{file}: no tokenizer found; train one with `aeron-tui tokenizer train` "
                "or point to a directory containing tokenizer.json"
            )
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{file}: cannot read tokenizer ({exc})") from exc
        max_len = DEFAULT_MODEL_MAX_LENGTH
        cfg = file.parent / CONFIG_FILE
        if cfg.exists():
            try:
                max_len = int(json.loads(cfg.read_text(encoding="utf-8"))["model_max_length"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{cfg}: malformed tokenizer config ({exc})") from exc
        try:
            tok = cls.from_str(text, max_len)
        except DataError as exc:
            raise CheckpointError(
                f"{file}: {exc}; re-create it with `aeron-tui tokenizer train`"
            ) from exc
        if cfg.exists():
            recorded = json.loads(cfg.read_text(encoding="utf-8")).get("sha256")
            if recorded and recorded != tok.sha256:
                raise CheckpointError(
                    f"{file}: SHA-256 {tok.sha256[:12]}… does not match {cfg.name} "
                    f"({str(recorded)[:12]}…); the tokenizer was modified — restore or retrain it"
                )
        return tok

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write tokenizer.json, tokenizer_config.json and the GPT-2 style vocab.json/merges.txt
        (each atomically); returns the directory. Raises OSError if it cannot be written."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)  # OSError propagates: callers decide how to report
        model = json.loads(self._json)["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        _atomic_write(out / TOKENIZER_FILE, self._json)
        _atomic_write(out / "vocab.json", json.dumps(model["vocab"], ensure_ascii=False) + "\n")
        _atomic_write(out / "merges.txt", "#version: 0.2\n" + "".join(m + "\n" for m in merges))
        # the config (with the SHA-256) goes last: its presence marks a complete save
        _atomic_write(out / CONFIG_FILE, json.dumps(self.config(), indent=2) + "\n")
        return out

    def config(self) -> dict[str, Any]:
        """The tokenizer_config.json content."""
        return {
            "tokenizer_class": "AeronTokenizer",
            "type": "byte_level_bpe",
            "vocab_size": self.vocab_size,
            "num_merges": self.vocab_size - BASE_VOCAB_SIZE,
            "special_tokens": {tok: i for i, tok in enumerate(SPECIAL_TOKENS)},
            "pad_token_id": PAD_ID,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "unk_token_id": UNK_ID,
            "sep_token_id": SEP_ID,
            "mask_token_id": MASK_ID,
            "model_max_length": self.model_max_length,
            "sha256": self.sha256,
        }

    # ----------------------------------------------------------------- use
    @property
    def vocab_size(self) -> int:
        """Number of ids (specials + bytes + merges)."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical tokenizer.json content (identity of the tokenizer)."""
        return self._sha256

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings in the text are encoded as plain bytes."""
        if not text:
            return []
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_with_specials(self, text: str) -> list[int]:
        """Like :meth:`encode` but literal special-token strings become their ids (trusted text)."""
        if not text:
            return []
        self._tok.encode_special_tokens = False
        try:
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        finally:
            self._tok.encode_special_tokens = True

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; the exact inverse of :meth:`encode`."""
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary entry (byte-level form, e.g. ``"Ġthe"``), or None."""
        result = self._tok.token_to_id(token)
        return None if result is None else int(result)

    def id_to_token(self, token_id: int) -> str | None:
        """Vocabulary entry of an id, or None when out of range."""
        return self._tok.id_to_token(int(token_id))

    def token_bytes(self, token_id: int) -> bytes:
        """The raw UTF-8 bytes a token stands for (b"" for special tokens)."""
        return self._token_bytes_table()[int(token_id)]

    def count_bytes(self, ids: Iterable[int]) -> int:
        """Number of text bytes the ids decode to (specials count 0) — for bits per byte."""
        table = self._token_bytes_table()
        return sum(len(table[i]) for i in ids)

    def to_str(self) -> str:
        """The tokenizer.json text."""
        return self._json

    def get_vocab(self) -> dict[str, int]:
        """Token → id for every entry."""
        return dict(self._tok.get_vocab(with_added_tokens=True))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"AeronTokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"

    # ----------------------------------------------------------------- internals
    def _token_bytes_table(self) -> list[bytes]:
        table: list[bytes] | None = getattr(self, "_bytes_table", None)
        if table is None:
            inv = unicode_to_byte()
            vocab = self._tok.get_vocab(with_added_tokens=True)
            table = [b""] * self.vocab_size
            for token, idx in vocab.items():
                if idx < NUM_SPECIAL:
                    continue
                table[idx] = bytes(inv[c] for c in token)
            self._bytes_table = table
        return table

    def _check_layout(self) -> None:
        """Reject tokenizers that do not follow the Aeron id layout (a foreign tokenizer.json)."""
        for i, tok in enumerate(SPECIAL_TOKENS):
            if self._tok.token_to_id(tok) != i:
                raise DataError(
                    f"special token {tok!r} must have id {i} (got {self._tok.token_to_id(tok)}); "
                    "this is not an Aeron tokenizer"
                )
        inv = unicode_to_byte()
        for i, sym in enumerate(_byte_symbols()):
            if self._tok.token_to_id(sym) != BYTE_OFFSET + i:
                raise DataError(
                    f"byte symbol for 0x{i:02x} must have id {BYTE_OFFSET + i}; "
                    "this is not an Aeron byte-level tokenizer"
                )
        for token, idx in self._tok.get_vocab(with_added_tokens=True).items():
            if idx >= NUM_SPECIAL and any(c not in inv for c in token):
                raise DataError(
                    f"vocabulary entry {token!r} (id {idx}) is not byte-level; "
                    "this is not an Aeron byte-level tokenizer"
                )


def _vocab_from_merges(merges: list[tuple[str, str]], vocab_size: int) -> Any:
    """Rebuild the vocabulary in the fixed layout: specials, bytes in byte order, merges in order.

    The HF trainer orders the base alphabet by character, not by byte; re-assigning ids keeps the
    layout identical for every trained tokenizer and equal to :meth:`AeronTokenizer.byte_level`.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for i, sym in enumerate(_byte_symbols()):
        vocab[sym] = BYTE_OFFSET + i
    specials = set(SPECIAL_TOKENS)
    kept: list[tuple[str, str]] = []
    for left, right in merges:
        if len(vocab) >= vocab_size:
            break
        merged = left + right
        # A merge whose parts were dropped, or whose result spells a special token, is skipped:
        # the id of a special must never be reachable from plain text.
        if left not in vocab or right not in vocab or merged in specials:
            continue
        kept.append((left, right))
        if merged not in vocab:
            vocab[merged] = len(vocab)
    return _build_backend(vocab, kept)


# ------------------------------------------------------------------ the per-corpus tokenizer cache
def corpus_tokenizer_dir(
    path: str | os.PathLike[str], vocab_size: int, data_format: str | None = None
) -> Path:
    """Where the tokenizer trained on ``path`` (a data file, or a directory of them) with
    ``vocab_size`` is cached: ``$AERON_TUI_HOME/cache/tokenizers/<hash of the corpus files>``.

    The trainers use it to reuse a tokenizer; the setup screens use it to know a run's real
    vocabulary (and so its parameter count) before the run starts. A forced ``data_format``
    changes which texts a file yields, so it is part of the key (detection keeps the old key).
    """
    from core.data.containers import data_files
    from core.errors import DataError
    from core.fileio import file_sha256
    from core.paths import aeron_home

    try:
        files = data_files(path)
    except DataError as exc:
        raise FileNotFoundError(str(exc)) from exc  # an OSError, as reading a file would be
    key = hashlib.sha256()
    for f in files:
        key.update(file_sha256(f).encode())
    key.update(f":v{vocab_size}:aeron-bpe-1{':' + data_format if data_format else ''}".encode())
    return aeron_home() / "cache" / "tokenizers" / key.hexdigest()[:24]


def saved_vocab_size(directory: str | os.PathLike[str]) -> int | None:
    """The vocabulary size a saved tokenizer records in its config (None when absent/unreadable),
    read without building the tokenizer."""
    p = Path(directory)
    cfg = (p if p.is_dir() else p.parent) / CONFIG_FILE
    try:
        value = json.loads(cfg.read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
