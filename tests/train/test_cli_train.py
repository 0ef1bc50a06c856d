"""The headless CLI: subprocess kill-and-resume, SIGTERM, exit codes, bad checkpoints."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from train_helpers import cli_train_args

from core.runs.events import ParseProblem, read_events


def _spawn(args: list[str], home: Path, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "AERON_TUI_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "aeron_tui", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for e in read_events(run_dir / "events.jsonl"):
        assert not isinstance(e, ParseProblem) or "incomplete" in e.message, e
        if isinstance(e, dict) and e["type"] == "step":
            out[e["global_step"]] = e["loss"]  # a step re-run after resume replaces the old one
    return out


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_equals_uninterrupted(
    tmp_path: Path, small_corpus: Path, _isolated_home: Path, cli_main: Any) -> None:
    steps = 14
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    # The uninterrupted reference runs in-process through the same CLI (one start-up saved).
    code, _, err = cli_main(cli_train_args(full_dir, small_corpus, steps) + ["--quiet"])
    assert code == 0, err

    child = _spawn(cli_train_args(part_dir, small_corpus, steps) + ["--events-stdout"],
                   _isolated_home)
    assert child.stdout is not None
    saw_checkpoint = False
    for line in child.stdout:
        event = json.loads(line)  # with --events-stdout, stdout is only events
        if event["type"] == "checkpoint" and event["global_step"] == 8:
            saw_checkpoint = True
        if saw_checkpoint and event["type"] == "step" and event["global_step"] == 10:
            child.send_signal(signal.SIGKILL)  # between checkpoints 8 and 12
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    from core.runs.registry import summarize_run

    assert summarize_run(part_dir).status == "crashed"

    code, _, err = cli_main(cli_train_args(part_dir, small_corpus, steps) + ["--resume", "--quiet"])
    assert code == 0, err
    a, b = _losses(full_dir), _losses(part_dir)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    assert summarize_run(part_dir).status == "finished"


@pytest.mark.slow
def test_sigterm_stops_after_a_checkpoint(tmp_path: Path, small_corpus: Path,
                                          _isolated_home: Path) -> None:
    run_dir = tmp_path / "run"
    child = _spawn(cli_train_args(run_dir, small_corpus, 10_000, checkpoint_every=100000)
                   + ["--events-stdout", "--control-stdin"], _isolated_home, stdin=subprocess.PIPE)
    assert child.stdout is not None
    for line in child.stdout:
        event = json.loads(line)
        if event["type"] == "step" and event["global_step"] == 3:
            child.send_signal(signal.SIGTERM)
            break
    rest = [json.loads(line) for line in child.stdout]
    assert child.wait(timeout=120) == 0
    finished = rest[-1]
    assert finished["type"] == "run_finished" and finished["status"] == "stopped"
    ckpt = [e for e in rest if e["type"] == "checkpoint"]
    assert ckpt and ckpt[-1]["global_step"] == finished["global_step"]
    from core.runs.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    assert latest is not None and latest.name == f"step_{finished['global_step']:06d}"


@pytest.mark.slow
def test_stdin_eof_is_not_a_stop(tmp_path: Path, small_corpus: Path, _isolated_home: Path) -> None:
    run_dir = tmp_path / "run"
    child = _spawn(cli_train_args(run_dir, small_corpus, 6) + ["--events-stdout", "--control-stdin"],
                   _isolated_home, stdin=subprocess.PIPE)
    assert child.stdin is not None
    child.stdin.write('{"cmd": "bogus"}\n')
    child.stdin.close()  # a detached console: EOF must not end the run
    assert child.stdout is not None
    out = child.stdout.read()
    assert child.wait(timeout=300) == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "finished"
    assert events[-1]["global_step"] == 6
    assert any(e["type"] == "warning" and "bogus" in e["message"] for e in events)


@pytest.fixture
def finished_run(run_template: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the template run (tests damage its checkpoints)."""
    import shutil

    return Path(shutil.copytree(run_template["run"], tmp_path / "run"))


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _fix_manifest(ckpt: Path, name: str) -> None:
    from core.runs.checkpoint import file_sha256

    manifest = json.loads((ckpt / "manifest.json").read_text())
    f = ckpt / name
    manifest["files"][name] = {"sha256": file_sha256(f), "size": f.stat().st_size}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch /tmp/aeron-pwned-by-pickle",))


def _corrupt(kind: str, ckpt: Path) -> str:
    """Damage a checkpoint one way; return the text the error must contain."""
    if kind == "missing":
        (ckpt / "tokenizer.json").unlink()
        return "tokenizer.json: file missing"
    if kind == "checksum":
        data = bytearray((ckpt / "model.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (ckpt / "model.safetensors").write_bytes(bytes(data))
        return "model.safetensors: checksum mismatch"
    if kind == "pickle":
        with open(ckpt / "optimizer.pt", "wb") as fh:
            pickle.dump({"state": _Evil()}, fh)
        _fix_manifest(ckpt, "optimizer.pt")
        return "optimizer.pt: refused"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "checksum", "pickle"])
def test_bad_checkpoint_on_resume_fails_clearly(
    kind: str, finished_run: Path, small_corpus: Path, cli_main: Any) -> None:
    ckpt = finished_run / "checkpoints" / "step_000008"
    expected = _corrupt(kind, ckpt)
    before = _snapshot(ckpt)
    events_before = (finished_run / "events.jsonl").read_bytes()
    args = cli_train_args(finished_run, small_corpus, 12) + ["--resume", str(ckpt)]
    code, _, err = cli_main(args)
    assert code != 0
    line = err.replace("\n", "")  # Rich wraps the one error line at the terminal width
    assert expected in line, err
    assert line.startswith("error:") and "Traceback" not in err
    assert _snapshot(ckpt) == before  # nothing overwritten
    assert not Path("/tmp/aeron-pwned-by-pickle").exists()
    # The failed attempt is recorded, the old history is untouched.
    assert (finished_run / "events.jsonl").read_bytes().startswith(events_before)


def test_different_model_config_on_resume_names_fields(
    finished_run: Path, small_corpus: Path, cli_main: Any) -> None:
    ckpt = finished_run / "checkpoints" / "step_000008"
    args = cli_train_args(finished_run, small_corpus, 12) + [
        "--resume", str(ckpt), "--set", "model.dim_feedforward=256"]
    code, _, err = cli_main(args)
    assert code != 0
    assert "dim_feedforward: checkpoint 128, this run 256" in err.replace("\n", "")


def test_resume_latest_skips_a_corrupt_checkpoint(
    finished_run: Path, small_corpus: Path, cli_main: Any) -> None:
    _corrupt("checksum", finished_run / "checkpoints" / "step_000008")
    args = cli_train_args(finished_run, small_corpus, 10) + ["--resume"]
    code, _, err = cli_main(args)
    assert code == 0, err
    events = [e for e in read_events(finished_run / "events.jsonl") if isinstance(e, dict)]
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any("skipping checkpoint step_000008" in w for w in warnings)
    infos = [e["message"] for e in events if e["type"] == "info"]
    assert any("resumed from" in m and "step_000004" in m for m in infos)
    assert events[-1]["type"] == "run_finished" and events[-1]["global_step"] == 10


def test_runs_list_shows_status(finished_run: Path, cli_main: Any) -> None:
    code, out, _ = cli_main(["runs", "list", "--root", str(finished_run.parent), "--json"])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["status"] == "finished" and rows[0]["global_step"] == 8
    assert rows[0]["trainer"] == "simple" and rows[0]["profile"] == "tiny"
    code, out, _ = cli_main(["runs", "show", str(finished_run)])
    assert code == 0 and "finished" in out and "step_000008" in out
    # Loss and bits per byte of the run's eval, beside the reference baselines it carried.
    [ev] = [e for e in read_events(finished_run / "events.jsonl")
            if isinstance(e, dict) and e["type"] == "eval"]
    assert f"best val loss  {ev['loss']:.4f}" in out
    assert (f"best val bpb  {ev['bpb']:.4f} (bigram {ev['baseline_bigram_bpb']:.4f}, "
            f"unigram {ev['baseline_unigram_bpb']:.4f})") in out


def test_unknown_config_key_exits_nonzero(tmp_path: Path, cli_main: Any) -> None:
    bad = tmp_path / "run.toml"
    bad.write_text("stepz = 3\n")
    code, _, err = cli_main(["train", "simple", "--profile", "tiny", "--config", str(bad)])
    assert code == 1 and "stepz" in err and "run.toml" in err


def test_cli_plain_output_and_exit_code(tmp_path: Path, small_corpus: Path, cli_main: Any) -> None:
    code, out, err = cli_main(cli_train_args(tmp_path / "r", small_corpus, 3))
    assert code == 0, err
    # stdout is not a TTY here: one plain line per log interval, no escape codes.
    lines = out.splitlines()
    assert [ln for ln in lines if ln.startswith("step ")][-1].startswith("step 3/3 | loss ")
    assert "run finished" in out and "\x1b[" not in out


def test_unknown_option_for_simple_trainer_is_named(
    tmp_path: Path, small_corpus: Path, cli_main: Any) -> None:
    args = cli_train_args(tmp_path / "r", small_corpus, 2) + ["--set", "lerning_rate=0.1"]
    code, _, err = cli_main(args)
    assert code == 1 and "no option 'lerning_rate'" in err.replace("\n", "")


def test_generate_formats_prompts_as_training_did(
    finished_run: Path, monkeypatch: pytest.MonkeyPatch, cli_main: Any) -> None:
    """`generate` at temperature 0 from the final checkpoint repeats the run's last live sample
    for the same prompt: the prompt got the same provider/style head the trainer gave it."""
    events = [e for e in read_events(finished_run / "events.jsonl") if isinstance(e, dict)]
    sample = [e for e in events if e["type"] == "sample"][-1]
    assert sample["global_step"] == 8
    ckpt = finished_run / "checkpoints" / "step_000008"
    manifest = json.loads((ckpt / "manifest.json").read_text())
    recorded = manifest["corpus"]["prompt_format"]
    assert recorded["provider"] == "synthetic" and recorded["styles"] == ["code", "math", "qa"]
    for s in sample["samples"]:
        args = ["generate", "--checkpoint", str(ckpt), "--prompt", s["prompt"],
                "--temperature", "0", "--max-new-tokens", "32", "--style", s["style"]]
        code, out, err = cli_main(args)
        assert code == 0, err
        assert out == s["text"] + "\n"
        assert f"<|provider|> synthetic <|style|> {s['style']} <|user|>" in err
    # Without --style the checkpoint's most common training style is used; '' drops it.
    code, _, err = cli_main(["generate", "--checkpoint", str(ckpt), "--prompt", "What is 1 plus 1?",
                             "--temperature", "0", "--max-new-tokens", "4"])
    assert code == 0 and f"<|style|> {recorded['style']} <|user|>" in err
    code, _, err = cli_main(["generate", "--checkpoint", str(ckpt), "--prompt", "x", "--style",
                             "poetry", "--provider", "", "--temperature", "0",
                             "--max-new-tokens", "2"])
    assert code == 0 and "style 'poetry' never occurred in training" in err
    assert "<|provider|>" not in err
    # chat formats each turn the same way.
    s = sample["samples"][0]
    monkeypatch.setattr(sys, "stdin", io.StringIO(s["prompt"] + "\n\n"))
    code, out, err = cli_main(["chat", "--checkpoint", str(ckpt), "--temperature", "0",
                               "--max-new-tokens", "32", "--style", s["style"]])
    assert code == 0, err
    assert out == s["text"] + "\n"


def test_packing_flag_reaches_the_run_and_bad_values_are_one_line(
    tmp_path: Path, small_corpus: Path, cli_main: Any) -> None:
    import json

    run_dir = tmp_path / "r"
    code, _, err = cli_main(cli_train_args(run_dir, small_corpus, 2) + ["--packing", "on"])
    assert code == 0, err
    assert 'packing = "on"' in (run_dir / "run.toml").read_text()
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    notes = [e["message"] for e in events if e["type"] == "info"]
    assert any(n.startswith("sequence packing on (on)") for n in notes), notes
    code, _, err = cli_main(cli_train_args(tmp_path / "bad", small_corpus, 2)
                            + ["--packing", "sometimes"])
    assert code == 1 and "'packing'" in err and "auto, on, off" in err
    assert len(err.strip().splitlines()) == 1
