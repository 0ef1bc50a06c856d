"""Control channel: stdin JSON commands, signals, EOF."""

from __future__ import annotations

import io
import signal
import time

import pytest

from core.train.control import ControlChannel, parse_command


def test_parse_command() -> None:
    assert parse_command('{"cmd": "pause"}\n').cmd == "pause"  # type: ignore[union-attr]
    assert parse_command(' {"cmd": "STOP"} ').cmd == "stop"  # type: ignore[union-attr]
    assert parse_command("\n") is None
    bad = parse_command("pause")
    assert bad is not None and bad.cmd == "invalid" and "not JSON" in bad.detail
    unknown = parse_command('{"cmd": "explode"}')
    assert unknown is not None and unknown.cmd == "invalid" and "explode" in unknown.detail


def test_stdin_reader_queues_commands_and_eof_is_not_stop() -> None:
    channel = ControlChannel()
    channel.start_stdin_reader(io.StringIO('{"cmd": "pause"}\n{"cmd": "resume"}\nnonsense\n'))
    got: list[str] = []
    deadline = time.time() + 5
    while len(got) < 3 and time.time() < deadline:
        got += [c.cmd for c in channel.wait(0.1)]
    assert got == ["pause", "resume", "invalid"]
    time.sleep(0.1)
    assert channel.poll() == []  # EOF reached: nothing, and certainly no stop


def test_first_signal_stops_second_sigint_aborts() -> None:
    channel = ControlChannel()
    channel._on_signal(signal.SIGTERM, None)
    cmds = channel.poll()
    assert [c.cmd for c in cmds] == ["stop"] and cmds[0].source == "signal"
    assert channel.poll() == []  # reported once
    with pytest.raises(KeyboardInterrupt):
        channel._on_signal(signal.SIGINT, None)


def test_handlers_installed_and_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    channel = ControlChannel()
    channel.install_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) == channel._on_signal
    channel.restore_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_run_directory_channel_takes_only_this_trainers_new_commands(tmp_path) -> None:
    import json
    import os

    path = tmp_path / "control.jsonl"
    now = time.time()
    old = {"cmd": "stop", "pid": os.getpid(), "time": now - 60}  # sent to an earlier trainer
    other = {"cmd": "stop", "pid": os.getpid() + 1, "time": now}  # sent to another process
    path.write_text(json.dumps(old) + "\n" + json.dumps(other) + "\n")
    channel = ControlChannel()
    channel.watch_file(path, since=now - 1)
    with open(path, "a") as fh:
        fh.write(json.dumps({"cmd": "pause", "pid": os.getpid(), "time": now}) + "\n")
        fh.write('{"cmd": "checkpoint"}\n{"cmd": "explode"}\n{"cmd": "res')  # the last is partial
    got = []
    deadline = time.time() + 5
    while len(got) < 3 and time.time() < deadline:
        got += channel.wait(0.1)
    assert [(c.cmd, c.source) for c in got] == [("pause", "file"), ("checkpoint", "file"),
                                                ("invalid", "file")]
    with open(path, "a") as fh:
        fh.write('ume"}\n')  # the partial line completes
    got = []
    deadline = time.time() + 5
    while not got and time.time() < deadline:
        got += channel.wait(0.1)
    assert [c.cmd for c in got] == ["resume"]
    channel.stop_watching()


def test_send_control_refuses_a_run_that_is_not_live_with_one_line(tmp_path) -> None:
    from core.train.control import ControlError, send_control

    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with pytest.raises(ControlError, match=r"r: the run is not live .*; nothing to pause$"):
        send_control(run_dir, "pause")
    with pytest.raises(ControlError, match="unknown control command 'explode'"):
        send_control(run_dir, "explode")
    assert not (run_dir / "control.jsonl").exists()


def test_sighup_and_the_end_of_stdin_are_each_one_detach() -> None:
    channel = ControlChannel()
    assert channel.take_detach() is None
    channel._on_hangup(signal.SIGHUP, None)
    reason = channel.take_detach()
    assert reason is not None and "SIGHUP" in reason
    assert channel.take_detach() is None and channel.poll() == []  # a detach is not a stop
    channel.start_stdin_reader(io.StringIO(""))
    deadline = time.time() + 5
    reason = None
    while reason is None and time.time() < deadline:
        reason = channel.take_detach()
        time.sleep(0.01)
    assert reason is not None and "stdin" in reason
    assert channel.take_detach() is None
