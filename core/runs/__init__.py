"""What a run leaves on disk: checkpoints (``checkpoint``), the event stream (``events``), the
run registry (``registry``: run directories, pid files, summaries) and checkpoint lineage.

It imports nothing of ``infer``, ``evolve`` or ``train``.

Public names are re-exported lazily (``core._lazy``): importing the package imports no module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core._lazy import lazy_exports

_EXPORTS = {
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "LoadedCheckpoint": "checkpoint",
    "verify_checkpoint": "checkpoint",
    "read_manifest": "checkpoint",
    "build_model_from_checkpoint": "checkpoint",
    "load_model_state": "checkpoint",
    "list_checkpoints": "checkpoint",
    "latest_checkpoint": "checkpoint",
    "prune_checkpoints": "checkpoint",
    "config_differences": "checkpoint",
    "EventWriter": "events",
    "EventTail": "events",
    "RunState": "events",
    "ParseProblem": "events",
    "make_event": "events",
    "read_events": "events",
    "fold": "events",
    "describe_event": "events",
    "RunSummary": "registry",
    "default_runs_root": "registry",
    "new_run_dir": "registry",
    "is_run_dir": "registry",
    "list_runs": "registry",
    "latest_run": "registry",
    "summarize_run": "registry",
    "trainer_alive": "registry",
    "LineageNode": "lineage",
    "lineage_tree": "lineage",
    "index_checkpoints": "lineage",
}
__all__ = [
    "EventTail",
    "EventWriter",
    "LineageNode",
    "LoadedCheckpoint",
    "ParseProblem",
    "RunState",
    "RunSummary",
    "build_model_from_checkpoint",
    "config_differences",
    "default_runs_root",
    "describe_event",
    "fold",
    "index_checkpoints",
    "is_run_dir",
    "latest_checkpoint",
    "latest_run",
    "lineage_tree",
    "list_checkpoints",
    "list_runs",
    "load_checkpoint",
    "load_model_state",
    "make_event",
    "new_run_dir",
    "prune_checkpoints",
    "read_events",
    "read_manifest",
    "save_checkpoint",
    "summarize_run",
    "trainer_alive",
    "verify_checkpoint",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from core.runs.checkpoint import (
        LoadedCheckpoint,
        build_model_from_checkpoint,
        config_differences,
        latest_checkpoint,
        list_checkpoints,
        load_checkpoint,
        load_model_state,
        prune_checkpoints,
        read_manifest,
        save_checkpoint,
        verify_checkpoint,
    )
    from core.runs.events import (
        EventTail,
        EventWriter,
        ParseProblem,
        RunState,
        describe_event,
        fold,
        make_event,
        read_events,
    )
    from core.runs.lineage import (
        LineageNode,
        index_checkpoints,
        lineage_tree,
    )
    from core.runs.registry import (
        RunSummary,
        default_runs_root,
        is_run_dir,
        latest_run,
        list_runs,
        new_run_dir,
        summarize_run,
        trainer_alive,
    )
