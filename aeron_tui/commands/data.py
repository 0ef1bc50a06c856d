"""`aeron-tui data ...`: build the bundled sample corpus and summarise corpora.

Optional fields of a styles.jsonl record feed the model's extra inputs (see README "Data"):
``triples`` [[subject, relation, object], ...] and ``entities`` [names] → the knowledge-graph
attention; ``image`` (PNG/JPEG path relative to the data file) → the vision path; ``task`` (a
name) → the continual module's task conditioning. A module is built only when some record has
its input; `data stats` shows the coverage.

Another engineer adds `data select` to this group later (register it on ``data_app`` below).
Heavy modules are imported inside the commands so `aeron-tui --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

data_app = typer.Typer(
    name="data",
    help=(
        "Build the bundled sample corpora and inspect datasets.\n\n"
        "styles.jsonl records: provider, style_label, user_input, assistant_reply, turn_id; "
        "optional model inputs: \"triples\": [[\"Python\", \"created_by\", \"Guido\"], ...] "
        "and \"entities\": [...] (knowledge graph), \"image\": \"pics/a.png\" (PNG/JPEG, "
        "relative to the data file), \"task\": \"name\" (task conditioning). The knowledge-"
        "graph, vision and task modules are built only when the data has their input "
        "(--set model.enable_knowledge_graph=true etc. overrides)."
    ),
    no_args_is_help=True,
)


@data_app.command("build-sample")
def build_sample(
    out: Path | None = typer.Option(
        None, "--out", help="Directory to write (default: $AERON_TUI_HOME/data/sample)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated samples."),
    kind: str = typer.Option(
        "sample", "--kind", help="sample (the default corpus), facts (questions answered only "
        "by each record's triples) or captions (drawn images with their captions)."),
) -> None:
    """Build the sample corpus (styles.jsonl, preferences.jsonl, prompts.jsonl, manifest.json),
    or with --kind facts|captions a corpus that needs the knowledge graph or images."""
    from rich.console import Console
    from rich.table import Table

    from core.data.sample import build_sample_corpus, sample_dir

    if kind != "sample":
        from core.data.enhanced_samples import build_enhanced_corpus

        built = build_enhanced_corpus(kind, out, seed)
        Console().print(f"{built.kind} corpus: {built.records:,} records in {built.styles}",
                        highlight=False)
        return

    corpus = build_sample_corpus(out if out is not None else sample_dir(), seed=seed)
    table = Table(title=f"Sample corpus in {corpus.root}", title_justify="left")
    table.add_column("file")
    table.add_column("records", justify="right")
    table.add_row(corpus.styles.name, str(corpus.n_styles))
    table.add_row(corpus.preferences.name, str(corpus.n_preferences))
    table.add_row(corpus.prompts.name, str(corpus.n_prompts))
    console = Console()
    console.print(table)
    labels = ", ".join(f"{k} {v}" for k, v in corpus.style_counts.items())
    console.print(f"style labels: {labels}", highlight=False)


def _detect_kind(path: Path) -> str:
    """styles | preferences | prompts | text, from the path and the first JSONL record."""
    if path.is_dir() or path.suffix == ".txt":
        return "text"
    from core.data.jsonl import iter_jsonl

    for _, obj in iter_jsonl(path):
        if "chosen" in obj or "rejected" in obj:
            return "preferences"
        if "prompt" in obj and "user_input" not in obj:
            return "prompts"
        return "styles"
    return "styles"  # unreachable: iter_jsonl raises on an empty file


def _table(title: str, rows: list[tuple[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(
            name,
            f"{value:,.1f}"
            if isinstance(value, float)
            else f"{value:,}"
            if isinstance(value, int)
            else str(value),
        )
    return table


def collect_stats(path: Path) -> dict[str, Any]:
    """The numbers `data stats` shows, as a plain dict (kind + figures)."""
    if path.is_dir() and (path / "styles.jsonl").is_file():
        path = path / "styles.jsonl"  # a corpus directory such as the sample corpus
    kind = _detect_kind(path)
    if kind == "styles":
        from core.data.extras import input_coverage
        from core.data.styles import read_styles, style_stats

        samples = read_styles(path)
        return {"kind": kind, **style_stats(samples).to_dict(),
                "inputs": input_coverage(samples).to_dict()}
    if kind == "preferences":
        from core.data.preferences import preference_stats, read_preferences

        return {"kind": kind, **preference_stats(read_preferences(path))}
    if kind == "prompts":
        from core.data.preferences import read_prompts, split_records

        prompts = read_prompts(path)
        train, val = split_records(prompts)
        return {
            "kind": kind,
            "prompts": len(prompts),
            "train": len(train),
            "val": len(val),
            "with_answer": sum(p.answer is not None for p in prompts),
            "mean_prompt_chars": sum(len(p.prompt) for p in prompts) / len(prompts),
        }
    from core.data.text import read_text_corpus

    docs = read_text_corpus(path)
    return {
        "kind": kind,
        "documents": len(docs),
        "chars": sum(len(d) for d in docs),
        "utf8_bytes": sum(len(d.encode("utf-8")) for d in docs),
        "mean_document_chars": sum(len(d) for d in docs) / len(docs),
        "max_document_chars": max(len(d) for d in docs),
    }


@data_app.command("stats")
def stats(
    path: Path = typer.Argument(
        ...,
        help="styles.jsonl, a preference/prompt JSONL, a .txt file or a directory of .txt files.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Count samples, split sizes, per-style counts and lengths of a dataset."""
    import json

    from rich.console import Console

    figures = collect_stats(path)
    console = Console()
    if as_json:
        console.print_json(json.dumps(figures))
        return
    kind = figures["kind"]
    if kind == "styles":
        console.print(
            _table(
                f"{path} (styles)",
                [
                    ("samples", figures["samples"]),
                    ("train / val", f"{figures['train']:,} / {figures['val']:,}"),
                    ("mean user chars", figures["mean_user_chars"]),
                    ("mean reply chars", figures["mean_reply_chars"]),
                    (
                        "max user / reply chars",
                        f"{figures['max_user_chars']:,} / {figures['max_reply_chars']:,}",
                    ),
                ],
            )
        )
        from rich.table import Table

        per = Table(title="per style", title_justify="left")
        for col, justify in (
            ("style", "left"),
            ("samples", "right"),
            ("train", "right"),
            ("val", "right"),
        ):
            per.add_column(col, justify=justify)  # type: ignore[arg-type]
        for label, count in figures["per_style"].items():
            tr, va = figures["per_style_split"][label]
            per.add_row(label, f"{count:,}", f"{tr:,}", f"{va:,}")
        console.print(per)
        providers = ", ".join(f"{k} {v:,}" for k, v in figures["per_provider"].items())
        console.print(f"providers: {providers}", highlight=False)
        console.print(input_coverage_line(figures["inputs"]), highlight=False, soft_wrap=True)
    else:
        rows = [
            (k.replace("_", " "), v) for k, v in figures.items() if k not in ("kind", "per_source")
        ]
        console.print(_table(f"{path} ({kind})", rows))
        if "per_source" in figures:
            sources = ", ".join(f"{k} {v:,}" for k, v in figures["per_source"].items())
            console.print(f"sources: {sources}", highlight=False)


@data_app.command("select")
def select_samples(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory to score with."),
    pool: Path = typer.Option(..., "--pool", help="styles.jsonl pool to choose from."),
    k: int = typer.Option(..., "-k", "--k", help="How many samples to choose."),
    out: Path = typer.Option(..., "--out", help="JSONL file to write the chosen samples to."),
    max_length: int = typer.Option(256, "--max-length", help="Token limit per side."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed of the k-means++ draw."),
    device: str = typer.Option("cpu", "--device", help="Device to run the model on."),
) -> None:
    """Choose the k most informative, diverse samples of a pool (BADGE active learning).

    Each sample is embedded by the output-layer gradient for the model's own predictions
    (projected to 256 dimensions); k-means++ seeding then picks uncertain and mutually distant
    samples. The chosen lines are copied unchanged to --out, in pick order.
    """
    import os
    import tempfile

    from rich.console import Console
    from rich.table import Table

    from core.data.formatting import encode_styles_sample
    from core.data.loader import collate
    from core.data.styles import read_styles
    from core.errors import ConfigError
    from core.model.active_learning import pool_embeddings, select
    from core.runs.checkpoint import build_model_from_checkpoint

    samples = read_styles(pool)
    if not 1 <= k <= len(samples):
        raise ConfigError(f"-k must be between 1 and the pool size {len(samples)} ({pool}), got {k}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    model, tokenizer, config = build_model_from_checkpoint(checkpoint, device=device)
    if max_length > config.max_position_embeddings - 1:
        raise ConfigError(
            f"--max-length {max_length} exceeds the model's max_position_embeddings - 1 "
            f"({config.max_position_embeddings - 1})"
        )
    pairs = [encode_styles_sample(s, tokenizer, max_length) for s in samples]
    batches = (
        {key: t.to(device) for key, t in collate(pairs[i : i + batch_size], config.pad_token_id).items()}
        for i in range(0, len(pairs), batch_size)
    )
    embeddings = pool_embeddings(model, batches)
    chosen = select(embeddings, k, seed=seed)

    lines = pool.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")
    body = b"".join(lines[samples[i].line_no - 1].rstrip(b"\r") + b"\n" for i in chosen)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

    norms = embeddings.norm(dim=1)
    table = Table(title=f"BADGE picked {k} of {len(samples)} samples -> {out}", title_justify="left")
    for col in ("pick", "line", "style", "provider", "gradient norm"):
        table.add_column(col, justify="left" if col in ("style", "provider") else "right")
    for rank, i in enumerate(chosen, 1):
        s = samples[i]
        table.add_row(str(rank), str(s.line_no), s.style_label, s.provider, f"{float(norms[i]):.4g}")
    Console().print(table)


def input_coverage_line(cov: dict[str, Any]) -> str:
    """One line: how many records feed each optional module, and what gets built."""
    n = cov["records"]

    def pct(k: int) -> str:
        return f"{k:,}/{n:,} ({k / n:.0%})" if n else "0"

    parts = [f"triples {pct(cov['with_triples'])}", f"entities {pct(cov['with_entities'])}",
             f"image {pct(cov['with_image'])}", f"task {pct(cov['with_task'])}"]
    built = []
    if cov["with_triples"] or cov["with_entities"]:
        built.append(f"knowledge graph ({cov['entities']:,} entities, {cov['relations']:,} "
                     f"relations, {cov['triples']:,} triples)")
    if cov["with_image"]:
        built.append("vision")
    if cov["with_task"]:
        built.append(f"task conditioning ({len(cov['tasks'])} tasks)")
    what = ", ".join(built) if built else "none (a text-only model)"
    return f"model inputs: {', '.join(parts)}; modules built: {what}"


def register(app: typer.Typer) -> None:
    """Add the `data` group to the root app."""
    app.add_typer(data_app, name="data")
