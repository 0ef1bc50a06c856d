"""The rooms of ``core`` keep their order: a lower room never imports a higher one.

``model`` is the network and knows nothing of running, storing, changing or training it; ``runs``
(what a run leaves on disk) and ``data`` know nothing of inference, model surgery or training; the
shared utilities at the root import no room at all; and ``core`` imports nothing of the packages
built on it. Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "core"
ROOMS = ("model", "data", "runs", "infer", "evolve", "train")
FORBIDDEN = {
    "model": {"infer", "runs", "evolve", "train"},
    "data": {"infer", "evolve", "train"},
    "runs": {"infer", "evolve", "train"},
    "infer": {"evolve", "train"},
    "evolve": {"train"},
    "train": set(),
    "root": set(ROOMS),
}
PROJECT_PACKAGES = ("aeron_tui", "lonpt", "profiles")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, with its line (``from core import x`` gives ``core.x``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "core":
                found += [(node.lineno, f"core.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def room_of(module: str) -> str | None:
    """The room of a ``core`` module name (``root`` for the shared utilities), else None."""
    parts = module.split(".")
    if parts[0] != "core":
        return None
    if len(parts) > 1 and parts[1] in ROOMS:
        return parts[1]
    return "root"


def source_room(path: Path, root: Path = CORE) -> str:
    relative = path.relative_to(root).parts
    return relative[0] if len(relative) > 1 else "root"


def layering_violations(root: Path = CORE) -> list[str]:
    violations = []
    for path in sorted(root.rglob("*.py")):
        src = source_room(path, root)
        for line, module in imported_modules(path):
            target = room_of(module)
            if module.split(".")[0] in PROJECT_PACKAGES:
                violations.append(f"{path.relative_to(root.parent)}:{line} imports {module} "
                                  "(core imports nothing of the project)")
            elif target is not None and target in FORBIDDEN[src]:
                violations.append(f"{path.relative_to(root.parent)}:{line}: core/{src} imports "
                                  f"{module} (room {target} is above it)")
    return violations


def test_every_core_module_lives_in_a_known_room() -> None:
    loose = [p.name for p in CORE.glob("*.py")]
    assert sorted(loose) == ["__init__.py", "_lazy.py", "errors.py", "fileio.py", "paths.py",
                             "typecheck.py"]
    rooms = sorted(p.name for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert rooms == sorted(ROOMS)


def test_lower_rooms_never_import_higher_ones() -> None:
    assert layering_violations() == []


def test_the_guard_catches_a_violation(tmp_path: Path) -> None:
    # A model module that imports the checkpoint writer lazily, and a runs module importing train.
    (tmp_path / "core" / "model").mkdir(parents=True)
    (tmp_path / "core" / "runs").mkdir()
    (tmp_path / "core" / "model" / "bad.py").write_text(
        "def f():\n    from core.runs.checkpoint import save_checkpoint\n")
    (tmp_path / "core" / "runs" / "worse.py").write_text("from core import train\nimport lonpt\n")
    found = layering_violations(tmp_path / "core")
    assert any("core/model/bad.py:2" in v and "core.runs.checkpoint" in v for v in found)
    assert any("core/runs/worse.py:1" in v and "core.train" in v for v in found)
    assert any("imports lonpt" in v for v in found)


@pytest.mark.parametrize("room", ["model", "infer", "runs", "evolve"])
def test_packages_re_export_lazily(room: str) -> None:
    import importlib
    import subprocess
    import sys

    package = importlib.import_module(f"core.{room}")
    for name in package.__all__:
        assert getattr(package, name) is not None, f"core.{room}.{name}"
    # Importing a room imports none of its modules (the CLI stays fast).
    code = (f"import sys, core.{room}; "
            f"print(sorted(m for m in sys.modules if m.startswith('core.{room}.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=CORE.parent)
    assert out.stdout.strip() == "[]"
