"""The bundled sample corpus: what `make run` trains on when the user brings no data.

Built deterministically (byte-identical for the same Python build and seed) from material every
Python installation has — the standard library's docstrings (``qa``) and signatures (``code``) —
plus generated samples whose answers the builder computes (``reasoning``, ``math``, ``code``,
``format``, ``rewrite``). The style labels cover all three LONPT domains: code/format/rewrite →
syntactic, qa → semantic, reasoning/math → reasoning. Alongside: a preference set and a prompt set
with verifiable answers for RLHF.

The preference set pairs a correct, complete, on-topic reply (chosen) with one that fails in a
way real preference data does (rejected; the pair's ``rejection`` field names how):

* ``slip`` — an arithmetic or logical slip that propagates to a wrong answer;
* ``premature`` — the working stops after the first step and reports that step as the answer;
* ``inconsistent`` — correct working, then a final answer that contradicts it;
* ``off_topic`` — a worked reply to a different kind of question;
* ``guess`` — no working, an unexplained wrong answer;
* ``other`` — another object's summary or parameters (docstring pairs);
* ``truncated`` — a summary or signature cut off mid-way;
* ``unhelpful`` — a non-answer that only points elsewhere;
* ``code_bug`` — a function that does something other than asked (code tasks).

Slips and ``other`` need arithmetic or stdlib knowledge to spot; the rest are visible in the
reply and the prompt themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data import synth
from core.data.stdlib_docs import DocEntry, collect_doc_entries_isolated
from core.errors import DataError
from core.fileio import file_sha256, write_bytes_atomically
from core.paths import aeron_home, default_data_dir

BUILDER_VERSION = 3  # 2: preference pairs with several rejection kinds; 3: no install paths
STYLES_FILE = "styles.jsonl"
PREFERENCES_FILE = "preferences.jsonl"
PROMPTS_FILE = "prompts.jsonl"
MANIFEST_FILE = "manifest.json"
DOC_PROVIDER = "python-stdlib"
SYNTH_PROVIDER = "aeron-synth"
MIN_STYLE_SAMPLES = 5200

# How many generated samples of each kind (the docstring part depends on the Python build).
N_REASONING = 1600
N_MATH = 800
N_CODE_TASKS = 500
N_FORMAT = 350
N_REWRITE = 250
N_PREF_REASONING = 900
N_PREF_MATH = 400
N_PREF_CODE_TASKS = 200
N_PREF_DOCS = 600
# How a reasoning/math pair's rejected reply fails (weights); docs pairs: see _pairs_from_docs.
PROBLEM_REJECTIONS = (
    ("slip", 15), ("premature", 25), ("inconsistent", 10), ("off_topic", 10), ("guess", 40)
)
DOC_REJECTIONS = (("other", 20), ("truncated", 40), ("unhelpful", 40))
GUESS_TEMPLATES = (  # some restate the question, so a guess is not always the shorter reply
    "I'm not sure how to work this out, so I'll guess.\nAnswer: {answer}",
    "The question is: {question}\nThat is hard to work out exactly, so I'll estimate it.\n"
    "Answer: {answer}",
    "Answer: {answer}",
    "You asked: {question}\nIt is probably about {answer}.\nAnswer: {answer}",
)
UNHELPFUL_TEMPLATES = (
    "See the Python documentation for `{name}`.",
    "`{name}` is part of the Python standard library.",
    "I don't know what `{name}` does; try help({name}).",
    "You can look `{name}` up in the docs.",
)
RESULT_RE = re.compile(r"= \$?(-?\d+)(?: [a-z]+)?\.$")
N_PROMPTS = 1000

QA_TEMPLATES = (
    "What does `{name}` do?",
    "Explain `{name}` from the Python standard library.",
    "In Python, what is `{name}` for?",
    "Briefly describe the {kind} `{name}`.",
)
SIG_TEMPLATES = (
    "What is the signature of `{name}`?",
    "How do I call `{name}`?",
    "Show the parameters of the {kind} `{name}`.",
)

__all__ = [
    "SampleCorpus",
    "aeron_home",
    "build_sample_corpus",
    "corpus_manifest",
    "default_data_dir",
    "ensure_sample_corpus",
    "extract_answer",
]
extract_answer = synth.extract_answer


@dataclass(frozen=True)
class SampleCorpus:
    """Paths and counts of a built sample corpus."""

    root: Path
    styles: Path
    preferences: Path
    prompts: Path
    manifest: Path
    n_styles: int
    n_preferences: int
    n_prompts: int
    style_counts: dict[str, int] = field(default_factory=dict)


def sample_dir() -> Path:
    """Where the default sample corpus lives: ``$AERON_TUI_HOME/data/sample``."""
    return default_data_dir() / "sample"


# ---------------------------------------------------------------- building blocks
def _style(provider: str, label: str, user: str, reply: str, turn_id: str) -> dict[str, str]:
    return {
        "provider": provider,
        "style_label": label,
        "user_input": user,
        "assistant_reply": reply,
        "turn_id": turn_id,
    }


def _doc_styles(entries: list[DocEntry]) -> list[dict[str, str]]:
    rows = []
    for i, e in enumerate(entries):
        q = QA_TEMPLATES[i % len(QA_TEMPLATES)].format(name=e.name, kind=e.kind)
        rows.append(_style(DOC_PROVIDER, "qa", q, e.summary, f"qa:{e.name}"))
        if e.signature:
            q = SIG_TEMPLATES[i % len(SIG_TEMPLATES)].format(name=e.name, kind=e.kind)
            rows.append(
                _style(DOC_PROVIDER, "code", q, f"```python\n{e.signature}\n```", f"code:{e.name}")
            )
    return rows


def _synth_styles(
    rng: random.Random, label: str, gens: Any, n: int, start: int = 0
) -> list[dict[str, str]]:
    rows = []
    for i in range(start, start + n):
        p = gens(rng) if callable(gens) else synth.draw(gens, rng)
        reply, _ = p.solve(0)
        rows.append(_style(SYNTH_PROVIDER, label, p.question, reply, f"{label}:{p.kind}:{i:05d}"))
    return rows


def build_styles(seed: int = 0, entries: list[DocEntry] | None = None) -> list[dict[str, str]]:
    """All styles records in file order (docs first, then generated kinds)."""
    entries = collect_doc_entries_isolated() if entries is None else entries
    rows = _doc_styles(entries)
    rows += _synth_styles(random.Random(f"{seed}:math"), "math", synth.MATH, N_MATH)
    rows += _synth_styles(random.Random(f"{seed}:code"), "code", synth._code_task, N_CODE_TASKS)
    rows += _synth_styles(random.Random(f"{seed}:format"), "format", synth._format_task, N_FORMAT)
    rows += _synth_styles(
        random.Random(f"{seed}:rewrite"), "rewrite", synth._rewrite_task, N_REWRITE
    )
    # Reasoning tops the corpus up to the minimum size on Python builds with fewer docstrings.
    n_reasoning = max(N_REASONING, MIN_STYLE_SAMPLES - len(rows))
    rows += _synth_styles(
        random.Random(f"{seed}:reasoning"), "reasoning", synth.REASONING, n_reasoning
    )
    return rows


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def _premature(chosen: str, good: str) -> str | None:
    """The working cut after its first step whose result differs from the final answer, with
    that intermediate result given as the answer (None when no step states one)."""
    steps = chosen.split("\n")[:-1]  # without the `Answer:` line
    for k, line in enumerate(steps[:-1]):
        m = RESULT_RE.search(line)
        if m and m.group(1) != good:
            return "\n".join([*steps[: k + 1], f"Answer: {m.group(1)}"])
    return None


def _problem_rejection(
    rng: random.Random, p: synth.Problem, pool: tuple[Any, ...], mode: str
) -> tuple[str, str, str]:
    """(rejected reply, its final answer, the rejection kind actually used)."""
    chosen, good = p.solve(0)
    slipped, bad = p.solve(synth.wrong_slip(rng))
    if mode == "premature":
        cut = _premature(chosen, good)
        if cut is not None:
            return cut, synth.extract_answer(cut) or "", mode
        mode = "slip"  # e.g. the ordering chain states no intermediate number
    if mode == "inconsistent":
        lines = chosen.split("\n")
        return "\n".join([*lines[:-1], f"Answer: {bad}"]), bad, mode
    if mode == "off_topic":
        others = [g for g in pool if g(random.Random(0)).kind != p.kind]
        for _ in range(10):
            reply, answer = rng.choice(others)(rng).solve(0)
            if answer != good:
                return reply, answer, mode
        mode = "slip"
    if mode == "guess":
        template = GUESS_TEMPLATES[rng.randrange(len(GUESS_TEMPLATES))]
        return template.format(answer=bad, question=p.question), bad, mode
    return slipped, bad, "slip"


def _pairs_from_problems(
    rng: random.Random, gens: Any, n: int, label: str, pool: tuple[Any, ...] = (),
    seen: set[str] | None = None,
) -> list[dict[str, str]]:
    """Worked problems: the computed-correct reply vs. one failing as PROBLEM_REJECTIONS says
    (``pool``: the generators an off-topic reply is drawn from; empty = slips only).

    A prompt already in ``seen`` is drawn again, so no question appears twice in the set (the
    hash split would otherwise put some copies on both sides).
    """
    rows = []
    seen = set() if seen is None else seen
    for i in range(n):
        for _ in range(100):
            p = gens(rng) if callable(gens) else synth.draw(gens, rng)
            if p.question not in seen:
                break
        seen.add(p.question)
        chosen, good = p.solve(0)
        mode = _weighted(rng, PROBLEM_REJECTIONS) if pool else "slip"
        rejected, bad, mode = _problem_rejection(rng, p, pool, mode)
        if chosen == rejected or good == bad:
            raise AssertionError(
                f"sample builder produced an equal pair for {p.kind}"
            )  # builder bug
        rows.append(
            {
                "prompt": p.question,
                "chosen": chosen,
                "rejected": rejected,
                "id": f"pref:{label}:{p.kind}:{i:05d}",
                "source": label,
                "rejection": mode if pool else ("code_bug" if label == "code" else mode),
            }
        )
    return rows


def _cut(text: str, rng: random.Random) -> str | None:
    """``text`` cut off mid-way at a word boundary (None when too short to cut)."""
    words = text.split(" ")
    if len(words) < 4:
        return None
    return " ".join(words[: rng.randint(max(1, len(words) // 4), len(words) // 2)])


def _pairs_from_docs(rng: random.Random, entries: list[DocEntry], n: int) -> list[dict[str, str]]:
    """Right summary / signature vs. another object's, one cut off, or a non-answer."""
    rows = []
    signed = [e for e in entries if e.signature]
    picks = rng.sample(range(len(entries)), min(n, len(entries)))
    for j, idx in enumerate(picks):
        e = entries[idx]
        mode = _weighted(rng, DOC_REJECTIONS)
        if j % 2 == 0 or not e.signature:
            prompt = QA_TEMPLATES[j % len(QA_TEMPLATES)].format(name=e.name, kind=e.kind)
            chosen = e.summary
            rejected = _cut(e.summary, rng) if mode == "truncated" else None
            if mode == "unhelpful":
                template = UNHELPFUL_TEMPLATES[rng.randrange(len(UNHELPFUL_TEMPLATES))]
                rejected = template.format(name=e.name)
            if rejected is None:
                mode = "other"
                other = entries[(idx + 1 + rng.randrange(len(entries) - 1)) % len(entries)]
                rejected = other.summary
            source, pair_id = "qa", f"pref:qa:{e.name}"
        else:
            prompt = SIG_TEMPLATES[j % len(SIG_TEMPLATES)].format(name=e.name, kind=e.kind)
            chosen = f"```python\n{e.signature}\n```"
            params = e.signature[len(e.name) :]
            rejected = None
            if mode == "truncated" and len(params) > 6:
                rejected = f"```python\n{e.name}{params[: len(params) // 2]}"
            elif mode == "unhelpful":
                rejected = f"Call `{e.name}` with the arguments it needs."
            if rejected is None:
                mode = "other"
                other_sigs = [
                    o.signature for o in signed
                    if o.signature and o.signature[len(o.name) :] != params
                ]
                if not other_sigs:
                    continue
                other = other_sigs[rng.randrange(len(other_sigs))]
                rejected = f"```python\n{e.name + other[other.index('(') :]}\n```"
            source, pair_id = "code", f"pref:code:{e.name}"
        if rejected == chosen:
            continue
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "id": pair_id,
                     "source": source, "rejection": mode})
    return rows


def build_preferences(seed: int = 0, entries: list[DocEntry] | None = None) -> list[dict[str, str]]:
    """Preference records (see the module docstring for the rejection kinds)."""
    entries = collect_doc_entries_isolated() if entries is None else entries
    pool = synth.REASONING + synth.MATH
    seen: set[str] = set()
    rows = _pairs_from_problems(
        random.Random(f"{seed}:pref:reasoning"), synth.REASONING, N_PREF_REASONING, "reasoning",
        pool, seen,
    )
    rows += _pairs_from_problems(
        random.Random(f"{seed}:pref:math"), synth.MATH, N_PREF_MATH, "math", pool, seen
    )
    rows += _pairs_from_problems(
        random.Random(f"{seed}:pref:code"), synth._code_task, N_PREF_CODE_TASKS, "code",
        seen=seen,
    )
    rows += _pairs_from_docs(random.Random(f"{seed}:pref:docs"), entries, N_PREF_DOCS)
    return [r for r in rows if r["chosen"] != r["rejected"]]


def build_prompts(seed: int = 0) -> list[dict[str, str]]:
    """Prompts with verifiable answers (reasoning and math) for PPO/GRPO rewards."""
    rng = random.Random(f"{seed}:prompts")
    rows = []
    for i in range(N_PROMPTS):
        label, gens = ("reasoning", synth.REASONING) if i % 3 else ("math", synth.MATH)
        p = synth.draw(gens, rng)
        _, answer = p.solve(0)
        rows.append(
            {
                "prompt": p.question,
                "answer": answer,
                "id": f"prompt:{label}:{p.kind}:{i:05d}",
                "style_label": label,
            }
        )
    return rows


# ---------------------------------------------------------------- files
def _jsonl_bytes(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            n += bool(line.strip())
    return n


def corpus_manifest(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
    """Lineage record of the data a run used: per file its SHA-256, size and sample count.

    A ``.jsonl`` file counts non-blank lines; a ``.txt`` file or directory counts documents.
    """
    files = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise DataError(f"{p}: corpus file not found")
        targets = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in targets:
            if f.suffix in (".txt", ".md"):
                from core.data.text import iter_file_documents

                count = sum(1 for _ in iter_file_documents(f))  # streamed, never the whole file
            else:
                count = _count_lines(f)
            files.append(
                {
                    "path": str(f.resolve()),
                    "name": f.name,
                    "sha256": file_sha256(f),
                    "bytes": f.stat().st_size,
                    "samples": count,
                }
            )
    return {"files": files, "total_samples": sum(f["samples"] for f in files)}


def build_sample_corpus(out_dir: str | os.PathLike[str], seed: int = 0) -> SampleCorpus:
    """Build styles.jsonl, preferences.jsonl, prompts.jsonl and manifest.json in ``out_dir``.

    Every file is written to a temp file and renamed; the manifest goes last, so a directory with
    a valid manifest is always complete.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create the data directory ({exc.strerror or exc})") from exc
    entries = collect_doc_entries_isolated()
    styles = build_styles(seed, entries)
    prefs = build_preferences(seed, entries)
    prompts = build_prompts(seed)
    blobs = {
        STYLES_FILE: _jsonl_bytes(styles),
        PREFERENCES_FILE: _jsonl_bytes(prefs),
        PROMPTS_FILE: _jsonl_bytes(prompts),
    }
    try:
        for name, data in blobs.items():
            write_bytes_atomically(out / name, data)
        counts = dict(sorted(Counter(r["style_label"] for r in styles).items()))
        manifest = {
            "builder_version": BUILDER_VERSION,
            "seed": seed,
            "python": ".".join(map(str, sys.version_info[:3])),
            "files": {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                for name, data in blobs.items()
            },
            "counts": {"styles": len(styles), "preferences": len(prefs), "prompts": len(prompts)},
            "style_counts": counts,
        }
        write_bytes_atomically(out / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as exc:
        raise DataError(
            f"{out}: cannot write the sample corpus ({exc.strerror or exc}); "
            "free disk space or choose another --out"
        ) from exc
    return _corpus_from_manifest(out, manifest)


def _corpus_from_manifest(out: Path, manifest: dict[str, Any]) -> SampleCorpus:
    c = manifest["counts"]
    return SampleCorpus(
        out,
        out / STYLES_FILE,
        out / PREFERENCES_FILE,
        out / PROMPTS_FILE,
        out / MANIFEST_FILE,
        int(c["styles"]),
        int(c["preferences"]),
        int(c["prompts"]),
        dict(manifest.get("style_counts", {})),
    )


def load_sample_corpus(
    out_dir: str | os.PathLike[str], seed: int | None = None
) -> SampleCorpus | None:
    """The corpus in ``out_dir`` if its manifest is current and every file matches its hash."""
    out = Path(out_dir)
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
        if manifest.get("builder_version") != BUILDER_VERSION:
            return None
        if seed is not None and manifest.get("seed") != seed:
            return None
        for name in (STYLES_FILE, PREFERENCES_FILE, PROMPTS_FILE):
            if file_sha256(out / name) != manifest["files"][name]["sha256"]:
                return None
        return _corpus_from_manifest(out, manifest)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_sample_corpus(
    out_dir: str | os.PathLike[str] | None = None, seed: int = 0
) -> SampleCorpus:
    """The default sample corpus, built on first use and reused while its files are intact."""
    out = Path(out_dir) if out_dir is not None else sample_dir()
    existing = load_sample_corpus(out, seed)
    return existing if existing is not None else build_sample_corpus(out, seed)
