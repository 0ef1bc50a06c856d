"""compile_model and the attention backends (spec rlhf.md §6) on the CPU, tiny profile.

1. Train step (forward + backward, fp32, batch ``--batch`` × ``--seq``): CPU seconds per step,
   eager (reference) vs ``compile_model(backend="inductor")`` (per encoder/decoder layer), after
   warm-up; the one-off compile cost (first steps) is reported separately.
2. Greedy generation of ``--new-tokens`` tokens with the KV cache: CPU seconds per run, eager
   (reference) vs compiled; the first compiled run (compilation, dynamic-shape recompiles) is
   reported separately. Outputs must be equal.
3. Attention backends on the same train step: ``sdpa`` (reference), ``manual``.

Times are ``time.process_time`` (CPU time of this process, so other engineers' load on the
shared 2-core machine counts less than in wall time), medians over ``--rounds`` interleaved
rounds, one torch thread.

    .venv/bin/python bench/attention_compile.py
    .venv/bin/python bench/attention_compile.py --rounds 5 --new-tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY = dict(d_model=256, nhead=4, num_kv_heads=2, num_encoder_layers=2, num_decoder_layers=2,
            dim_feedforward=512, num_tot_branches=2, num_scratchpad_slots=8)
VOCAB = 2048


def build(attention: str = "auto") -> Any:
    import torch

    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone

    torch.manual_seed(0)
    cfg = NeuralNetConfig(vocab_size=VOCAB, max_position_embeddings=1024,
                          attention_backend=attention, **TINY)
    model = TransformerNeuralNetBackbone(cfg)
    from core.model.layers import set_attention_backend

    return set_attention_backend(model, attention)


def cpu_seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def train_step(model: Any, batch: int, seq: int) -> Callable[[], float]:
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(12, VOCAB, (batch, seq), generator=g)
    dec = torch.randint(12, VOCAB, (batch, seq), generator=g)
    model.train()

    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = model(ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec,
                     labels=dec)["loss"]
        loss.backward()
        return float(loss.detach())

    return step


def generation(model: Any, new_tokens: int) -> Callable[[], list[int]]:
    import torch

    from core.infer.generation import GenerationConfig, generate_ids

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(12, VOCAB, (1, 24), generator=g)
    cfg = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, stop_ids=())
    model.eval()

    def run() -> list[int]:
        with torch.no_grad():
            return generate_ids(model, ids, torch.ones_like(ids), cfg).row(0)

    return run


def row(name: str, seconds: float, ref: float, note: str = "") -> str:
    return f"| {name} | {seconds * 1000:.1f} | {ref / seconds:.2f}× | {note} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--mode", default=None, help="torch.compile mode (inductor)")
    args = parser.parse_args()

    import os

    import torch

    from core.model.compile import compile_model, compiled_layers

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.2f}")

    # 1. train step
    eager_m, comp_m, manual_m = build(), build(), build("manual")
    comp_m.load_state_dict(eager_m.state_dict())
    manual_m.load_state_dict(eager_m.state_dict())
    compile_model(comp_m, backend="inductor", mode=args.mode)
    steps = {"eager": train_step(eager_m, args.batch, args.seq),
             "inductor": train_step(comp_m, args.batch, args.seq),
             "manual": train_step(manual_m, args.batch, args.seq)}
    first_compile, loss_c = cpu_seconds(steps["inductor"])
    wall0 = time.perf_counter()
    steps["inductor"]()  # second call: backward graphs / recompiles settle
    settle = time.perf_counter() - wall0
    loss_e = steps["eager"]()
    steps["manual"]()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            times[name].append(cpu_seconds(fn)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n### train step (B {args.batch}, S {args.seq}, fp32, forward + backward)\n")
    print(f"layers compiled: {sum(compiled_layers(comp_m).values())}/{len(compiled_layers(comp_m))}"
          f"; first compiled step {first_compile:.1f} CPU s (compilation), next {settle:.2f} s "
          f"wall; loss eager {loss_e:.5f} vs compiled {loss_c:.5f}\n")
    print("| variant | CPU ms / step | speed vs eager | note |\n|---|---|---|---|")
    print(row("eager (sdpa)", med["eager"], med["eager"], "reference"))
    print(row("compile_model inductor", med["inductor"], med["eager"], "per layer"))
    print(row("eager, manual attention", med["manual"], med["eager"], "reference kernel"))

    # 2. generation
    gen_e, gen_c = generation(eager_m, args.new_tokens), generation(comp_m, args.new_tokens)
    first_gen, out_c = cpu_seconds(gen_c)
    out_e = gen_e()
    gt: dict[str, list[float]] = {"eager": [], "inductor": []}
    for _ in range(args.rounds):
        gt["eager"].append(cpu_seconds(gen_e)[0])
        gt["inductor"].append(cpu_seconds(gen_c)[0])
    gm = {k: statistics.median(v) for k, v in gt.items()}
    print(f"\n### greedy generation ({args.new_tokens} new tokens, prompt 24, KV cache)\n")
    print(f"first compiled run {first_gen:.1f} CPU s (compilation + dynamic-shape recompiles); "
          f"outputs equal: {out_c == out_e}\n")
    print("| variant | CPU ms / reply | speed vs eager | note |\n|---|---|---|---|")
    print(row("eager", gm["eager"], gm["eager"], "reference"))
    print(row("compile_model inductor", gm["inductor"], gm["eager"],
              f"{args.new_tokens / gm['inductor']:.0f} tokens / CPU s"))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
