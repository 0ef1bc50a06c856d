"""Bad input, tried the way a user meets it: through the real CLI entry point (``main``).

Every case asserts the exit code, that stderr is exactly one ``error: ...`` line (or empty when
the input is accepted) naming the option, file or field, and that the pre-existing run directory
(one small real run, built once per session) is byte-identical afterwards. Most cases never
reach torch; the CLI runs in-process so the suite stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from train_helpers import cli_train_args

# Warnings Python hides by default never reach a user's terminal.
_HIDDEN = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, list[str]]:
    """(exit code, stdout, stderr lines — with any warning the user would see counted as a line)."""
    from aeron_tui.cli import main

    monkeypatch.setenv("AERON_TUI_DEBUG", "")
    monkeypatch.delenv("AERON_TUI_DEBUG")
    code = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    lines += [f"{w.category.__name__}: {w.message}" for w in caught
              if not issubclass(w.category, _HIDDEN)]
    return code, out, lines


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) → SHA-256; directories → "dir"."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() and not p.is_symlink() else (
            "link:" + os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@dataclass
class Ctx:
    run: Path
    data: Path
    tmp: Path
    other_tok: Path

    @property
    def ckpt(self) -> Path:
        return self.run / "checkpoints" / "step_000008"

    @property
    def new(self) -> Path:
        return self.tmp / "new_run"


@dataclass
class Case:
    id: str
    args: Callable[[Ctx], list[str]]
    expect: Callable[[Ctx], list[str]]
    code: int | None = None  # None: any non-zero exit code
    damage: Callable[[Ctx], None] | None = None  # gets a private copy of the run to damage
    stdout: Callable[[Ctx], list[str]] = field(default=lambda c: [])

    def __str__(self) -> str:
        return self.id


def _train(trainer: str, *extra: str) -> Callable[[Ctx], list[str]]:
    """`train TRAINER` on a fresh run dir with the tiny fast settings, plus ``extra``."""
    def build(c: Ctx) -> list[str]:
        args = cli_train_args(c.new, c.data, 4)
        args[1] = trainer
        return [*args, "--quiet", *[e.format(**_fields(c)) for e in extra]]
    return build


def _cmd(*parts: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [p.format(**_fields(c)) for p in parts]


def _fields(c: Ctx) -> dict[str, Any]:
    return {"run": c.run, "data": c.data, "tmp": c.tmp, "ckpt": c.ckpt, "new": c.new,
            "ckpt4": c.run / "checkpoints" / "step_000004", "other_tok": c.other_tok}


def _say(*parts: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [p.format(**_fields(c)) for p in parts]


def _resume(*extra: str) -> Callable[[Ctx], list[str]]:
    """`train simple` resuming the run's step-8 checkpoint explicitly."""
    def build(c: Ctx) -> list[str]:
        return [*cli_train_args(c.run, c.data, 12), "--quiet", "--resume", str(c.ckpt),
                *[e.format(**_fields(c)) for e in extra]]
    return build


def _fix_manifest(ckpt: Path, name: str) -> None:
    manifest = json.loads((ckpt / "manifest.json").read_text())
    f = ckpt / name
    manifest["files"][name] = {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                               "size": f.stat().st_size}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _edit_state(**changes: Any) -> Callable[[Ctx], None]:
    def damage(c: Ctx) -> None:
        path = c.ckpt / "trainer_state.json"
        state = json.loads(path.read_text())
        state.update(changes)
        path.write_text(json.dumps(state))
        _fix_manifest(c.ckpt, "trainer_state.json")
    return damage


def _edit_manifest(fn: Callable[[dict[str, Any]], None]) -> Callable[[Ctx], None]:
    def damage(c: Ctx) -> None:
        path = c.ckpt / "manifest.json"
        manifest = json.loads(path.read_text())
        fn(manifest)
        path.write_text(json.dumps(manifest))
    return damage


def _write(rel: str, text: str) -> Callable[[Ctx], None]:
    def damage(c: Ctx) -> None:
        p = c.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return damage


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch /tmp/aeron-pwned-by-bad-input",))


def _pickle_optimizer(c: Ctx) -> None:
    with open(c.ckpt / "optimizer.pt", "wb") as fh:
        pickle.dump({"state": _Evil()}, fh)
    _fix_manifest(c.ckpt, "optimizer.pt")


def _flip_byte(c: Ctx) -> None:
    data = bytearray((c.ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (c.ckpt / "model.safetensors").write_bytes(bytes(data))


def _symlink_tokenizer(c: Ctx) -> None:
    target = c.tmp / "outside_tokenizer.json"
    shutil.copy(c.ckpt / "tokenizer.json", target)
    (c.ckpt / "tokenizer.json").unlink()
    (c.ckpt / "tokenizer.json").symlink_to(target)


def _swap_tokenizer(c: Ctx) -> None:
    """Replace the checkpoint's tokenizer by another one, manifest updated (a hand edit)."""
    for f in sorted(c.other_tok.glob("tokenizer*.json")):
        shutil.copy(f, c.ckpt / f.name)
        _fix_manifest(c.ckpt, f.name)


def _garble_events(c: Ctx) -> None:
    with open(c.run / "events.jsonl", "a") as fh:
        fh.write("{not json\n")
        fh.write('{"type": "step"}\n')


def _lock_run(c: Ctx) -> None:
    from core.runs.lock import acquire_run_lock

    _HELD.append(acquire_run_lock(c.run))


_LONG = "simple-tiny-a-rather-long-experiment-name-that-a-narrow-table-would-cut-20260101-"


def _two_long_runs(c: Ctx) -> None:
    from core.runs.events import EventWriter

    for suffix in ("seed1", "seed2"):
        with EventWriter(c.tmp / "runs" / f"{_LONG}{suffix}" / "events.jsonl") as writer:
            writer.emit("run_started", run_id=suffix, trainer="simple", total_steps=3)


def _config_with_other_tokenizer(c: Ctx) -> None:
    (c.tmp / "tok.toml").write_text(f'tokenizer = "{c.other_tok}"\n')


_HELD: list[Any] = []
_GEN = ("generate", "--checkpoint", "{ckpt}", "--prompt", "hi", "--max-new-tokens", "2",
        "--device", "cpu")
_DATA_FILES = {
    "bad_json": ("bad.jsonl", '{"provider": "x", "style_label": "qa", "user_input": "u", '
                              '"assistant_reply": "r"}\n{oops\n'),
    "empty_txt": ("empty.txt", "\n\n  \n"),
    "one_doc": ("one.txt", "".join(f"line {i} of one long document\n" for i in range(300))),
}

CASES = [
    # -- command-line usage: every message names the option and the value -------------------
    Case("steps-not-int", _cmd("train", "simple", "--steps", "abc"), _say("--steps", "'abc' is not an integer"), 2),
    Case("seed-not-int", _cmd("train", "simple", "--seed", "x1"), _say("--seed", "'x1'"), 2),
    Case("micro-batch-float", _cmd("train", "compressed", "--micro-batch", "1.5"), _say("--micro-batch", "'1.5'"), 2),
    Case("lr-not-number", _cmd("train", "simple", "--lr", "fast"), _say("--lr", "'fast' is not a number"), 2),
    Case("seq-len-not-int", _cmd("train", "lonpt", "--seq-len", "long"), _say("--seq-len", "'long'"), 2),
    Case("grad-accum-not-int", _cmd("train", "compressed", "--grad-accum", "two"), _say("--grad-accum"), 2),
    Case("reward-steps", _cmd("rlhf", "reward", "--steps", "abc"), _say("--steps", "'abc'"), 2),
    Case("dpo-beta", _cmd("rlhf", "dpo", "--beta", "high"), _say("--beta", "'high' is not a number"), 2),
    Case("ppo-max-new", _cmd("rlhf", "ppo", "--max-new-tokens", "many"), _say("--max-new-tokens", "'many'"), 2),
    Case("generate-max-new", _cmd(*_GEN[:-4], "--max-new-tokens", "x"), _say("--max-new-tokens", "'x' is not an integer"), 2),
    Case("generate-temperature", _cmd(*_GEN, "--temperature", "hot"), _say("--temperature", "'hot'"), 2),
    Case("generate-top-k", _cmd(*_GEN, "--top-k", "k"), _say("--top-k", "'k'"), 2),
    Case("chat-max-new", _cmd("chat", "--checkpoint", "{ckpt}", "--max-new-tokens", "x"), _say("--max-new-tokens"), 2),
    Case("launch-steps-zero", _cmd("launch", "--steps", "0"), _say("--steps", ">= 1"), 2),
    Case("watch-speed", _cmd("watch", "{run}", "--speed", "fast"), _say("--speed", "'fast'"), 2),
    Case("continue-steps", _cmd("continue", "--from", "{ckpt}", "--steps", "abc"), _say("--steps", "'abc'"), 2),
    Case("reward-eval-batch", _cmd("rlhf", "reward-eval", "--reward", "{ckpt}", "--batch-size", "x"), _say("--batch-size"), 2),
    Case("tokenizer-vocab-int", _cmd("tokenizer", "train", "--vocab-size", "big"), _say("--vocab-size", "'big'"), 2),
    Case("unknown-command", _cmd("bogus"), _say("bogus", "aeron-tui --help"), 2),
    Case("misspelt-trainer", _cmd("train", "simpel"), _say("simpel", "simple"), 2),
    Case("unknown-option", _cmd("train", "simple", "--bogus"), _say("--bogus"), 2),
    Case("missing-checkpoint", _cmd("generate", "--prompt", "x"), _say("--checkpoint"), 2),
    Case("missing-from", _cmd("continue"), _say("--from"), 2),
    Case("missing-run-dir-arg", _cmd("runs", "show"), _say("run_dir", "runs show --help"), 2),
    Case("option-without-value", _cmd("train", "simple", "--steps"), _say("--steps"), 2),
    Case("debug-after-subcommand", _cmd("train", "simple", "--debug", "--steps", "abc"), _say("--steps", "'abc'"), 2),
    Case("profile-mode", _cmd("profile", "--mode", "fly"), _say("--mode", "fly")),
    # -- run configuration: the key and the file are named ------------------------------------
    Case("unknown-profile", _train("simple", "--profile", "nope"), _say("nope", "tiny")),
    Case("bad-precision", _train("simple", "--precision", "fp8"), _say("precision", "fp8")),
    Case("bad-device", _train("simple", "--device", "tpu"), _say("device", "tpu")),
    Case("unknown-trainer-option", _train("simple", "--set", "lerning_rate=0.1"), _say("lerning_rate")),
    Case("steps-zero-set", _train("simple", "--set", "steps=0"), _say("steps", ">= 1")),
    Case("keep-last-zero", _train("simple", "--set", "keep_last=0"), _say("keep_last")),
    Case("set-without-value", _train("simple", "--set", "novalue"), _say("--set", "novalue", "key=value")),
    Case("min-lr-ratio", _train("simple", "--set", "min_lr_ratio=2"), _say("min_lr_ratio")),
    Case("wrong-type-key", _train("simple", "--set", "eval_every='often'"), _say("eval_every", "often")),
    Case("config-missing", _train("simple", "--config", "{tmp}/missing.toml"), _say("missing.toml", "not found")),
    Case("config-not-toml", _train("simple", "--config", "{tmp}/bad.toml"), _say("bad.toml", "TOML"),
         damage=_write("bad.toml", "steps = = 3\n")),
    Case("config-unknown-key", _train("simple", "--config", "{tmp}/typo.toml"), _say("typo.toml", "stepz"),
         damage=_write("typo.toml", "stepz = 3\n")),
    Case("config-wrong-type", _train("simple", "--config", "{tmp}/type.toml"), _say("type.toml", "steps"),
         damage=_write("type.toml", 'steps = "many"\n')),
    Case("seq-len-too-long", _train("simple", "--seq-len", "10000000"),
         _say("--seq-len 10000000", "tiny", "2046", "max_position_embeddings")),
    Case("resume-and-overwrite", _train("simple", "--resume", "--overwrite"), _say("--resume", "--overwrite")),
    Case("model-field-invalid", _train("simple", "--set", "model.nhead=5"), _say("nhead")),
    Case("data-missing", _train("simple", "--data", "{tmp}/missing.jsonl"), _say("missing.jsonl")),
    Case("data-bad-json", _train("simple", "--data", "{tmp}/bad.jsonl"), _say("bad.jsonl:2"),
         damage=_write(*_DATA_FILES["bad_json"])),
    Case("data-empty-txt", _train("simple", "--data", "{tmp}/empty.txt"), _say("empty.txt"),
         damage=_write(*_DATA_FILES["empty_txt"])),
    Case("data-one-document", _train("simple", "--data", "{tmp}/one.txt"),
         _say("one.txt", "found 1 document", "blank lines"), damage=_write(*_DATA_FILES["one_doc"])),
    Case("data-empty-dir", _train("simple", "--data", "{tmp}/nodata"), _say("nodata"),
         damage=_write("nodata/readme.md", "nothing to train on\n")),
    Case("launch-profile", _cmd("launch", "--profile", "nope"), _say("--profile", "nope")),
    Case("launch-trainer", _cmd("launch", "--trainer", "nope"), _say("--trainer", "nope")),
    Case("launch-preset", _cmd("launch", "--trainer", "lonpt", "--preset", "turbo"), _say("--preset", "turbo")),
    Case("launch-data", _cmd("launch", "--data", "{tmp}/missing.jsonl"), _say("--data", "missing.jsonl")),
    Case("watch-missing", _cmd("watch", "{tmp}/nowhere"), _say("nowhere")),
    Case("watch-replay-no-events", _cmd("watch", "{tmp}", "--replay"), _say("events.jsonl")),
    # -- a directory that holds a run is never reused silently --------------------------------
    Case("rerun-simple", lambda c: [*cli_train_args(c.run, c.data, 8), "--quiet"],
         _say("{run}", "already holds a run", "2 checkpoints", "--resume", "--run-dir", "--overwrite")),
    Case("rerun-compressed", _cmd("train", "compressed", "--profile", "tiny", "--run-dir", "{run}", "--quiet"),
         _say("already holds a run", "--overwrite")),
    Case("rerun-lonpt", _cmd("train", "lonpt", "--profile", "tiny", "--preset", "smoke", "--run-dir", "{run}", "--quiet"),
         _say("already holds a run")),
    Case("rerun-continual", _cmd("train", "continual", "--profile", "tiny", "--run-dir", "{run}", "--set", "from={ckpt}", "--quiet"),
         _say("already holds a run")),
    Case("rerun-reward", _cmd("rlhf", "reward", "--profile", "tiny", "--run-dir", "{run}", "--quiet"), _say("already holds a run")),
    Case("rerun-dpo", _cmd("rlhf", "dpo", "--profile", "tiny", "--run-dir", "{run}", "--quiet"), _say("already holds a run")),
    Case("rerun-ppo", _cmd("rlhf", "ppo", "--profile", "tiny", "--run-dir", "{run}", "--quiet"), _say("already holds a run")),
    Case("rerun-continue", _cmd("continue", "--from", "{ckpt}", "--run-dir", "{run}", "--quiet"), _say("already holds a run")),
    Case("rerun-launch", _cmd("launch", "--run-dir", "{run}"), _say("--run-dir", "already holds a run", "aeron-tui watch")),
    Case("locked-resume", _resume(), _say("in use by a running trainer", f"pid {os.getpid()}", "aeron-tui watch {run}"),
         damage=_lock_run),
    Case("locked-launch", _cmd("launch", "--run-dir", "{run}"), _say("in use", "aeron-tui watch"), damage=_lock_run),
    # -- resuming from a damaged or incompatible checkpoint: refused, nothing written ----------
    Case("resume-checksum", _resume(), _say("step_000008/model.safetensors: checksum mismatch"), damage=_flip_byte),
    Case("resume-missing-file", _resume(), _say("tokenizer.json: file missing"),
         damage=lambda c: (c.ckpt / "tokenizer.json").unlink()),
    Case("resume-pickle", _resume(), _say("optimizer.pt", "refused", "could run code"), damage=_pickle_optimizer),
    Case("resume-state-step-type", _resume(), _say("trainer_state.json", "'global_step'", "integer", "abc"),
         damage=_edit_state(global_step="abc")),
    Case("resume-state-elapsed-type", _resume(), _say("trainer_state.json", "'elapsed_s'"), damage=_edit_state(elapsed_s="x")),
    Case("resume-state-best-type", _resume(), _say("trainer_state.json", "'best'"), damage=_edit_state(best=[1])),
    Case("resume-state-micro-batch", _resume(), _say("trainer_state.json", "'micro_batch'"), damage=_edit_state(micro_batch="4")),
    Case("resume-state-not-json", _resume(), _say("step_000008", "unreadable JSON"),
         damage=lambda c: ((c.ckpt / "trainer_state.json").write_text("{oops"), _fix_manifest(c.ckpt, "trainer_state.json"))),
    Case("manifest-dotdot", _resume(), _say("manifest.json", "../../etc/hostname"),
         damage=_edit_manifest(lambda m: m["files"].update({"../../etc/hostname": {"sha256": "0", "size": 1}}))),
    Case("manifest-absolute", _resume(), _say("manifest.json", "/etc/hostname"),
         damage=_edit_manifest(lambda m: m["files"].update({"/etc/hostname": {"sha256": "0", "size": 1}}))),
    Case("checkpoint-symlink", _resume(), _say("tokenizer.json", "symbolic link"), damage=_symlink_tokenizer),
    Case("manifest-missing", _resume(), _say("manifest.json is missing"), damage=lambda c: (c.ckpt / "manifest.json").unlink()),
    Case("manifest-not-json", _resume(), _say("manifest.json", "unreadable manifest"),
         damage=lambda c: (c.ckpt / "manifest.json").write_text("[1,")),
    Case("manifest-newer-format", _resume(), _say("manifest.json", "newer"),
         damage=_edit_manifest(lambda m: m.update(format_version=99))),
    Case("resume-path-missing", lambda c: [*cli_train_args(c.run, c.data, 12), "--quiet", "--resume", f"{c.tmp}/gone"],
         _say("gone", "not found")),
    Case("resume-empty-dir", lambda c: [*cli_train_args(c.new, c.data, 12), "--quiet", "--resume"],
         _say("{new}", "no complete checkpoint")),
    Case("resume-set-tokenizer", _resume("--set", "tokenizer={other_tok}"), _say("--set tokenizer=", "keeps its checkpoint's tokenizer")),
    Case("resume-config-tokenizer", lambda c: [*cli_train_args(c.run, c.data, 12), "--quiet", "--resume", str(c.ckpt),
                                               "--config", f"{c.tmp}/tok.toml"],
         _say("tokenizer {other_tok}", "keeps the tokenizer of", "vocabulary"), damage=_config_with_other_tokenizer),
    Case("resume-model-differs", _resume("--set", "model.dim_feedforward=256"),
         _say("config.json", "dim_feedforward: checkpoint 128, this run 256")),
    # -- generating from a checkpoint -------------------------------------------------------------
    Case("generate-missing", _cmd("generate", "--checkpoint", "{tmp}/nothing", "--prompt", "hi"), _say("nothing")),
    Case("generate-not-checkpoint", _cmd("generate", "--checkpoint", "{tmp}", "--prompt", "hi"), _say("{tmp}", "not a checkpoint")),
    Case("generate-tokenizer-differs", _cmd(*_GEN), _say("tokenizer.json", "280 ids", "embedding", "rows"), damage=_swap_tokenizer),
    Case("chat-tokenizer-differs", _cmd("chat", "--checkpoint", "{ckpt}", "--device", "cpu"), _say("tokenizer.json", "280 ids"),
         damage=_swap_tokenizer),
    Case("generate-symlink", _cmd(*_GEN), _say("symbolic link"), damage=_symlink_tokenizer),
    Case("generate-dotdot", _cmd(*_GEN), _say("../../etc/hostname"),
         damage=_edit_manifest(lambda m: m["files"].update({"../../etc/hostname": {"sha256": "0", "size": 1}}))),
    Case("generate-attention", _cmd(*_GEN, "--attention", "warp"), _say("--attention", "warp")),
    Case("generate-cuda", _cmd(*_GEN[:-2], "--device", "cuda"), _say("cuda")),
    # -- runs, data and tokenizers ----------------------------------------------------------------
    Case("runs-show-unknown", _cmd("runs", "show", "no-such-run", "--root", "{tmp}"), _say("no-such-run", "runs list")),
    Case("runs-show-name", lambda c: ["runs", "show", c.run.name, "--root", str(c.run.parent)], _say(), 0,
         stdout=_say("finished", "step_000008")),
    Case("runs-show-unreadable-lines", _cmd("runs", "show", "{run}"), _say(), 0, damage=_garble_events,
         stdout=_say("unreadable lines in events.jsonl: 2")),
    Case("runs-list-piped", lambda c: ["runs", "list", "--root", str(c.run.parent)], _say(), 0,
         stdout=lambda c: [c.run.name]),
    Case("runs-list-never-truncates-piped", _cmd("runs", "list", "--root", "{tmp}/runs"), _say(), 0,
         damage=_two_long_runs, stdout=_say(_LONG + "seed1", _LONG + "seed2")),
    Case("runs-lineage-missing", _cmd("runs", "lineage", "{tmp}/nothing"), _say("nothing")),
    Case("data-stats-bad-json", _cmd("data", "stats", "{tmp}/bad.jsonl"), _say("bad.jsonl:2: bad JSON"),
         damage=_write(*_DATA_FILES["bad_json"])),
    Case("data-stats-missing", _cmd("data", "stats", "{tmp}/missing.jsonl"), _say("missing.jsonl")),
    Case("tokenizer-info-missing", _cmd("tokenizer", "info", "{tmp}/nothing"), _say("nothing")),
    Case("tokenizer-vocab-small", _cmd("tokenizer", "train", "--vocab-size", "10", "--out", "{tmp}/tok"), _say("--vocab-size", "268")),
    Case("tokenizer-out-unwritable", _cmd("tokenizer", "train", "--corpus", "{data}", "--vocab-size", "300", "--out", "{tmp}/file/tok"),
         _say("cannot write the tokenizer"), damage=_write("file", "a file, not a directory")),
    Case("reward-eval-missing", _cmd("rlhf", "reward-eval", "--reward", "{tmp}/nothing"), _say("nothing")),
    Case("merge-missing-models", _cmd("merge", "--models", "{tmp}/nothing", "--out", "{tmp}/m"), _say("nothing")),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_one_clear_line_and_leaves_the_run_alone(
    case: Case, run_template: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = run_template["run"]
    if case.damage is not None:
        run = Path(shutil.copytree(run, tmp_path / "run", symlinks=True))
    ctx = Ctx(run=run, data=run_template["data"], tmp=tmp_path, other_tok=run_template["other_tok"])
    try:
        if case.damage is not None:
            case.damage(ctx)
        before = snapshot(run)
        template_before = snapshot(run_template["run"]) if run != run_template["run"] else before
        code, out, lines = run_main(case.args(ctx), capsys, monkeypatch)
    finally:
        while _HELD:
            _HELD.pop().release()
    expected = case.expect(ctx)
    if case.code == 0:
        assert code == 0, lines
        assert lines == [], lines
        for text in case.stdout(ctx):
            assert text in out, out
    else:
        assert code != 0 and (case.code is None or code == case.code), (code, lines)
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
        for text in expected:
            assert text in lines[0], (text, lines[0])
    assert snapshot(run) == before  # nothing in the run directory changed, not even the events
    assert snapshot(run_template["run"]) == template_before
    assert not Path("/tmp/aeron-pwned-by-bad-input").exists()


def test_the_suite_is_wide() -> None:
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)

