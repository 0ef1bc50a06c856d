"""Generation speed (issue 9): KV cache vs. full recomputation, and speculative decoding.

1. tokens/s of greedy generation of ``--new-tokens`` (256) tokens with and without the KV cache
   (``core.infer.generation.generate_ids``, ``use_cache`` True/False), per profile; ratio cached /
   uncached (reference = uncached; the issue asks ≥ 5× at the small profile).
2. speculative decoding (``core.infer.inference.SpeculativeDecoder``, γ 4) with the tiny profile as
   draft for the small profile, greedy and sampled (T 1.0): tokens/s against the target alone
   (reference), acceptance rate, and a check that greedy speculative output equals greedy.

3. paged vs contiguous KV cache (``GenerationConfig.paged_blocks``) on a batch whose rows finish
   at different times (row i stops after ``(i+1)/B`` of ``--new-tokens``, like replies of mixed
   length): KV bytes held, the smallest pool that runs the batch, the peak-RSS growth of the
   run (each run in a fresh process), and generated tokens per CPU second (process time, so
   other engineers' load counts less). Reference = the contiguous cache.

4. MCTS generation (``core.infer.mcts.MCTSGenerator``, 50 simulations per token, a tiny reward model)
   against greedy generation of the same length: CPU seconds and the work done (``--mcts-only``).

Models are randomly initialised unless ``--target``/``--draft`` checkpoints are given; untrained
models agree on few greedy tokens, so greedy acceptance (and the speed-up) is low — the figure
says how the machinery performs, not what trained models would reach. Timings repeat
``--rounds`` times interleaved and report medians (the machine is shared and noisy).

    .venv/bin/python bench/generation.py                       # tiny + small, 256 tokens
    .venv/bin/python bench/generation.py --profiles small --rounds 3 --threads 1
    .venv/bin/python bench/generation.py --paged-only --profiles tiny small --paged-batch 8
    .venv/bin/python bench/generation.py --mcts-only --profiles tiny --new-tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import MALLOC_TUNABLES, PROFILES  # noqa: E402

VOCAB = 2048  # the default tokenizer size of `aeron-tui train`


def build(profile: str, seed: int) -> Any:
    import torch

    from core.model.config import NeuralNetConfig
    from core.model.model import TransformerNeuralNetBackbone

    torch.manual_seed(seed)
    cfg = NeuralNetConfig(vocab_size=VOCAB, max_position_embeddings=1024, **PROFILES[profile])
    return TransformerNeuralNetBackbone(cfg).eval()


def load(path: str) -> Any:
    from core.infer.inference import load_policy

    return load_policy(path)[0]


def prompt_ids(n: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(12, VOCAB, (1, n), generator=g)
    ids[0, 0], ids[0, -1] = 7, 2  # `<|user|> ... </s>` like a real prompt
    return ids, torch.ones_like(ids)


def time_it(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ----------------------------------------------------------------------------- paged KV cache
def staggered(batch: int, n: int) -> tuple[list[int], Any]:
    """Row i stops after ``n·(i+1)/batch`` tokens (replies of mixed length)."""
    ends = [max(1, round(n * (i + 1) / batch)) for i in range(batch)]

    def check(row: int, tokens: list[int]) -> bool:
        return len(tokens) >= ends[row]

    return ends, check


def kv_child(args: argparse.Namespace) -> None:
    """One measured run in this (fresh) process; prints a JSON line."""
    import torch

    from core.infer.generation import GenerationConfig, generate_ids

    torch.set_num_threads(args.threads)
    model = build(args.kv_profile, 0)
    ids, mask = prompt_ids(args.prompt_tokens)
    b, n = args.paged_batch, args.new_tokens
    ids, mask = ids.repeat(b, 1), mask.repeat(b, 1)
    blocks = 0 if args.kv_child == "contiguous" else int(args.kv_child)
    ends, check = staggered(b, n)
    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, stop_ids=(), paged_blocks=blocks)
    warm = GenerationConfig(**{**cfg.__dict__, "max_new_tokens": 4})
    generate_ids(model, ids, mask, warm)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c0, w0 = time.process_time(), time.perf_counter()
    out = generate_ids(model, ids, mask, cfg, stop_check=check)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = model.config
    per_token = c.num_decoder_layers * 2 * c.num_kv_heads * c.head_dim * 4  # fp32 K+V bytes
    print(json.dumps({
        "cpu": cpu, "wall": wall, "rss_mb": (after - before) / 1024,
        "tokens": int(out.lengths.sum()), "lengths_ok": out.lengths.tolist() == ends,
        "rows": out.tokens.tolist(), "stats": out.cache_stats, "per_token": per_token,
    }))


def run_child(args: argparse.Namespace, profile: str, mode: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--kv-child", mode, "--kv-profile", profile,
           "--paged-batch", str(args.paged_batch), "--new-tokens", str(args.new_tokens),
           "--prompt-tokens", str(args.prompt_tokens), "--threads", str(args.threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def paged_section(args: argparse.Namespace) -> None:
    from core.infer.paged_kv import BLOCK_SIZE, blocks_needed

    b, n = args.paged_batch, args.new_tokens
    ends, _ = staggered(b, n)
    positions = 2 + n - 1  # decoder prefix + generated tokens fed back
    worst = blocks_needed(b, positions)
    print(f"\n## Paged vs contiguous KV cache (batch {b}, rows stop after {ends[0]}..{ends[-1]} "
          f"tokens, greedy, medians of {args.rounds} fresh-process runs)\n")
    print("| profile | cache | KV bytes held at peak | pool blocks | peak RSS growth | "
          "tok / CPU s | ratio vs contiguous |")
    print("|---|---|---|---|---|---|---|")
    for profile in args.profiles:
        probe = run_child(args, profile, str(worst))  # a pool that always suffices
        peak = probe["stats"]["peak_blocks_in_use"]
        per_token, block_bytes = probe["per_token"], probe["stats"]["bytes_per_block"]
        runs: dict[str, list[dict[str, Any]]] = {"contiguous": [], str(peak): []}
        for _ in range(args.rounds):
            for mode in runs:
                runs[mode].append(run_child(args, profile, mode))
        same = all(r["rows"] == runs["contiguous"][0]["rows"] and r["lengths_ok"]
                   for rs in runs.values() for r in rs)
        ref = None
        for mode, rs in runs.items():
            rate = statistics.median(r["tokens"] / r["cpu"] for r in rs)
            rss = statistics.median(r["rss_mb"] for r in rs)
            if mode == "contiguous":
                held, pool, name = b * positions * per_token, "—", "contiguous"
                ref = rate
            else:
                held, pool, name = peak * block_bytes, f"{peak} (worst case {worst})", "paged"
            assert ref is not None
            print(f"| {profile} | {name} | {held / 2**20:.2f} MiB | {pool} | {rss:.1f} MiB | "
                  f"{rate:.1f} | **{rate / ref:.2f}×** |", flush=True)
        print(f"\n({profile}: paged tokens equal contiguous tokens in every run: "
              f"{'yes' if same else 'NO'}; block = {BLOCK_SIZE} tokens = "
              f"{block_bytes / 1024:.0f} KiB)\n")


# ----------------------------------------------------------------------------- MCTS
def mcts_section(args: argparse.Namespace) -> None:
    import torch

    from core.data.tokenizer import AeronTokenizer
    from core.infer.generation import GenerationConfig, encode_prompt_ids, generate_ids, pad_batch
    from core.infer.inference import reward_scores
    from core.infer.mcts import MCTSGenerator
    from core.model.config import NeuralNetConfig
    from core.train.rlhf.reward import RewardModel

    torch.set_num_threads(args.threads)
    tok = AeronTokenizer.byte_level()
    torch.manual_seed(3)
    rm = RewardModel(NeuralNetConfig(vocab_size=VOCAB, max_position_embeddings=1024,
                                     **PROFILES["tiny"])).eval()
    n = args.new_tokens
    cfg = GenerationConfig(max_new_tokens=n, do_sample=False, stop_ids=())
    prompt = "Explain why the sky is blue in one sentence."
    print(f"\n## MCTS ({args.simulations} simulations per token, {n} tokens, reward model tiny)\n")
    print("| policy | greedy CPU s | MCTS CPU s | ratio | decoder passes | replies scored |")
    print("|---|---|---|---|---|---|")
    for profile in args.profiles:
        model = build(profile, 0)
        ids, mask = pad_batch([encode_prompt_ids(tok, prompt, 1024).ids])
        c0 = time.process_time()
        generate_ids(model, ids, mask, cfg)
        greedy = time.process_time() - c0
        gen = MCTSGenerator(model, tok, lambda p, rs: reward_scores(rm, tok, p, rs),
                            simulations=args.simulations)
        c0 = time.process_time()
        found = gen.generate(prompt, cfg)
        mcts = time.process_time() - c0
        print(f"| {profile} | {greedy:.2f} | {mcts:.1f} | {mcts / greedy:.0f}× | "
              f"{found.decoder_passes} | {found.reward_evaluations} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=["tiny", "small"], choices=list(PROFILES))
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8],
                    help="prompts decoded together (a row per prompt)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: the shared 2-core box; more threads only add syncs)")
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--target", help="target checkpoint (default: random small)")
    ap.add_argument("--draft", help="draft checkpoint (default: random tiny)")
    ap.add_argument("--no-speculative", action="store_true")
    ap.add_argument("--paged-batch", type=int, default=8,
                    help="rows of the paged-vs-contiguous comparison")
    ap.add_argument("--paged-only", action="store_true",
                    help="run only the paged-vs-contiguous KV cache comparison")
    ap.add_argument("--no-paged", action="store_true")
    ap.add_argument("--mcts-only", action="store_true", help="run only the MCTS timing")
    ap.add_argument("--simulations", type=int, default=50, help="MCTS simulations per token")
    ap.add_argument("--kv-child", help=argparse.SUPPRESS)
    ap.add_argument("--kv-profile", default="tiny", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        os.execv(sys.executable, [sys.executable, *sys.argv])

    import torch

    from core.infer.generation import GenerationConfig, generate_ids
    from core.infer.inference import SpeculativeDecoder

    if args.kv_child:
        kv_child(args)
        return
    if args.mcts_only:
        print(f"torch {torch.__version__}, {args.threads} thread(s) (shared machine)")
        mcts_section(args)
        return
    if args.paged_only:
        print(f"torch {torch.__version__}, {args.threads} thread(s), prompt "
              f"{args.prompt_tokens} tokens, up to {args.new_tokens} new tokens (shared machine)")
        paged_section(args)
        return
    torch.set_num_threads(args.threads)
    ids, mask = prompt_ids(args.prompt_tokens)
    n = args.new_tokens
    print(f"torch {torch.__version__}, {args.threads} thread(s), prompt {args.prompt_tokens} "
          f"tokens, {n} new tokens, greedy, medians of {args.rounds} rounds (shared machine)\n")

    print("## KV cache\n")
    print("| profile | params | batch | cached tok/s | uncached tok/s | ratio (cached / uncached) |")
    print("|---|---|---|---|---|---|")
    greedy = GenerationConfig(max_new_tokens=n, do_sample=False, stop_ids=())
    nocache = GenerationConfig(**{**greedy.__dict__, "use_cache": False})
    same = True
    for profile in args.profiles:
        model = build(profile, 0)
        params = sum(p.numel() for p in model.parameters())
        generate_ids(model, ids, mask, GenerationConfig(max_new_tokens=8, do_sample=False))
        for b in args.batch_sizes:
            bids, bmask = ids.repeat(b, 1), mask.repeat(b, 1)
            cached_t, uncached_t = [], []
            for _ in range(args.rounds):
                t_c, out_c = time_it(lambda m=model, x=bids, k=bmask: generate_ids(m, x, k, greedy))
                t_u, out_u = time_it(lambda m=model, x=bids, k=bmask: generate_ids(m, x, k, nocache))
                cached_t.append(t_c)
                uncached_t.append(t_u)
                same &= torch.equal(out_c.tokens, out_u.tokens)
            c = b * n / statistics.median(cached_t)
            u = b * n / statistics.median(uncached_t)
            print(f"| {profile} | {params / 1e6:.1f} M | {b} | {c:.1f} | {u:.1f} | "
                  f"**{c / u:.1f}×** |", flush=True)
    print("\nCached and uncached outputs identical in every round:", "yes" if same else "NO")

    if not args.no_paged:
        paged_section(args)
    if args.no_speculative:
        return
    print(f"\n## Speculative decoding (draft tiny → target small, γ {args.gamma})\n")
    target = load(args.target) if args.target else build("small", 1)
    draft = load(args.draft) if args.draft else build("tiny", 2)
    decoder = SpeculativeDecoder(target, draft, gamma=args.gamma)
    print("| mode | target alone tok/s | speculative tok/s | speed-up | acceptance rate | "
          "target passes / token |")
    print("|---|---|---|---|---|---|")
    for mode, cfg in (
        ("greedy", greedy),
        ("sampled T=1.0", GenerationConfig(max_new_tokens=n, temperature=1.0, stop_ids=())),
    ):
        base_t, spec_t, rates, passes = [], [], [], []
        match = True
        for r in range(args.rounds):
            g1 = torch.Generator().manual_seed(r)
            t_b, out_b = time_it(lambda c=cfg, g=g1: generate_ids(target, ids, mask, c,
                                                                  generator=g))
            g2 = torch.Generator().manual_seed(r)
            t_s, out_s = time_it(lambda c=cfg, g=g2: decoder.generate(ids, mask, c, generator=g))
            base_t.append(t_b)
            spec_t.append(t_s)
            rates.append(out_s.stats.acceptance_rate)
            passes.append(out_s.stats.target_passes / max(1, len(out_s.tokens)))
            if mode == "greedy":
                match &= out_s.tokens == out_b.row(0)
        b, s = n / statistics.median(base_t), n / statistics.median(spec_t)
        print(f"| {mode} | {b:.1f} | {s:.1f} | **{s / b:.2f}×** | "
              f"{statistics.mean(rates):.1%} | {statistics.mean(passes):.2f} |")
        if mode == "greedy":
            print(f"\n(greedy speculative output equals target greedy output: "
                  f"{'yes' if match else 'NO'})\n")


if __name__ == "__main__":
    main()
