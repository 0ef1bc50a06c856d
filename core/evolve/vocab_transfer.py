"""Vocabulary upgrade: move a model to a new tokenizer by transferring embeddings by byte string.

For each token of the new tokenizer B (spec ``continual.md`` §3):

* **copied** — a token of the old tokenizer A stands for the same bytes (or, for special tokens,
  has the same name): its row is copied bit for bit;
* **composed** — otherwise the token's bytes are split into A's tokens and the mean of those rows
  is used (A's own BPE when the bytes are valid UTF-8, else a greedy longest match over A's byte
  strings; every single byte is in A, so this always succeeds);
* **random** — a special token A does not have: ``N(0, init_std)``.

The tied output projection follows the embedding automatically (one shared matrix); an untied
``output_projection.weight`` is transferred the same way, row by row.

Why the upgraded model is not as good as the old one right away (measured in
``bench/vocab_upgrade.py``): a composed row is a good *input* vector for its bytes, but as an
*output* row its logit is the mean of its pieces' logits, while the old model's probability of
those bytes is (mostly) that of the first piece — and copied single-piece tokens keep the mass the
old model gave them even where the new tokenizer always merges them. Variants measured on the
sample corpus (old model 1.72 bits/byte): the mean 2.64, the first piece 3.02, the last 3.08, a
norm-preserving mean 2.79, ½·first + ½·mean 2.73, copied rows with random new ones 3.10, a random
embedding 4.69; the spec's mean is the best tied choice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.data.tokenizer import NUM_SPECIAL, AeronTokenizer

EMBEDDING_KEY = "token_embedding.weight"
OUTPUT_KEY = "output_projection.weight"  # present only when tie_word_embeddings is false


@dataclass
class VocabTransferReport:
    old_vocab_size: int
    new_vocab_size: int
    copied: int = 0
    composed: int = 0
    random: int = 0
    examples: list[tuple[str, list[int]]] = field(default_factory=list)  # a few composed tokens

    def to_dict(self) -> dict[str, object]:
        return {
            "old_vocab_size": self.old_vocab_size,
            "new_vocab_size": self.new_vocab_size,
            "copied": self.copied,
            "composed": self.composed,
            "random": self.random,
            "examples": [{"token": t, "old_ids": ids} for t, ids in self.examples],
        }


def _greedy_split(data: bytes, by_bytes: Mapping[bytes, int], max_len: int) -> list[int]:
    ids: list[int] = []
    i = 0
    while i < len(data):
        for length in range(min(max_len, len(data) - i), 0, -1):
            token = by_bytes.get(data[i : i + length])
            if token is not None:
                ids.append(token)
                i += length
                break
        else:  # unreachable for Aeron tokenizers: every single byte is a token
            raise ValueError(f"byte {data[i]!r} has no token in the old tokenizer")
    return ids


def old_pieces(data: bytes, old: AeronTokenizer, by_bytes: Mapping[bytes, int], max_len: int) -> list[int]:
    """Ids of the old tokenizer that spell ``data`` (its own BPE where the bytes are text)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _greedy_split(data, by_bytes, max_len)
    ids = old.encode(text)
    if b"".join(old.token_bytes(i) for i in ids) != data:  # defensive: fall back to bytes
        return _greedy_split(data, by_bytes, max_len)
    return ids


def transfer_embedding(
    old: AeronTokenizer,
    new: AeronTokenizer,
    old_embedding: torch.Tensor,
    seed: int = 0,
    init_std: float = 0.02,
) -> tuple[torch.Tensor, VocabTransferReport]:
    """Build the embedding matrix for ``new`` from ``old_embedding`` (rows indexed by ``old`` ids)."""
    if old_embedding.dim() != 2 or old_embedding.shape[0] != old.vocab_size:
        raise ValueError(
            f"old embedding has shape {tuple(old_embedding.shape)}, expected ({old.vocab_size}, d) "
            "for the old tokenizer; is this the checkpoint's own tokenizer?"
        )
    by_bytes: dict[bytes, int] = {}
    for i in range(NUM_SPECIAL, old.vocab_size):
        by_bytes.setdefault(old.token_bytes(i), i)
    max_len = max(len(b) for b in by_bytes)
    src = old_embedding.detach().to(torch.float32)
    out = torch.empty(new.vocab_size, src.shape[1], dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    report = VocabTransferReport(old.vocab_size, new.vocab_size)
    for j in range(new.vocab_size):
        if j < NUM_SPECIAL:
            name = new.id_to_token(j)
            i = old.token_to_id(name) if name is not None else None
            if i is not None and i < NUM_SPECIAL:
                out[j] = src[i]
                report.copied += 1
            else:
                out[j] = torch.randn(src.shape[1], generator=gen) * init_std
                report.random += 1
            continue
        data = new.token_bytes(j)
        i = by_bytes.get(data)
        if i is not None:
            out[j] = src[i]
            report.copied += 1
            continue
        pieces = old_pieces(data, old, by_bytes, max_len)
        out[j] = src[pieces].mean(dim=0)
        report.composed += 1
        if len(report.examples) < 5:
            report.examples.append((data.decode("utf-8", errors="replace"), pieces))
    return out.to(old_embedding.dtype), report


def copied_token_ids(old: AeronTokenizer, new: AeronTokenizer) -> list[int]:
    """Ids of ``new`` whose row :func:`transfer_embedding` copies (same bytes, or same special name)."""
    old_bytes = {old.token_bytes(i) for i in range(NUM_SPECIAL, old.vocab_size)}
    ids = []
    for j in range(new.vocab_size):
        if j < NUM_SPECIAL:
            name = new.id_to_token(j)
            i = old.token_to_id(name) if name is not None else None
            if i is not None and i < NUM_SPECIAL:
                ids.append(j)
        elif new.token_bytes(j) in old_bytes:
            ids.append(j)
    return ids


def random_embedding(vocab_size: int, dim: int, seed: int = 0, init_std: float = 0.02) -> torch.Tensor:
    """The baseline the upgrade is compared with: a freshly initialised embedding."""
    return torch.randn(vocab_size, dim, generator=torch.Generator().manual_seed(seed)) * init_std


def upgrade_checkpoint(
    checkpoint: str | os.PathLike[str],
    new_tokenizer: str | os.PathLike[str],
    out: str | os.PathLike[str],
    seed: int = 0,
) -> tuple[Path, VocabTransferReport]:
    """Write a copy of ``checkpoint`` that uses ``new_tokenizer`` (embedding transferred).

    All other weights are copied; ``vocab_size`` changes; lineage records ``upgraded``. Every
    input is validated before anything is written, and the output appears atomically.
    """
    from core.errors import CheckpointError, DataError
    from core.runs.checkpoint import load_checkpoint, save_checkpoint

    out_path = Path(out)
    if out_path.exists():
        raise CheckpointError(f"{out_path} already exists; choose a new --out directory (nothing is overwritten)")
    try:
        new_tok = AeronTokenizer.load(new_tokenizer)
    except (OSError, ValueError) as exc:
        raise DataError(f"{new_tokenizer}: not an Aeron tokenizer ({exc})") from exc
    loaded = load_checkpoint(checkpoint, load_optimizer=False)
    old_tok = loaded.tokenizer
    if EMBEDDING_KEY not in loaded.model_state:
        raise CheckpointError(f"{checkpoint}: no {EMBEDDING_KEY} tensor; is this an Aeron checkpoint?")
    new_emb, report = transfer_embedding(old_tok, new_tok, loaded.model_state[EMBEDDING_KEY], seed=seed)
    state = dict(loaded.model_state)
    for name, tensor in loaded.model_state.items():
        if tensor is loaded.model_state[EMBEDDING_KEY]:
            state[name] = new_emb  # the tied output projection follows the embedding
    head = loaded.model_state.get(OUTPUT_KEY)
    if head is not None and head is not loaded.model_state[EMBEDDING_KEY]:  # untied head: same transfer
        state[OUTPUT_KEY], _ = transfer_embedding(old_tok, new_tok, head, seed=seed + 1)
    config = dict(loaded.config_dict)
    config["vocab_size"] = new_tok.vocab_size
    path = save_checkpoint(
        out_path,
        model=state,
        config=config,
        tokenizer=new_tok,
        trainer_state={"global_step": loaded.global_step},
        parents=[{"id": loaded.version, "relation": "upgraded", "path": str(Path(checkpoint).resolve())}],
        extra={"vocab_transfer": report.to_dict()},
    )
    return path, report


def compare_upgrade(
    old_checkpoint: str | os.PathLike[str],
    upgraded_checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    samples: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Old-corpus validation bits per byte: the old model, the upgraded one, the upgraded one with
    a random new embedding instead of the transferred one (the baseline, ``random_embedding``),
    and with the copied rows kept but the composed ones random (``copied_only``: what composing
    adds over copying alone)."""
    from core.data.formatting import encode_styles_sample
    from core.data.styles import read_styles, split_samples
    from core.evolve.evaluation import evaluate_pairs
    from core.runs.checkpoint import build_model_from_checkpoint

    _, val = split_samples(read_styles(data))

    def bpb(model: torch.nn.Module, tok: AeronTokenizer, cfg: object) -> float:
        max_len = min(256, int(getattr(cfg, "max_position_embeddings", 256)) - 1)
        pairs = [encode_styles_sample(s, tok, max_len) for s in val]
        return evaluate_pairs(model, pairs, max_samples=samples).bpb

    old_model, old_tok, old_cfg = build_model_from_checkpoint(old_checkpoint)
    new_model, new_tok, new_cfg = build_model_from_checkpoint(upgraded_checkpoint)
    result = {"old": bpb(old_model, old_tok, old_cfg), "upgraded": bpb(new_model, new_tok, new_cfg)}
    emb = new_model.token_embedding.weight
    head = new_model.output_projection.weight if new_model.output_projection is not None else None
    transferred = emb.detach().clone(), head.detach().clone() if head is not None else None
    fresh = [random_embedding(emb.shape[0], emb.shape[1], seed=seed).to(emb.dtype)]
    if head is not None:
        fresh.append(random_embedding(head.shape[0], head.shape[1], seed=seed + 1).to(head.dtype))
    with torch.no_grad():
        emb.copy_(fresh[0])
        if head is not None:
            head.copy_(fresh[1])
    result["random_embedding"] = bpb(new_model, new_tok, new_cfg)
    copied = torch.tensor(copied_token_ids(old_tok, new_tok), dtype=torch.long)
    with torch.no_grad():
        emb[copied] = transferred[0][copied]
        if head is not None and transferred[1] is not None:
            head[copied] = transferred[1][copied]
    result["copied_only"] = bpb(new_model, new_tok, new_cfg)
    return result
