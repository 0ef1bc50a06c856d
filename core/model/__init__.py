"""The network and its parts: configuration, layers, the backbone, the reasoning engine and the
enhancement stages (memory, knowledge graph, uncertainty, multimodal, continual conditioning,
active learning), numeric precision and ``torch.compile`` per layer.

Lowest room of ``core``: it imports nothing of ``infer``, ``runs``, ``evolve`` or ``train``.

Public names are re-exported lazily (``core._lazy``): importing the package imports no module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core._lazy import lazy_exports

_EXPORTS = {
    "NeuralNetConfig": "config",
    "TransformerNeuralNetBackbone": "model",
    "AeronEncoder": "model",
    "AeronDecoder": "model",
    "EncoderOutput": "model",
    "EnhancementInputs": "model",
    "EnhancementResult": "model",
    "count_parameters": "model",
    "backbone_parameter_count": "model",
    "is_out_of_memory": "model",
    "AeronRMSNorm": "layers",
    "RotaryEmbedding": "layers",
    "GroupedQueryAttention": "layers",
    "SwiGLU": "layers",
    "EncoderLayer": "layers",
    "DecoderLayer": "layers",
    "AttentionMask": "layers",
    "attention": "layers",
    "set_attention_backend": "layers",
    "masked_mean_pool": "layers",
    "AeronReasoningEngine": "reasoning",
    "AeronTreeOfThoughtProcessor": "reasoning",
    "AeronInternalScratchpad": "reasoning",
    "ReasoningOutput": "reasoning",
    "NeuralMemoryNetwork": "memory",
    "KnowledgeGraphAttention": "knowledge_graph",
    "UncertaintyQuantification": "uncertainty",
    "VisionPatchEmbedding": "multimodal",
    "MultimodalFusion": "multimodal",
    "ContinualLearningModule": "continual",
    "ElasticWeightConsolidation": "continual",
    "ActiveLearningManager": "active_learning",
    "default_precision": "precision",
    "autocast_dtype": "precision",
    "compile_model": "compile",
    "compiled_layers": "compile",
}
__all__ = [
    "ActiveLearningManager",
    "AeronDecoder",
    "AeronEncoder",
    "AeronInternalScratchpad",
    "AeronRMSNorm",
    "AeronReasoningEngine",
    "AeronTreeOfThoughtProcessor",
    "AttentionMask",
    "ContinualLearningModule",
    "DecoderLayer",
    "ElasticWeightConsolidation",
    "EncoderLayer",
    "EncoderOutput",
    "EnhancementInputs",
    "EnhancementResult",
    "GroupedQueryAttention",
    "KnowledgeGraphAttention",
    "MultimodalFusion",
    "NeuralMemoryNetwork",
    "NeuralNetConfig",
    "ReasoningOutput",
    "RotaryEmbedding",
    "SwiGLU",
    "TransformerNeuralNetBackbone",
    "UncertaintyQuantification",
    "VisionPatchEmbedding",
    "attention",
    "autocast_dtype",
    "backbone_parameter_count",
    "compile_model",
    "compiled_layers",
    "count_parameters",
    "default_precision",
    "is_out_of_memory",
    "masked_mean_pool",
    "set_attention_backend",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from core.model.active_learning import (
        ActiveLearningManager,
    )
    from core.model.compile import (
        compile_model,
        compiled_layers,
    )
    from core.model.config import (
        NeuralNetConfig,
    )
    from core.model.continual import (
        ContinualLearningModule,
        ElasticWeightConsolidation,
    )
    from core.model.knowledge_graph import (
        KnowledgeGraphAttention,
    )
    from core.model.layers import (
        AeronRMSNorm,
        AttentionMask,
        DecoderLayer,
        EncoderLayer,
        GroupedQueryAttention,
        RotaryEmbedding,
        SwiGLU,
        attention,
        masked_mean_pool,
        set_attention_backend,
    )
    from core.model.memory import (
        NeuralMemoryNetwork,
    )
    from core.model.model import (
        AeronDecoder,
        AeronEncoder,
        EncoderOutput,
        EnhancementInputs,
        EnhancementResult,
        TransformerNeuralNetBackbone,
        backbone_parameter_count,
        count_parameters,
        is_out_of_memory,
    )
    from core.model.multimodal import (
        MultimodalFusion,
        VisionPatchEmbedding,
    )
    from core.model.precision import (
        autocast_dtype,
        default_precision,
    )
    from core.model.reasoning import (
        AeronInternalScratchpad,
        AeronReasoningEngine,
        AeronTreeOfThoughtProcessor,
        ReasoningOutput,
    )
    from core.model.uncertainty import (
        UncertaintyQuantification,
    )
