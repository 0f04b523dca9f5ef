"""Environment for claude (or a daemon) against the fake upstream, in a realistic scratch HOME
(`daemon.scratch_home`)."""

from __future__ import annotations

import os
from pathlib import Path

from claude_relay.daemon.scratch_home import (
    FAKE_API_KEY,
    HOME_MEMORY_MARKER,
    MARKERS,
    USER_MEMORY_MARKER,
    leaks,
    make_home,
    markers_dir,
)

__all__ = [
    "FAKE_API_KEY",
    "HOME_MEMORY_MARKER",
    "MARKERS",
    "USER_MEMORY_MARKER",
    "child_env",
    "claude_bin",
    "leaks",
    "make_home",
    "markers_dir",
]


def claude_bin() -> str:
    """The pinned CLI installed by ./dev.sh (CLAUDE_RELAY_TEST_CLAUDE_BIN), else `claude`."""
    return os.environ.get("CLAUDE_RELAY_TEST_CLAUDE_BIN", "claude")


def child_env(
    home: Path, upstream_url: str, *, base: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment for a daemon (or claude) that should use `home` and the fake upstream."""
    env = dict(os.environ if base is None else base)
    for k in (
        "ANTHROPIC_AUTH_TOKEN",
        "CLAUDE_CONFIG_DIR",
        "CLAUDECODE",
        "XDG_CONFIG_HOME",
        "XDG_STATE_HOME",
        "XDG_DATA_HOME",
        "XDG_RUNTIME_DIR",
    ):
        env.pop(k, None)
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=upstream_url,
        ANTHROPIC_API_KEY=FAKE_API_KEY,
    )
    return env
