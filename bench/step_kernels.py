"""The step's kernels, before and after the issue-16 fixes, paired in one process (CPU time).

Each row times the previous formulation and the current one on the same inputs, interleaved,
and prints the median CPU milliseconds of a forward + backward:

* RMSNorm backward: ``<g·w, x>`` as a batched 1×1 matmul per row (before) vs ``(g·x) @ w``;
* cross-entropy of bf16 logits: ``F.cross_entropy(logits.float())`` (before) vs
  :func:`core.model.layers.token_cross_entropy` (chunked above 8 k vocabulary);
* attention under CPU bf16 autocast: the bf16 kernel (before) vs :func:`core.model.layers.sdpa`
  (fp32 while training on the CPU);
* the scratchpad read at the tiny and small widths: explicit per-head projections (before) vs
  the folded :class:`core.model.reasoning.ScratchpadAttention`;
* the neural memory (whole module, bank full) at the tiny step's shape: the read on SDPA over
  the bank copied per sample (before; what the GPU runs) vs the CPU's shared-bank read;
* the reasoning engine (whole module, bf16 autocast) at the tiny step's shape, 2 branches with
  one kept (the tiny profile) and 4 with two kept: the Tree of Thought's contradiction heads on
  every ordered pair of branches through their concatenation layers (before) vs
  ``_contradictions`` now (no kept pair: not run; else unordered pairs, layers split by block).

    .venv/bin/python bench/step_kernels.py [--reps 20]

One thread. Whole training steps against Hugging Face T5: bench/model_step.py.
"""

# ruff: noqa: B023  (each loop's closures are timed inside that same iteration)
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def paired(before: Callable[[], None], after: Callable[[], None], reps: int) -> tuple[float, float]:
    for f in (before, after):
        f()
        f()
    a: list[float] = []
    b: list[float] = []
    for _ in range(reps):
        for f, out in ((before, a), (after, b)):
            t = time.process_time()
            f()
            out.append(time.process_time() - t)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from core.model.config import NeuralNetConfig
    from core.model.layers import AeronRMSNorm, sdpa, token_cross_entropy
    from core.model.reasoning import ScratchpadAttention

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows: list[tuple[str, str, float, float]] = []

    # -- RMSNorm backward (the custom Function's arithmetic, old formula vs the layer)
    for shape in ((8, 48, 256), (4, 256, 512)):
        d = shape[-1]
        x = torch.randn(*shape)
        g = torch.randn(*shape, dtype=torch.bfloat16)
        w = torch.randn(d)
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(d).add_(1e-6)
        rstd = rstd.rsqrt_()

        def old_backward() -> None:
            xf, gf = x.float(), g.float()
            gw = gf * w
            dot = (gw.unsqueeze(-2) @ xf.unsqueeze(-1)).squeeze(-1)
            (rstd.reshape(1, -1) @ (gf * xf).reshape(-1, d)).reshape(d)
            coef = rstd.pow(3).mul_(dot).div_(d)
            gw.mul_(rstd).addcmul_(xf, coef, value=-1.0).to(x.dtype)

        norm = AeronRMSNorm(d)
        norm.weight.data.copy_(w)
        xr = x.clone().requires_grad_()

        def new_forward_backward() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = norm(xr)
            y.backward(g)

        def old_forward_backward() -> None:  # same forward, the old backward's arithmetic
            with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
                norm(x)
            old_backward()

        before, after = paired(old_forward_backward, new_forward_backward, args.reps)
        rows.append(("RMSNorm fwd+bwd", f"{shape}", before, after))

    # -- cross-entropy of bf16 logits
    for n, v in ((1024, 32000), (480, 2048)):
        base = torch.randn(n, v) * 3
        target = torch.randint(0, v, (n,))

        def plain() -> None:
            logits = base.bfloat16().requires_grad_()
            F.cross_entropy(logits.float(), target, reduction="none").sum().backward()

        def ours() -> None:
            logits = base.bfloat16().requires_grad_()
            token_cross_entropy(logits, target).sum().backward()

        before, after = paired(plain, ours, args.reps)
        rows.append(("cross-entropy bf16", f"{n} tokens x {v} vocab", before, after))

    # -- attention under bf16 autocast while training
    for b, h, g_, s, causal in ((8, 4, 2, 48, True), (4, 8, 2, 256, True)):
        q0 = torch.randn(b, h, s, 64, dtype=torch.bfloat16)
        k0 = torch.randn(b, g_, s, 64, dtype=torch.bfloat16)
        v0 = torch.randn(b, g_, s, 64, dtype=torch.bfloat16)

        def run(fn: Callable[..., torch.Tensor]) -> None:
            q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = fn(q, k, v, is_causal=causal, enable_gqa=True)
            out.float().sum().backward()

        before, after = paired(lambda: run(F.scaled_dot_product_attention), lambda: run(sdpa),
                               args.reps)
        rows.append(("attention bf16 (causal)", f"B{b} H{h}/{g_} S{s} hd64", before, after))

    # -- scratchpad read: explicit per-head projections vs the folded module
    for d, slots, b, s in ((256, 8, 8, 48), (512, 16, 4, 256)):
        cfg = NeuralNetConfig(vocab_size=64, d_model=d, nhead=max(1, d // 64),
                              num_kv_heads=max(1, d // 128), num_scratchpad_slots=slots)
        att = ScratchpadAttention(cfg)
        hh, hd = att.heads, att.head_dim
        queries = torch.randn(b, s, d, requires_grad=True)
        values = torch.randn(b, slots, d)
        keys = torch.randn(slots, d)
        typ = torch.zeros(1, slots, dtype=torch.long)
        age = torch.zeros(1, slots, dtype=torch.long)

        def explicit() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                k = att.k_proj(keys.expand(b, slots, d)).view(b, slots, hh, hd).transpose(1, 2)
                v = att.v_proj(values).view(b, slots, hh, hd).transpose(1, 2)
                q = att.q_proj(queries).view(b, s, hh, hd).transpose(1, 2)
                w = (q @ k.transpose(-1, -2)).float().div(math.sqrt(hd)).softmax(-1)
                out = att.o_proj((w.to(v.dtype) @ v).transpose(1, 2).reshape(b, s, d))
            out.float().sum().backward()

        def folded() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out, _ = att(queries, keys, values, typ, typ, age)
            out.float().sum().backward()

        before, after = paired(explicit, folded, args.reps)
        rows.append(("scratchpad read bf16", f"d{d} P{slots} B{b} S{s}", before, after))

    # -- neural memory, whole module fwd + bwd with the bank full: the read on SDPA over the bank
    # copied per sample (before; the GPU's) vs the shared-bank read the CPU now takes
    from core.model.memory import NeuralMemoryNetwork

    for d, m, heads, slots, b, s in ((256, 512, 8, 1000, 16, 34), (256, 256, 4, 256, 16, 34)):
        cfg = NeuralNetConfig(vocab_size=64, d_model=d, nhead=4, num_kv_heads=2,
                              memory_slots=slots, memory_dim=m, memory_heads=heads)
        mem = NeuralMemoryNetwork(cfg)
        mem.write(torch.randn(slots, m), torch.randn(slots, m))
        fused = NeuralMemoryNetwork(cfg)
        fused.load_state_dict(mem.state_dict())
        fused._shared_bank_read = fused._fused_read  # type: ignore[method-assign]
        x0 = torch.randn(b, s, d)
        mask = torch.ones(b, s, dtype=torch.bool)
        mask[:, s - 4:] = False

        def read(module: NeuralMemoryNetwork) -> None:
            x = x0.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y, recall, _ = module(x, mask)
            (y.float().sum() + recall.float().sum()).backward()

        before, after = paired(lambda: read(fused), lambda: read(mem), args.reps)
        rows.append(("memory read bf16 (module)", f"d{d} m{m} h{heads} W{slots} B{b} S{s}",
                     before, after))

    # -- reasoning engine, whole module fwd + bwd: the contradiction heads as they were
    from core.model.reasoning import AeronReasoningEngine

    for branches, keep in ((2, 1), (4, 2)):
        cfg = NeuralNetConfig(vocab_size=64, d_model=256, nhead=4, num_kv_heads=2,
                              dim_feedforward=512, num_tot_branches=branches, tot_keep_k=keep,
                              num_scratchpad_slots=8, memory_dim=256)
        torch.manual_seed(0)
        now = AeronReasoningEngine(cfg)
        was = AeronReasoningEngine(cfg)
        was.load_state_dict(now.state_dict())
        tot_was = was.tree_of_thought
        tot_was._contradictions = lambda s_, q_, keep_, t=tot_was: _all_pairs_contradictions(
            t, s_, q_, keep_)
        x0 = torch.randn(16, 34, 256)
        recall = torch.randn(16, 34, 256)
        mask = torch.ones(16, 34, dtype=torch.bool)
        mask[:, 30:] = False

        def engine(module: AeronReasoningEngine) -> None:
            x = x0.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = module(x, mask, memory_recall=recall)
            (out.hidden.float().square().mean() + out.tot_branch_scores.sum()).backward()

        before, after = paired(lambda: engine(was), lambda: engine(now), args.reps)
        rows.append(("reasoning engine bf16", f"d256 N{branches} keep{keep} B16 S34",
                     before, after))

    print(f"torch {torch.__version__}, 1 thread, median CPU ms of {args.reps} paired reps")
    print(f"{'kernel':26} {'shape':28} {'before ms':>10} {'after ms':>9} {'speed-up':>9}")
    for name, shape, before, after in rows:
        print(f"{name:26} {shape:28} {before:10.2f} {after:9.2f} {before / after:8.2f}x")
    return 0


def _all_pairs_contradictions(tot: Any, s: Any, q: Any, keep: Any) -> tuple[Any, Any, Any]:
    """The contradiction step as it was: both heads on every ordered pair of branches, through
    their concatenations (``(B, N, N, 3d)`` and ``(B, N, N, 2d)``), kept pairs or not."""
    import torch

    b, n, d = s.shape
    si = s[:, :, None, :].expand(b, n, n, d)
    sj = s[:, None, :, :].expand(b, n, n, d)
    raw = torch.sigmoid(tot.contra(torch.cat((si, sj, si * sj), dim=-1)).squeeze(-1))
    upper = torch.ones(n, n, dtype=torch.bool, device=s.device).triu(1)
    levels = torch.where(upper, raw, raw.transpose(1, 2))
    levels = levels.masked_fill(torch.eye(n, dtype=torch.bool, device=s.device), 0.0)
    active = keep[:, :, None] & keep[:, None, :] & (levels.detach() > tot.contradiction_threshold)
    qd = q.detach()
    idx = torch.arange(n, device=s.device)
    lower = (qd[:, :, None] < qd[:, None, :]) | (
        (qd[:, :, None] == qd[:, None, :]) & (idx[:, None] > idx[None, :]))
    lose = active & lower
    synth = tot.resolver(torch.cat((sj, si), dim=-1)) - si
    coef = (levels * lose.to(levels.dtype))[..., None]
    count = lose.sum(dim=2, keepdim=True).clamp_min(1).to(s.dtype)
    return levels, lose.sum(), (coef * synth).sum(dim=2) / count


if __name__ == "__main__":
    raise SystemExit(main())
