"""LONPT vs. the simple trainer at the same token budget and seed, on two kinds of corpus.

    .venv/bin/python bench/lonpt_vs_simple.py [--corpus bundled prose] [--seeds 0 1]
        [--steps-per-domain 20 60] [--cycles 2] [--seq-len 64] [--lonpt-lr LR]
        [--ablate akap|all|none] [--threads 1]

The tiny profile, 1 torch thread, precision ``auto`` (what a user gets). Corpora:

* ``bundled`` — the bundled sample corpus: styles of very different kinds (documentation Q/A,
  code, arithmetic reasoning); AKAP assigns domains by style (``style_map``);
* ``prose`` — plain documentation prose: the full docstrings of the standard-library modules the
  sample corpus also draws on, cut into paragraphs, each paragraph a continuation pair (its first
  sentences → the rest); one style, so AKAP splits it into three equal random domains (``equal``).

For each corpus, budget (``--steps-per-domain``: the length of one domain pass; 3 domains ×
``--cycles`` passes each) and seed: a LONPT run (the ``light`` preset at ``--lonpt-lr``, by
default the preset's own re-checked learning rate, all data, batch 4 that ACT may grow), the
same without AKAP at the same number of samples (``--ablate akap``: one domain, three times the
steps per pass), and a simple run with the tiny profile's default recipe (its learning rate,
schedule and warmup, micro-batch 8) and as many samples as LONPT consumed. Every final model is
scored on the same held-out pairs (the corpus's hash validation split, ``--val-batches``
batches of 8, length-spread). ``--ablate all`` also switches PNCEC, ACT and HPF off one at a time.

Every figure comes from the runs themselves; the machine is shared, so timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_common import MALLOC_TUNABLES  # noqa: E402

# Each variant keeps the token budget: without ACT the micro-batch stays at 4, so twice the
# steps; without AKAP there is one domain, so three times the steps per (single) domain.
ABLATIONS = {
    "no AKAP": ({"akap_enable": False}, 3),
    "no PNCEC": ({"pncec_enable": False}, 1),
    "no ACT": ({"act_enable": False}, 2),
    "no HPF": ({"hpf_enable": False}, 1),
}

# Runs in a fresh interpreter (torch, once imported, patches inspect): every standard-library
# module's docstrings, the module's and its own classes' and functions' longer ones.
_PROSE_SCRIPT = r"""
import importlib, inspect, json, sys, warnings
warnings.simplefilter("ignore")
out = {}
for name in sys.argv[1:]:
    try:
        mod = importlib.import_module(name)
    except Exception:
        continue
    parts = [inspect.cleandoc(mod.__doc__)] if mod.__doc__ else []
    for attr in sorted(vars(mod)):
        obj = getattr(mod, attr)
        if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        doc = inspect.getdoc(obj)
        if doc and len(doc) > 200:
            parts.append(doc)
    out[name] = parts
print(json.dumps(out))
"""
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def build_prose_corpus(out: Path) -> Path:
    """``out/styles.jsonl`` of continuation pairs from standard-library documentation prose."""
    from core.data.stdlib_docs import STDLIB_MODULES

    found = subprocess.run([sys.executable, "-I", "-c", _PROSE_SCRIPT, *STDLIB_MODULES],
                           capture_output=True, text=True, check=True, timeout=300)
    docs: dict[str, list[str]] = json.loads(found.stdout)
    rows = []
    for module in sorted(docs):
        for d, doc in enumerate(docs[module]):
            for p, para in enumerate(doc.split("\n\n")):
                text = " ".join(para.split())
                sentences = [s for s in _SENTENCE.split(text) if s]
                if len(text) < 120 or len(sentences) < 2:
                    continue  # a pair needs a prompt and a continuation
                cut = max(1, len(sentences) // 2)
                rows.append({"provider": "python-docs", "style_label": "prose",
                             "user_input": " ".join(sentences[:cut]),
                             "assistant_reply": " ".join(sentences[cut:]),
                             "turn_id": f"{module}:{d}:{p}"})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "styles.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class _Counting:
    """Mixin: counts training tokens/samples and the time spent in optimizer steps."""

    tokens_seen = 0
    samples_seen = 0
    step_time = 0.0

    def next_batch(self) -> Any:
        batch = super().next_batch()  # type: ignore[misc]
        self.tokens_seen += int(batch["attention_mask"].sum()) + int(
            batch["decoder_attention_mask"].sum())
        self.samples_seen += int(batch["input_ids"].shape[0])
        return batch

    def train_step(self) -> None:
        t0 = time.process_time()
        super().train_step()  # type: ignore[misc]
        self.step_time += time.process_time() - t0


def _classes() -> tuple[type, type]:
    from core.train.simple import SimpleTrainer
    from lonpt.trainer import LonptTrainer

    class CountingLonpt(_Counting, LonptTrainer):
        pass

    class CountingSimple(_Counting, SimpleTrainer):
        pass

    return CountingLonpt, CountingSimple


def _common_val_batches(trainer: Any, styles: Path, n_batches: int) -> list[Any]:
    """The corpus's hash validation split, length-spread, ``n_batches`` batches of 8."""
    from core.data.formatting import encode_styles_sample
    from core.data.loader import collate
    from core.data.styles import read_styles, split_samples

    _, val = split_samples(read_styles(styles))
    pairs = sorted((encode_styles_sample(s, trainer.tokenizer, trainer.seq_len) for s in val),
                   key=len)
    limit = n_batches * 8
    if len(pairs) > limit:
        stride = len(pairs) / limit
        pairs = sorted((pairs[int(i * stride)] for i in range(limit)), key=len)
    return [collate(pairs[i:i + 8], with_target_bytes=True) for i in range(0, len(pairs), 8)]


def _run(cls: type, cfg: Any, model_cfg: Any, styles: Path, val_batches: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    trainer = cls(cfg, model_cfg)
    status = trainer.run()
    wall = time.perf_counter() - t0
    if status != "finished":
        raise RuntimeError(f"{cfg.trainer} run ended {status}")
    result = trainer.evaluate(_common_val_batches(trainer, styles, val_batches))
    return {
        "val_loss": result["loss"],
        "val_bpb": result["bpb"],
        "tokens": trainer.tokens_seen,
        "samples": trainer.samples_seen,
        "steps": trainer.global_step,
        "tok_cpu_s": trainer.tokens_seen / max(1e-9, trainer.step_time),
        "wall_s": wall,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "lr": trainer.base_lr,
    }


QUIET = ["checkpoint_every=1000000", "keep_last=1", "sample_prompts=0"]


def _lonpt_cfg(run_dir: Path, styles: Path, seed: int, args: argparse.Namespace,
               corpus: str, steps_per_domain: int, extra: dict[str, Any]) -> tuple[Any, Any]:
    from aeron_tui.commands.train import build_run_config

    sets = [*QUIET, "dataset_fraction=1.0", f"domain_cycles={args.cycles}",
            f"steps_per_domain={steps_per_domain}", "val_max_batches=10", "log_every=10",
            "tokenizer_vocab_size=2048"]
    if corpus == "prose":
        sets.append('akap_assignment="equal"')
    sets += [f"{k}={json.dumps(v)}" for k, v in extra.items()]
    flags: dict[str, Any] = {"run_dir": str(run_dir), "data": str(styles), "seed": seed,
                             "seq_len": args.seq_len, "preset": "light"}
    if args.lonpt_lr is not None:
        flags["learning_rate"] = args.lonpt_lr
    return build_run_config("lonpt", profile="tiny", flags=flags, sets=sets)


def _simple_cfg(run_dir: Path, styles: Path, seed: int, steps: int,
                args: argparse.Namespace) -> tuple[Any, Any]:
    from aeron_tui.commands.train import build_run_config

    flags = {"run_dir": str(run_dir), "data": str(styles), "seed": seed, "steps": steps,
             "micro_batch": 8, "seq_len": args.seq_len}
    return build_run_config("simple", profile="tiny", flags=flags,
                            sets=[*QUIET, "eval_every=1000000", "log_every=10",
                                  "tokenizer_vocab_size=2048"])


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", choices=("bundled", "prose"),
                        default=["bundled", "prose"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps-per-domain", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--val-batches", type=int, default=40)
    parser.add_argument("--lonpt-lr", type=float, default=None,
                        help="LONPT's learning rate (default: the light preset's)")
    parser.add_argument("--ablate", choices=("akap", "all", "none"), default="akap")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--home", type=Path, default=None,
                        help="AERON_TUI_HOME for the corpus/tokenizer cache (default: a temp dir)")
    args = parser.parse_args()

    if os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        os.environ["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        os.execv(sys.executable, [sys.executable, *sys.argv])  # the allocator reads it at start

    home = args.home or Path(tempfile.mkdtemp(prefix="lonpt-bench-"))
    os.environ["AERON_TUI_HOME"] = str(home)
    import shutil

    import torch

    from core.data.sample import ensure_sample_corpus

    torch.set_num_threads(args.threads)
    lonpt_cls, simple_cls = _classes()
    work = Path(tempfile.mkdtemp(prefix="lonpt-bench-runs-"))
    corpora = {"bundled": lambda: ensure_sample_corpus().styles,
               "prose": lambda: build_prose_corpus(home / "prose")}
    ablations = {"akap": ["no AKAP"], "all": list(ABLATIONS), "none": []}[args.ablate]
    t_start = time.perf_counter()
    table: list[str] = []

    def run_lonpt(styles: Path, corpus: str, seed: int, spd: int, tag: str,
                  extra: dict[str, Any]) -> dict[str, Any]:
        run_dir = work / f"lonpt-{corpus}-{spd}-{tag}-{seed}"
        cfg, model = _lonpt_cfg(run_dir, styles, seed, args, corpus, spd, extra)
        out = _run(lonpt_cls, cfg, model, styles, args.val_batches)
        shutil.rmtree(run_dir, ignore_errors=True)
        return out

    for corpus in args.corpus:
        styles = corpora[corpus]()
        for spd in args.steps_per_domain:
            rows: dict[str, list[dict[str, Any]]] = {"LONPT": [], "simple": []}
            for seed in args.seeds:
                lon = run_lonpt(styles, corpus, seed, spd, "full", {})
                steps = max(1, round(lon["samples"] / 8))
                run_dir = work / f"simple-{corpus}-{spd}-{seed}"
                cfg, model = _simple_cfg(run_dir, styles, seed, steps, args)
                sim = _run(simple_cls, cfg, model, styles, args.val_batches)
                shutil.rmtree(run_dir, ignore_errors=True)
                rows["LONPT"].append(lon)
                rows["simple"].append(sim)
                for name in ablations:
                    extra, factor = ABLATIONS[name]
                    out = run_lonpt(styles, corpus, seed, spd * factor, name.replace(" ", "_"),
                                    extra)
                    rows.setdefault(f"LONPT {name}", []).append(out)
                print(f"{corpus}, {spd} steps/domain, seed {seed}: " + "; ".join(
                    f"{k} {v[-1]['val_loss']:.4f} ({v[-1]['steps']} steps, "
                    f"{v[-1]['samples']} samples)" for k, v in rows.items()), flush=True)
            for name, runs in rows.items():
                table.append(
                    f"| {corpus} | {spd} | {name} | {runs[0]['lr']:g} | "
                    f"{statistics.mean(r['steps'] for r in runs):.0f} | "
                    f"{statistics.mean(r['samples'] for r in runs):,.0f} | "
                    f"{_mean_spread([r['val_loss'] for r in runs])} | "
                    f"{_mean_spread([r['val_bpb'] for r in runs])} | "
                    f"{statistics.mean(r['tok_cpu_s'] for r in runs):,.0f} |")
            lon_l = [r["val_loss"] for r in rows["LONPT"]]
            sim_l = [r["val_loss"] for r in rows["simple"]]
            print(f"  LONPT − simple: {statistics.mean(lon_l) - statistics.mean(sim_l):+.4f} "
                  f"(per seed {', '.join(f'{a - b:+.4f}' for a, b in zip(lon_l, sim_l, strict=True))})",
                  flush=True)
            if "LONPT no AKAP" in rows:
                no = [r["val_loss"] for r in rows["LONPT no AKAP"]]
                print(f"  AKAP effect (LONPT − LONPT without AKAP): "
                      f"{statistics.mean(lon_l) - statistics.mean(no):+.4f}", flush=True)
    print()
    print(f"seq_len {args.seq_len}, {args.cycles} cycles, seeds {args.seeds}, "
          f"{args.threads} thread(s), val {args.val_batches} batches of 8")
    print("| corpus | steps/domain | trainer | lr | steps | samples | val loss (mean ± sd) | "
          "val bpb | tokens / CPU-s in steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(table))
    shutil.rmtree(work, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
