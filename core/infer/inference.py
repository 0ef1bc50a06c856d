"""Inference on top of :mod:`core.infer.generation` (spec rlhf.md §6): loading a policy checkpoint,
best-of-N sampling with a reward model, and speculative decoding with a smaller draft model.

* :class:`BestOfNSampler` — N samples (temperature 0.8, top-p 0.95), scored by a reward-model
  checkpoint, optionally plus ``λ·mean normalised edit distance`` to the other candidates;
  returns the best and every score.
* :class:`SpeculativeDecoder` — the draft proposes γ (4) tokens with its KV cache, the target
  checks them in one cached pass, each is accepted with probability ``min(1, p/q)``, the first
  rejection is resampled from ``norm(max(0, p − q))`` and a fully accepted run gets a bonus token
  from ``p_{γ+1}`` — so samples follow the target's distribution exactly, and greedy speculative
  output is the target's greedy output. Batch size 1. Reports the acceptance rate.

The paged KV cache lives in :mod:`core.infer.paged_kv` (``GenerationConfig(paged_blocks=N)``) and
MCTS generation in :mod:`core.infer.mcts` (values from :func:`reward_scores`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core.data.tokenizer import ASSISTANT_ID, BOS_ID
from core.errors import CheckpointError, ConfigError
from core.infer.generation import (
    DECODER_PREFIX,
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOP_STRING,
    Generation,
    GenerationConfig,
    crop_cache,
    encode_prompt_ids,
    eval_mode,
    generate,
    next_token_probs,
    pad_batch,
)

# --------------------------------------------------------------------------------- loading


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory's newest complete checkpoint."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if (p / "manifest.json").exists():
        return p
    if (p / "checkpoints").is_dir():
        from core.runs.checkpoint import latest_checkpoint

        found = latest_checkpoint(p)
        if found is None:
            raise CheckpointError(f"{p}: no complete checkpoint in this run directory")
        return found
    raise CheckpointError(f"{p}: not a checkpoint or run directory (no manifest.json)")


def load_policy(path: str | Path, device: str | torch.device = "cpu",
                attention_backend: str | None = None,
                on_info: Callable[[str], None] | None = None) -> tuple[Any, Any, Path]:
    """``(model, tokenizer, checkpoint path)`` of a generating model, in eval mode.

    Attention runs on ``attention_backend`` (default: the checkpoint config's
    ``attention_backend``). A reward-model checkpoint is refused with a message saying what it is.
    An older checkpoint's never-fed knowledge-graph/vision/task modules are not built (one line
    to ``on_info``; outputs are unchanged).
    """
    from core.model.layers import set_attention_backend
    from core.runs.checkpoint import build_model_from_checkpoint, read_manifest

    ckpt = resolve_checkpoint(path)
    manifest = read_manifest(ckpt)
    if manifest.get("trainer") == "reward":
        raise CheckpointError(
            f"{ckpt}: is a reward-model checkpoint; generate from a policy checkpoint "
            "(and pass this one as --reward)"
        )
    model, tokenizer, config = build_model_from_checkpoint(ckpt, str(device), drop_unfed=True,
                                                          on_info=on_info)
    check_checkpoint_vocabulary(model, tokenizer, ckpt)
    set_attention_backend(model, attention_backend or config.attention_backend)
    return model, tokenizer, ckpt


def check_checkpoint_vocabulary(model: Any, tokenizer: Any, ckpt: str | Path) -> None:
    """CheckpointError unless the checkpoint's tokenizer has exactly as many ids as the model has
    embedding rows (the rule a resume applies): a smaller tokenizer would decode the rows it
    lacks as garbage, a larger one index past the embedding."""
    embedding = getattr(model, "token_embedding", None)
    weight = getattr(embedding, "weight", None)
    rows = int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)
    if int(tokenizer.vocab_size) != rows:
        raise CheckpointError(
            f"{Path(ckpt) / 'tokenizer.json'}: the tokenizer has {tokenizer.vocab_size} ids but "
            f"the model's embedding has {rows} rows; the checkpoint's tokenizer was replaced — "
            "restore the tokenizer.json it was trained with, or move the model to this "
            "vocabulary with `aeron-tui tokenizer upgrade`"
        )


def parse_triple(text: str) -> tuple[str, str, str]:
    """``"A,relation,B"`` (``--triple``) → a triple; ConfigError unless it has three parts."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"--triple {text!r}: expected SUBJECT,RELATION,OBJECT (three "
                          "non-empty parts separated by commas)")
    return parts[0], parts[1], parts[2]


def prompt_inputs(
    model: Any,
    checkpoint: str | Path,
    triples: Sequence[tuple[str, str, str]] = (),
    image: str | Path | None = None,
    task: str | None = None,
    on_info: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The encoder's extra inputs for one prompt, from ``--triple`` / ``--image`` / ``--task``.

    Names go through the checkpoint's input vocabulary (``input_vocab.json``): unknown entities
    and relations become ``<unk>`` (reported to ``on_info``); an unknown task is a ConfigError
    listing the known ones. A model trained with tasks uses its default task when none is given,
    and a model with a vision path reads a blank image when none is given — as in training, where
    records without one get a blank image. Inputs the model has no module for are a ConfigError.
    """
    from core.data.extras import InputVocab, load_image
    from core.errors import DataError
    from core.runs.checkpoint import read_input_vocab

    config = model.config
    info = on_info or (lambda _m: None)
    data = read_input_vocab(checkpoint)
    vocab = InputVocab.from_dict(data, str(checkpoint)) if data is not None else InputVocab()
    out: dict[str, Any] = {}
    if triples:
        if not config.enable_knowledge_graph:
            raise ConfigError(
                f"--triple: {checkpoint} has no knowledge-graph module (it was trained without "
                "'triples' in its data); drop --triple")
        unknown = vocab.unknown_names(triples, ())
        if unknown:
            info(f"not in the model's knowledge-graph vocabulary ({len(vocab.entities) - 1} "
                 f"entities), read as unknown: {', '.join(unknown[:8])}")
        ids = [[vocab.entity_id(a), vocab.relation_id(r), vocab.entity_id(b)]
               for a, r, b in triples]
        out["knowledge_graph"] = {"triples": torch.tensor([ids], dtype=torch.long)}
    if image is not None and not config.enable_multimodal:
        raise ConfigError(f"--image: {checkpoint} has no vision path (it was trained without "
                          "'image' in its data); drop --image")
    if config.enable_multimodal:
        size, channels = int(config.effective_image_size), int(config.num_channels)
        if image is None:
            info("no --image: the model reads a blank image")
            out["vision_inputs"] = torch.zeros(1, channels, size, size)
        else:
            path = Path(image).expanduser()
            if not path.is_file():
                raise ConfigError(f"--image {image}: file not found")
            out["vision_inputs"] = load_image(str(path), size, channels, "--image").unsqueeze(0)
    if task is not None and not config.enable_continual:
        raise ConfigError(f"--task: {checkpoint} has no task conditioning (it was trained "
                          "without 'task' in its data); drop --task")
    if config.enable_continual and vocab.tasks:
        name = task
        if name is None:
            name = vocab.default_task or vocab.tasks[0]
            info(f"no --task: using task {name!r} (known: {', '.join(vocab.tasks)})")
        try:
            out["task_id"] = torch.tensor([vocab.task_id(name)], dtype=torch.long)
        except DataError as exc:
            raise ConfigError(f"--task: {exc}") from None
    elif task is not None:
        raise ConfigError(f"--task: {checkpoint} was trained without task names; drop --task")
    return out


def check_shared_tokenizer(a: Any, b: Any, what: str, path: str | Path) -> None:
    """ConfigError unless two tokenizers are identical (SHA-256 of their tokenizer.json)."""
    if a.sha256 != b.sha256:
        raise ConfigError(
            f"{path}: the {what} uses a different tokenizer (sha256 {b.sha256[:12]} vs "
            f"{a.sha256[:12]}, vocabulary {b.vocab_size} vs {a.vocab_size}); both models must "
            "share one tokenizer"
        )


# --------------------------------------------------------------------------------- rewards


@torch.no_grad()
def reward_scores_with_std(
    reward_model: Any, tokenizer: Any, prompt: str, replies: Sequence[Sequence[int]]
) -> tuple[list[float], list[float] | None]:
    """Scores of replies (token ids after the decoder prefix) to ``prompt``, each scored as
    ``<s> <|assistant|> reply`` in one batch, and the scorer's per-reply std when it reports one
    (a reward ensemble's ``outputs["reward_std"]``; None for a single reward model)."""
    device = next(reward_model.parameters()).device
    limit = int(reward_model.config.max_position_embeddings)
    enc = encode_prompt_ids(tokenizer, prompt, limit).ids
    ids, mask = pad_batch([enc] * len(replies), device)
    seqs = [[BOS_ID, ASSISTANT_ID, *list(r)][:limit] for r in replies]
    dec, dec_mask = pad_batch(seqs, device)
    with eval_mode(reward_model):
        rewards, outputs = reward_model.score(ids, mask, dec, dec_mask)
    std = outputs.get("reward_std") if isinstance(outputs, dict) else None
    return [float(r) for r in rewards], None if std is None else [float(x) for x in std]


def reward_scores(reward_model: Any, tokenizer: Any, prompt: str,
                  replies: Sequence[Sequence[int]]) -> list[float]:
    """Reward scores of replies to ``prompt`` (a reward model's, or a reward ensemble's mean)."""
    return reward_scores_with_std(reward_model, tokenizer, prompt, replies)[0]


# --------------------------------------------------------------------------------- best-of-N


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance between two token sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def diversity_bonus(candidates: Sequence[Sequence[int]]) -> list[float]:
    """Mean normalised edit distance of each candidate to the others (0 = all identical)."""
    n = len(candidates)
    if n < 2:
        return [0.0] * n
    out = []
    for i, a in enumerate(candidates):
        dists = [
            edit_distance(a, b) / max(1, len(a), len(b))
            for j, b in enumerate(candidates) if j != i
        ]
        out.append(sum(dists) / len(dists))
    return out


@dataclass
class BestOfNResult:
    """The chosen generation, every candidate, and their scores (reward + bonus)."""

    best: Generation
    candidates: list[Generation]
    rewards: list[float]
    bonuses: list[float]
    scores: list[float]
    best_index: int
    reward_stds: list[float] | None = None  # per candidate, when the scorer is an ensemble


class BestOfNSampler:
    """Best-of-N with a reward model (spec: N 8, temperature 0.8, top-p 0.95)."""

    def __init__(
        self,
        policy: Any,
        reward_model: Any,
        tokenizer: Any,
        n: int = 8,
        temperature: float = 0.8,
        top_p: float = 0.95,
        diversity_weight: float = 0.0,
    ) -> None:
        if n < 1:
            raise ConfigError(f"--best-of must be >= 1, got {n}")
        self.policy = policy
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.n = n
        self.temperature = temperature
        self.top_p = top_p
        self.diversity_weight = diversity_weight

    def score(self, prompt: str, replies: Sequence[Sequence[int]]) -> list[float]:
        """Reward-model scores of replies (token ids after the prefix) to ``prompt``."""
        return reward_scores(self.reward_model, self.tokenizer, prompt, replies)

    def score_with_std(self, prompt: str, replies: Sequence[Sequence[int]]
                       ) -> tuple[list[float], list[float] | None]:
        """Scores and, for a reward ensemble, the members' std per reply."""
        return reward_scores_with_std(self.reward_model, self.tokenizer, prompt, replies)

    def sample(
        self, prompt: str, config: GenerationConfig | None = None, seed: int | None = None
    ) -> BestOfNResult:
        """N samples of one prompt in one batch; the highest score wins (first on ties)."""
        base = config or GenerationConfig()
        cfg = GenerationConfig(**{**base.__dict__, "temperature": self.temperature,
                                  "top_p": self.top_p, "do_sample": True})
        candidates = generate(self.policy, self.tokenizer, [prompt] * self.n, cfg, seed=seed)
        rewards, stds = self.score_with_std(prompt, [c.token_ids for c in candidates])
        bonuses = (
            diversity_bonus([c.token_ids for c in candidates])
            if self.diversity_weight else [0.0] * self.n
        )
        scores = [r + self.diversity_weight * b for r, b in zip(rewards, bonuses, strict=True)]
        best = max(range(self.n), key=lambda i: (scores[i], -i))
        return BestOfNResult(candidates[best], candidates, rewards, bonuses, scores, best, stds)


# --------------------------------------------------------------------------------- speculative


@dataclass
class SpeculativeStats:
    """Counters of one speculative generation."""

    drafted: int = 0
    accepted: int = 0
    target_passes: int = 0
    draft_passes: int = 0
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@dataclass
class SpeculativeOutput:
    """Generated ids (after the prefix), how it ended, and the counters."""

    tokens: list[int]
    finish_reason: str
    stats: SpeculativeStats = field(default_factory=SpeculativeStats)


def accept_or_resample(
    p: Sequence[Tensor], q: Sequence[Tensor], drafted: Sequence[int], greedy: bool,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """The speculative sampling rule for one round: ``(accepted drafts n, next token t)``.

    ``p`` holds the target's γ+1 distributions, ``q`` the draft's γ, ``drafted`` the γ draft
    tokens. Draft ``x_i`` is kept with probability ``min(1, p_i(x_i)/q_i(x_i))``; at the first
    rejection ``t`` is drawn from ``norm(max(0, p_i − q_i))``; if all are kept, from
    ``p_{γ+1}``. The emitted tokens are then distributed exactly as the target's. Greedy
    distributions are one-hot, so this keeps drafts while they equal the target's argmax.
    """
    k = len(drafted)
    for i in range(k):
        x = drafted[i]
        if greedy:
            ok = int(p[i].argmax()) == x
        else:
            ratio = float(p[i][x]) / max(float(q[i][x]), 1e-20)
            u = float(torch.rand((), generator=generator, device=p[i].device))
            ok = u < min(1.0, ratio)
        if not ok:
            if greedy:
                return i, int(p[i].argmax())
            residual = torch.clamp(p[i] - q[i], min=0.0)
            total = float(residual.sum())
            dist = residual / total if total > 0 else p[i]
            return i, int(torch.multinomial(dist, 1, generator=generator))
    last = p[k]
    return k, int(last.argmax()) if greedy else int(torch.multinomial(last, 1, generator=generator))


class SpeculativeDecoder:
    """Speculative decoding (Leviathan et al. 2023 / Chen et al. 2023) with a draft model.

    Both models must share the tokenizer (checked by the caller with
    :func:`check_shared_tokenizer`) and read the same prompt ids through their own encoders.
    """

    def __init__(self, target: Any, draft: Any, gamma: int = 4) -> None:
        if gamma < 1:
            raise ConfigError(f"gamma must be >= 1, got {gamma}")
        if int(target.config.vocab_size) != int(draft.config.vocab_size):
            raise ConfigError(
                f"draft vocabulary {draft.config.vocab_size} differs from the target's "
                f"{target.config.vocab_size}; the draft must use the target's tokenizer"
            )
        self.target = target
        self.draft = draft
        self.gamma = gamma

    def _probs(self, logits: Tensor, seen: Tensor, config: GenerationConfig) -> Tensor:
        return next_token_probs(logits[None], seen[None], config)[0]

    @staticmethod
    def _draw(probs: Tensor, generator: torch.Generator | None) -> int:
        return int(torch.multinomial(probs, 1, generator=generator))

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        config: GenerationConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
        prefix: Sequence[int] = DECODER_PREFIX,
    ) -> SpeculativeOutput:
        """Generate for one prompt ``(1,S)``; ``on_tokens`` receives each round's new tokens."""
        config = config or GenerationConfig()
        if input_ids.shape[0] != 1:
            raise ConfigError("speculative decoding runs one prompt at a time (batch size 1)")
        limit = min(int(self.target.config.max_position_embeddings),
                    int(self.draft.config.max_position_embeddings)) - len(prefix)
        if config.max_new_tokens > limit:
            raise ConfigError(
                f"--max-new-tokens {config.max_new_tokens} exceeds the context; use at most {limit}"
            )
        stats = SpeculativeStats()
        t0 = time.perf_counter()
        vocab = int(self.target.config.vocab_size)
        device = input_ids.device
        stop_ids = set(config.stop_ids)
        with eval_mode(self.target), eval_mode(self.draft):
            enc_t = self.target.encode(input_ids, attention_mask)
            enc_d = self.draft.encode(input_ids, attention_mask)
            seq = list(prefix)  # committed decoder tokens
            out: list[int] = []
            seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            t_past = d_past = None
            t_len = d_len = 0
            finish = FINISH_LENGTH
            while len(out) < config.max_new_tokens:
                remaining = config.max_new_tokens - len(out)
                k = min(self.gamma, remaining - 1)
                drafted: list[int] = []
                qs: list[Tensor] = []
                d_seen = seen.clone()
                for _ in range(k):
                    full = seq + drafted
                    step = torch.tensor([full[d_len:]], device=device)
                    dec = self.draft.decode(step, enc_d, past_key_values=d_past, use_cache=True)
                    d_past, d_len = dec["past_key_values"], len(full)
                    stats.draft_passes += 1
                    q = self._probs(dec["logits"][0, -1], d_seen, config)
                    x = int(q.argmax()) if config.greedy else self._draw(q, generator)
                    drafted.append(x)
                    qs.append(q)
                    d_seen[x] = True
                full = seq + drafted
                step = torch.tensor([full[t_len:]], device=device)
                dec = self.target.decode(step, enc_t, past_key_values=t_past, use_cache=True)
                t_past = dec["past_key_values"]
                stats.target_passes += 1
                logits = dec["logits"][0, -(k + 1):]
                p_seen = seen.clone()
                ps = []
                for i in range(k + 1):
                    ps.append(self._probs(logits[i], p_seen, config))
                    if i < k:
                        p_seen[drafted[i]] = True
                n, t = accept_or_resample(ps, qs, drafted, config.greedy, generator)
                stats.drafted += k
                stats.accepted += n
                new = drafted[:n] + [t]
                # Roll both caches back to the accepted prefix (seq + accepted drafts).
                t_len = len(seq) + n
                t_past = crop_cache(t_past, t_len)
                d_len = min(d_len, len(seq) + n)
                if d_past is not None:
                    d_past = crop_cache(d_past, d_len)
                for j, tok in enumerate(new):
                    if tok in stop_ids:
                        new = new[: j + 1]
                        finish = FINISH_STOP
                        break
                seq.extend(new)
                out.extend(new)
                for tok in new:
                    seen[tok] = True
                if on_tokens is not None:
                    on_tokens(new)
                if finish == FINISH_STOP:
                    break
        stats.seconds = time.perf_counter() - t0
        return SpeculativeOutput(out, finish, stats)

    def generate_text(
        self, tokenizer: Any, prompt: str, config: GenerationConfig | None = None,
        seed: int | None = None, on_text: Callable[[str], None] | None = None,
    ) -> tuple[Generation, SpeculativeStats]:
        """Text in, :class:`Generation` out (stop strings cut the text afterwards)."""
        config = config or GenerationConfig()
        device = next(self.target.parameters()).device
        limit = config.max_prompt_tokens or min(
            int(self.target.config.max_position_embeddings),
            int(self.draft.config.max_position_embeddings),
        )
        enc = encode_prompt_ids(tokenizer, prompt, limit, config.overflow, config.style,
                                config.provider)
        ids, mask = pad_batch([enc.ids], device)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
        from core.infer.generation import TextStreamer

        streamer = TextStreamer(tokenizer, config.stop_ids)

        def push(tokens: list[int]) -> None:
            if on_text is None:
                return
            piece = "".join(streamer.push(t) for t in tokens)
            if piece:
                on_text(piece)

        result = self.generate(ids, mask, config, generator=generator, on_tokens=push)
        text = tokenizer.decode([t for t in result.tokens if t not in config.stop_ids])
        finish = result.finish_reason
        cuts = [text.find(s) for s in config.stop_strings if s in text]
        if cuts:
            text, finish = text[: min(cuts)], FINISH_STOP_STRING
        rest = streamer.remainder(text)
        if rest and on_text is not None:
            on_text(rest)
        gen = Generation(prompt, text, result.tokens, finish, len(enc.ids), enc.truncated,
                         enc.dropped, extra={"acceptance_rate": result.stats.acceptance_rate})
        return gen, result.stats
