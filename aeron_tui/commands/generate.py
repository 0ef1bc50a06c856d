"""`aeron-tui generate` and `aeron-tui chat`: text from a checkpoint, streamed as it is produced.

``generate`` answers one ``--prompt`` (plain sampling, ``--best-of N --reward CKPT``,
speculative decoding with ``--draft CKPT``, MCTS with ``--mcts --reward CKPT``; any of the
batched paths can keep its KV cache paged with ``--paged-blocks N``; ``--compile`` runs each
encoder/decoder layer through ``torch.compile``, ``--attention`` picks the attention kernel);
``chat`` is a small REPL that streams each reply.
The reply text goes to stdout; everything else (finish reason, speed, truncation warnings,
best-of-N scores, acceptance rate) goes to stderr, so ``generate ... > out.txt`` keeps only text.
Heavy imports happen inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

_CKPT = typer.Option(..., "--checkpoint", help="Checkpoint or run directory of the model.")
_MAX_NEW = typer.Option(128, "--max-new-tokens", help="Most tokens to generate.")
_TEMP = typer.Option(0.8, "--temperature", help="Sampling temperature; 0 = greedy.")
_TOP_K = typer.Option(0, "--top-k", help="Keep the k most likely tokens (0 = off).")
_TOP_P = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1.0 = off).")
_REP = typer.Option(1.0, "--repetition-penalty", help="> 1 discourages repeats (1.0 = off).")
_STOP = typer.Option([], "--stop", help="Stop string (repeatable).")
_SEED = typer.Option(None, "--seed", help="Seed for reproducible sampling.")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
_PAGED = typer.Option(
    0, "--paged-blocks", help="Keep the KV cache in N blocks of 16 tokens (paged; finished "
    "replies free theirs). 0 = the contiguous cache.")
_STRICT = typer.Option(
    False, "--no-truncate", help="Refuse prompts longer than the context instead of keeping "
    "their end (left truncation, reported on stderr).")

_COMPILE = typer.Option(
    False, "--compile", help="torch.compile each encoder/decoder layer (inductor); a layer that "
    "fails to compile runs eagerly with a warning. The first reply pays for compilation (seconds to "
    "minutes).")
_TRIPLE = typer.Option(
    [], "--triple", help="A knowledge-graph fact SUBJECT,RELATION,OBJECT given to the model "
    "(repeatable), as the 'triples' of a training record.")
_IMAGE = typer.Option(
    None, "--image", help="A PNG/JPEG image given to the model (a model trained with 'image' "
    "records; without it such a model reads a blank image).")
_TASK = typer.Option(
    None, "--task", help="The task name to condition on (a model trained with 'task' records "
    "or by `continue`; default: its default task).")
_ATTENTION = typer.Option(
    None, "--attention", help="Attention kernel: auto (FlashAttention-2 on CUDA fp16/bf16 when "
    "installed, else SDPA), flash2, sdpa or manual. Default: the checkpoint's attention_backend.")

_STYLE = typer.Option(
    None, "--style", help="Style label the prompt is tagged with, as in training "
    "(<|style|> LABEL). Default: the checkpoint's most common training style; '' for none.")
_PROVIDER = typer.Option(
    None, "--provider", help="Provider the prompt is tagged with, as in training "
    "(<|provider|> NAME). Default: the checkpoint's most common training provider; '' for none.")


def register(app: typer.Typer) -> None:
    """Add ``generate`` and ``chat``."""
    app.command("generate")(generate_command)
    app.command("chat")(chat_command)


def _device(name: str) -> Any:
    import torch

    from core.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but no CUDA device is available")
    return torch.device(name)


def _config(max_new_tokens: int, temperature: float, top_k: int, top_p: float,
            repetition_penalty: float, stop: list[str], strict: bool,
            paged_blocks: int = 0) -> Any:
    from core.infer.generation import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, stop_strings=tuple(stop),
        overflow="error" if strict else "truncate", paged_blocks=paged_blocks,
    )


def _loader(device: Any, attention: str | None, compile_layers: bool) -> Any:
    """``load_policy`` for this command: the chosen attention kernel, compiled when asked."""
    from core.errors import ConfigError
    from core.model.config import ATTENTION_BACKENDS

    if attention is not None and attention not in ATTENTION_BACKENDS:
        raise ConfigError(f"--attention must be one of {', '.join(ATTENTION_BACKENDS)}, "
                          f"got {attention!r}")

    def load(path: Path) -> tuple[Any, Any, Path]:
        from core.infer.inference import load_policy

        model, tokenizer, ckpt = load_policy(path, device, attention, on_info=_info)
        if compile_layers:
            from core.model.compile import compile_model

            compile_model(model)
        return model, tokenizer, ckpt

    return load


def _info(message: str) -> None:
    _note(f"info: {message}")


def _prompt_inputs(model: Any, checkpoint: Path, triple: list[str], image: Path | None,
                   task: str | None) -> dict[str, Any]:
    """The model's extra inputs from --triple/--image/--task (notes go to stderr)."""
    from core.infer.inference import parse_triple, prompt_inputs, resolve_checkpoint

    return prompt_inputs(model, resolve_checkpoint(checkpoint),
                         [parse_triple(t) for t in triple], image, task, on_info=_info)


def _note(message: str, style: str = "dim") -> None:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(message, style=style))


def _prompt_format(ckpt: Path, style: str | None, provider: str | None, cfg: Any) -> Any:
    """``cfg`` with the prompt head training used: the given ``--style``/``--provider``, else
    what the checkpoint recorded about its training prompts (the most common of each)."""
    from dataclasses import replace

    from core.runs.checkpoint import read_manifest

    recorded = (read_manifest(ckpt).get("corpus") or {}).get("prompt_format") or {}
    if style is None:
        style = recorded.get("style")
    if provider is None:
        provider = recorded.get("provider")
    style, provider = style or None, provider or None
    known = recorded.get("styles") or []
    if style is not None and known and style not in known:
        _note(f"warning: style {style!r} never occurred in training (its styles: "
              f"{', '.join(known)})", "yellow")
    head = "".join(
        [f"<|provider|> {provider} " if provider else "", f"<|style|> {style} " if style else ""])
    if head:
        _note(f"prompt formatted as in training: {head}<|user|> …")
    elif not recorded:
        _note("the checkpoint does not record its training prompt format; give --style/--provider "
              "if its training samples had them")
    return replace(cfg, style=style, provider=provider)


def _report(gen: Any, seconds: float) -> None:
    if gen.prompt_truncated:
        _note(f"warning: the prompt was longer than the context; its first "
              f"{gen.prompt_tokens_dropped} tokens were dropped", "yellow")
    n = len(gen.token_ids)
    rate = n / seconds if seconds > 0 else 0.0
    _note(f"[{gen.finish_reason}, {n} tokens, {rate:.1f} tokens/s]")
    paged = gen.extra.get("paged_cache")
    if paged:
        _note(f"paged KV cache: peak {paged['peak_blocks_in_use']} of {paged['num_blocks']} "
              f"blocks of {paged['block_size']} tokens in use, {paged['blocks_allocated']} "
              f"allocations ({paged['blocks_reused']} reused freed blocks)")


def _reward_scorer(paths: list[Path], tokenizer: Any, device: Any) -> Any:
    """One reward model, or the mean of K (``--reward`` repeated), sharing the policy's
    tokenizer (ConfigError naming the checkpoint otherwise)."""
    from core.infer.inference import check_shared_tokenizer
    from core.train.rlhf.ensemble import load_reward_scorer

    scorer, rm_tok, loaded = load_reward_scorer(paths, device)
    check_shared_tokenizer(tokenizer, rm_tok, "reward model", loaded[0].path)
    return scorer


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def generate_command(
    checkpoint: Path = _CKPT,
    prompt: str = typer.Option(..., "--prompt", help="The prompt text."),
    max_new_tokens: int = _MAX_NEW, temperature: float = _TEMP, top_k: int = _TOP_K,
    top_p: float = _TOP_P, repetition_penalty: float = _REP, stop: list[str] = _STOP,
    best_of: int = typer.Option(1, "--best-of", help="Sample N replies, keep the best (--reward)."),
    reward: list[Path] = typer.Option(
        [], "--reward", help="Reward-model checkpoint for --best-of or --mcts; repeat it for a "
        "K-model ensemble (mean score; its std is shown)."),
    draft: Path | None = typer.Option(
        None, "--draft", help="Smaller draft model (same tokenizer) for speculative decoding."),
    gamma: int = typer.Option(4, "--gamma", help="Draft tokens per speculative step."),
    ensemble: list[Path] = typer.Option(
        [], "--ensemble", help="More checkpoints (same tokenizer) decoded together: log-mean-softmax."),
    mcts: bool = typer.Option(
        False, "--mcts", help="Monte-Carlo tree search over next tokens, valued by --reward."),
    simulations: int = typer.Option(50, "--simulations", help="MCTS simulations per token."),
    c_puct: float = typer.Option(1.0, "--c-puct", help="MCTS exploration constant c."),
    paged_blocks: int = _PAGED,
    seed: int | None = _SEED, device: str = _DEVICE, strict: bool = _STRICT,
    compile_layers: bool = _COMPILE, attention: str | None = _ATTENTION,
    triple: list[str] = _TRIPLE, image: Path | None = _IMAGE, task: str | None = _TASK,
    style: str | None = _STYLE, provider: str | None = _PROVIDER,
) -> None:
    """Generate a reply to one prompt (formatted as in training), streaming it to stdout.

    A model trained on records with triples, images or tasks takes the same inputs here:
    --triple SUBJECT,RELATION,OBJECT (repeatable), --image PATH, --task NAME.
    """
    import time

    from core.errors import ConfigError
    from core.infer.generation import generate

    cfg = _config(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, strict,
                  paged_blocks)
    if best_of > 1 and not reward:
        raise ConfigError("--best-of needs a reward-model checkpoint: add --reward CKPT")
    if mcts and not reward:
        raise ConfigError("--mcts needs a reward-model checkpoint: add --reward CKPT")
    if mcts and (best_of > 1 or draft is not None or ensemble):
        raise ConfigError("--mcts cannot be combined with --best-of, --draft or --ensemble")
    if reward and best_of < 2 and not mcts:
        raise ConfigError("--reward is used with --best-of N (N >= 2) or --mcts")
    if draft is not None and best_of > 1:
        raise ConfigError("--draft and --best-of cannot be combined")
    if ensemble and (draft is not None or best_of > 1):
        raise ConfigError("--ensemble cannot be combined with --draft or --best-of")
    if paged_blocks and (draft is not None or mcts):
        raise ConfigError("--paged-blocks works with plain and --best-of generation; drop it "
                          "with --draft or --mcts")
    if paged_blocks and ensemble:
        raise ConfigError("--paged-blocks needs a single model; drop it with --ensemble")
    if (triple or image is not None or task is not None) and (
            mcts or best_of > 1 or draft is not None or ensemble):
        raise ConfigError("--triple, --image and --task work with plain generation; drop "
                          "--mcts, --best-of, --draft and --ensemble")
    dev = _device(device)
    load_policy = _loader(dev, attention, compile_layers)
    model, tokenizer, ckpt = load_policy(checkpoint)
    if triple:
        from core.infer.inference import parse_triple

        for t in triple:
            parse_triple(t)  # a malformed --triple is the only line, before any note
    cfg = _prompt_format(ckpt, style, provider, cfg)
    if mcts:
        from core.infer.inference import reward_scores
        from core.infer.mcts import MCTSGenerator

        rm = _reward_scorer(reward, tokenizer, dev)

        def scorer(text: str, replies: Any) -> list[float]:
            return reward_scores(rm, tokenizer, text, replies)

        t0 = time.perf_counter()
        searcher = MCTSGenerator(model, tokenizer, scorer, simulations=simulations,
                                 c_puct=c_puct)
        found = searcher.generate(prompt, cfg, on_text=_write)
        _write("\n")
        _report(found.generation, time.perf_counter() - t0)
        value = found.generation.extra.get("mcts_value")
        if len(reward) > 1:
            _note(f"reward: mean of an ensemble of {len(reward)} reward models")
        _note(f"mcts: {simulations} simulations per token, {found.reward_evaluations} replies "
              f"scored, {found.decoder_passes} decoder passes; reward of the reply "
              + (f"{value:+.3f}" if value is not None else "n/a"))
        return
    if ensemble:
        from core.evolve.merge import EnsemblePolicy
        from core.infer.inference import check_shared_tokenizer

        members = [model]
        for path in ensemble:
            member, member_tok, member_path = load_policy(path)
            check_shared_tokenizer(tokenizer, member_tok, "ensemble member", member_path)
            members.append(member)
        model = EnsemblePolicy(members).to(dev)
    t0 = time.perf_counter()
    if draft is not None:
        from core.infer.inference import SpeculativeDecoder, check_shared_tokenizer

        draft_model, draft_tok, draft_path = load_policy(draft)
        check_shared_tokenizer(tokenizer, draft_tok, "draft model", draft_path)
        decoder = SpeculativeDecoder(model, draft_model, gamma=gamma)
        gen, stats = decoder.generate_text(tokenizer, prompt, cfg, seed=seed, on_text=_write)
        _write("\n")
        _report(gen, time.perf_counter() - t0)
        _note(f"speculative: acceptance rate {stats.acceptance_rate:.1%} "
              f"({stats.accepted}/{stats.drafted} drafted tokens), "
              f"{stats.target_passes} target passes")
        return
    if best_of > 1:
        from core.infer.inference import BestOfNSampler

        rm = _reward_scorer(reward, tokenizer, dev)
        sampler = BestOfNSampler(model, rm, tokenizer, n=best_of, temperature=temperature or 0.8,
                                 top_p=top_p if top_p < 1.0 else 0.95)
        result = sampler.sample(prompt, cfg, seed=seed)
        _write(result.best.text + "\n")
        _report(result.best, time.perf_counter() - t0)
        stds = result.reward_stds
        if stds is not None:
            _note(f"reward: mean ± std over an ensemble of {len(reward)} reward models")
        for i, (cand, score) in enumerate(zip(result.candidates, result.scores, strict=True)):
            mark = "*" if i == result.best_index else " "
            preview = cand.text.replace("\n", " ")[:60]
            spread = f" ± {stds[i]:.3f}" if stds is not None else ""
            _note(f"{mark} {i}: reward {score:+.3f}{spread}  {preview}")
        return
    inputs = _prompt_inputs(model, checkpoint, triple, image, task)
    [gen] = generate(model, tokenizer, [prompt], cfg, seed=seed,
                     on_text=lambda _row, piece: _write(piece), inputs=inputs)
    _write("\n")
    _report(gen, time.perf_counter() - t0)


def chat_command(
    checkpoint: Path = _CKPT,
    max_new_tokens: int = _MAX_NEW, temperature: float = _TEMP, top_k: int = _TOP_K,
    top_p: float = _TOP_P, repetition_penalty: float = _REP, stop: list[str] = _STOP,
    seed: int | None = _SEED, device: str = _DEVICE, strict: bool = _STRICT,
    triple: list[str] = _TRIPLE, image: Path | None = _IMAGE, task: str | None = _TASK,
    system: str = typer.Option("", "--system", help="A system prompt for the conversation."),
    history: bool = typer.Option(
        True, "--history/--no-history", help="Feed the earlier turns back (the chat template "
        "multi-turn data trains on; oldest turns drop out when the context is full), or answer "
        "each line alone."),
    style: str | None = _STYLE, provider: str | None = _PROVIDER,
) -> None:
    """A simple REPL: each line you type is answered, streamed token by token.

    The conversation so far goes to the encoder through the chat template multi-turn training
    data uses (README: "Data formats"); the oldest turns drop out when the context is full.
    Empty line or EOF (Ctrl-D) ends; Ctrl-C stops a reply. --triple/--image/--task are given
    with every turn.
    """
    import time

    from core.infer.generation import generate
    from core.infer.inference import load_policy

    cfg = _config(max_new_tokens, temperature, top_k, top_p, repetition_penalty, stop, strict)
    model, tokenizer, path = load_policy(checkpoint, _device(device), on_info=_info)
    inputs = _prompt_inputs(model, path, triple, image, task)
    cfg = _prompt_format(path, style, provider, cfg)
    _note(f"chatting with {path} — empty line or Ctrl-D to quit")
    turn = 0
    turns: list[tuple[str, str]] = []
    while True:
        try:
            line = input("> ") if sys.stdin.isatty() else sys.stdin.readline()
        except EOFError:
            break
        if not line or not line.strip():
            break
        t0 = time.perf_counter()
        try:
            [gen] = generate(model, tokenizer, [line.strip()], cfg,
                             seed=None if seed is None else seed + turn,
                             on_text=lambda _row, piece: _write(piece), inputs=inputs,
                             history=turns, system=system)
        except KeyboardInterrupt:
            _write("\n")
            _note("(interrupted)")
            continue
        _write("\n")
        _report(gen, time.perf_counter() - t0)
        if history:
            turns += [("user", line.strip()), ("assistant", gen.text)]
        turn += 1
