"""`TransformerNeuralNetBackbone`: the Aeron encoder-decoder (spec model.md §6).

Flow of ``forward``: validate -> (multimodal fusion) -> encoder -> ``encoder_norm`` ->
enhancement stages 1-5 -> reasoning engine -> decoder (cross-attends to the reasoned states)
-> ``decoder_norm`` -> tied output projection (-> loss). Buffer writes (scratchpad commit,
episodic-memory write, active-learning record) run in
:meth:`TransformerNeuralNetBackbone._after_graph`, once the autograd graph is complete.

The enhancement stages (spec §4) live in their own modules — ``core.model.knowledge_graph``,
``core.model.memory``, ``core.model.continual``, ``core.model.uncertainty``, ``core.model.active_learning`` — and the
multimodal path in ``core.model.multimodal``; each is switched by an ``enable_*`` config field and
error-isolated here (spec §7).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.model.active_learning import ActiveLearningManager
from core.model.config import NeuralNetConfig
from core.model.continual import ContinualLearningModule, validate_task_id
from core.model.knowledge_graph import KnowledgeGraphAttention, validate_kg_inputs
from core.model.layers import (
    NO_MASK,
    AeronRMSNorm,
    AttentionMask,
    DecoderLayer,
    EncoderLayer,
    LayerCache,
    RotaryEmbedding,
    exporting,
    init_linear,
    masked_mean_pool,
    maybe_checkpoint,
    set_attention_backend,
    token_cross_entropy,
    tracing,
)
from core.model.memory import NeuralMemoryNetwork
from core.model.multimodal import (
    MultimodalFusion,
    VisionPatchEmbedding,
    validate_vision_inputs,
)
from core.model.packing import (
    PackedLayout,
    check_segments,
    cross_segment_mask,
    decoder_segment_mask,
    encoder_segment_mask,
    segment_positions,
    segments_per_row,
)
from core.model.reasoning import AeronReasoningEngine, PendingWrite, skipped_info
from core.model.uncertainty import UncertaintyQuantification

PastKeyValues = tuple[LayerCache, ...]

# Every key `forward` returns (spec §6); all are always present.
OUTPUT_KEYS = (
    "logits",
    "loss",
    "encoder_attentions",
    "decoder_self_attentions",
    "decoder_cross_attentions",
    "knowledge_graph_enhanced",
    "neural_memory_enhanced",
    "memory_statistics",
    "uncertainty_estimates",
    "tot_branch_scores",
    "scratchpad_stats",
    "reasoning_info",
    "past_key_values",
    "encoder_last_hidden_state",
    "decoder_last_hidden_state",
    "enhancement_errors",
)

# Top-level children that make up the plain encoder-decoder (spec §9 "Backbone").
BACKBONE_COMPONENTS = (
    "token_embedding",
    "encoder",
    "decoder",
    "encoder_norm",
    "decoder_norm",
    "output_projection",
)


@dataclass
class EncoderOutput:
    """The encoder side of a forward pass: what the decoder cross-attends to.

    ``memory (B,S,d)`` are the reasoned encoder states, ``memory_mask (B,S)`` bool (True =
    real token) or None, ``diagnostics`` the encoder-side output keys of ``forward``
    (reasoning info, branch scores, scratchpad stats, enhancement flags, ...).
    """

    memory: Tensor
    memory_mask: Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    # (B,S) sample numbers of a packed batch (core.model.packing), None when unpacked.
    segment_ids: Tensor | None = None


@dataclass
class EnhancementInputs:
    """Optional inputs the enhancement stages read (spec §4)."""

    input_entities: Tensor | None = None
    knowledge_graph: dict[str, Tensor] | None = None
    task_id: int | Tensor | None = None


@dataclass
class EnhancementResult:
    """What stages 1-5 hand to the reasoning engine and to the output dict."""

    x: Tensor
    memory_recall: Tensor | None = None  # (B, S, memory_dim) from the neural memory
    task_embedding: Tensor | None = None  # (B, d) from continual learning
    outputs: dict[str, Any] = field(default_factory=dict)  # output-dict keys to set
    post_graph: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocator failures (never swallowed by error isolation)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _tracing() -> bool:
    """True while compiling/exporting/tracing: skip data-dependent Python checks."""
    return tracing()


class AeronEncoder(nn.Module):
    """The encoder stack (``encoder.layers.{i}``)."""

    def __init__(self, config: NeuralNetConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.nhead, config.num_kv_heads, config.swiglu_hidden,
                         config.dropout, config.rms_norm_eps, config.activation)
            for _ in range(config.num_encoder_layers)
        )
        self.gradient_checkpointing = config.use_gradient_checkpointing

    def forward(self, x: Tensor, mask: AttentionMask, rope: tuple[Tensor, Tensor],
                output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        weights = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, w = maybe_checkpoint(layer, self.gradient_checkpointing, x, mask, rope,
                                    output_attentions and i == last)
            weights = w if w is not None else weights
        return x, weights


class AeronDecoder(nn.Module):
    """The decoder stack (``decoder.layers.{i}``), with the KV cache."""

    def __init__(self, config: NeuralNetConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(config.d_model, config.nhead, config.num_kv_heads, config.swiglu_hidden,
                         config.dropout, config.rms_norm_eps, config.activation)
            for _ in range(config.num_decoder_layers)
        )
        self.gradient_checkpointing = config.use_gradient_checkpointing

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: AttentionMask,
        cross_mask: AttentionMask,
        rope: tuple[Tensor, Tensor],
        past: PastKeyValues | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, PastKeyValues | None]:
        self_w = cross_w = None
        caches: list[LayerCache] = []
        last = len(self.layers) - 1
        ckpt = self.gradient_checkpointing and not use_cache
        for i, layer in enumerate(self.layers):
            x, sw, cw, cache = maybe_checkpoint(
                layer, ckpt, x, memory, self_mask, cross_mask, rope,
                past[i] if past is not None else None, use_cache, output_attentions and i == last,
            )
            self_w = sw if sw is not None else self_w
            cross_w = cw if cw is not None else cross_w
            if cache is not None:
                caches.append(cache)
        return x, self_w, cross_w, (tuple(caches) if use_cache else None)


class TransformerNeuralNetBackbone(nn.Module):
    """The Aeron encoder-decoder with its enhancement stages and reasoning engine."""

    def __init__(self, config: NeuralNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.d_model
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.encoder = AeronEncoder(config)
        # The encoder output feeds the enhancement stages and reasoning, which keep an fp32
        # residual stream under autocast.
        self.encoder_norm = AeronRMSNorm(d, config.rms_norm_eps, autocast_output=False)
        # Enhancement stages 1-5 (spec §4), in pipeline order; None when switched off.
        self.knowledge_graph = (
            KnowledgeGraphAttention(config) if config.enable_knowledge_graph else None)
        self.neural_memory = NeuralMemoryNetwork(config) if config.enable_memory else None
        self.continual_learning = (
            ContinualLearningModule(config) if config.enable_continual else None)
        self.uncertainty = UncertaintyQuantification(config) if config.enable_uncertainty else None
        self.active_learning = (
            ActiveLearningManager(config) if config.enable_active_learning else None)
        # Multimodal path (spec §3): image patches fused into the text before the encoder.
        self.vision_patch_embedding = (
            VisionPatchEmbedding(config) if config.enable_multimodal else None)
        self.multimodal_fusion = MultimodalFusion(config) if config.enable_multimodal else None
        self.reasoning_engine = AeronReasoningEngine(config) if config.enable_reasoning else None
        self.decoder = AeronDecoder(config)
        self.decoder_norm = AeronRMSNorm(d, config.rms_norm_eps)
        # Tied head: logits use token_embedding.weight directly, so it is stored once.
        self.output_projection = (
            None if config.tie_word_embeddings else nn.Linear(d, config.vocab_size, bias=False)
        )
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        self._export_mode = False
        set_attention_backend(self, config.attention_backend)
        self._init_backbone_weights()

    # ------------------------------------------------------------------ initialisation
    def _init_backbone_weights(self) -> None:
        """N(0, std) weights, 1 for norms, residual projections N(0, std/sqrt(2L)) (spec §2).

        The reasoning engine (and enhancement modules) initialise themselves.
        """
        std = self.config.initializer_range
        nn.init.normal_(self.token_embedding.weight, std=std)
        if self.output_projection is not None:
            init_linear(self.output_projection, std)
        for stack in (self.encoder, self.decoder):
            scaled = std / math.sqrt(2 * len(stack.layers))
            for name, module in stack.named_modules():
                if isinstance(module, nn.Linear):
                    is_residual = name.endswith("out_proj") or name.endswith("down_proj")
                    init_linear(module, scaled if is_residual else std)

    # ------------------------------------------------------------------------ public API
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        vision_inputs: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        input_entities: Tensor | None = None,
        knowledge_graph: dict[str, Tensor] | None = None,
        use_cache: bool = False,
        task_id: int | Tensor | None = None,
        labels: Tensor | None = None,
        past_key_values: PastKeyValues | None = None,
        encoder_outputs: EncoderOutput | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        commit_scratchpad: bool = False,
        segment_ids: Tensor | None = None,
        decoder_segment_ids: Tensor | None = None,
    ) -> dict[str, Any]:
        """Run the model; returns a dict with every key of :data:`OUTPUT_KEYS` (spec §6).

        ``labels`` (same shape as ``decoder_input_ids``, or as ``input_ids`` without a
        decoder) add ``loss`` = mean cross-entropy over labels != -100.

        ``segment_ids`` / ``decoder_segment_ids`` (both, shaped like the ids) mark a packed
        batch: several samples per row, kept apart exactly (:mod:`core.model.packing`).
        Per-sample outputs (uncertainty estimates, branch scores) then have one entry per
        sample, numbered row by row.
        """
        outputs: dict[str, Any] = dict.fromkeys(OUTPUT_KEYS)
        outputs.update(self._idle_outputs())
        enc_segments, dec_segments = self._check_packing(
            input_ids, decoder_input_ids, segment_ids, decoder_segment_ids, encoder_outputs,
            past_key_values, use_cache, vision_inputs,
            EnhancementInputs(input_entities, knowledge_graph, task_id))
        dec_embeds: Tensor | None = None
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("input_ids is required unless encoder_outputs is given")
            enc_embeds = None
            if decoder_input_ids is not None and past_key_values is None:
                enc_embeds, dec_embeds = self._embed_both(input_ids, decoder_input_ids,
                                                          enc_segments is not None)
            encoded, post_graph = self._encode(
                input_ids, attention_mask, vision_inputs,
                EnhancementInputs(input_entities, knowledge_graph, task_id),
                output_attentions, commit_scratchpad, enc_embeds, enc_segments,
            )
        else:
            if not isinstance(encoder_outputs, EncoderOutput):
                raise ValueError(
                    f"encoder_outputs must be an EncoderOutput (from model.encode), "
                    f"got {type(encoder_outputs).__name__}"
                )
            encoded, post_graph = encoder_outputs, []
        outputs.update(encoded.diagnostics)
        if output_hidden_states:
            outputs["encoder_last_hidden_state"] = encoded.memory

        if decoder_input_ids is not None:
            dec = self._decode(decoder_input_ids, encoded, decoder_attention_mask,
                               past_key_values, use_cache, output_attentions, dec_embeds,
                               dec_segments)
            outputs["logits"] = dec["logits"]
            outputs["past_key_values"] = dec["past_key_values"]
            outputs["decoder_self_attentions"] = dec["decoder_self_attentions"]
            outputs["decoder_cross_attentions"] = dec["decoder_cross_attentions"]
            if output_hidden_states:
                outputs["decoder_last_hidden_state"] = dec["decoder_last_hidden_state"]
        else:
            if past_key_values is not None or use_cache:
                raise ValueError("past_key_values/use_cache need decoder_input_ids")
            outputs["logits"] = self._project(encoded.memory)

        if labels is not None:
            estimates = outputs.get("uncertainty_estimates")
            outputs["loss"], sequence_nll = self._loss(outputs["logits"], labels,
                                                       sequence_nll=bool(estimates),
                                                       segments=dec_segments)
            if sequence_nll is not None:
                # The UQ heads' training target (the trainer's auxiliary_loss reads it): kept
                # from this pass instead of a second log-softmax over the vocabulary.
                estimates["sequence_nll"] = sequence_nll
        self._after_graph(outputs, post_graph)
        return outputs

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        vision_inputs: Tensor | None = None,
        input_entities: Tensor | None = None,
        knowledge_graph: dict[str, Tensor] | None = None,
        task_id: int | Tensor | None = None,
        output_attentions: bool = False,
        commit_scratchpad: bool = False,
    ) -> EncoderOutput:
        """Encoder side only (fusion, encoder, stages, reasoning); buffer writes applied."""
        encoded, post_graph = self._encode(
            input_ids, attention_mask, vision_inputs,
            EnhancementInputs(input_entities, knowledge_graph, task_id),
            output_attentions, commit_scratchpad,
        )
        self._after_graph(encoded.diagnostics, post_graph)
        return encoded

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_output: EncoderOutput,
        decoder_attention_mask: Tensor | None = None,
        past_key_values: PastKeyValues | None = None,
        use_cache: bool = False,
    ) -> dict[str, Any]:
        """Decoder side: ``{logits, past_key_values, decoder_last_hidden_state}``.

        With ``use_cache`` the returned cache holds, per decoder layer, ``(self_k, self_v
        (B,G,T_past,hd), cross_k, cross_v (B,G,S,hd))``; pass it back with the next tokens.
        """
        if not isinstance(encoder_output, EncoderOutput):
            raise ValueError(
                f"encoder_output must be an EncoderOutput (from model.encode), "
                f"got {type(encoder_output).__name__}"
            )
        dec = self._decode(decoder_input_ids, encoder_output, decoder_attention_mask,
                           past_key_values, use_cache, False)
        return {k: dec[k] for k in ("logits", "past_key_values", "decoder_last_hidden_state")}

    def set_export_mode(self, enabled: bool = True) -> None:
        """Export mode: eval mode; fusion, enhancement stages and reasoning are skipped (the plain
        encoder-decoder). ONNX export (``core.infer.export``) traces the full eval forward
        instead — what ``generate`` runs.

        The rotary tables are built for every position up front: a graph traced from a short
        example must not capture (or lazily build) a table too short for longer inputs.
        """
        self._export_mode = bool(enabled)
        if enabled:
            self.eval()
            device = self.token_embedding.weight.device
            self.rotary(self.config.max_position_embeddings, 0, device)

    @property
    def export_mode(self) -> bool:
        return self._export_mode

    def reset_state(self) -> None:
        """Clear persistent state (scratchpad, and any module with a ``reset_state``)."""
        for module in self.children():
            reset = getattr(module, "reset_state", None)
            if callable(reset):
                reset()

    def num_parameters(self, by_component: bool = True) -> dict[str, int] | int:
        """Parameter count per top-level component plus ``"total"`` (tied weight once)."""
        seen: set[int] = set()
        counts: dict[str, int] = {}
        for name, child in self.named_children():
            n = 0
            for p in child.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    n += p.numel()
            counts[name] = n
        for p in self.parameters(recurse=False):  # none today; keeps the total honest
            if id(p) not in seen:
                seen.add(id(p))
                counts["other"] = counts.get("other", 0) + p.numel()
        total = sum(counts.values())
        if not by_component:
            return total
        counts["total"] = total
        return counts

    # ------------------------------------------------------------------- encoder side
    def _encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        vision_inputs: Tensor | None,
        inputs: EnhancementInputs,
        output_attentions: bool,
        commit_scratchpad: bool,
        embeds: Tensor | None = None,
        segments: Tensor | None = None,
    ) -> tuple[EncoderOutput, list[Callable[[dict[str, Any]], None]]]:
        checks = not _tracing()
        _check_ids("input_ids", input_ids, self.config, checks, segments is None)
        mask = _check_mask("attention_mask", attention_mask, input_ids, checks)
        if not self._export_mode:
            self._check_enhancement_inputs(input_ids.shape[0], vision_inputs, inputs, checks)
        errors: dict[str, str] = {}
        diagnostics: dict[str, Any] = {"enhancement_errors": errors}
        b, s = input_ids.shape

        x = self.token_embedding(input_ids) if embeds is None else embeds
        if vision_inputs is not None and not self._export_mode:
            token_x = x
            ok, fused = self._isolated("multimodal", errors,
                                       lambda: self._fuse_vision(token_x, vision_inputs))
            x = fused if ok else x
        pad = _padding(mask, checks)
        layout: PackedLayout | None = None
        if segments is not None:
            attn_mask = AttentionMask(encoder_segment_mask(segments), False)
            rope = self.rotary.at(segment_positions(segments))
            layout = PackedLayout.from_segments(segments)
        else:
            attn_mask = AttentionMask(pad[:, None, None, :], False) if pad is not None else NO_MASK
            rope = self.rotary(s, 0, x.device)
        x, enc_w = self.encoder(x, attn_mask, rope, output_attentions)
        x = self.encoder_norm(x)
        diagnostics["encoder_attentions"] = enc_w

        # The enhancement stages and the reasoning engine pool over a sample: a packed batch
        # runs them on its samples unpacked, so they see exactly what an unpacked batch gives.
        sample_mask = pad
        if layout is not None:
            x = layout.unpack(x)
            sample_mask = _padding(layout.sample_mask, checks)
        post_graph: list[Callable[[dict[str, Any]], None]] = []
        recall = task_emb = None
        if not self._export_mode:
            enh = self._run_enhancements(x, sample_mask, inputs, errors)
            x, recall, task_emb = enh.x, enh.memory_recall, enh.task_embedding
            diagnostics.update(enh.outputs)
            post_graph.extend(enh.post_graph)

        x, pending = self._reason(x, sample_mask, recall, task_emb, errors, diagnostics)
        if layout is not None:
            x = layout.repack(x)
        if pending is not None and commit_scratchpad and not self.training:
            engine = self.reasoning_engine
            assert engine is not None

            def commit(outputs: dict[str, Any], pending: PendingWrite = pending) -> None:
                engine.scratchpad.commit_write(pending)
                outputs["scratchpad_stats"] = engine.scratchpad_stats(None)

            post_graph.append(commit)
        return EncoderOutput(x, pad, diagnostics, segments), post_graph

    def _check_packing(
        self,
        input_ids: Tensor | None,
        decoder_input_ids: Tensor | None,
        segment_ids: Tensor | None,
        decoder_segment_ids: Tensor | None,
        encoder_outputs: EncoderOutput | None,
        past_key_values: PastKeyValues | None,
        use_cache: bool,
        vision_inputs: Tensor | None,
        inputs: EnhancementInputs,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Validated segment ids of a packed batch, or ``(None, None)`` when the batch is not
        packed (no segment ids, or one sample per row: the plain path is the same and faster)."""
        if segment_ids is None and decoder_segment_ids is None:
            return None, None
        if segment_ids is None or decoder_segment_ids is None or input_ids is None \
                or decoder_input_ids is None:
            raise ValueError(
                "a packed batch needs input_ids, decoder_input_ids, segment_ids and "
                "decoder_segment_ids together")
        if encoder_outputs is not None or past_key_values is not None or use_cache:
            raise ValueError("segment_ids (packed batches) are for training and evaluation "
                             "forwards, not with encoder_outputs, past_key_values or use_cache")
        if vision_inputs is not None or inputs.input_entities is not None \
                or inputs.knowledge_graph is not None or isinstance(inputs.task_id, Tensor):
            raise ValueError("packed batches (segment_ids) carry text only: per-sample "
                             "vision_inputs, input_entities, knowledge_graph or task_id tensors "
                             "need an unpacked batch")
        if _tracing():
            return segment_ids, decoder_segment_ids
        check_segments("segment_ids", segment_ids, input_ids)
        check_segments("decoder_segment_ids", decoder_segment_ids, decoder_input_ids)
        enc_counts = segments_per_row(segment_ids)
        if not bool((enc_counts == segments_per_row(decoder_segment_ids)).all()):
            raise ValueError("segment_ids and decoder_segment_ids must hold the same number of "
                             "samples in every row")
        if int(enc_counts.max()) <= 1:
            return None, None
        limit = self.config.max_position_embeddings
        for name, segments in (("segment_ids", segment_ids),
                               ("decoder_segment_ids", decoder_segment_ids)):
            longest = int(segment_positions(segments).max()) + 1
            if longest > limit:
                raise ValueError(
                    f"{name}: a packed sample has {longest} tokens, more than "
                    f"max_position_embeddings ({limit}); truncate the samples or raise the limit")
        return segment_ids, decoder_segment_ids

    def _check_enhancement_inputs(self, batch: int, vision_inputs: Tensor | None,
                                  inputs: EnhancementInputs, values: bool) -> None:
        """ValueError naming the argument for malformed optional inputs (never isolated).

        Inputs for a switched-off module are ignored, except images: a model without the
        multimodal path cannot honour them, so they are an error.
        """
        cfg = self.config
        if vision_inputs is not None:
            if self.vision_patch_embedding is None:
                raise ValueError(
                    "vision_inputs was given but this model has no multimodal path "
                    "(enable_multimodal is off)"
                )
            validate_vision_inputs(vision_inputs, batch, cfg.num_channels, cfg.patch_size,
                                   cfg.vision_max_patches)
        if not values:  # tracing: no data-dependent checks
            return
        if self.knowledge_graph is not None:
            validate_kg_inputs(inputs.input_entities, inputs.knowledge_graph, batch,
                               cfg.kg_num_entities, cfg.kg_num_relations)
        if self.continual_learning is not None and inputs.task_id is not None:
            validate_task_id(inputs.task_id, cfg.num_tasks, batch)

    def _fuse_vision(self, x: Tensor, vision_inputs: Tensor) -> Tensor:
        """Multimodal fusion (spec §3): text states cross-attend to the image patches."""
        assert self.vision_patch_embedding is not None and self.multimodal_fusion is not None
        patches = self.vision_patch_embedding(vision_inputs)
        return self.multimodal_fusion(x, patches)

    def _run_enhancements(self, x: Tensor, mask: Tensor | None, inputs: EnhancementInputs,
                          errors: dict[str, str]) -> EnhancementResult:
        """Enhancement stages 1-5 after ``encoder_norm`` (spec §4), in order.

        Each stage runs through :meth:`_isolated` (spec §7): on failure its input passes
        through, its flag stays False and the error is recorded. Stages supply
        ``memory_recall`` / ``task_embedding`` for the reasoning engine and queue their buffer
        writes in ``post_graph`` (applied once the autograd graph is complete).
        """
        res = EnhancementResult(x=x)
        out = res.outputs

        kg = self.knowledge_graph
        if kg is not None and (inputs.input_entities is not None
                               or inputs.knowledge_graph is not None):
            ok, r = self._isolated("knowledge_graph", errors, lambda: kg(
                res.x, inputs.input_entities, inputs.knowledge_graph))
            if ok:
                res.x, out["knowledge_graph_enhanced"] = r

        memory = self.neural_memory
        if memory is not None:
            ok, r = self._isolated("neural_memory", errors, lambda: memory(res.x, mask))
            if ok:
                res.x, res.memory_recall, pending = r
                out["neural_memory_enhanced"] = res.memory_recall is not None
                # An exported graph reads the bank as it is (statistics are Python values and
                # writes change buffers: neither is part of a graph).
                if not exporting():
                    out["memory_statistics"] = {**memory.memory_statistics(),
                                                "read_entropy": pending.read_entropy}
                    if self._memory_writes_enabled():
                        res.post_graph.append(self._memory_write_action(pending))

        cl = self.continual_learning
        if cl is not None and inputs.task_id is not None:
            ok, r = self._isolated("continual_learning", errors, lambda: cl(res.x, inputs.task_id))
            if ok:
                res.x, res.task_embedding = r

        estimates: dict[str, Any] | None = None
        uq = self.uncertainty
        if uq is not None:
            ok, estimates = self._isolated("uncertainty", errors, lambda: uq(res.x, mask))
            if ok:
                out["uncertainty_estimates"] = estimates

        al = self.active_learning
        if al is not None and self.training:
            pooled = masked_mean_pool(res.x.detach(), mask)
            score = estimates.get("epistemic") if estimates else None

            def record(outputs: dict[str, Any]) -> None:
                self._isolated_after_graph("active_learning", outputs,
                                           lambda: al.record(pooled, score))

            res.post_graph.append(record)
        return res

    def _memory_writes_enabled(self) -> bool:
        mode = self.config.memory_write_mode
        return mode == "always" or (mode == "train" and self.training)

    def _memory_write_action(self, pending: Any) -> Callable[[dict[str, Any]], None]:
        memory = self.neural_memory
        assert memory is not None

        def write(outputs: dict[str, Any]) -> None:
            if self._isolated_after_graph("neural_memory", outputs,
                                          lambda: memory.apply_write(pending)):
                outputs["memory_statistics"] = memory.memory_statistics()

        return write

    def _isolated_after_graph(self, stage: str, outputs: dict[str, Any],
                              fn: Callable[[], Any]) -> bool:
        """:meth:`_isolated` for a buffer write; errors go to ``outputs["enhancement_errors"]``."""
        errors = outputs.setdefault("enhancement_errors", {})
        ok, _ = self._isolated(stage, errors, fn)
        return ok

    def _isolated(self, stage: str, errors: dict[str, str], fn: Callable[[], Any]
                  ) -> tuple[bool, Any]:
        """Run one optional stage; on failure record ``"Type: message"`` and report False.

        Never swallowed: input-validation ``ValueError``, out-of-memory errors,
        ``KeyboardInterrupt``, and anything when ``strict_modules`` is set.
        """
        if self.config.strict_modules:
            return True, fn()
        try:
            return True, fn()
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - error isolation is the point (spec §7)
            if is_out_of_memory(exc):
                raise
            errors[stage] = f"{type(exc).__name__}: {exc}"
            return False, None

    def _reason(self, x: Tensor, mask: Tensor | None, recall: Tensor | None,
                task_emb: Tensor | None, errors: dict[str, str],
                diagnostics: dict[str, Any]) -> tuple[Tensor, PendingWrite | None]:
        engine = self.reasoning_engine
        cfg = self.config
        if engine is None or self._export_mode:
            reason = "disabled" if engine is None else "export_mode"
            diagnostics["reasoning_info"] = skipped_info(
                reason, cfg.reasoning_complexity_threshold, cfg.max_reasoning_steps)
            diagnostics["tot_branch_scores"] = None
            if engine is None:
                diagnostics["scratchpad_stats"] = _empty_scratchpad()
            elif _tracing():  # exporting: the stats read buffers into Python ints
                diagnostics["scratchpad_stats"] = {**_empty_scratchpad(),
                                                   "total_slots": engine.scratchpad.num_slots}
            else:
                diagnostics["scratchpad_stats"] = engine.scratchpad_stats(None)
            return x, None
        ok, result = self._isolated("reasoning", errors,
                                    lambda: engine(x, mask, recall, task_emb))
        if not ok:
            diagnostics["reasoning_info"] = skipped_info(
                "error", cfg.reasoning_complexity_threshold, cfg.max_reasoning_steps)
            diagnostics["tot_branch_scores"] = None
            diagnostics["scratchpad_stats"] = engine.scratchpad_stats(None)
            return x, None
        diagnostics["reasoning_info"] = result.info
        diagnostics["tot_branch_scores"] = result.tot_branch_scores
        diagnostics["scratchpad_stats"] = (
            {**_empty_scratchpad(), "total_slots": engine.scratchpad.num_slots} if _tracing()
            else engine.scratchpad_stats(result.pending_write))
        return result.hidden, result.pending_write

    def _after_graph(self, outputs: dict[str, Any],
                     post_graph: list[Callable[[dict[str, Any]], None]]) -> None:
        """Apply buffer writes once the autograd graph is complete (spec §5.9, §4.2)."""
        with torch.no_grad():
            for action in post_graph:
                action(outputs)

    # ------------------------------------------------------------------- decoder side
    def _decode(
        self,
        ids: Tensor,
        encoded: EncoderOutput,
        mask: Tensor | None,
        past: PastKeyValues | None,
        use_cache: bool,
        output_attentions: bool,
        embeds: Tensor | None = None,
        segments: Tensor | None = None,
    ) -> dict[str, Any]:
        cfg = self.config
        checks = not _tracing()
        _check_ids("decoder_input_ids", ids, cfg, checks, segments is None)
        b, t = ids.shape
        memory = encoded.memory
        _check_batch(memory.shape[0], b)
        past_len = _check_past(past, cfg, b)
        if segments is None and past_len + t > cfg.max_position_embeddings:
            raise ValueError(
                f"decoder_input_ids: {past_len} cached + {t} new tokens exceed "
                f"max_position_embeddings ({cfg.max_position_embeddings})"
            )
        if mask is not None:
            if mask.dim() != 2 or mask.shape[0] != b or mask.shape[1] not in (t, past_len + t):
                raise ValueError(
                    f"decoder_attention_mask must have shape ({b}, {t})"
                    + (f" or ({b}, {past_len + t})" if past_len else "")
                    + f", got {tuple(mask.shape)}"
                )
            mask = mask != 0
            if mask.shape[1] == t and past_len:
                mask = torch.cat((mask.new_ones(b, past_len), mask), dim=1)
        if segments is not None:
            if encoded.segment_ids is None:
                raise ValueError("decoder_segment_ids need an encoder output of a packed batch")
            self_mask = AttentionMask(decoder_segment_mask(segments), False)
            cross_mask = AttentionMask(cross_segment_mask(segments, encoded.segment_ids), False)
            rope = self.rotary.at(segment_positions(segments))
        else:
            self_mask = _decoder_self_mask(mask, t, past_len, ids.device, checks)
            cross_pad = encoded.memory_mask
            cross_mask = (AttentionMask(cross_pad[:, None, None, :], False)
                          if cross_pad is not None else NO_MASK)
            rope = self.rotary(t, past_len, ids.device)
        x = self.token_embedding(ids) if embeds is None else embeds
        x, self_w, cross_w, cache = self.decoder(
            x, memory, self_mask, cross_mask, rope, past, use_cache, output_attentions)
        hidden = self.decoder_norm(x)
        return {
            "logits": self._project(hidden),
            "past_key_values": cache,
            "decoder_last_hidden_state": hidden,
            "decoder_self_attentions": self_w,
            "decoder_cross_attentions": cross_w,
        }

    # ------------------------------------------------------------------------ helpers
    def _embed_both(self, input_ids: Tensor, decoder_input_ids: Tensor, packed: bool = False
                    ) -> tuple[Tensor, Tensor]:
        """Encoder and decoder embeddings from one lookup.

        The backward of an embedding lookup builds a dense ``(V, d)`` gradient; one joint
        lookup builds it once instead of twice (measured in bench/model_step.py).
        """
        checks = not _tracing()
        _check_ids("input_ids", input_ids, self.config, checks, not packed)
        _check_ids("decoder_input_ids", decoder_input_ids, self.config, checks, not packed)
        _check_batch(input_ids.shape[0], decoder_input_ids.shape[0])
        s = input_ids.shape[1]
        joint = torch.cat((input_ids, decoder_input_ids.to(input_ids.dtype)), dim=1)
        both = self.token_embedding(joint)
        return both[:, :s], both[:, s:]

    def _project(self, hidden: Tensor) -> Tensor:
        if self.output_projection is not None:
            return self.output_projection(hidden)
        return F.linear(hidden, self.token_embedding.weight)

    def _loss(self, logits: Tensor, labels: Tensor, sequence_nll: bool = False,
              segments: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Mean CE over ``labels != -100``; with ``sequence_nll`` also the detached per-sequence
        mean NLL ``(B,)`` (decoder labels only; per sample ``(N,)`` of a packed batch whose
        decoder ``segments`` are given)."""
        if not isinstance(labels, Tensor) or labels.dtype not in _INT_DTYPES:
            raise ValueError(
                f"labels must be an integer tensor, got "
                f"{labels.dtype if isinstance(labels, Tensor) else type(labels).__name__}"
            )
        if tuple(labels.shape) != tuple(logits.shape[:-1]):
            raise ValueError(
                f"labels must have shape {tuple(logits.shape[:-1])} (like the decoder input), "
                f"got {tuple(labels.shape)}"
            )
        if not _tracing():
            valid = labels[labels != -100]
            if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= logits.shape[-1]):
                raise ValueError(
                    f"labels must be in [0, vocab_size={logits.shape[-1]}) or -100, got values "
                    f"in [{int(valid.min())}, {int(valid.max())}]"
                )
        target = labels.reshape(-1)
        nll = token_cross_entropy(logits.reshape(-1, logits.shape[-1]), target, -100)
        count = (target != -100).sum().clamp_min(1)
        loss = nll.sum() / count
        if not sequence_nll:
            return loss, None
        with torch.no_grad():
            valid = (labels != -100).to(nll.dtype)
            if segments is not None:
                layout = PackedLayout.from_segments(segments)
                per_sample = layout.per_sample_sum(nll.detach().view(labels.shape))
                return loss, per_sample / layout.per_sample_sum(valid).clamp_min(1.0)
            per_seq = nll.detach().view(labels.shape).sum(dim=-1) / valid.sum(dim=-1).clamp_min(1.0)
        return loss, per_seq

    def _idle_outputs(self) -> dict[str, Any]:
        """Values of the enhancement keys when a stage did not run."""
        return {
            "knowledge_graph_enhanced": False,
            "neural_memory_enhanced": False,
            "memory_statistics": {},
            "uncertainty_estimates": {},
            "enhancement_errors": {},
        }


def count_parameters(config: NeuralNetConfig) -> dict[str, int]:
    """Exact parameter counts per component (+ ``"total"``), built on the meta device."""
    with torch.device("meta"):
        model = TransformerNeuralNetBackbone(config)
    counts = model.num_parameters(by_component=True)
    assert isinstance(counts, dict)
    return counts


def backbone_parameter_count(counts: dict[str, int]) -> int:
    """The spec §9 "Backbone" figure: embedding, encoder, decoder, their norms, the head."""
    return sum(counts.get(name, 0) for name in BACKBONE_COMPONENTS)


# ---------------------------------------------------------------------------- validation
_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _empty_scratchpad() -> dict[str, Any]:
    return {"used_slots": 0, "total_slots": 0, "step_counter": 0, "slot_types": []}


def _check_ids(name: str, ids: Any, config: NeuralNetConfig, values: bool,
               positions: bool = True) -> None:
    """``positions=False`` for packed rows: positions restart per sample there, so the row may
    be longer than ``max_position_embeddings`` (each sample is checked instead)."""
    if not isinstance(ids, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{name} must have shape (batch, length) with both > 0, "
                         f"got {tuple(ids.shape)}")
    if positions and ids.shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"{name} has length {ids.shape[1]}, longer than max_position_embeddings "
            f"({config.max_position_embeddings}); truncate the input or raise the limit"
        )
    if values:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= config.vocab_size:
            raise ValueError(
                f"{name} holds ids in [{lo}, {hi}], outside [0, vocab_size={config.vocab_size})"
            )


def _check_mask(name: str, mask: Any, ids: Tensor, values: bool) -> Tensor | None:
    """Validate a (B, S) padding mask; returns it as bool (True = real token) or None."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"{name} must have the shape of the ids {tuple(ids.shape)}, got {tuple(mask.shape)}"
        )
    if mask.is_floating_point() or mask.is_complex():
        if values and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must hold 0/1 values")
    out = mask != 0
    if values and not bool(out.any(dim=1).all()):
        raise ValueError(f"{name} has a row with no real token; every sequence needs one")
    return out


def _padding(mask: Tensor | None, values: bool) -> Tensor | None:
    """The mask, or None when it has no padding (lets SDPA skip masking)."""
    if mask is None:
        return None
    if values and bool(mask.all()):
        return None
    return mask


def _decoder_self_mask(mask: Tensor | None, t: int, past_len: int, device: torch.device,
                       values: bool) -> AttentionMask:
    """Causal ∧ key padding for decoder self-attention (each query always sees itself)."""
    right_padded = mask is None or (values and (
        bool(mask.all()) or bool((mask[:, 1:].int() <= mask[:, :-1].int()).all())))
    if right_padded and past_len == 0:
        # With right padding a real query never sees a pad key under the causal mask alone,
        # so SDPA's fused causal path is exact for every real position. (Causal with one
        # query is the same as no mask; while tracing, ``t`` is symbolic, so keep it causal.)
        return AttentionMask(None, bool(t > 1) if values else True)
    if right_padded and t == 1:
        return NO_MASK
    q_pos = torch.arange(past_len, past_len + t, device=device)
    k_pos = torch.arange(past_len + t, device=device)
    allowed = k_pos[None, :] <= q_pos[:, None]  # (t, past+t)
    if mask is not None:
        own = k_pos[None, :] == q_pos[:, None]
        allowed = allowed[None] & (mask[:, None, :] | own[None])  # (B, t, past+t)
        return AttentionMask(allowed[:, None], False)
    return AttentionMask(allowed, False)


def _check_batch(encoder_batch: int, decoder_batch: int) -> None:
    if encoder_batch != decoder_batch:
        raise ValueError(
            f"decoder_input_ids has batch size {decoder_batch} but the encoder input has "
            f"{encoder_batch}; they must match"
        )


def _check_past(past: PastKeyValues | None, config: NeuralNetConfig, batch: int) -> int:
    if past is None:
        return 0
    if not isinstance(past, (tuple, list)) or len(past) != config.num_decoder_layers:
        raise ValueError(
            f"past_key_values must be a tuple of {config.num_decoder_layers} per-layer caches "
            f"(from use_cache=True), got {type(past).__name__} of length "
            f"{len(past) if isinstance(past, (tuple, list)) else '?'}"
        )
    first = past[0]
    if len(first) != 4 or first[0].dim() != 4 or first[0].shape[0] != batch:
        raise ValueError(
            f"past_key_values entries must be (self_k, self_v, cross_k, cross_v) with batch "
            f"{batch}; got shapes {[tuple(x.shape) for x in first if x is not None]}"
        )
    return int(first[0].shape[2])
