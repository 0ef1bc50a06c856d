"""A seconds-long end-to-end check of the model on CPU: forward, backward, reasoning, scratchpad.

Used by ``aeron-tui model smoke``; returns plain Python numbers so the CLI only renders them.
"""

from __future__ import annotations

from typing import Any

import torch

from core.model.config import NeuralNetConfig
from core.model.model import TransformerNeuralNetBackbone

SMOKE_CONFIG = dict(
    vocab_size=512, d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=2,
    num_decoder_layers=2, dim_feedforward=192, max_position_embeddings=128,
    num_tot_branches=4, num_scratchpad_slots=8,
)


def run_smoke(seed: int = 0, batch: int = 2, seq_len: int = 16) -> dict[str, Any]:
    """Build a small model, run forward + backward (train) and a committed eval pass.

    Returns logits shape, loss, gradient norm, parameter count, branch scores, reasoning
    summary and the scratchpad stats before and after the committed pass.
    """
    torch.manual_seed(seed)
    config = NeuralNetConfig(**SMOKE_CONFIG)
    model = TransformerNeuralNetBackbone(config).train()
    gen = torch.Generator().manual_seed(seed)
    v = config.vocab_size
    ids = torch.randint(3, v, (batch, seq_len), generator=gen)
    dec = torch.randint(3, v, (batch, seq_len), generator=gen)
    labels = torch.randint(3, v, (batch, seq_len), generator=gen)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[-1, seq_len // 2:] = 0  # one padded sequence exercises the masks

    out = model(ids, mask, decoder_input_ids=dec, labels=labels)
    out["loss"].backward()
    grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    grad_norm = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
    trained = sum(p.grad is not None for p in model.parameters())

    model.eval()
    with torch.no_grad():
        committed = model(ids, mask, decoder_input_ids=dec, commit_scratchpad=True)
    info = out["reasoning_info"]
    scores = out["tot_branch_scores"]
    return {
        "config": {k: getattr(config, k) for k in SMOKE_CONFIG},
        "parameters": int(model.num_parameters(by_component=False)),  # type: ignore[arg-type]
        "logits_shape": list(out["logits"].shape),
        "loss": float(out["loss"].detach()),
        "grad_norm": grad_norm,
        "parameters_with_grad": f"{trained}/{len(list(model.parameters()))}",
        "branch_scores": scores.detach().tolist() if scores is not None else None,
        "branch_keep_mask": (info["branch_keep_mask"].int().tolist()
                             if info["branch_keep_mask"] is not None else None),
        "complexity_mean": info["complexity_mean"],
        "resolved_contradictions": info["tot_resolved_contradictions"],
        "scratchpad_stats": out["scratchpad_stats"],
        "scratchpad_stats_after_commit": committed["scratchpad_stats"],
    }
