"""What the RLHF trainers share on top of the engine: starting from a checkpoint (``--from``),
the preference / prompt files, paired batches, eval metrics in eval events, tokenizer checks.

Options (``RunConfig.options``, set by ``aeron-tui rlhf ...`` flags or ``--set``):

``from``     checkpoint to start from (its config and tokenizer are used; without it a fresh model
             of the profile, with the engine's default tokenizer)
``prefs``    preference JSONL (reward, DPO); default: the bundled sample preference set
``prompts``  prompt JSONL (PPO); default: the bundled sample prompt set
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core.data.formatting import IGNORE_INDEX, decoder_sequence, encode_prompt
from core.data.loader import BatchLoader
from core.data.tokenizer import PAD_ID
from core.errors import CheckpointError, ConfigError, DataError
from core.runs.checkpoint import LoadedCheckpoint, load_checkpoint
from core.train.engine import Trainer

REWARD_HEAD_PREFIX = "reward_head."
VALUE_HEAD_PREFIX = "value_head."
HEAD_PREFIXES = (REWARD_HEAD_PREFIX, VALUE_HEAD_PREFIX)


# ----------------------------------------------------------------------------- examples
@dataclass(frozen=True)
class PreferenceExample:
    """One encoded preference pair: shared encoder ids, two decoder sequences
    ``<s> <|assistant|> reply </s>``, and (DPO) precomputed reference log-probabilities."""

    input_ids: list[int]
    chosen: list[int]
    rejected: list[int]
    ref_chosen: float | None = None
    ref_rejected: float | None = None

    def __len__(self) -> int:
        return max(len(self.input_ids), len(self.chosen), len(self.rejected))

    @property
    def num_tokens(self) -> int:
        return 2 * len(self.input_ids) + len(self.chosen) + len(self.rejected)


def encode_preferences(
    pairs: Sequence[Any], tokenizer: Any, max_length: int
) -> list[PreferenceExample]:
    """Encode :class:`core.data.preferences.PreferencePair` records (rlhf.md §1 layout)."""
    out = []
    for p in pairs:
        enc = encode_prompt(p.prompt, tokenizer, max_length)
        chosen = decoder_sequence(tokenizer, p.chosen, max_length)[0]
        rejected = decoder_sequence(tokenizer, p.rejected, max_length)[0]
        out.append(PreferenceExample(enc, chosen, rejected))
    return out


def _pad(rows: Sequence[Sequence[int]], value: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def collate_preferences(
    examples: Sequence[PreferenceExample], full_sequence: bool
) -> dict[str, Tensor]:
    """A batch of 2B rows: the B chosen sequences, then the B rejected ones (same prompts).

    ``full_sequence=True`` (reward model) feeds ``y`` whole, so the last real decoder token is
    ``</s>``; otherwise (log-probabilities) the decoder reads ``y[:-1]`` and ``labels = y[1:]``
    with the fixed ``<|assistant|>`` label masked (rlhf.md §1).
    """
    if not examples:
        raise ValueError("collate_preferences needs at least one example")
    prompts = [e.input_ids for e in examples] * 2
    seqs = [e.chosen for e in examples] + [e.rejected for e in examples]
    input_ids, attention_mask = _pad(prompts, PAD_ID)
    if full_sequence:
        dec, dec_mask = _pad(seqs, PAD_ID)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": dec,
            "decoder_attention_mask": dec_mask,
        }
    else:
        dec, dec_mask = _pad([s[:-1] for s in seqs], PAD_ID)
        labels, _ = _pad([[IGNORE_INDEX, *s[2:]] for s in seqs], IGNORE_INDEX)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "decoder_input_ids": dec,
            "decoder_attention_mask": dec_mask,
            "labels": labels,
        }
    if all(e.ref_chosen is not None and e.ref_rejected is not None for e in examples):
        batch["ref_logps"] = torch.tensor(
            [e.ref_chosen for e in examples] + [e.ref_rejected for e in examples],
            dtype=torch.float32,
        )
    return batch


class PreferenceLoader(BatchLoader):
    """The engine's resumable, length-bucketed loader over :class:`PreferenceExample` s."""

    def __init__(self, examples: Sequence[PreferenceExample], batch_size: int, seed: int,
                 full_sequence: bool, **kw: Any) -> None:
        super().__init__(examples, batch_size, seed, **kw)  # type: ignore[arg-type]
        self.full_sequence = full_sequence

    def __next__(self) -> dict[str, Tensor]:
        return collate_preferences(self.next_pairs(), self.full_sequence)  # type: ignore[arg-type]


def preference_batches(
    examples: Sequence[PreferenceExample], batch_size: int, full_sequence: bool
) -> list[dict[str, Tensor]]:
    """Fixed evaluation batches (length-sorted)."""
    ordered = sorted(examples, key=len)
    return [
        collate_preferences(ordered[i : i + batch_size], full_sequence)
        for i in range(0, len(ordered), batch_size)
    ]


# ----------------------------------------------------------------------------- checkpoints
def backbone_state(state: dict[str, Any]) -> dict[str, Any]:
    """A model state without RLHF heads (reward/value), i.e. what a plain backbone loads."""
    return {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}


def is_reward_checkpoint(loaded: LoadedCheckpoint) -> bool:
    return any(k.startswith(REWARD_HEAD_PREFIX) for k in loaded.model_state)


def check_same_tokenizer(
    policy_tokenizer: Any, other_tokenizer: Any, other_path: str | Path, what: str = "reward"
) -> None:
    """CheckpointError unless both tokenizers are identical (SHA-256 of tokenizer.json)."""
    if policy_tokenizer.sha256 == other_tokenizer.sha256:
        return
    raise CheckpointError(
        f"{other_path}: the {what} model's tokenizer differs from the policy's "
        f"(sha256 {other_tokenizer.sha256[:12]} vs {policy_tokenizer.sha256[:12]}, vocabulary "
        f"{other_tokenizer.vocab_size} vs {policy_tokenizer.vocab_size}); train the {what} "
        "model from the policy's checkpoint (--from) so both share one tokenizer"
    )


def load_backbone_weights(model: nn.Module, loaded: LoadedCheckpoint) -> None:
    """Load a checkpoint's backbone tensors into ``model`` (heads in either are left alone);
    any missing or unexpected backbone tensor is a CheckpointError naming it."""
    state = backbone_state(loaded.model_state)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(HEAD_PREFIXES)]
    problems = []
    if missing:
        problems.append(f"missing tensors {', '.join(missing[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected tensors {', '.join(result.unexpected_keys[:5])}")
    if problems:
        raise CheckpointError(
            f"{loaded.path / 'model.safetensors'}: does not fit this model: {'; '.join(problems)}"
        )


# ----------------------------------------------------------------------------- trainer base
class RLHFTrainer(Trainer):
    """Engine trainer with ``--from`` support and trainer metrics in eval events."""

    name = "rlhf"
    description = "shared RLHF plumbing"
    language_model = False  # preference / reward losses: no n-gram baselines, no live samples

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.init_checkpoint: LoadedCheckpoint | None = None
        self._eval_metrics: dict[str, Any] = {}

    # -- options ---------------------------------------------------------------------------
    def option(self, name: str, default: Any = None) -> Any:
        return self.config.options.get(name, default)

    def float_option(self, name: str, default: float) -> float:
        value = self.option(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"option {name!r} should be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"option {name!r} must be finite, got {value!r}")
        return float(value)

    def int_option(self, name: str, default: int, minimum: int = 1) -> int:
        value = self.option(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"option {name!r} should be an integer, got {value!r}")
        if value < minimum:
            raise ConfigError(f"option {name!r} must be >= {minimum}, got {value}")
        return int(value)

    def data_file(self, option: str, default_attr: str) -> Path:
        """An input file from ``options[option]``, else the sample corpus file."""
        value = self.option(option)
        if value:
            path = Path(str(value)).expanduser()
            if not path.is_file():
                raise DataError(f"{path}: file not found (check --{option})")
            return path
        from core.data.sample import ensure_sample_corpus

        path = Path(getattr(ensure_sample_corpus(), default_attr))
        # Recorded in run.toml's [options], so a resumed run reads the same file.
        self.config = self.config.with_overrides(options={option: str(path)})
        return path

    def load_preference_data(self, full_sequence: bool) -> None:
        """Read ``--prefs`` (or the sample preference set), split it by the stable hash, encode
        both halves and build the training loader; sets ``train_examples``, ``val_examples``,
        ``train_loader``, ``data_path`` and ``corpus``. ``full_sequence``: batches hold chosen
        and rejected rows stacked (the reward model scores both in one pass)."""
        from core.data.preferences import read_preferences, split_records
        from core.data.sample import corpus_manifest

        path = self.data_file("prefs", "preferences")
        self.data_path = str(path)
        records = read_preferences(path)
        if not records:
            raise DataError(f"{path}: no preference pairs")
        if self.config.max_samples is not None:
            records = records[: self.config.max_samples]
        train, val = split_records(records)
        if not train or not val:
            raise DataError(f"{path}: {len(records)} pairs are too few for a train/validation split")
        self.train_examples = encode_preferences(train, self.tokenizer, self.seq_len)
        self.val_examples = encode_preferences(val, self.tokenizer, self.seq_len)
        self.train_loader = PreferenceLoader(
            self.train_examples, self.micro_batch, self.config.seed, full_sequence=full_sequence,
            rank=self.rank, world_size=self.world_size,
        )
        self.corpus = corpus_manifest([path])
        self.corpus.update(train_samples=len(train), val_samples=len(val))

    # -- starting point ----------------------------------------------------------------------
    def load_init_checkpoint(self) -> LoadedCheckpoint | None:
        """The ``--from`` checkpoint (loaded once), or None."""
        source = self.option("from")
        if not source:
            return None
        if self.init_checkpoint is None:
            path = Path(str(source)).expanduser()
            if not path.exists():
                raise CheckpointError(f"{path}: checkpoint not found (check --from)")
            if not (path / "manifest.json").exists() and (path / "checkpoints").is_dir():
                from core.runs.checkpoint import latest_checkpoint

                found = latest_checkpoint(path)
                if found is None:
                    raise CheckpointError(f"{path}: no complete checkpoint in this run directory")
                path = found
            self.init_checkpoint = load_checkpoint(path, device="cpu", load_optimizer=False)
        return self.init_checkpoint

    def build_tokenizer(self) -> Any:
        init = self.load_init_checkpoint()
        if init is not None:
            if self.config.tokenizer:
                from core.data.tokenizer import AeronTokenizer

                check_same_tokenizer(init.tokenizer, AeronTokenizer.load(self.config.tokenizer),
                                     self.config.tokenizer, "given")
            return init.tokenizer
        return super().build_tokenizer()

    def resolve_model_config(self, resume: LoadedCheckpoint | None) -> Any:
        init = self.load_init_checkpoint()
        if init is not None:
            # The checkpoint decides the architecture; the profile's model is not used.
            self.base_model_config = init.config
            if resume is None and init.version:
                self.lineage_parents = [{"id": init.version, "relation": "continued"}]
        return super().resolve_model_config(resume)

    def modules_checkpoint(self, resume: LoadedCheckpoint | None) -> LoadedCheckpoint | None:
        """With ``--from``, that checkpoint's data-fed modules stay as it was trained, so its
        weights load whole (``--set model.enable_x`` still wins)."""
        return resume if resume is not None else self.load_init_checkpoint()

    def init_weights(self, model: nn.Module) -> None:
        """Load ``--from`` backbone weights into a freshly built model (no-op without it)."""
        init = self.load_init_checkpoint()
        if init is not None:
            load_backbone_weights(model, init)

    def resolved_config(self) -> Any:
        # ``data`` stays the tokenizer corpus the user gave (the engine would record the
        # preference/prompt file there, which is not a corpus); that file is in ``options``.
        from core.train.config import RunConfig

        resolved = super().resolved_config().to_dict()
        resolved["data"] = self.config.data
        return RunConfig.from_dict(resolved, "resolved run config")

    # -- events ------------------------------------------------------------------------------
    def emit(self, type: str, **fields: Any) -> dict[str, Any] | None:
        # The engine's eval event carries only the token count in ``metrics``; the trainer's
        # own eval numbers (accuracy, margin, reward, KL) are merged in here.
        if type == "eval" and self._eval_metrics:
            fields["metrics"] = {**(fields.get("metrics") or {}), **self._eval_metrics}
            self._eval_metrics = {}
        return super().emit(type, **fields)

    def eval_result(self, loss: float, tokens: float, **metrics: float) -> dict[str, Any]:
        """The dict :meth:`evaluate` returns, remembering ``metrics`` for the eval event."""
        self._eval_metrics = {k: float(v) for k, v in metrics.items()}
        return {"loss": float(loss), "perplexity": None, "tokens": float(tokens),
                "metrics": dict(self._eval_metrics)}
