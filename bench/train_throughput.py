"""Training engine overhead: tokens/s of the engine's step vs the bare model step (issue 4).

Both run on the same model, the same fused AdamW and the *same batches*. An engine step is the
whole thing a run does per step (data loading and collation, step metrics, schedule, clipping,
finiteness check, control polling, and every ``--log-every`` steps a step event with memory
stats written to a real ``events.jsonl``); the bare step is ``bench/model_step.py``'s (forward,
backward, ``opt.step()``, ``zero_grad``) on the same batch, and "bare + clip" adds the
global-norm clipping the recipe prescribes (training.md §3) — so "vs +clip" is the overhead of
events, logging and data alone. The three run step by step on one batch, rotating which goes
first; one block of ``--steps`` (= one log interval) gives one ratio, and the median over
``--rounds`` blocks is reported, because the machine is shared. Those A/B ratios carry the
load's noise (several %), so the engine's own time is also *accounted inside* its steps:
wall time minus the time spent in forward, backward, clipping, ``optimizer.step`` and
``zero_grad``
("accounted %", relative to that model time) — the direct measure of the overhead. Evaluation and checkpoints are switched
off: they are work a run asks for, not per-step overhead.

    .venv/bin/python bench/train_throughput.py                       # tiny, fp32 and bf16
    .venv/bin/python bench/train_throughput.py --profile small --precisions bf16 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import MALLOC_TUNABLES  # noqa: E402


def build_trainer(profile: str, precision: str, batch: int, seq: int, log_every: int,
                  run_dir: Path) -> Any:
    from core.data.sample import ensure_sample_corpus
    from core.train.config import RunConfig
    from core.train.simple import SimpleTrainer
    from profiles.catalog import load_profile

    class RecordingTrainer(SimpleTrainer):
        recorded: list[Any]

        def next_batch(self) -> Any:
            batch_ = super().next_batch()
            self.recorded.append(batch_)
            return batch_

    cfg = RunConfig(
        run_dir=str(run_dir), data=str(ensure_sample_corpus().styles), steps=10**9,
        micro_batch=batch, grad_accum=1, seq_len=seq, precision=precision, device="cpu",
        log_every=log_every, eval_every=10**9, checkpoint_every=10**9, seed=0,
        tokenizer_vocab_size=2048, profile=profile,
    )
    trainer = RecordingTrainer(cfg, load_profile(profile).model)
    trainer.recorded = []
    trainer.setup()
    return trainer


def engine_steps(trainer: Any, steps: int) -> float:
    trainer.recorded = []
    t = time.perf_counter()
    for _ in range(steps):
        trainer._one_step()
        trainer._after_step()
    return time.perf_counter() - t


def bare_steps(trainer: Any, batches: list[Any], clip: bool = False) -> float:
    """The model_step.py step on the engine's model, optimizer and batches (``clip``: plus the
    engine's global-norm gradient clipping, to separate clipping math from engine overhead)."""
    import torch

    model, opt = trainer.model, trainer.optimizer
    model.train()
    params = [p for g in opt.param_groups for p in g["params"]]
    # The engine zeroes gradients at the start of its step, so it leaves them allocated; the
    # bare step (model_step.py) starts from none. Free them here, outside the timing.
    opt.zero_grad(set_to_none=True)
    t = time.perf_counter()
    for batch in batches:
        with trainer.autocast():
            loss = model(batch["input_ids"], batch["attention_mask"],
                         decoder_input_ids=batch["decoder_input_ids"],
                         decoder_attention_mask=batch["decoder_attention_mask"],
                         labels=batch["labels"])["loss"]
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, trainer.config.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def accounted_overhead(trainer: Any, steps: int) -> tuple[float, float]:
    """(engine seconds, model seconds) over ``steps`` engine steps, where "model" is the time
    inside forward (``compute_loss``), ``backward``, clipping, ``optimizer.step`` and
    ``zero_grad`` (everything the bare step + clipping does) — measured
    inside the same steps, so the remainder is the engine's own time whatever the load."""
    import torch

    spent = [0.0]

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0
        return wrapper

    saved = (trainer.compute_loss, torch.Tensor.backward, torch.nn.utils.clip_grad_norm_,
             trainer.optimizer.step, trainer.optimizer.zero_grad)
    trainer.compute_loss = timed(saved[0])
    torch.Tensor.backward = timed(saved[1])  # type: ignore[method-assign]
    torch.nn.utils.clip_grad_norm_ = timed(saved[2])
    trainer.optimizer.step = timed(saved[3])
    trainer.optimizer.zero_grad = timed(saved[4])  # part of the bare step too
    try:
        total = engine_steps(trainer, steps)
    finally:
        del trainer.compute_loss, trainer.optimizer.step, trainer.optimizer.zero_grad
        torch.Tensor.backward = saved[1]  # type: ignore[method-assign]
        torch.nn.utils.clip_grad_norm_ = saved[2]
    return total, spent[0]


def tokens_of(batches: list[Any]) -> int:
    return sum(int(b["attention_mask"].sum()) + int(b["decoder_attention_mask"].sum())
               for b in batches)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=10, help="step pairs per block")
    ap.add_argument("--accounted-steps", type=int, default=50,
                    help="engine steps timed with the in-step accounting")
    ap.add_argument("--keep-malloc", action="store_true")
    args = ap.parse_args(argv)

    if not args.keep_malloc and os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; profile "
          f"{args.profile}, micro-batch {args.batch}, seq_len {args.seq}, log every "
          f"{args.log_every}; {args.rounds} blocks x {args.steps} alternating step pairs")
    print(f"{'precision':9} {'engine ms':>10} {'bare ms':>9} {'+clip ms':>10} "
          f"{'engine tok/s':>13} {'vs bare %':>12} {'vs +clip %':>12} {'accounted %':>12}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            trainer = build_trainer(args.profile, precision, args.batch, args.seq,
                                    args.log_every, Path(tmp) / precision)
            engine_steps(trainer, 3)  # warm-up: optimizer state, allocator, kernels
            bare_steps(trainer, trainer.recorded)
            over_bare, over_clip, e_times, b_times, c_times, e_tps = [], [], [], [], [], []
            for _ in range(args.rounds):
                # One block = one log interval. Engine, bare and bare+clip steps run on the same
                # batch, step by step, rotating which goes first, so load bursts hit all alike.
                t = {"engine": 0.0, "bare": 0.0, "clip": 0.0}
                batches: list[Any] = []
                for k in range(args.steps):
                    state = trainer.train_loader.state_dict()
                    batch = next(trainer.train_loader)
                    trainer.train_loader.load_state_dict(state)  # the engine draws it again
                    batches.append(batch)
                    order = ["engine", "bare", "clip"]
                    order = order[k % 3:] + order[: k % 3]
                    for name in order:
                        if name == "engine":
                            t[name] += engine_steps(trainer, 1)
                        else:
                            t[name] += bare_steps(trainer, [batch], clip=name == "clip")
                ntok = tokens_of(batches)
                over_bare.append(t["engine"] / t["bare"] - 1.0)
                over_clip.append(t["engine"] / t["clip"] - 1.0)
                e_times.append(t["engine"] / args.steps)
                b_times.append(t["bare"] / args.steps)
                c_times.append(t["clip"] / args.steps)
                e_tps.append(ntok / t["engine"])
            acc_total, acc_model = accounted_overhead(trainer, args.accounted_steps)
            accounted = (acc_total - acc_model) / acc_model * 100
            ob = statistics.median(over_bare) * 100
            oc = statistics.median(over_clip) * 100
            worst = max(worst, accounted)
            print(f"{trainer.precision:9} {statistics.median(e_times) * 1e3:10.1f} "
                  f"{statistics.median(b_times) * 1e3:9.1f} "
                  f"{statistics.median(c_times) * 1e3:10.1f} {statistics.median(e_tps):13.0f} "
                  f"{ob:12.1f} {oc:12.1f} {accounted:12.2f}")
            trainer.cleanup()
            del trainer
    print(f"engine's own time (events, logging, data, schedule, checks) per step, accounted "
          f"inside the steps: worst {worst:.2f} % of the model's time (target < 5 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
