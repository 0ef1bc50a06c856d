"""Running a trained model: KV-cache generation, best-of-N, speculative and ensemble decoding,
the paged KV cache, MCTS generation, ONNX export and the model smoke test.

Public names are re-exported lazily (``core._lazy``): importing the package imports no module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core._lazy import lazy_exports

_EXPORTS = {
    "GenerationConfig": "generation",
    "GenerationOutput": "generation",
    "Generation": "generation",
    "generate": "generation",
    "generate_ids": "generation",
    "TextStreamer": "generation",
    "check_tokenizer_fits": "generation",
    "resolve_checkpoint": "inference",
    "load_policy": "inference",
    "reward_scores": "inference",
    "reward_scores_with_std": "inference",
    "BestOfNSampler": "inference",
    "BestOfNResult": "inference",
    "SpeculativeDecoder": "inference",
    "SpeculativeOutput": "inference",
    "PagedKVCache": "paged_kv",
    "PagedDecoder": "paged_kv",
    "PagedCacheExhausted": "paged_kv",
    "MCTS": "mcts",
    "MCTSGenerator": "mcts",
    "MCTSResult": "mcts",
    "ExportError": "export",
    "export_model_to_onnx": "export",
    "verify_onnx_export": "export",
    "run_smoke": "smoke",
}
__all__ = [
    "BestOfNResult",
    "BestOfNSampler",
    "ExportError",
    "Generation",
    "GenerationConfig",
    "GenerationOutput",
    "MCTS",
    "MCTSGenerator",
    "MCTSResult",
    "PagedCacheExhausted",
    "PagedDecoder",
    "PagedKVCache",
    "SpeculativeDecoder",
    "SpeculativeOutput",
    "TextStreamer",
    "check_tokenizer_fits",
    "export_model_to_onnx",
    "generate",
    "generate_ids",
    "load_policy",
    "resolve_checkpoint",
    "reward_scores",
    "reward_scores_with_std",
    "run_smoke",
    "verify_onnx_export",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from core.infer.export import (
        ExportError,
        export_model_to_onnx,
        verify_onnx_export,
    )
    from core.infer.generation import (
        Generation,
        GenerationConfig,
        GenerationOutput,
        TextStreamer,
        check_tokenizer_fits,
        generate,
        generate_ids,
    )
    from core.infer.inference import (
        BestOfNResult,
        BestOfNSampler,
        SpeculativeDecoder,
        SpeculativeOutput,
        load_policy,
        resolve_checkpoint,
        reward_scores,
        reward_scores_with_std,
    )
    from core.infer.mcts import (
        MCTS,
        MCTSGenerator,
        MCTSResult,
    )
    from core.infer.paged_kv import (
        PagedCacheExhausted,
        PagedDecoder,
        PagedKVCache,
    )
    from core.infer.smoke import (
        run_smoke,
    )
