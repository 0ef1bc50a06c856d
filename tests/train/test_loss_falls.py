"""The default tiny run learns more than a bigram model: the tiny profile's recipe exactly as
`aeron-tui train simple --profile tiny --steps N` runs it, on the bundled sample corpus.

Its first (and only) evaluation carries the run's own bigram and unigram baselines, counted on its
training split and scored on the same validation pairs as the model; the model must end below
both in bits per byte. Measured (bench/RESULTS.md "recipe_search", `bench/recipe_search.py --stage
crossing`, 1 thread, evaluated every 25 steps on the same 512 validation pairs; bigram 1.761 bpb,
unigram 3.296): a 300-step run first evaluates below the bigram at step 275 (seeds 0 and 1, 42 and
41 CPU-s of training since the memory read was fixed and the tiny bank sized 256 x 256; 98 and 91
before) and ends at 1.687 / 1.712 bpb; a 250-step run ended above it (1.783, session 4), since
the last 20 % of a run (the lr decay) is where it gains most. CI_STEPS = 300 is the shortest run
with a clear margin (0.075 bpb on seed 0, the seed this test runs); the test takes about 51 s on
this box, the issue's target being "below the bigram within 5 CPU-minutes".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.runs.events import read_events

CI_STEPS = 300


@pytest.mark.slow
def test_default_tiny_run_falls_below_its_bigram_baseline(tmp_path: Path,
                                                         sample_corpus_dir: Path) -> None:
    from aeron_tui.commands.train import build_run_config, execute

    run_dir = tmp_path / "run"
    cfg, model = build_run_config(
        "simple", profile="tiny",
        flags={"run_dir": str(run_dir), "data": str(sample_corpus_dir / "styles.jsonl"),
               "steps": CI_STEPS, "seed": 0},
        sets=[f"eval_every={CI_STEPS}", f"checkpoint_every={CI_STEPS}"])
    assert execute("simple", cfg, model, quiet=True) == "finished"
    events = [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, dict)]
    [ev] = [e for e in events if e["type"] == "eval"]
    steps = [e["loss"] for e in events if e["type"] == "step"]
    print(f"step loss {steps[0]:.3f} -> {steps[-1]:.3f}; val {ev['loss']:.4f} nats, "
          f"{ev['bpb']:.4f} bpb; bigram {ev['baseline_bigram_bpb']:.4f}, unigram "
          f"{ev['baseline_unigram_bpb']:.4f} bpb")
    assert ev["global_step"] == CI_STEPS
    assert ev["bpb"] < ev["baseline_bigram_bpb"] < ev["baseline_unigram_bpb"]
    # The run ends with a live sample of the final model.
    assert [e for e in events if e["type"] == "sample"][-1]["global_step"] == CI_STEPS
