"""Record the event streams the console's snapshot and oracle tests replay, from real (very
small) runs:

    .venv/bin/python tests/console/data/record_events.py          # events.jsonl (simple)
    .venv/bin/python tests/console/data/record_events.py lonpt    # lonpt_events.jsonl

Runs the trainer in-process on the bundled sample corpus with a tiny model (4 ToT branches,
16 scratchpad slots) — for LONPT its smoke preset with ACT on, so the total is revised during
the run — and copies the run's events here with run-specific paths and wall-clock times
normalised (times shifted to start at 1_700_000_000, paths made relative), so the committed
file is the same stream a user's run emits, made deterministic for snapshots.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

T0 = 1_700_000_000.0


def _model() -> object:
    from core.model.config import NeuralNetConfig

    return NeuralNetConfig(
        d_model=64, nhead=4, num_kv_heads=2, num_encoder_layers=1, num_decoder_layers=1,
        dim_feedforward=128, max_position_embeddings=128, num_tot_branches=4,
        num_scratchpad_slots=16, memory_slots=16, memory_dim=64, memory_heads=4,
        kg_num_entities=64, kg_dim=16, num_tasks=4,
    )


def main(which: str = "simple") -> None:
    from core.data.sample import build_sample_corpus
    from core.runs.events import encode_event, read_events
    from core.train.config import RunConfig

    out = Path(__file__).with_name("events.jsonl" if which == "simple" else f"{which}_events.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_sample_corpus(Path(tmp) / "corpus")
        run_dir = Path(tmp) / f"{which}-tiny-recorded"
        if which == "simple":
            from core.train.simple import SimpleTrainer

            cfg = RunConfig(run_dir=str(run_dir), data=str(corpus.styles), profile="tiny",
                            steps=60, micro_batch=4, seq_len=48, precision="fp32", device="cpu",
                            log_every=2, eval_every=20, eval_max_batches=2, checkpoint_every=20,
                            keep_last=3, tokenizer_vocab_size=300, seed=7)
            assert SimpleTrainer(cfg, _model()).run() == "finished"
        else:
            from lonpt.trainer import LonptTrainer

            cfg = RunConfig(trainer="lonpt", preset="smoke", run_dir=str(run_dir),
                            data=str(corpus.styles), profile="tiny", precision="fp32",
                            device="cpu", tokenizer_vocab_size=300, seed=7,
                            options={"max_length": 48, "batch_size": 4, "steps_per_domain": 8,
                                     "log_every": 2, "val_max_batches": 2,
                                     "pncec_cycle_length": 8})
            assert LonptTrainer(cfg, _model()).run() == "finished"
        events = [e for e in read_events(run_dir / "events.jsonl")]
    t_first = events[0]["time"]
    lines = []
    for e in events:
        assert isinstance(e, dict), e
        e = json.loads(json.dumps(e).replace(tmp, "RUNS"))
        e["time"] = round(T0 + (e["time"] - t_first), 3)
        lines.append(encode_event(e))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} events to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
