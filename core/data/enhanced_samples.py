"""Bundled corpora whose answers need the model's extra inputs (issue 17), built locally.

``facts``
    Questions about invented places ("What is the capital of Vobrun?") whose answer is only in
    the record's ``triples`` — every fact about the place (capital, currency, language, ruler,
    flag colour) — never in the text. Places are split whole between training and validation
    (every question about a validation place is in validation), so validation asks about places
    the model never saw: without the knowledge graph the best it can do is the prior over
    answers; with it, it can read the answer from the triple whose relation the question names.
``captions``
    Procedurally drawn 64×64 PNG images (1–3 squares, circles or triangles of one of four
    colours, on the left or the right half) with the caption as the reply and a fixed question
    ("Describe the image."), so the caption is only learnable from the ``image``.

Both are deterministic for a seed and need nothing but numpy and Pillow. ``aeron-tui data
build-sample --kind facts|captions`` writes them (default ``$AERON_TUI_HOME/data/<kind>``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.styles import hash_is_validation
from core.errors import DataError
from core.fileio import write_bytes_atomically
from core.paths import default_data_dir

ENHANCED_BUILDER_VERSION = 2
KINDS = ("facts", "captions")
STYLES_FILE = "styles.jsonl"
MANIFEST_FILE = "manifest.json"

N_PLACES = 600
RELATIONS: dict[str, tuple[str, ...]] = {
    # relation -> question templates ({} = the place)
    "capital": ("What is the capital of {}?", "Which city is the capital of {}?"),
    "currency": ("What currency is used in {}?", "What do people pay with in {}?"),
    "language": ("What language is spoken in {}?", "Which language do people speak in {}?"),
    "ruler": ("Who rules {}?", "Who is the ruler of {}?"),
    "flag_colour": ("What colour is the flag of {}?", "Which colour is on the flag of {}?"),
}
N_VALUES = {"capital": 40, "currency": 16, "language": 16, "ruler": 40}
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")

SHAPES = ("square", "circle", "triangle")
SHAPE_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230),
                 "yellow": (235, 210, 40)}
SIDES = ("left", "right")
COUNT_WORDS = ("one", "two", "three")
N_IMAGES = 2400
IMAGE_SIZE = 64


@dataclass(frozen=True)
class EnhancedCorpus:
    """A built corpus: its directory, styles.jsonl and record count."""

    kind: str
    root: Path
    styles: Path
    records: int


def enhanced_dir(kind: str) -> Path:
    """Default location of a bundled corpus: ``$AERON_TUI_HOME/data/<kind>``."""
    return default_data_dir() / kind


def _name(rng: random.Random, syllables: int) -> str:
    onsets = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br",
              "dr", "gl", "kr", "pl", "st", "tr", "vl", "zh")
    vowels = ("a", "e", "i", "o", "u", "ae", "ou", "y")
    codas = ("", "", "n", "r", "l", "s", "th", "x", "m")
    word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
    return (word + rng.choice(codas)).capitalize()


def _unique_names(rng: random.Random, n: int, taken: set[str], syllables: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = _name(rng, syllables)
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _turn_id(base: str, validation: bool) -> str:
    """A unique turn id that the split rule puts on the wanted side (so a place's questions all
    land in one split)."""
    k = 0
    while hash_is_validation(f"{base}#{k}") != validation:
        k += 1
    return f"{base}#{k}"


def build_facts(seed: int = 0) -> list[dict[str, Any]]:
    """The facts records (see the module docstring)."""
    rng = random.Random(f"aeron-facts:{seed}")
    taken: set[str] = set()
    values = {rel: _unique_names(rng, n, taken, 2) for rel, n in N_VALUES.items()}
    values["ruler"] = [f"{v} {_name(rng, 2)}" for v in values["ruler"]]
    values["flag_colour"] = list(COLOURS)
    places = _unique_names(rng, N_PLACES, taken, 3)
    rows: list[dict[str, Any]] = []
    for place in places:
        facts = {rel: rng.choice(values[rel]) for rel in RELATIONS}
        triples = [[place, rel, facts[rel]] for rel in RELATIONS]
        held_out = hash_is_validation(f"place:{place}")
        for rel, templates in RELATIONS.items():
            rows.append({
                "provider": "aeron-facts",
                "style_label": "facts",
                "user_input": rng.choice(templates).format(place),
                "assistant_reply": facts[rel],
                "turn_id": _turn_id(f"{place}:{rel}", held_out),
                "triples": triples,
            })
    rng.shuffle(rows)
    return rows


def _draw(rng: random.Random, count: int, shape: str, colour: str, side: str) -> Any:
    """A 64×64 RGB image (numpy uint8) with ``count`` shapes in one half, on a dark background
    (the shapes, not the background, carry the signal)."""
    import numpy as np

    img = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 20, dtype=np.uint8)
    rgb = np.array(SHAPE_COLOURS[colour], dtype=np.uint8)
    size = 16
    x0 = 2 if side == "left" else IMAGE_SIZE // 2 + 2
    rows = rng.sample(range(3), count)  # one shape per row band of the half
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    masks = {
        "square": np.ones((size, size), dtype=bool),
        "circle": (yy - c) ** 2 + (xx - c) ** 2 <= (size / 2) ** 2,
        "triangle": np.abs(xx - c) <= yy / 2 + 0.5,
    }
    for band in rows:
        x = x0 + rng.randint(0, IMAGE_SIZE // 2 - size - 4)
        y = 1 + band * 21 + rng.randint(0, 3)
        region = img[y : y + size, x : x + size]
        region[masks[shape]] = rgb
    noise = np.array([rng.randint(-6, 6) for _ in range(3)], dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def caption_of(count: int, shape: str, colour: str, side: str) -> str:
    noun = shape + ("s" if count > 1 else "")
    return f"{COUNT_WORDS[count - 1]} {colour} {noun} on the {side}"


def build_captions(out: Path, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Caption records and their PNG files (``images/NNNNN.png`` → bytes)."""
    import io

    from PIL import Image

    rng = random.Random(f"aeron-captions:{seed}")
    rows: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    for i in range(N_IMAGES):
        count, shape = rng.randint(1, 3), rng.choice(SHAPES)
        colour, side = rng.choice(tuple(SHAPE_COLOURS)), rng.choice(SIDES)
        buf = io.BytesIO()
        Image.fromarray(_draw(rng, count, shape, colour, side), "RGB").save(buf, format="PNG")
        name = f"images/{i:05d}.png"
        files[name] = buf.getvalue()
        rows.append({
            "provider": "aeron-captions",
            "style_label": "caption",
            "user_input": "Describe the image.",
            "assistant_reply": caption_of(count, shape, colour, side),
            "turn_id": f"img{i:05d}",
            "image": name,
        })
    return rows, files


def build_enhanced_corpus(kind: str, out_dir: Path | None = None, seed: int = 0) -> EnhancedCorpus:
    """Write the ``facts`` or ``captions`` corpus (styles.jsonl, images, manifest last)."""
    if kind not in KINDS:
        raise DataError(f"unknown bundled corpus {kind!r}; choose one of {', '.join(KINDS)}")
    out = Path(out_dir) if out_dir is not None else enhanced_dir(kind)
    builders: dict[str, Callable[[], tuple[list[dict[str, Any]], dict[str, bytes]]]] = {
        "facts": lambda: (build_facts(seed), {}),
        "captions": lambda: build_captions(out, seed),
    }
    rows, files = builders[kind]()
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomically(out / name, data)
        write_bytes_atomically(out / STYLES_FILE, body)
        manifest = {"builder": kind, "builder_version": ENHANCED_BUILDER_VERSION, "seed": seed,
                    "records": len(rows), "images": len(files),
                    "styles_sha256": hashlib.sha256(body).hexdigest()}
        write_bytes_atomically(out / MANIFEST_FILE,
                               (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as exc:
        raise DataError(f"{out}: cannot write the {kind} corpus ({exc.strerror or exc}); "
                        "free disk space or choose another --out") from exc
    return EnhancedCorpus(kind, out, out / STYLES_FILE, len(rows))


def ensure_enhanced_corpus(kind: str, out_dir: Path | None = None, seed: int = 0) -> EnhancedCorpus:
    """The corpus in ``out_dir`` (default location) if current, else built now."""
    out = Path(out_dir) if out_dir is not None else enhanced_dir(kind)
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
        body = (out / STYLES_FILE).read_bytes()
        if (manifest.get("builder") == kind and manifest.get("seed") == seed
                and manifest.get("builder_version") == ENHANCED_BUILDER_VERSION
                and hashlib.sha256(body).hexdigest() == manifest.get("styles_sha256")):
            return EnhancedCorpus(kind, out, out / STYLES_FILE, int(manifest["records"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return build_enhanced_corpus(kind, out, seed)
