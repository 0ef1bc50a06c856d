"""What an evaluation carries: bits per byte, the n-gram reference baselines, live samples."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import run_config, tiny_model_config

from core.data.formatting import encoder_ids
from core.data.ngram import ngram_baselines


def _train(tmp_path: Path, corpus: Path, **changes: Any) -> tuple[Any, list[dict[str, Any]]]:
    from core.train.simple import SimpleTrainer

    events: list[dict[str, Any]] = []
    cfg = run_config(tmp_path / "run", corpus, **changes)
    trainer = SimpleTrainer(cfg, tiny_model_config(), listeners=[events.append])
    assert trainer.run() == "finished"
    return trainer, events


def test_evals_carry_bpb_baselines_and_samples_formatted_as_training(
        tmp_path: Path, small_corpus: Path) -> None:
    from core.evolve.evaluation import evaluate_pairs
    from core.infer.generation import generate_ids

    trainer, events = _train(tmp_path, small_corpus, sample_prompts=3, sample_max_tokens=6)
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["global_step"] for e in evals] == [6, 12]
    # A sample event follows every eval, at its step.
    order = [(e["type"], e["global_step"]) for e in events if e["type"] in ("eval", "sample")]
    assert order == [("eval", 6), ("sample", 6), ("eval", 12), ("sample", 12)]

    # bpb and loss of the last eval equal an independent evaluation of the same pairs by the
    # final model (token-summed cross-entropy of the logits ÷ ln 2 ÷ the targets' UTF-8 bytes).
    pairs = trainer.baseline_pairs()[1]
    truth = evaluate_pairs(trainer.model, pairs, max_samples=None)
    assert evals[-1]["loss"] == pytest.approx(truth.loss, rel=1e-5)
    assert evals[-1]["bpb"] == pytest.approx(truth.bpb, rel=1e-5)
    assert truth.target_bytes == sum(p.target_bytes for p in pairs) > 0

    # The baselines ride on the first eval only, counted on this run's own splits.
    expect = ngram_baselines(trainer.train_loader.pairs, pairs, trainer.tokenizer.vocab_size)
    assert evals[0]["baseline_bigram_bpb"] == pytest.approx(expect.bigram_bpb)
    assert evals[0]["baseline_unigram_bpb"] == pytest.approx(expect.unigram_bpb)
    assert expect.bigram_bpb < expect.unigram_bpb
    assert "baseline_bigram_bpb" not in evals[1]

    # Each prompt is a validation sample of the corpus, encoded exactly as training encodes it
    # (provider, style, user text), and the text is the final model's greedy reply to it.
    rows = [json.loads(line) for line in small_corpus.read_text().splitlines()]
    last = [e for e in events if e["type"] == "sample"][-1]["samples"]
    assert len(last) == 3
    assert len({s["style"] for s in last}) == 3  # one prompt per style
    for sample, prompt in zip(last, trainer.sample_prompts(), strict=True):
        row = next(r for r in rows if r["user_input"] == sample["prompt"]
                   and r["style_label"] == sample["style"])
        ids = encoder_ids(trainer.tokenizer, row["user_input"], trainer.seq_len,
                          style=row["style_label"], provider=row["provider"])
        assert list(prompt.ids) == ids
        out = generate_ids(trainer.model, torch.tensor([ids]), torch.ones(1, len(ids),
                           dtype=torch.long), _greedy(6))
        reply = trainer.tokenizer.decode([t for t in out.row(0) if t != 2])
        assert sample["text"] == reply


def _greedy(n: int) -> Any:
    from core.infer.generation import GenerationConfig

    return GenerationConfig(max_new_tokens=n, do_sample=False, temperature=0.0)


def test_user_prompts_get_the_training_head_and_sampling_can_be_spaced_or_off(
        tmp_path: Path, small_corpus: Path) -> None:
    trainer, events = _train(tmp_path / "a", small_corpus, eval_every=4,
                             sample_prompts=["What is 2 plus 2?"], sample_every=100,
                             sample_max_tokens=4)
    samples = [e for e in events if e["type"] == "sample"]
    # sample_every 100 > the run: the first eval and the last step still show samples.
    assert [e["global_step"] for e in samples] == [4, 12]
    assert [s["prompt"] for s in samples[0]["samples"]] == ["What is 2 plus 2?"]
    [prompt] = trainer.sample_prompts()
    style = samples[0]["samples"][0]["style"]
    assert list(prompt.ids) == encoder_ids(trainer.tokenizer, "What is 2 plus 2?",
                                           trainer.seq_len, style=style, provider="synthetic")
    for changes in ({"sample_prompts": 0}, {"sample_every": 0}):
        _, quiet = _train(tmp_path / str(changes), small_corpus, steps=6, **changes)
        assert not [e for e in quiet if e["type"] == "sample"]
        assert [e for e in quiet if e["type"] == "eval"]


def test_bpb_aggregates_nats_and_bytes_over_batches_by_hand(tmp_path: Path,
                                                            small_corpus: Path) -> None:
    """Two batches with known per-token losses: bpb = Σ loss·tokens ÷ ln 2 ÷ Σ bytes."""
    from core.train.simple import SimpleTrainer

    class Fixed(SimpleTrainer):
        def compute_loss(self, batch: dict[str, torch.Tensor]) -> Any:
            n = (batch["labels"] != -100).sum()
            return torch.tensor(float(batch["labels"].shape[1])), None, n

    trainer = Fixed(run_config(tmp_path / "run", small_corpus), tiny_model_config())
    trainer.setup()
    try:
        b1 = {"labels": torch.tensor([[5, 6, -100]]), "target_bytes": torch.tensor([7])}
        b2 = {"labels": torch.tensor([[5, 6, 7, 8, 9], [1, -100, -100, -100, -100]]),
              "target_bytes": torch.tensor([3, 1])}
        for b in (b1, b2):
            b.update(input_ids=b["labels"].clamp(min=0), attention_mask=torch.ones_like(b["labels"]),
                     decoder_input_ids=b["labels"].clamp(min=0),
                     decoder_attention_mask=torch.ones_like(b["labels"]))
        result = trainer.evaluate([b1, b2])
    finally:
        trainer.cleanup()
    # batch 1: 2 tokens at 3 nats; batch 2: 6 tokens at 5 nats; 11 bytes in all.
    assert result["loss"] == pytest.approx((2 * 3 + 6 * 5) / 8)
    assert result["bpb"] == pytest.approx((2 * 3 + 6 * 5) / math.log(2) / 11)


def test_default_evaluation_size_follows_the_training_between_evaluations(
        tmp_path: Path, small_corpus: Path) -> None:
    """eval_max_batches unset: at most EVAL_SAMPLES samples, and no more than a forward pass of
    10 % of the training between two evaluations; an explicit value wins."""
    from core.train import engine
    from core.train.simple import SimpleTrainer

    def batches(**changes: Any) -> tuple[int, int]:
        cfg = run_config(tmp_path / "run", small_corpus, **{"eval_max_batches": None, **changes})
        trainer = SimpleTrainer(cfg, tiny_model_config())
        trainer.micro_batch, trainer.grad_accum = cfg.micro_batch, cfg.grad_accum or 1
        trainer.total_steps = cfg.steps
        return trainer.eval_max_batches(), trainer.micro_batch

    # 30 steps of 8 samples, one evaluation at the end: 0.1 × 240 / 0.42 ≈ 57 samples.
    n, mb = batches(steps=30, eval_every=200, micro_batch=8)
    assert n == math.ceil(0.1 * 240 / engine.FORWARD_COST / mb) == 8
    # Long runs with rare evaluations stop at EVAL_SAMPLES.
    n, mb = batches(steps=5000, eval_every=1000, micro_batch=8)
    assert n * mb == engine.EVAL_SAMPLES
    # A very short run still validates MIN_EVAL_SAMPLES.
    n, mb = batches(steps=2, eval_every=200, micro_batch=8)
    assert n * mb == engine.MIN_EVAL_SAMPLES
    assert batches(steps=30, eval_max_batches=3)[0] == 3
    # A real run at the default size: the plan it announces is what it validates.
    trainer, events = _train(tmp_path / "real", small_corpus, steps=4, eval_every=4,
                             eval_max_batches=None, sample_prompts=0)
    [started] = [e for e in events if e["type"] == "run_started"]
    assert started["eval_batches"] == len(trainer.validation_batches()) == trainer.eval_max_batches()


def test_plain_text_corpus_samples_continue_the_end_of_a_window(tmp_path: Path) -> None:
    import random

    from core.data.tokenizer import USER_ID
    from core.train.samples import CONTINUATION_CHARS

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6)))
             for _ in range(400)]
    docs = [" ".join(rng.choice(words) for _ in range(150)) for _ in range(40)]
    corpus = tmp_path / "prose.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    trainer, events = _train(tmp_path, corpus, steps=2, eval_every=2, sample_prompts=2,
                             sample_max_tokens=4, seq_len=120)
    [event] = [e for e in events if e["type"] == "sample"]
    prompts = trainer.sample_prompts()
    assert len(event["samples"]) == 2 and all(USER_ID not in p.ids for p in prompts)
    for sample, prompt in zip(event["samples"], prompts, strict=True):
        # The window's end, which the reply continues (longer windows are cut at the front).
        window = trainer.tokenizer.decode(list(prompt.ids)).strip()
        assert len(window) > CONTINUATION_CHARS
        assert sample["prompt"] == "…" + window[-CONTINUATION_CHARS:]
        assert "style" not in sample
    assert trainer.corpus["prompt_format"] == {"kind": "text"}
