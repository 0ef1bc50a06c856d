"""Where Aeron TUI keeps per-user files (data cache, saved choices, user profiles)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def aeron_home() -> Path:
    """``$AERON_TUI_HOME``, else the platform's config directory (not created here).

    Linux ``$XDG_CONFIG_HOME/aeron-tui`` (default ``~/.config/aeron-tui``), macOS
    ``~/Library/Application Support/aeron-tui``, Windows ``%APPDATA%\\aeron-tui``.
    """
    env = os.environ.get("AERON_TUI_HOME")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "aeron-tui"


def default_data_dir() -> Path:
    """The data cache: ``aeron_home()/data``."""
    return aeron_home() / "data"
