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
