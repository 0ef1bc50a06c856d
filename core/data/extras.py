"""The optional inputs a record may carry beside its text (issue 17), for every data format.

A record (a styles.jsonl line, or the same keys in any other format's record) may have:

``"triples": [["Python", "created_by", "Guido van Rossum"], ...]``
    Knowledge-graph facts (subject, relation, object) given to the model's knowledge-graph
    attention, not in the text.
``"entities": ["Python", ...]``
    Entities the record is about (read by the same attention, one item per entity).
``"image": "images/cat.png"``
    A PNG/JPEG path, relative to the data file's directory (absolute paths are kept). It is
    resolved here and must exist; it is decoded (Pillow) when the batches are built.
``"task": "name"``
    A task name for the continual-learning module's task conditioning.

:func:`parse_record_extras` validates these keys and returns them as keyword arguments of the
canonical record (:class:`core.data.styles.StyleSample`); any reader calls it once per record.
Errors are :class:`DataError` naming ``file:line`` and the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import DataError

EXTRA_FIELDS = ("triples", "entities", "image", "task")

Triple = tuple[str, str, str]


def _where(source: str | os.PathLike[str], line: int) -> str:
    return f"{source}:{line}" if line else str(source)


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def parse_triples(value: Any, where: str) -> tuple[Triple, ...]:
    """``[[subject, relation, object], ...]`` → a tuple of string triples (stripped)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DataError(
            f"{where}: field 'triples' must be a list of [subject, relation, object] lists, "
            f"got {type(value).__name__}"
        )
    out: list[Triple] = []
    for i, item in enumerate(value):
        if (not isinstance(item, (list, tuple)) or len(item) != 3
                or not all(_nonempty_str(x) for x in item)):
            raise DataError(
                f"{where}: field 'triples' item {i} must be [subject, relation, object] with "
                f"three non-empty strings, got {item!r}"
            )
        out.append((item[0].strip(), item[1].strip(), item[2].strip()))
    return tuple(out)


def parse_entities(value: Any, where: str) -> tuple[str, ...]:
    """``["name", ...]`` → a tuple of stripped entity names."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise DataError(
            f"{where}: field 'entities' must be a list of strings, got {type(value).__name__}"
        )
    for i, item in enumerate(value):
        if not _nonempty_str(item):
            raise DataError(
                f"{where}: field 'entities' item {i} must be a non-empty string, got {item!r}"
            )
    return tuple(x.strip() for x in value)


def resolve_image_path(value: Any, source: str | os.PathLike[str], where: str) -> str | None:
    """The image path resolved against the data file's directory; it must be a file."""
    if value is None:
        return None
    if not _nonempty_str(value):
        raise DataError(
            f"{where}: field 'image' must be a path string (relative to the data file), "
            f"got {value!r}"
        )
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = Path(source).resolve().parent / p
    if not p.is_file():
        raise DataError(
            f"{where}: image {value!r} not found (looked for {p}); paths are relative to the "
            "data file — fix the path or remove the 'image' field"
        )
    return str(p)


def parse_task(value: Any, where: str) -> str | None:
    """A non-empty task name, or None."""
    if value is None:
        return None
    if not _nonempty_str(value):
        raise DataError(f"{where}: field 'task' must be a non-empty string, got {value!r}")
    return value.strip()


def parse_record_extras(
    record: Mapping[str, Any], source: str | os.PathLike[str], line: int
) -> dict[str, Any]:
    """The optional ``triples``/``entities``/``image``/``task`` of one raw record.

    Returns ``{"triples": tuple, "entities": tuple, "image": str | None, "task": str | None}``
    (absent keys give the empty values), ready to pass as keyword arguments to
    :class:`core.data.styles.StyleSample`. ``source`` is the data file (image paths are relative
    to its directory), ``line`` the 1-based line/row number used in error messages (0: none).
    """
    where = _where(source, line)
    return {
        "triples": parse_triples(record.get("triples"), where),
        "entities": parse_entities(record.get("entities"), where),
        "image": resolve_image_path(record.get("image"), source, where),
        "task": parse_task(record.get("task"), where),
    }


def record_entities(triples: tuple[Triple, ...], entities: tuple[str, ...]) -> list[str]:
    """Every entity name a record mentions (explicit entities, then subjects and objects),
    in first-seen order without repeats."""
    seen: dict[str, None] = {}
    for name in entities:
        seen.setdefault(name, None)
    for s, _, o in triples:
        seen.setdefault(s, None)
        seen.setdefault(o, None)
    return list(seen)


# ------------------------------------------------------------------------------------------
# The run's input vocabulary (saved in a checkpoint beside the tokenizer)
# ------------------------------------------------------------------------------------------

UNKNOWN = "<unk>"
INPUT_VOCAB_FILE = "input_vocab.json"
INPUT_VOCAB_VERSION = 1


@dataclass
class InputVocab:
    """Entity, relation and task names → ids for the model's knowledge-graph and task inputs.

    Entity and relation id 0 is ``<unk>`` (a name the run never saw); tasks have no unknown
    id — an unknown task is an error that lists the known ones. ``default_task`` is what a record
    without a ``task`` (and ``generate`` without ``--task``) uses when the model has tasks.
    """

    entities: list[str] = field(default_factory=lambda: [UNKNOWN])
    relations: list[str] = field(default_factory=lambda: [UNKNOWN])
    tasks: list[str] = field(default_factory=list)
    default_task: str | None = None

    def __post_init__(self) -> None:
        self._entity_ids = {n: i for i, n in enumerate(self.entities)}
        self._relation_ids = {n: i for i, n in enumerate(self.relations)}
        self._task_ids = {n: i for i, n in enumerate(self.tasks)}

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_samples(cls, samples: Iterable[Any]) -> InputVocab:
        """Every entity, relation and task of ``samples`` in first-seen order."""
        return cls().extended(samples)

    def extended(self, samples: Iterable[Any], default_task: str | None = None) -> InputVocab:
        """A copy with the names of ``samples`` appended (existing ids never move)."""
        entities, relations, tasks = list(self.entities), list(self.relations), list(self.tasks)
        seen_e, seen_r, seen_t = set(entities), set(relations), set(tasks)
        for s in samples:
            for name in record_entities(s.triples, s.entities):
                if name not in seen_e:
                    seen_e.add(name)
                    entities.append(name)
            for _, rel, _ in s.triples:
                if rel not in seen_r:
                    seen_r.add(rel)
                    relations.append(rel)
            if s.task is not None and s.task not in seen_t:
                seen_t.add(s.task)
                tasks.append(s.task)
        if default_task is not None and default_task not in seen_t:
            tasks.append(default_task)
        default = default_task or self.default_task or (tasks[0] if tasks else None)
        return InputVocab(entities, relations, tasks, default)

    # -- sizes ------------------------------------------------------------------------------
    @property
    def has_knowledge_graph(self) -> bool:
        return len(self.entities) > 1

    def fed_inputs(self, images: bool) -> Any:
        """The :class:`core.model.modules.FedInputs` this vocabulary (and ``images``) implies."""
        from core.model.modules import FedInputs

        kg = self.has_knowledge_graph
        return FedInputs(
            num_entities=len(self.entities) if kg else 0,
            num_relations=len(self.relations) if kg else 0,
            num_tasks=len(self.tasks),
            images=images,
        )

    # -- lookups ----------------------------------------------------------------------------
    def entity_id(self, name: str) -> int:
        return self._entity_ids.get(name, 0)

    def relation_id(self, name: str) -> int:
        return self._relation_ids.get(name, 0)

    def task_id(self, name: str) -> int:
        """The id of task ``name``; DataError listing the known tasks when there is none."""
        if name not in self._task_ids:
            known = ", ".join(self.tasks) or "none (the model was trained without tasks)"
            raise DataError(f"unknown task {name!r}; this model knows: {known}")
        return self._task_ids[name]

    def unknown_names(self, triples: Iterable[Triple], entities: Iterable[str]) -> list[str]:
        """Entity and relation names this vocabulary does not know (they map to ``<unk>``)."""
        out = [n for n in record_entities(tuple(triples), tuple(entities))
               if n not in self._entity_ids]
        out += [r for _, r, _ in triples if r not in self._relation_ids]
        return list(dict.fromkeys(out))

    def encode(self, sample: Any, where: str = "") -> SampleInputs | None:
        """The id form of a record's extra inputs (None when it has none and the model has no
        tasks). A record without a task gets :attr:`default_task` when the model has tasks."""
        task = sample.task if sample.task is not None else self.default_task
        if not (sample.triples or sample.entities or sample.image or task is not None):
            return None
        return SampleInputs(
            entity_ids=tuple(self.entity_id(n) for n in sample.entities),
            triple_ids=tuple((self.entity_id(s), self.relation_id(r), self.entity_id(o))
                             for s, r, o in sample.triples),
            image=sample.image,
            task_id=self.task_id(task) if task is not None else None,
            where=where,
        )

    # -- (de)serialise ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": INPUT_VOCAB_VERSION, "entities": list(self.entities),
                "relations": list(self.relations), "tasks": list(self.tasks),
                "default_task": self.default_task}

    @classmethod
    def from_dict(cls, data: Any, source: str = INPUT_VOCAB_FILE) -> InputVocab:
        """Validate the JSON form; DataError naming ``source`` and the key."""
        if not isinstance(data, dict):
            raise DataError(f"{source}: expected a JSON object")
        out: dict[str, Any] = {}
        for key in ("entities", "relations", "tasks"):
            value = data.get(key, [] if key == "tasks" else [UNKNOWN])
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise DataError(f"{source}: '{key}' must be a list of strings")
            if len(set(value)) != len(value):
                raise DataError(f"{source}: '{key}' has repeated names")
            out[key] = value
        for key in ("entities", "relations"):
            if not out[key] or out[key][0] != UNKNOWN:
                raise DataError(f"{source}: '{key}' must start with {UNKNOWN!r}")
        default = data.get("default_task")
        if default is not None and default not in out["tasks"]:
            raise DataError(f"{source}: default_task {default!r} is not one of its tasks")
        return cls(out["entities"], out["relations"], out["tasks"], default)


@dataclass(frozen=True)
class SampleInputs:
    """One encoded record's extra model inputs (ids; the image stays a path until collation).

    ``where`` is ``file:line`` of the record, for errors about its image.
    """

    entity_ids: tuple[int, ...] = ()
    triple_ids: tuple[tuple[int, int, int], ...] = ()
    image: str | None = None
    task_id: int | None = None
    where: str = ""


# ------------------------------------------------------------------------------------------
# Coverage (`aeron-tui data stats`) and what a corpus feeds
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputCoverage:
    """How many records carry each optional input, and the vocabulary they make."""

    records: int = 0
    with_triples: int = 0
    with_entities: int = 0
    with_image: int = 0
    with_task: int = 0
    triples: int = 0
    entities: int = 0  # distinct entity names
    relations: int = 0  # distinct relation names
    tasks: tuple[str, ...] = ()

    @property
    def feeds_knowledge_graph(self) -> bool:
        return self.with_triples > 0 or self.with_entities > 0

    @property
    def feeds_images(self) -> bool:
        return self.with_image > 0

    @property
    def feeds_tasks(self) -> bool:
        return self.with_task > 0

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "with_triples": self.with_triples,
                "with_entities": self.with_entities, "with_image": self.with_image,
                "with_task": self.with_task, "triples": self.triples, "entities": self.entities,
                "relations": self.relations, "tasks": list(self.tasks)}

    def fed_inputs(self) -> Any:
        """:class:`core.model.modules.FedInputs` of a vocabulary built from these records."""
        from core.model.modules import FedInputs

        kg = self.feeds_knowledge_graph
        return FedInputs(num_entities=self.entities + 1 if kg else 0,
                         num_relations=self.relations + 1 if kg else 0,
                         num_tasks=len(self.tasks), images=self.feeds_images)


def input_coverage(samples: Iterable[Any]) -> InputCoverage:
    """Count the optional inputs of ``samples`` (records of any format)."""
    n = with_t = with_e = with_i = with_k = n_triples = 0
    ents: set[str] = set()
    rels: set[str] = set()
    tasks: dict[str, None] = {}
    for s in samples:
        n += 1
        with_t += bool(s.triples)
        with_e += bool(s.entities)
        with_i += s.image is not None
        with_k += s.task is not None
        n_triples += len(s.triples)
        ents.update(record_entities(s.triples, s.entities))
        rels.update(r for _, r, _ in s.triples)
        if s.task is not None:
            tasks.setdefault(s.task, None)
    return InputCoverage(n, with_t, with_e, with_i, with_k, n_triples, len(ents), len(rels),
                         tuple(tasks))


def scan_data_inputs(path: str | os.PathLike[str]) -> InputCoverage:
    """Coverage of the corpus at ``path`` without tokenizing it: supervised records of any
    format (``core.data.formats``) are streamed (and validated); plain text, preference and
    prompt data carry no optional inputs."""
    from core.data.formats import Item, iter_items, open_source

    source = open_source(path)
    if source.kind != "sft":
        return InputCoverage()
    return input_coverage(r for item in iter_items(source) if isinstance(item, Item)
                          for r in item.records)


# ------------------------------------------------------------------------------------------
# Images (Pillow) and batching
# ------------------------------------------------------------------------------------------

PILLOW_HINT = "reading images needs Pillow: pip install pillow"
_IMAGE_CACHE_BYTES = 256 * 1024 * 1024


class _ImageCache:
    """Decoded images (uint8 tensors) by (path, size, channels), least recently used dropped
    beyond a byte budget: an epoch over a small image corpus decodes each file once."""

    def __init__(self, budget: int) -> None:
        from collections import OrderedDict

        self.budget = budget
        self.used = 0
        self.entries: OrderedDict[tuple[str, int, int], Any] = OrderedDict()

    def get(self, key: tuple[str, int, int]) -> Any:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: tuple[str, int, int], value: Any) -> None:
        self.entries[key] = value
        self.used += value.numel()
        while self.used > self.budget and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.used -= old.numel()


_CACHE = _ImageCache(_IMAGE_CACHE_BYTES)


def load_image(path: str, size: int, channels: int = 3, where: str = "") -> Any:
    """An image as a float tensor ``(channels, size, size)`` in [0, 1] (RGB, or grey for one
    channel), resized with bicubic filtering. A missing, unreadable or corrupt file is a
    DataError naming ``where`` (the record's ``file:line``) and the path."""
    import torch

    key = (path, int(size), int(channels))
    cached = _CACHE.get(key)
    if cached is None:
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError:  # pragma: no cover - Pillow is a dependency; broken installs only
            raise DataError(f"{where or path}: {PILLOW_HINT}") from None
        import numpy as np

        prefix = f"{where}: " if where else ""
        try:
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB")
                img = img.resize((size, size), Image.Resampling.BICUBIC)
                array = np.asarray(img, dtype=np.uint8).copy()
        except FileNotFoundError:
            raise DataError(f"{prefix}image {path} not found; fix the path or remove the "
                            "'image' field") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise DataError(
                f"{prefix}image {path} cannot be read as PNG/JPEG ({exc.__class__.__name__}: "
                f"{str(exc)[:120]}); replace the file or remove the 'image' field"
            ) from None
        tensor = torch.from_numpy(array)
        tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
        cached = tensor.contiguous()
        _CACHE.put(key, cached)
    return cached.float().div_(255.0)


def check_images(inputs: Iterable[SampleInputs | None], size: int, channels: int = 3) -> int:
    """Decode every distinct image once (at run start), so a corrupt file fails before the
    first step with its record's ``file:line``; returns how many images were checked."""
    seen: set[str] = set()
    for item in inputs:
        if item is None or item.image is None or item.image in seen:
            continue
        seen.add(item.image)
        load_image(item.image, size, channels, item.where)
    return len(seen)


def image_shape_of(config: Any) -> tuple[int, int, int] | None:
    """``(channels, size, size)`` of the images a model reads, or None without a vision path."""
    if not getattr(config, "enable_multimodal", False):
        return None
    size = int(config.effective_image_size)
    return (int(config.num_channels), size, size)


def collate_inputs(
    inputs: Sequence[SampleInputs | None], image_shape: tuple[int, int, int] | None = None
) -> dict[str, Any]:
    """Batch tensors of the extra inputs (only the keys some row has):

    ``input_entities (B, E)`` (−1 padding), ``kg_triples (B, T, 3)`` with ``kg_triple_mask
    (B, T)``, ``task_id (B,)``, and ``vision_inputs (B, C, H, W)`` whenever ``image_shape`` is
    given — a row without an image gets a blank (zero) image, so every batch of a vision model
    has the same form. :func:`model_inputs` turns them into the model's keyword arguments.
    """
    import torch

    rows = [x or SampleInputs() for x in inputs]
    b = len(rows)
    out: dict[str, Any] = {}
    e = max((len(r.entity_ids) for r in rows), default=0)
    if e:
        ents = torch.full((b, e), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            if r.entity_ids:
                ents[i, : len(r.entity_ids)] = torch.tensor(r.entity_ids, dtype=torch.long)
        out["input_entities"] = ents
    t = max((len(r.triple_ids) for r in rows), default=0)
    if t:
        triples = torch.zeros((b, t, 3), dtype=torch.long)
        mask = torch.zeros((b, t), dtype=torch.bool)
        for i, r in enumerate(rows):
            if r.triple_ids:
                triples[i, : len(r.triple_ids)] = torch.tensor(r.triple_ids, dtype=torch.long)
                mask[i, : len(r.triple_ids)] = True
        out["kg_triples"], out["kg_triple_mask"] = triples, mask
    if any(r.task_id is not None for r in rows):
        missing = [r.where or str(i) for i, r in enumerate(rows) if r.task_id is None]
        if missing:
            raise DataError(f"{missing[0]}: the record has no task but others in its batch do")
        out["task_id"] = torch.tensor([r.task_id for r in rows], dtype=torch.long)
    if image_shape is not None:
        c, h, w = image_shape
        images = torch.zeros((b, c, h, w), dtype=torch.float32)
        for i, r in enumerate(rows):
            if r.image is not None:
                images[i] = load_image(r.image, h, c, r.where)
        out["vision_inputs"] = images
    elif any(r.image is not None for r in rows):
        raise DataError(
            f"{next(r.where for r in rows if r.image is not None)}: the record has an image but "
            "this model has no vision path (model.enable_multimodal is off)"
        )
    return out


EXTRA_BATCH_KEYS = ("input_entities", "kg_triples", "kg_triple_mask", "task_id", "vision_inputs")


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The model's keyword arguments for the extra inputs a collated batch carries."""
    out: dict[str, Any] = {}
    if "input_entities" in batch:
        out["input_entities"] = batch["input_entities"]
    if "kg_triples" in batch:
        kg = {"triples": batch["kg_triples"]}
        if "kg_triple_mask" in batch:
            kg["triple_mask"] = batch["kg_triple_mask"]
        out["knowledge_graph"] = kg
    if "task_id" in batch:
        out["task_id"] = batch["task_id"]
    if "vision_inputs" in batch:
        out["vision_inputs"] = batch["vision_inputs"]
    return out


def forward_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A collated batch as keyword arguments of the model's ``forward``: the extra-input keys
    become ``input_entities``/``knowledge_graph``/``task_id``/``vision_inputs``."""
    out = {k: v for k, v in batch.items() if k not in EXTRA_BATCH_KEYS}
    out.update(model_inputs(batch))
    return out
