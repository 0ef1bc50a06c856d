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

DATA_HELP = """Build the bundled sample corpus, inspect and convert datasets.

Formats are detected from the fields of the first records (force one with --format):

\b
  styles             user_input, assistant_reply [provider, style_label,
                     turn_id, system, history, conversation_id]
  alpaca             instruction, output|response [input|context, system,
                     history: [[user, assistant], ...]]
  sharegpt           conversations: [{from, value}, ...] [system]
  messages           messages: [{role, content, weight?}, ...]   (OpenAI chat)
  prompt_completion  prompt, completion [system]
  preferences        prompt, chosen, rejected [id, source, rejection]
                     (chosen/rejected may be message lists)  -> reward, dpo
  prompts            prompt [answer, id, style_label]        -> ppo
  text               text (one document per record), or .txt/.md files and
                     directories (documents split by file and by blank lines)

\b
Every record may carry provider, style_label (or category) and id, and the
model inputs "triples": [["Python", "created_by", "Guido"], ...] and
"entities": [...] (knowledge graph), "image": "pics/a.png" (PNG/JPEG, relative
to the data file), "task": "name" (task conditioning); the knowledge-graph,
vision and task modules are built only when the data has their input
(--set model.enable_knowledge_graph=true etc. overrides).
Containers: .jsonl, .json (an array, or one object per line), .csv/.tsv
(list fields as JSON in the cell), .parquet (pip install 'aeron-tui[parquet]'),
or a directory of them. Multi-turn records use the chat template (README:
"Data formats"): earlier turns go to the encoder, each assistant reply is one
decoder target, so the loss only sees assistant tokens; messages with
"weight": 0 stay context. `data convert` writes the canonical styles.jsonl.
"""

data_app = typer.Typer(
    name="data",
    # Rich reads [..] as markup: escape every bracket so the schema prints as written.
    help=DATA_HELP.replace("[", "\\["),
    no_args_is_help=True,
)

_FORMAT = typer.Option(
    None, "--format", help="Force the format instead of detecting it: styles, alpaca, sharegpt, "
    "messages, prompt_completion, preferences, prompts, text.")


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


def collect_stats(path: Path, format: str | None = None, tokenizer: Path | None = None,
                  seq_len: int | None = None, max_problems: int = 10) -> dict[str, Any]:
    """The numbers `data stats` shows, as a plain dict (streamed over the data)."""
    from core.data.formats import collect_stats as collect

    tok = None
    if tokenizer is not None:
        from core.data.tokenizer import AeronTokenizer

        tok = AeronTokenizer.load(tokenizer)
    return collect(path, format, tokenizer=tok, seq_len=seq_len, max_problems=max_problems)


def _counts_line(title: str, counts: dict[str, int]) -> str:
    return f"{title}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())


@data_app.command("stats")
def stats(
    path: Path = typer.Argument(
        ..., help="A data file (any format and container above) or a directory of them."),
    format: str | None = _FORMAT,
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="Tokenizer or checkpoint directory for token lengths "
        "(default: byte-level tokens, what an untrained tokenizer gives)."),
    seq_len: int | None = typer.Option(
        None, "--seq-len", help="Also count the records longer than this (they would be cut)."),
    problems: int = typer.Option(10, "--problems", help="How many problem lines to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Detected format, record counts per field/style/role, token length percentiles and the
    first problem lines of a dataset (streamed: a multi-GB file is never held in memory).

    Exits non-zero when some lines cannot be used (training would refuse the file).
    """
    import json

    from rich.console import Console
    from rich.table import Table

    figures = collect_stats(path, format, tokenizer, seq_len, problems)
    console = Console()
    if as_json:
        console.print_json(json.dumps(figures))
    else:
        kind = figures["kind"]
        how = "detected" if figures["detected"] else "forced"
        files = f", {figures['files']} files" if figures["files"] > 1 else ""
        console.print(f"{path}: format {figures['format']} ({how}) in {figures['container']}"
                      f"{files}", highlight=False, markup=False, soft_wrap=True)
        count_key = {"sft": "samples", "preferences": "pairs", "prompts": "prompts",
                     "text": "documents"}[kind]
        rows: list[tuple[str, Any]] = [("records read", figures["records"]),
                                       (count_key, figures[count_key]),
                                       ("train / val", f"{figures['train']:,} / {figures['val']:,}")]
        if kind == "sft":
            rows.append(("multi-turn samples", figures["multi_turn_samples"]))
            rows.append(("mean user / reply chars",
                         f"{figures['mean_user_chars']:,.1f} / {figures['mean_reply_chars']:,.1f}"))
        elif kind == "prompts":
            rows.append(("with answer", figures["with_answer"]))
        elif kind == "text":
            rows.append(("documents are", figures["split"]))
            rows.append(("characters", figures["chars"]))
        rows.append(("problem lines", figures["problems"]))
        console.print(_table(f"{path} ({kind})", rows))
        if kind == "sft" and figures["per_style"]:
            per = Table(title="per style", title_justify="left")
            for col, justify in (("style", "left"), ("samples", "right"), ("train", "right"),
                                 ("val", "right")):
                per.add_column(col, justify=justify)  # type: ignore[arg-type]
            for label, count in figures["per_style"].items():
                tr, va = figures["per_style_split"][label]
                per.add_row(label, f"{count:,}", f"{tr:,}", f"{va:,}")
            console.print(per)
        for key, title in (("per_provider", "providers"), ("per_source", "sources"),
                           ("roles", "turns per role"), ("fields", "records per field")):
            if figures.get(key):
                console.print(_counts_line(title, figures[key]), highlight=False, markup=False,
                              soft_wrap=True)
        if figures.get("inputs"):
            console.print(input_coverage_line(figures["inputs"]), highlight=False,
                          soft_wrap=True)
        lengths = figures["lengths"]
        table = Table(title=f"lengths in {lengths['unit']}", title_justify="left")
        for col in ("side", "p50", "p90", "p99", "max", "mean"):
            table.add_column(col, justify="left" if col == "side" else "right")
        for side in ("encoder", "decoder"):
            q = lengths[side]
            if q:
                table.add_row(side, *(f"{q[k]:,}" for k in ("p50", "p90", "p99", "max")),
                              f"{q['mean']:,.1f}")
        console.print(table)
        if "over_seq_len" in figures:
            o = figures["over_seq_len"]
            console.print(f"longer than --seq-len {o['seq_len']}: encoder {o['encoder']:,}, "
                          f"decoder {o['decoder']:,} (cut when training)", highlight=False)
        for line in figures["first_problems"]:
            console.print(f"problem: {line}", style="red", highlight=False, markup=False,
                          soft_wrap=True)
    if figures["problems"]:
        from core.errors import DataError

        first = figures["first_problems"][0]
        raise DataError(f"{first} ({figures['problems']:,} problem line(s) in all; training "
                        "refuses the data until they are fixed)")


@data_app.command("convert")
def convert_cmd(
    src: Path = typer.Argument(..., help="A data file or directory in any format above."),
    out: Path = typer.Argument(..., help="The canonical JSONL to write (atomically)."),
    format: str | None = _FORMAT,
) -> None:
    """Write the canonical form: styles.jsonl records for supervised data (one per assistant
    turn, history kept), preference / prompt JSONL, or {"text"} records for documents.

    The split is preserved: a converted file puts every record in the same train/validation
    half as its source. The first bad line stops it with nothing written.
    """
    from rich.console import Console

    from core.data.formats import convert

    result = convert(src, out, format)
    Console().print(
        f"wrote {result.records_out:,} canonical records to {result.out} (from "
        f"{result.records_in:,} {result.source.describe()} records)",
        highlight=False, markup=False,
    )


@data_app.command("select")
def select_samples(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory to score with."),
    pool: Path = typer.Option(..., "--pool", help="Supervised data pool to choose from (any "
                              "sft format)."),
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
    import json
    import os
    import tempfile

    from rich.console import Console
    from rich.table import Table

    from core.data.formats import canonical_record, open_source
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

    source = open_source(pool)
    if source.format == "styles" and source.container == "jsonl":
        lines = pool.read_bytes().removeprefix(b"\xef\xbb\xbf").split(b"\n")
        body = b"".join(lines[samples[i].line_no - 1].rstrip(b"\r") + b"\n" for i in chosen)
    else:  # other formats: the chosen samples in the canonical styles form
        body = b"".join(json.dumps(canonical_record(samples[i], None, source.format),
                                   ensure_ascii=False).encode("utf-8") + b"\n" for i in chosen)
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
        table.add_row(str(rank), str(s.line_no), s.style_label or "-", s.provider or "-",
                      f"{float(norms[i]):.4g}")
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
