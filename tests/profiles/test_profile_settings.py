"""The saved choice: round trip, clear errors for bad files, never clobbered by a failed write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import ConfigError
from profiles.settings import SavedChoice, aeron_home, choice_path, load_saved_choice, save_choice


def test_home_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AERON_TUI_HOME", str(tmp_path / "h"))
    assert aeron_home() == tmp_path / "h" and choice_path() == tmp_path / "h" / "choice.toml"
    monkeypatch.delenv("AERON_TUI_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and not str(aeron_home()).startswith(str(Path.home() / "Library")):
        assert aeron_home() == tmp_path / "xdg" / "aeron-tui"


def test_round_trip() -> None:
    assert load_saved_choice() is None
    choice = SavedChoice(device="cuda", profile="large", trainer="compressed", micro_batch=1,
                         grad_accum=32, gradient_checkpointing=True, precision="bf16",
                         plan="ddp", gpus=(0, 1), estimated_bytes=123, reason="fits (1 of 2 GiB)")
    path = save_choice(choice)
    assert path == choice_path() and path.read_text().startswith("#")
    assert load_saved_choice() == choice


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('device = "cpu"\nprofile = "tiny"\ncolour = 1\n', "unknown key 'colour'"),
        ('device = "cpu"\nprofile = "tiny"\nmicro_batch = "8"\n', "key 'micro_batch' must be int"),
        ('device = "cpu"\nprofile = "tiny"\ngradient_checkpointing = 1\n', "key 'gradient_checkpointing' must be bool"),
        ('device = "tpu"\nprofile = "tiny"\n', "key 'device': must be one of cpu, cuda"),
        ('device = "cpu"\nprofile = "tiny"\nmicro_batch = 0\n', "key 'micro_batch': must be >= 1"),
        ('profile = "tiny"\n', "missing key 'device'"),
        ('device = "cpu"\nprofile = "tiny"\ngpus = [-1]\n', "key 'gpus'"),
        ('device = "cpu"\nprofile = \n', "not valid TOML"),
    ],
)
def test_bad_saved_file_names_file_and_key(text: str, pattern: str) -> None:
    path = choice_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_saved_choice()
    assert str(path) in str(info.value)


def test_unreadable_saved_file_is_a_clear_error() -> None:
    path = choice_path()
    path.mkdir(parents=True)  # a directory where the file should be: reading it fails
    with pytest.raises(ConfigError, match=f"cannot read {path}"):
        load_saved_choice()


def test_failed_write_never_clobbers(monkeypatch: pytest.MonkeyPatch) -> None:
    good = SavedChoice(device="cpu", profile="tiny")
    path = save_choice(good)
    before = path.read_bytes()

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", refuse)
        with pytest.raises(ConfigError, match="cannot write .*No space left.*unchanged"):
            save_choice(SavedChoice(device="cpu", profile="small"))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["choice.toml"]  # temp file cleaned up
    assert load_saved_choice() == good


def test_unwritable_home_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("AERON_TUI_HOME", str(blocker / "home"))  # parent is a file
    with pytest.raises(ConfigError, match="cannot write .*AERON_TUI_HOME"):
        save_choice(SavedChoice(device="cpu", profile="tiny"))
