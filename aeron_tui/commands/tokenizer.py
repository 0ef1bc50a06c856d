"""`aeron-tui tokenizer ...`: train and inspect byte-level BPE tokenizers.

Another engineer adds `tokenizer upgrade` (continual.md §3) to this group later (register it on
``tokenizer_app`` below). Heavy modules are imported inside the commands.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import typer

tokenizer_app = typer.Typer(
    name="tokenizer",
    help="Train and inspect byte-level BPE tokenizers.",
    no_args_is_help=True,
)


def corpus_texts(paths: list[Path]) -> Iterator[str]:
    """Training texts of every data path (any format `aeron-tui data --help` lists): every turn
    of supervised records, prompts and replies of preference pairs, documents of text."""
    from core.data.formats import corpus_texts as texts

    for path in paths:
        yield from texts(path)


@tokenizer_app.command("train")
def train(
    corpus: list[Path] | None = typer.Option(
        None,
        "--corpus",
        help="A data file or directory in any format `aeron-tui data --help` lists; repeatable "
        "(default: the sample corpus).",
    ),
    vocab_size: int = typer.Option(
        50000, "--vocab-size", help="Upper bound on the vocabulary size."
    ),
    min_frequency: int = typer.Option(
        2, "--min-frequency", help="Stop when no pair occurs this often."
    ),
    max_context: int = typer.Option(
        10000,
        "--max-context",
        help="Longest text in characters fed to the trainer; longer ones are chunked.",
    ),
    model_max_length: int = typer.Option(
        896, "--model-max-length", help="Recorded in tokenizer_config.json."
    ),
    out: Path = typer.Option(
        Path("tokenizer"), "--out", "--output-dir", help="Directory to write tokenizer.json into."
    ),
    progress: bool = typer.Option(False, "--progress", help="Show the trainer's progress bar."),
) -> None:
    """Train a byte-level BPE tokenizer and write tokenizer.json + tokenizer_config.json."""
    import time

    from rich.console import Console

    from core.data.tokenizer import BASE_VOCAB_SIZE, AeronTokenizer

    paths = list(corpus or [])
    if not paths:
        from core.data.sample import ensure_sample_corpus

        paths = [ensure_sample_corpus().styles]
    start = time.perf_counter()
    tok = AeronTokenizer.train(
        corpus_texts(paths),
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        max_context=max_context,
        progress=progress,
        model_max_length=model_max_length,
    )
    try:
        tok.save(out)
    except OSError as exc:
        from core.errors import CheckpointError

        raise CheckpointError(
            f"{out}: cannot write the tokenizer ({exc.strerror or exc}); choose a writable --out"
        ) from exc
    elapsed = time.perf_counter() - start
    reached = (
        "the requested size"
        if tok.vocab_size >= vocab_size
        else f"no pair left with frequency ≥ {min_frequency}"
    )
    Console().print(
        f"tokenizer: {tok.vocab_size:,} entries ({tok.vocab_size - BASE_VOCAB_SIZE:,} merges; "
        f"stopped at {reached}) in {elapsed:.1f}s → {out / 'tokenizer.json'}\nsha256 {tok.sha256}",
        highlight=False,
    )


@tokenizer_app.command("info")
def info(
    path: Path = typer.Argument(..., help="tokenizer.json or a directory containing it."),
) -> None:
    """Show a tokenizer's size, special-token ids and SHA-256."""
    from rich.console import Console

    from core.data.tokenizer import SPECIAL_TOKENS, AeronTokenizer

    tok = AeronTokenizer.load(path)
    specials = " ".join(f"{t}={i}" for i, t in enumerate(SPECIAL_TOKENS))
    Console().print(
        f"vocab size {tok.vocab_size:,}  model_max_length {tok.model_max_length}\n"
        f"specials {specials}\nsha256 {tok.sha256}",
        highlight=False,
    )


@tokenizer_app.command("upgrade")
def upgrade(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint trained with the old tokenizer."),
    tokenizer: Path = typer.Option(..., "--tokenizer", help="The new tokenizer.json (or its directory)."),
    out: Path = typer.Option(..., "--out", help="New checkpoint directory (must not exist)."),
    data: Path | None = typer.Option(
        None, "--data", help="Old corpus (styles.jsonl) to compare bits per byte on; default: sample corpus."),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Compare old / upgraded / random embedding."),
    samples: int = typer.Option(256, "--samples", help="Validation samples for the comparison."),
) -> None:
    """Move a checkpoint to a new tokenizer: shared tokens keep their rows, new ones are composed."""
    from rich.console import Console

    from core.evolve.vocab_transfer import compare_upgrade, upgrade_checkpoint

    console = Console()
    path, report = upgrade_checkpoint(checkpoint, tokenizer, out)
    console.print(
        f"[bold green]upgraded[/] {checkpoint} → {path}: vocabulary {report.old_vocab_size:,} → "
        f"{report.new_vocab_size:,}; {report.copied:,} copied, {report.composed:,} composed, "
        f"{report.random:,} random",
        highlight=False,
    )
    if evaluate:
        if data is None:
            from core.data.sample import ensure_sample_corpus

            data = ensure_sample_corpus().styles
        bpb = compare_upgrade(checkpoint, path, data, samples=samples)
        console.print(
            f"old-corpus bits/byte: old model {bpb['old']:.4f}, upgraded {bpb['upgraded']:.4f}, "
            f"random new embedding {bpb['random_embedding']:.4f} (copied rows only {bpb['copied_only']:.4f})",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add the `tokenizer` group to the root app."""
    app.add_typer(tokenizer_app, name="tokenizer")
