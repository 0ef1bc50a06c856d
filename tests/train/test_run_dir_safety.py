"""A run directory has one owner and nothing in it is lost: the lock, the reuse rule, the
checkpoint writer's recovery after a kill between its renames, and a full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from train_helpers import cli_train_args

from core.errors import CheckpointError, RunDirError
from core.runs.events import read_events


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    from aeron_tui.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _events(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(run_dir / "events.jsonl") if isinstance(e, dict)]


@pytest.fixture
def run_copy(run_template: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_template["run"], tmp_path / "run"))


# ----------------------------------------------------------------------------------------------
# The lock (no torch)
# ----------------------------------------------------------------------------------------------


def test_second_lock_is_refused_with_the_owner_pid(tmp_path: Path) -> None:
    from core.runs.lock import acquire_run_lock, lock_owner

    first = acquire_run_lock(tmp_path)
    first.record_owner()
    try:
        assert lock_owner(tmp_path) == os.getpid()
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}.*aeron-tui watch {tmp_path}"):
            acquire_run_lock(tmp_path)
    finally:
        first.release()
    assert lock_owner(tmp_path) is None
    acquire_run_lock(tmp_path).release()  # free again once released


def test_a_killed_owner_never_blocks_a_restart(tmp_path: Path) -> None:
    """The kernel drops the lock with the process, however it dies (no stale pid file)."""
    from core.runs.lock import acquire_run_lock, lock_owner

    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from core.runs.lock import acquire_run_lock;"
         f"l = acquire_run_lock({str(tmp_path)!r}); l.record_owner(); print('locked', flush=True);"
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        assert lock_owner(tmp_path) == child.pid
        with pytest.raises(RunDirError, match=f"pid {child.pid}"):
            acquire_run_lock(tmp_path)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert (tmp_path / ".lock").read_text().strip() == str(child.pid)  # the stale pid is there...
    lock = acquire_run_lock(tmp_path)  # ...and does not matter
    lock.release()


def test_reuse_rule(tmp_path: Path) -> None:
    from aeron_tui.app.runsetup import used_run_dir_problem
    from core.runs.lock import claim_run_dir, existing_run

    d = tmp_path / "run"
    assert existing_run(d) is None  # missing
    d.mkdir()
    (d / "run.toml").write_text('trainer = "simple"\n')
    assert existing_run(d) is None and used_run_dir_problem(d) is None  # set up, not started
    (d / "checkpoints" / "step_000004").mkdir(parents=True)
    assert existing_run(d) == "1 checkpoint"
    problem = used_run_dir_problem(d)  # the console's setup applies the same rule
    assert problem is not None and "already holds a run" in problem
    with pytest.raises(RunDirError, match="--resume.*--run-dir.*--overwrite"):
        claim_run_dir(d, resume=False, overwrite=False)
    lock, moved = claim_run_dir(d, resume=True, overwrite=False)  # resuming is what it is for
    lock.release()
    assert moved is None and (d / "checkpoints" / "step_000004").is_dir()


# ----------------------------------------------------------------------------------------------
# Through the CLI, on a real run
# ----------------------------------------------------------------------------------------------


def test_rerun_without_resume_is_refused_and_overwrite_moves_the_old_run_aside(
    run_copy: Path, run_template: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    before = _hashes(run_copy)
    args = [*cli_train_args(run_copy, run_template["data"], 3), "--quiet"]
    code, _, err = _run_cli(args, capsys)
    assert code == 1 and len(err) == 1, err
    assert "already holds a run (2 checkpoints, up to step 8)" in err[0]
    assert _hashes(run_copy) == before  # checkpoints, manifests, events: all unchanged

    code, _, err = _run_cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    aside = [p for p in run_copy.iterdir() if p.name.startswith("previous-")]
    assert len(aside) == 1
    moved = {k[len(aside[0].name) + 1:]: v for k, v in _hashes(run_copy).items()
             if k.startswith(aside[0].name + "/")}
    assert moved == {k: v for k, v in before.items() if k != ".lock"}  # nothing lost
    events = _events(run_copy)
    assert [e["type"] for e in events].count("run_started") == 1  # the new run alone
    assert events[-1]["type"] == "run_finished" and events[-1]["global_step"] == 3
    assert any(e["type"] == "info" and "moved to" in e["message"] for e in events)
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step_000003"]


@pytest.mark.slow
def test_two_trainers_on_one_run_dir(
    tmp_path: Path, run_template: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    """The second trainer is refused while the first lives; the first finishes; one run."""
    run_dir = tmp_path / "run"
    args = cli_train_args(run_dir, run_template["data"], 12)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "aeron_tui", *args, "--events-stdout",
                              "--control-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    assert first.stdin is not None and first.stdout is not None
    try:
        for line in first.stdout:
            event = json.loads(line)
            if event["type"] == "step":  # running: hold it there while the second one tries
                first.stdin.write('{"cmd": "pause"}\n')
                first.stdin.flush()
                break
        for line in first.stdout:
            if json.loads(line).get("status") == "paused":
                break
        code, _, err = _run_cli([*args, "--quiet"], capsys)
        assert code == 1 and len(err) == 1, err
        assert f"in use by a running trainer (pid {first.pid})" in err[0]
        assert f"aeron-tui watch {run_dir}" in err[0]
        code, _, err = _run_cli([*args, "--quiet", "--resume"], capsys)  # resuming too
        assert code == 1 and "in use" in err[0]
        first.stdin.write('{"cmd": "resume"}\n')
        first.stdin.close()
        rest = first.stdout.read()
        assert first.wait(timeout=300) == 0, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
    assert json.loads(rest.splitlines()[-1])["status"] == "finished"
    events = _events(run_dir)
    assert [e["type"] for e in events].count("run_started") == 1
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(len(seqs)))  # one writer: no duplicate or interleaved seq
    steps = [e["global_step"] for e in events if e["type"] == "step"]
    assert steps == list(range(1, 13))


def _resave_then_die(ckpt: Path) -> int:
    """Fork a process that re-saves ``ckpt`` (as the final evaluation does when it marks the
    last checkpoint best) and is SIGKILLed between the writer's two renames."""
    from core.runs import checkpoint as ck

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            loaded = ck.load_checkpoint(ckpt, load_optimizer=True)
            real_replace = os.replace

            def replace(src: Any, dst: Any) -> None:
                real_replace(src, dst)
                if ".old-" in str(dst):  # step_N moved aside, the new one not yet in place
                    os.kill(os.getpid(), signal.SIGKILL)

            ck.os.replace = replace  # type: ignore[attr-defined]
            ck.save_checkpoint(ckpt, model=loaded.model_state, config=loaded.config_dict,
                               tokenizer=loaded.path,
                               trainer_state=loaded.trainer_state,
                               optimizer_state=loaded.optimizer_state,
                               extra={**{k: loaded.manifest[k] for k in ("global_step", "run_id",
                                                                         "trainer")},
                                      "best": True, "resaved": True})
        except BaseException:  # noqa: BLE001 - report why the child did not die as planned
            import traceback

            (ckpt.parent / "child-error.txt").write_text(traceback.format_exc())
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return status


def test_kill_between_renames_is_recovered_on_the_next_start(
    run_copy: Path, run_template: dict[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    ckpts = run_copy / "checkpoints"
    status = _resave_then_die(ckpts / "step_000008")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    left = sorted(p.name for p in ckpts.iterdir())
    assert "step_000008" not in left  # the newest checkpoint is hidden...
    assert any(".old-" in n for n in left) and any(".tmp-" in n for n in left)

    from core.runs.checkpoint import latest_checkpoint

    assert latest_checkpoint(run_copy).name == "step_000004"  # ...before recovery

    code, _, err = _run_cli([*cli_train_args(run_copy, run_template["data"], 10), "--quiet",
                             "--resume"], capsys)
    assert code == 0, err
    events = _events(run_copy)
    infos = [e["message"] for e in events if e["type"] == "info"]
    assert any("restored checkpoint step_000008 from an interrupted save (its re-save)" in m
               for m in infos), infos
    assert any(f"resumed from {ckpts / 'step_000008'} at step 8" in m for m in infos), infos
    manifest = json.loads((ckpts / "step_000008" / "manifest.json").read_text())
    assert manifest["resaved"] is True  # the newest complete version was restored
    assert [p.name for p in ckpts.iterdir() if p.name.startswith(".")] == []  # no leftovers
    assert events[-1]["type"] == "run_finished" and events[-1]["global_step"] == 10


def test_leftovers_are_pruned_and_an_old_copy_is_restored_when_the_resave_is_incomplete(
    run_copy: Path,
) -> None:
    from core.runs.checkpoint import recover_interrupted_saves, verify_checkpoint

    ckpts = run_copy / "checkpoints"
    dead = 2**22 + 12345  # no such process
    os.replace(ckpts / "step_000008", ckpts / f".step_000008.old-{dead}-abcd1234")
    (ckpts / f".step_000008.tmp-{dead}-0badf00d").mkdir()  # an incomplete re-save
    shutil.copytree(ckpts / "step_000004", ckpts / f".step_000004.old-{dead}-feedbeef")
    notes = recover_interrupted_saves(run_copy)
    assert notes == ["restored checkpoint step_000008 from an interrupted save (its previous "
                     "version)"]
    verify_checkpoint(ckpts / "step_000008")
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000004", "step_000008"]


# ----------------------------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------------------------


def test_disk_full_before_the_write_is_one_line_and_earlier_checkpoints_verify(
    run_copy: Path, run_template: dict[str, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.runs.checkpoint import verify_checkpoint

    real = shutil.disk_usage

    def nearly_full(path: Any) -> Any:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 4096, 4096)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    before = _hashes(run_copy / "checkpoints")
    code, _, err = _run_cli([*cli_train_args(run_copy, run_template["data"], 10), "--quiet",
                             "--resume"], capsys)
    assert code == 1 and len(err) == 1, err
    assert f"disk full at {run_copy / 'checkpoints'}: need ~" in err[0]
    assert "MiB, 4.0 KiB free" in err[0] and "keep_last" in err[0]
    assert _hashes(run_copy / "checkpoints") == before
    for name in ("step_000004", "step_000008"):
        verify_checkpoint(run_copy / "checkpoints" / name)
    failed = _events(run_copy)[-1]
    assert failed["type"] == "run_finished" and failed["status"] == "failed"


@pytest.mark.parametrize("failure", ["torch-runtime", "enospc"])
def test_disk_full_during_the_write_is_mapped_to_one_line(
    failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from core.runs import checkpoint as ck

    state = {"w": torch.ones(64, 64)}
    # The tokenizer as JSON text (long: it must not be mistaken for a path).
    tokenizer = json.dumps({"model": {"vocab": {f"token{i}": i for i in range(400)}}})
    kwargs: dict[str, Any] = dict(model=state, config={"d_model": 64}, tokenizer=tokenizer,
                                  trainer_state={"global_step": 1},
                                  optimizer_state={"state": {}, "param_groups": []})
    first = ck.save_checkpoint(tmp_path / "step_000001", **kwargs)
    before = _hashes(first)

    def torch_full(obj: Any, path: Path) -> None:
        path.write_bytes(b"partial")  # what a full disk leaves behind
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 832 vs 749")

    def enospc(path: Path, tensors: Any, metadata: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    if failure == "torch-runtime":
        monkeypatch.setattr(ck, "_torch_save", torch_full)
    else:
        monkeypatch.setattr(ck, "_write_tensor_file", enospc)
    with pytest.raises(CheckpointError) as info:
        ck.save_checkpoint(tmp_path / "step_000002", **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"disk full at {tmp_path}: need ~")
    assert "earlier checkpoints are intact" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001"]  # no temp leftovers
    assert _hashes(first) == before
    ck.verify_checkpoint(first)
