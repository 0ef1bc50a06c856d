"""`aeron-tui tokenizer upgrade` on a trained tiny model: the transferred embedding keeps
old-corpus bits per byte far closer to the old model's than a random new embedding."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from aeron_tui.cli import app


def _corpus(sample_corpus_dir: Path, path: Path, n: int = 800) -> Path:
    """A shuffled slice of the bundled sample corpus (docs, code, math, reasoning, ...)."""
    rows = (sample_corpus_dir / "styles.jsonl").read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(rows)
    path.write_text("\n".join(rows[:n]) + "\n", encoding="utf-8")
    return path


def _train_old_checkpoint(tmp_path: Path, data: Path, tok: object, steps: int = 200) -> Path:
    from core.data.formatting import encode_styles_sample
    from core.data.loader import collate
    from core.data.styles import read_styles, split_samples
    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = NeuralNetConfig(
        vocab_size=tok.vocab_size, d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=1,  # type: ignore[attr-defined]
        num_decoder_layers=1, dim_feedforward=128, max_position_embeddings=256, num_tot_branches=2,
        num_scratchpad_slots=4, enable_multimodal=False, enable_knowledge_graph=False, enable_memory=False,
        enable_uncertainty=False, enable_active_learning=False,
    )
    model = TransformerNeuralNetBackbone(cfg)
    train, _ = split_samples(read_styles(data))
    pairs = [encode_styles_sample(s, tok, 96) for s in train]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(steps):
        batch = collate(pairs[(step * 16) % len(pairs):][:16])
        loss = model(**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_checkpoint(tmp_path / "old", model=model, config=cfg, tokenizer=tok,
                           trainer_state={"global_step": steps})


@pytest.mark.slow
def test_upgrade_keeps_bits_per_byte_close(tmp_path: Path, sample_corpus_dir: Path) -> None:
    from core.data.styles import read_styles
    from core.data.tokenizer import AeronTokenizer
    from core.runs.checkpoint import read_manifest

    data = _corpus(sample_corpus_dir, tmp_path / "styles.jsonl")
    texts = [t for s in read_styles(data) for t in (s.user_input, s.assistant_reply)]
    old_tok = AeronTokenizer.train(texts, vocab_size=400)
    old = _train_old_checkpoint(tmp_path, data, old_tok)
    AeronTokenizer.train(texts, vocab_size=600).save(tmp_path / "newtok")
    out = tmp_path / "upgraded"
    result = CliRunner().invoke(app, [
        "tokenizer", "upgrade", "--checkpoint", str(old), "--tokenizer", str(tmp_path / "newtok"),
        "--out", str(out), "--data", str(data), "--samples", "64",
    ])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest["parents"][0]["relation"] == "upgraded"
    assert manifest["parents"][0]["id"] == read_manifest(old)["version"]
    counts = manifest["vocab_transfer"]
    # The smaller BPE on the same texts is a prefix of the larger one.
    assert counts["copied"] == 400 and counts["random"] == 0
    assert counts["composed"] == counts["new_vocab_size"] - 400 > 0

    from core.evolve.vocab_transfer import compare_upgrade

    bpb = compare_upgrade(old, out, data, samples=64)
    print("old-corpus bits/byte:", bpb)
    # Measured: old 2.20, upgraded 2.72, copied rows only 3.11, random embedding 5.04. The
    # upgraded model is far closer to the old one than a random new embedding, and composing the
    # new tokens' rows is better than leaving them random.
    assert abs(bpb["upgraded"] - bpb["old"]) < 0.35 * abs(bpb["random_embedding"] - bpb["old"]), bpb
    assert bpb["upgraded"] < bpb["copied_only"], bpb
    assert "bits/byte" in result.output and "copied rows only" in result.output


def test_upgrade_rejects_bad_inputs_before_writing(tmp_path: Path) -> None:
    from core.data.tokenizer import AeronTokenizer
    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import save_checkpoint

    cfg = NeuralNetConfig(vocab_size=268, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=1,
                          num_decoder_layers=1, dim_feedforward=64, max_position_embeddings=64,
                          num_tot_branches=2, num_scratchpad_slots=4, enable_multimodal=False)
    ckpt = save_checkpoint(tmp_path / "c", model=TransformerNeuralNetBackbone(cfg), config=cfg,
                           tokenizer=AeronTokenizer.byte_level(), trainer_state={"global_step": 0})
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"not": "a tokenizer"}')
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["tokenizer", "upgrade", "--checkpoint", str(ckpt), "--tokenizer", str(bogus),
                                 "--out", str(out), "--no-eval"])
    assert r.exit_code != 0 and "bogus.json" in str(r.exception)
    assert not out.exists()


def test_untied_output_projection_is_transferred_like_the_embedding(tmp_path: Path) -> None:
    from core.data.tokenizer import NUM_SPECIAL, AeronTokenizer
    from core.evolve.vocab_transfer import copied_token_ids, upgrade_checkpoint
    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone
    from core.runs.checkpoint import build_model_from_checkpoint, save_checkpoint

    texts = ["the cat sat on the mat", "def add(a, b): return a + b"] * 20
    old_tok, new_tok = AeronTokenizer.train(texts, vocab_size=280), AeronTokenizer.train(texts, vocab_size=300)
    new_tok.save(tmp_path / "newtok")
    cfg = NeuralNetConfig(vocab_size=old_tok.vocab_size, d_model=32, nhead=4, num_kv_heads=2, num_encoder_layers=1,
                          num_decoder_layers=1, dim_feedforward=64, max_position_embeddings=64,
                          num_tot_branches=2, num_scratchpad_slots=4, enable_multimodal=False,
                          tie_word_embeddings=False)
    torch.manual_seed(0)
    model = TransformerNeuralNetBackbone(cfg)
    ckpt = save_checkpoint(tmp_path / "c", model=model, config=cfg, tokenizer=old_tok, trainer_state={"global_step": 0})
    out, report = upgrade_checkpoint(ckpt, tmp_path / "newtok", tmp_path / "up")
    assert report.composed > 0
    upgraded, tok, new_cfg = build_model_from_checkpoint(out)
    assert new_cfg.vocab_size == new_tok.vocab_size and upgraded.output_projection is not None
    assert upgraded.output_projection.weight.shape[0] == new_tok.vocab_size
    old_ids = {old_tok.token_bytes(i): i for i in range(old_tok.vocab_size)}
    for j in [j for j in copied_token_ids(old_tok, new_tok) if j >= NUM_SPECIAL]:  # by bytes
        i = old_ids[new_tok.token_bytes(j)]
        assert torch.equal(upgraded.output_projection.weight[j], model.output_projection.weight[i])
        assert torch.equal(upgraded.token_embedding.weight[j], model.token_embedding.weight[i])
