"""What a new run will build, known before it starts: its vocabulary, the parameter count of its
model, and every size profile's memory verdict for the trainer that will run it.

One path for every place that shows these figures — the console's setup and wizard screens,
``aeron-tui profile``, ``aeron-tui wizard`` and ``train --profile auto`` — so the same profile
never shows two parameter counts or two memory figures:

* :func:`run_vocabulary` — the tokenizer's vocabulary when it exists (``--tokenizer``, or the
  tokenizer already trained and cached for this corpus), else the size the run will train, said
  plainly as an assumption;
* :func:`planned_model_config` / :func:`planned_params` — the profile's model with that
  vocabulary and the run's overrides, exactly as the trainer resolves it
  (``core.train.engine.Trainer.resolve_model_config``; a test compares the two);
* :func:`fit_rules` — which memory rules the estimate uses for a trainer (one rule);
* :func:`profile_pick` — :func:`profiles.pick.pick_profile` with all of the above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.model.config import NeuralNetConfig
    from profiles.catalog import SizeProfile
    from profiles.hardware import HardwareInfo
    from profiles.pick import ProfilePick


def default_tokenizer_vocab() -> int:
    """The vocabulary a run trains its tokenizer to when nothing says otherwise (RunConfig's)."""
    from core.train.config import RunConfig

    return int(RunConfig.__dataclass_fields__["tokenizer_vocab_size"].default)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Vocabulary:
    """A run's vocabulary size and where the figure comes from (shown next to parameter counts).

    ``exact`` is True when a tokenizer file gave the size; False when it is the size the run's
    tokenizer will be trained to (an upper bound that a normal corpus reaches).
    """

    size: int
    exact: bool
    source: str

    @property
    def note(self) -> str:
        """One line for the screens: ``parameters at vocabulary 2,048 (…)``."""
        return f"parameter counts at vocabulary {self.size:,} ({self.source})"


def _data_file(data: str | None) -> Path | None:
    """The corpus file the trainer will read (as ``resolve_data_path`` does), None if unknown."""
    if not data:
        from core.data.sample import STYLES_FILE, sample_dir

        path = sample_dir() / STYLES_FILE
        return path if path.is_file() else None
    path = Path(data).expanduser()
    if path.is_dir():
        styles = path / "styles.jsonl"
        return styles if styles.is_file() else path
    return path if path.exists() else None


def run_vocabulary(data: str | None = None, tokenizer: str | None = None,
                   tokenizer_vocab_size: int | None = None) -> Vocabulary:
    """The vocabulary the run's model will have.

    ``tokenizer`` (a tokenizer directory or file) wins; else the tokenizer the trainers cache per
    corpus and size (``core.data.tokenizer.corpus_tokenizer_dir``) when one was trained already;
    else ``tokenizer_vocab_size`` (default :func:`default_tokenizer_vocab`), marked as assumed.
    """
    from core.data.tokenizer import corpus_tokenizer_dir, saved_vocab_size

    size = tokenizer_vocab_size or default_tokenizer_vocab()
    if tokenizer:
        found = saved_vocab_size(Path(tokenizer).expanduser())
        if found:
            return Vocabulary(found, True, f"the tokenizer at {tokenizer}")
    corpus = _data_file(data)
    if corpus is not None:
        try:
            found = saved_vocab_size(corpus_tokenizer_dir(corpus, size))
        except OSError:
            found = None
        if found:
            return Vocabulary(found, True, f"the tokenizer already trained on {corpus.name}")
    what = corpus.name if corpus is not None else ("the bundled sample corpus" if not data
                                                   else Path(data).name)
    return Vocabulary(size, False, f"assumed: its tokenizer is trained on {what} at run start")


def planned_model_config(profile: SizeProfile | str, vocab: Vocabulary | int,
                         seq_len: int | None = None,
                         model_overrides: Mapping[str, Any] | None = None) -> NeuralNetConfig:
    """The profile's model as the trainer will build it: the run's vocabulary, room for
    ``seq_len`` (+2 for BOS/EOS) and the run's ``[model]`` overrides."""
    from profiles import catalog
    from profiles.catalog import load_profile

    prof = load_profile(profile) if isinstance(profile, str) else profile
    changes: dict[str, Any] = {"vocab_size": int(vocab.size if isinstance(vocab, Vocabulary)
                                                 else vocab)}
    length = seq_len or prof.train.seq_len
    if prof.model.max_position_embeddings < length + 2:
        changes["max_position_embeddings"] = length + 2
    config = prof.model.replace(**changes)
    # Where the catalog knows which modules a run builds from its data (the data-fed knowledge
    # graph, vision and task modules: catalog.run_model_config), that rule decides — one rule
    # for the trainer, the estimator and these screens. Text data (None) feeds none of them.
    resolve = getattr(catalog, "run_model_config", None)
    if resolve is not None:
        return resolve(config, None, dict(model_overrides or {}))  # type: ignore[no-any-return]
    return config.replace(**dict(model_overrides or {}))


def planned_params(profile: SizeProfile | str, vocab: Vocabulary | int,
                   seq_len: int | None = None,
                   model_overrides: Mapping[str, Any] | None = None) -> int:
    """The parameter count of the model this run will build (exact, from a ``meta`` model)."""
    from profiles.estimate import parameter_facts

    return parameter_facts(planned_model_config(profile, vocab, seq_len, model_overrides)).total


def fit_rules(trainer: str | None) -> tuple[str, ...]:
    """The memory rules an estimate for ``trainer`` uses.

    The compressed trainer has its own optimizer-state rules; every other trainer keeps AdamW's
    fp32 moments ("simple"). ``None`` (no trainer chosen yet: the wizard's recommendation,
    ``aeron-tui profile``) lets the picker fall back to the compressed trainer when that is what
    makes a profile fit — the verdict then says so.
    """
    if trainer is None:
        from profiles.pick import available_trainers

        return available_trainers()
    return ("compressed",) if trainer == "compressed" else ("simple",)


def profile_pick(hardware: HardwareInfo, trainer: str | None = None,
                 vocab: Vocabulary | None = None, mode: str = "train",
                 profiles: Sequence[SizeProfile] | None = None,
                 margin: float = 0.10) -> ProfilePick:
    """Every profile's verdict on ``hardware`` for ``trainer`` at the run's vocabulary.

    The one estimate path and budget rule (``(1 − margin) × free``) behind every screen.
    """
    from profiles.pick import pick_profile

    vocab = vocab or run_vocabulary()
    return pick_profile(hardware, mode, profiles, margin, fit_rules(trainer), vocab.size)


def with_vocab(profile: SizeProfile, vocab: Vocabulary | int) -> SizeProfile:
    """``profile`` with its model at the run's vocabulary (for code that takes profiles)."""
    size = vocab.size if isinstance(vocab, Vocabulary) else int(vocab)
    return dataclasses.replace(profile, model=profile.model.replace(vocab_size=size))
