"""Training-step throughput and memory of the Aeron backbone vs Hugging Face T5 (issue 3).

One step = forward + backward + fused AdamW on a synthetic batch (all tokens real). Reports
tokens/s (encoder + decoder tokens), the reasoning engine's share of step time, memory
(bytes saved for backward; peak growth = RSS on CPU, max_memory_allocated on CUDA), model FLOPs
utilisation against this machine's matmul peak measured in the same run. Variants are timed
interleaved, round after round, and medians reported, because the machine is shared.

    .venv/bin/python bench/model_step.py                     # tiny + small, fp32 + bf16, vs T5
    .venv/bin/python bench/model_step.py --profiles small --rounds 5 --steps 3

``transformers`` comes from the ``bench`` extra (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import MALLOC_TUNABLES, PROFILES  # noqa: E402

# The enhancement stages (memory, uncertainty, ...) have their own benchmark
# (bench/enhancements_step.py); here: the backbone, with and without the reasoning engine.
BACKBONE_ONLY = dict.fromkeys(
    ("enable_multimodal", "enable_knowledge_graph", "enable_memory", "enable_continual",
     "enable_uncertainty", "enable_active_learning"), False)


@dataclass
class Variant:
    name: str
    profile: str
    precision: str
    step: Callable[[], None]
    tokens: int
    flops: float
    saved_bytes: int
    rss_delta: int
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float:
        """Median process CPU seconds per step: robust to other jobs taking the cores."""
        return statistics.median(self.cpu_times)

    @property
    def spread(self) -> float:
        """Relative interquartile spread of the step times (noise indicator)."""
        if len(self.times) < 4:
            return 0.0
        q = statistics.quantiles(self.times, n=4)
        return (q[2] - q[0]) / self.median


def matmul_peak(dtype, n: int = 2048, reps: int = 8) -> float:
    """Measured FLOP/s of an ``n x n x n`` matmul (median of ``reps``)."""
    import torch

    a = torch.randn(n, n, device=DEVICE).to(dtype)
    b = torch.randn(n, n, device=DEVICE).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


DEVICE = "cpu"  # set from --device


def autocast_ctx(precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast(DEVICE.split(":")[0], dtype=torch.bfloat16)
    return nullcontext()


def sync() -> None:
    import torch

    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def measure_step_memory(loss_fn: Callable[[], object]) -> tuple[int, int]:
    """(bytes saved for backward in one forward, peak growth over one forward+backward):
    RSS growth on CPU, ``torch.cuda.max_memory_allocated`` on CUDA."""
    import psutil
    import torch

    base = 0
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()

    saved = 0
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            saved += t.untyped_storage().nbytes()
        return t

    gc.collect()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    rss_peak = proc.memory_info().rss
    loss.backward()  # type: ignore[attr-defined]
    rss_peak = max(rss_peak, proc.memory_info().rss)
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()
        return saved, torch.cuda.max_memory_allocated() - base
    return saved, rss_peak - rss0


def count_flops(loss_fn: Callable[[], object]) -> float:
    """FLOPs of one forward + backward, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn().backward()  # type: ignore[attr-defined]
    return float(counter.get_total_flops())


def synthetic_batch(vocab: int, batch: int, seq: int):
    """Random encoder ids, decoder ids, labels and an all-ones mask on the bench device."""
    import torch

    ids, dec, labels = (torch.randint(3, vocab, (batch, seq), device=DEVICE) for _ in range(3))
    return ids, dec, labels, torch.ones(batch, seq, dtype=torch.long, device=DEVICE)


def build_aeron(profile: str, vocab: int, reasoning: bool, precision: str, batch: int,
                seq: int, seed: int) -> Variant:
    import torch

    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone

    torch.manual_seed(seed)
    cfg = NeuralNetConfig(vocab_size=vocab, max_position_embeddings=max(2048, seq),
                          enable_reasoning=reasoning, **BACKBONE_ONLY, **PROFILES[profile])
    model = TransformerNeuralNetBackbone(cfg).to(DEVICE).train()
    ids, dec, labels, mask = synthetic_batch(vocab, batch, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def loss_fn():
        with autocast_ctx(precision):
            return model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=mask,
                         labels=labels)["loss"]

    def step() -> None:
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    name = f"aeron reasoning {'on' if reasoning else 'off'}"
    return _finish(name, profile, precision, step, loss_fn, opt, 2 * batch * seq)


def build_t5(profile: str, vocab: int, precision: str, batch: int, seq: int,
             seed: int) -> Variant:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from core.model.config import NeuralNetConfig

    p = PROFILES[profile]
    ours = NeuralNetConfig(**p)
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=vocab, d_model=p["d_model"], d_kv=p["d_model"] // p["nhead"],
        d_ff=ours.swiglu_hidden, num_layers=p["num_encoder_layers"],
        num_decoder_layers=p["num_decoder_layers"], num_heads=p["nhead"],
        feed_forward_proj="gated-silu", dropout_rate=0.0, tie_word_embeddings=True,
        decoder_start_token_id=0, pad_token_id=0,
    )
    model = T5ForConditionalGeneration(cfg).to(DEVICE).train()
    ids, dec, labels, mask = synthetic_batch(vocab, batch, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def loss_fn():
        with autocast_ctx(precision):
            return model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                         decoder_attention_mask=mask, labels=labels).loss

    def step() -> None:
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _finish("hf T5 (gated-silu)", profile, precision, step, loss_fn, opt,
                   2 * batch * seq)


def _finish(name, profile, precision, step, loss_fn, opt, tokens) -> Variant:
    step()  # warm-up: allocates optimizer state
    step()
    opt.zero_grad(set_to_none=True)
    flops = count_flops(loss_fn)
    opt.zero_grad(set_to_none=True)
    saved, rss = measure_step_memory(loss_fn)
    opt.zero_grad(set_to_none=True)
    return Variant(name, profile, precision, step, tokens, flops, saved, rss)


def time_round(v: Variant, steps: int) -> None:
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        v.step()
        sync()
        v.times.append(time.perf_counter() - t)
        v.cpu_times.append(time.process_time() - c)
    log(f"  {v.profile}/{v.precision} {v.name}: {v.times[-1]:.2f} s wall, "
        f"{v.cpu_times[-1]:.2f} s CPU")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="tiny,small")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds over variants")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    ap.add_argument("--no-t5", action="store_true", help="skip the Hugging Face reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--loss-steps", type=int, default=60,
                    help="steps of the fp32-vs-bf16 loss check (0 to skip)")
    ap.add_argument("--keep-malloc", action="store_true",
                    help="do not set the glibc malloc tunables (noisier)")
    args = ap.parse_args(argv)

    if not args.keep_malloc and os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import torch

    global DEVICE
    DEVICE = args.device
    precisions = args.precisions.split(",")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"matmul peak fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s", flush=True)
    print(f"shape: batch {args.batch}, encoder/decoder length {args.seq}, vocab {args.vocab}; "
          f"load average before start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
          flush=True)

    rows: list[Variant] = []
    for profile in [p for p in args.profiles.split(",") if p]:
        for precision in precisions:
            log(f"building {profile}/{precision} variants")
            group = [
                build_aeron(profile, args.vocab, False, precision, args.batch, args.seq,
                            args.seed),
                build_aeron(profile, args.vocab, True, precision, args.batch, args.seq,
                            args.seed),
            ]
            if not args.no_t5:
                group.append(build_t5(profile, args.vocab, precision, args.batch, args.seq,
                                      args.seed))
            # The peak is re-measured every round, next to the steps it normalises: the
            # machine is shared and its free capacity drifts.
            peak_samples = [peaks[precision]]
            dtype = torch.float32 if precision == "fp32" else torch.bfloat16
            # Small profiles step in a few seconds: take more samples per round there.
            steps = args.steps * max(1, round(512 / PROFILES[profile]["d_model"]) ** 2)
            for _ in range(args.rounds):
                for v in group:
                    time_round(v, steps)
                peak_samples.append(matmul_peak(dtype, reps=3))
            rows.extend(group)
            report_group(group, statistics.median(peak_samples))
            del group
            gc.collect()
    if args.loss_steps:
        loss_parity(args.loss_steps, args.vocab, args.seed)
    return 0


def loss_parity(steps: int, vocab: int, seed: int) -> None:
    """Train the tiny profile on a fixed synthetic batch in fp32 and in bf16 autocast from the
    same initial weights; print the losses side by side (bf16 must stay within noise)."""
    import torch

    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone

    cfg = NeuralNetConfig(vocab_size=vocab, max_position_embeddings=2048, **BACKBONE_ONLY,
                          **PROFILES["tiny"])
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (8, 64), generator=gen).to(DEVICE)
    dec = torch.randint(3, vocab, (8, 64), generator=gen).to(DEVICE)
    labels = torch.roll(dec, -1, dims=1)  # learnable: predict the next decoder token
    curves: dict[str, list[float]] = {}
    # The second fp32 run starts from other initial weights: the seed-to-seed spread is the
    # noise the bf16 gap is judged against.
    for name, precision, init_seed in (("fp32", "fp32", seed), ("bf16", "bf16", seed),
                                        ("fp32 seed+1", "fp32", seed + 1)):
        torch.manual_seed(init_seed)
        model = TransformerNeuralNetBackbone(cfg).to(DEVICE).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        losses = []
        for _ in range(steps):
            with autocast_ctx(precision):
                loss = model(ids, decoder_input_ids=dec, labels=labels)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        curves[name] = losses
        log(f"  loss parity {name}: {losses[0]:.4f} -> {losses[-1]:.4f}")
    marks = sorted({0, steps // 4, steps // 2, 3 * steps // 4, steps - 1})
    print(f"\n== loss parity, tiny profile, fixed batch 8x64, AdamW lr 1e-3, {steps} steps")
    print("step         " + " ".join(f"{m:>8}" for m in marks))
    for name, losses in curves.items():
        print(f"{name:12} " + " ".join(f"{losses[m]:8.4f}" for m in marks))
    gap = abs(curves["bf16"][-1] - curves["fp32"][-1])
    spread = abs(curves["fp32 seed+1"][-1] - curves["fp32"][-1])
    print(f"final |bf16 - fp32| = {gap:.4f} nats; fp32 seed-to-seed = {spread:.4f} nats",
          flush=True)


def report_group(group: list[Variant], peak: float) -> None:
    off, on = group[0], group[1]
    ref = group[2] if len(group) > 2 else None
    print(f"\n== {off.profile} / {off.precision} "
          f"(median of {len(off.times)} steps per variant, interleaved; matmul peak "
          f"{peak / 1e12:.3f} TFLOP/s, median over the rounds)")
    print(f"{'variant':24} {'step ms':>9} {'iqr %':>6} {'CPU ms':>9} {'tokens/s':>10} "
          f"{'GFLOP/step':>11} {'MFU %':>6} {'saved MB':>9} {'peak+ MB':>8} {'vs T5':>6} "
          f"{'vs T5 CPU':>9}")
    for v in group:
        tps = v.tokens / v.median
        mfu = v.flops / v.median / peak * 100
        ratio = f"{(ref.median / v.median):.2f}x" if ref is not None else "-"
        cpu_ratio = f"{(ref.cpu_median / v.cpu_median):.2f}x" if ref is not None else "-"
        print(f"{v.name:24} {v.median * 1e3:9.1f} {v.spread * 100:6.1f} "
              f"{v.cpu_median * 1e3:9.1f} {tps:10.0f} {v.flops / 1e9:11.1f} {mfu:6.1f} "
              f"{v.saved_bytes / 2**20:9.1f} {v.rss_delta / 2**20:8.1f} {ratio:>6} "
              f"{cpu_ratio:>9}")
    share = (on.median - off.median) / on.median * 100
    cpu_share = (on.cpu_median - off.cpu_median) / on.cpu_median * 100
    print(f"reasoning engine share of step time: {share:.1f} % wall, {cpu_share:.1f} % CPU "
          f"(target <= 15 %)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
