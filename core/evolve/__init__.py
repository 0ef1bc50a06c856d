"""Changing trained models: merging (soups, task arithmetic, TIES, DARE, SLERP, Fisher),
vocabulary transfer, retention measures and the shared held-out evaluation.

Public names are re-exported lazily (``core._lazy``): importing the package imports no module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core._lazy import lazy_exports

_EXPORTS = {
    "MergeError": "merge",
    "MergeParams": "merge",
    "MergeReport": "merge",
    "merge_checkpoints": "merge",
    "merge_state_dicts": "merge",
    "greedy_soup_checkpoints": "merge",
    "EnsemblePolicy": "merge",
    "VocabTransferReport": "vocab_transfer",
    "upgrade_checkpoint": "vocab_transfer",
    "compare_upgrade": "vocab_transfer",
    "transfer_embedding": "vocab_transfer",
    "VocabularyRetention": "retention",
    "vocabulary_retention": "retention",
    "representation_drift": "retention",
    "retained_fraction": "retention",
    "EvalResult": "evaluation",
    "evaluate_pairs": "evaluation",
    "evaluation_subset": "evaluation",
}
__all__ = [
    "EnsemblePolicy",
    "EvalResult",
    "MergeError",
    "MergeParams",
    "MergeReport",
    "VocabTransferReport",
    "VocabularyRetention",
    "compare_upgrade",
    "evaluate_pairs",
    "evaluation_subset",
    "greedy_soup_checkpoints",
    "merge_checkpoints",
    "merge_state_dicts",
    "representation_drift",
    "retained_fraction",
    "transfer_embedding",
    "upgrade_checkpoint",
    "vocabulary_retention",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from core.evolve.evaluation import (
        EvalResult,
        evaluate_pairs,
        evaluation_subset,
    )
    from core.evolve.merge import (
        EnsemblePolicy,
        MergeError,
        MergeParams,
        MergeReport,
        greedy_soup_checkpoints,
        merge_checkpoints,
        merge_state_dicts,
    )
    from core.evolve.retention import (
        VocabularyRetention,
        representation_drift,
        retained_fraction,
        vocabulary_retention,
    )
    from core.evolve.vocab_transfer import (
        VocabTransferReport,
        compare_upgrade,
        transfer_embedding,
        upgrade_checkpoint,
    )
