"""Checkpoint lineage: which checkpoints a checkpoint was resumed, continued, merged or upgraded
from (``continual.md`` §1). Every manifest records ``version`` and ``parents``; this module
finds the parents on disk and builds the ancestry tree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import CheckpointError

MANIFEST = "manifest.json"


@dataclass
class LineageNode:
    version: str
    path: Path | None
    relation: str | None = None  # how the child was made from this node
    name: str = ""
    global_step: int | None = None
    val_loss: float | None = None
    detail: str = ""
    parents: list[LineageNode] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path) if self.path else None,
            "relation": self.relation,
            "name": self.name,
            "global_step": self.global_step,
            "val_loss": self.val_loss,
            "detail": self.detail,
            "parents": [p.to_dict() for p in self.parents],
        }


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def index_checkpoints(roots: Iterable[Path], max_depth: int = 4) -> dict[str, Path]:
    """version → checkpoint directory, for every manifest under ``roots`` (bounded depth)."""
    found: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            continue
        base_depth = len(root.parts)
        for dirpath, dirnames, filenames in os.walk(root):
            depth = len(Path(dirpath).parts) - base_depth
            dirnames[:] = [d for d in dirnames if not d.startswith(".")] if depth < max_depth else []
            if MANIFEST in filenames:
                manifest = _read_manifest(Path(dirpath))
                if manifest and manifest.get("version"):
                    found.setdefault(str(manifest["version"]), Path(dirpath))
    return found


def default_roots(checkpoint: Path) -> list[Path]:
    """Where parents are looked for: the checkpoint's run and its neighbours, and the runs root."""
    roots = [checkpoint.parent, checkpoint.parent.parent, checkpoint.parent.parent.parent]
    try:
        from core.paths import aeron_home

        roots.append(aeron_home() / "runs")
    except ImportError:  # pragma: no cover
        pass
    unique: list[Path] = []
    for r in roots:
        r = r.resolve()
        if r not in unique and r != Path("/"):
            unique.append(r)
    return unique


def lineage_tree(checkpoint: str | os.PathLike[str], search: Iterable[Path] | None = None) -> LineageNode:
    """The ancestry of ``checkpoint``; parents not found on disk appear with ``path=None``."""
    path = Path(checkpoint).resolve()
    manifest = _read_manifest(path)
    if manifest is None:
        raise CheckpointError(f"{path / MANIFEST}: missing or unreadable; is {path} a checkpoint directory?")
    index = index_checkpoints(list(search) if search is not None else default_roots(path))
    seen: set[str] = set()

    def node(manifest: dict[str, Any], where: Path | None, relation: str | None) -> LineageNode:
        version = str(manifest.get("version", "?"))
        n = LineageNode(
            version=version, path=where, relation=relation, name=str(manifest.get("name", where.name if where else "")),
            global_step=manifest.get("global_step"), val_loss=manifest.get("val_loss"), detail=_detail(manifest),
        )
        if version in seen:  # a cycle would be a corrupt manifest; never loop
            return n
        seen.add(version)
        for link in manifest.get("parents", []):
            pid = str(link.get("id", ""))
            where_p = index.get(pid)
            if where_p is None and link.get("path") and Path(link["path"]).is_dir():
                where_p = Path(link["path"])
            parent_manifest = _read_manifest(where_p) if where_p is not None else None
            if parent_manifest is None:
                n.parents.append(LineageNode(version=pid, path=None, relation=link.get("relation"),
                                             detail="not found on disk"))
            else:
                n.parents.append(node(parent_manifest, where_p, link.get("relation")))
        return n

    return node(manifest, path, None)


def _detail(manifest: dict[str, Any]) -> str:
    if "merge" in manifest:
        return f"merge: {manifest['merge'].get('method')}"
    if "vocab_transfer" in manifest:
        vt = manifest["vocab_transfer"]
        return f"vocabulary {vt.get('old_vocab_size')} → {vt.get('new_vocab_size')}"
    return ""
