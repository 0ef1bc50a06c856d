"""An HPF (low-rank) checkpoint loads as the dense model for generation, merging and export."""

from __future__ import annotations

from pathlib import Path

import torch


def test_build_model_from_hpf_checkpoint_matches_the_factorised_model(tmp_path: Path) -> None:
    from core.data.tokenizer import AeronTokenizer
    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import build_model_from_checkpoint, save_checkpoint
    from lonpt.hpf import apply_hpf

    torch.manual_seed(0)
    cfg = NeuralNetConfig(vocab_size=268, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=1,
                          num_decoder_layers=1, dim_feedforward=64, max_position_embeddings=64,
                          num_tot_branches=2, num_scratchpad_slots=4, memory_slots=8, memory_dim=16,
                          memory_heads=2, kg_num_entities=16, kg_dim=8, num_tasks=2, enable_multimodal=False)
    model = TransformerNeuralNetBackbone(cfg).eval()
    report = apply_hpf(model, 0.25, [r"\.ffn\.(gate|up|down)_proj$"])
    assert report.saved > 0
    ckpt = save_checkpoint(tmp_path / "hpf", model=model, config=cfg, tokenizer=AeronTokenizer.byte_level(),
                           trainer_state={"global_step": 0})
    dense, _, _ = build_model_from_checkpoint(ckpt)
    ids, dec = torch.tensor([[5, 9, 11, 7]]), torch.tensor([[1, 8, 20]])
    with torch.no_grad():
        expected = model(input_ids=ids, decoder_input_ids=dec)["logits"]
        got = dense(input_ids=ids, decoder_input_ids=dec)["logits"]
    assert isinstance(dense.encoder.layers[0].ffn.up_proj, torch.nn.Linear)
    assert torch.allclose(got, expected, atol=1e-5)
