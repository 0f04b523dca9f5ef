"""A scratch HOME in which the real claude CLI talks to the fake upstream without any dialog.

`~/.claude.json` marks onboarding done and approves the fake API key (claude matches the last 20
characters of the key, observed on v2.1.197). The workspace trust dialog is left alone on
purpose: the relay answers it for its own workspace, and the e2e tests exercise that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FAKE_API_KEY = "sk-ant-api03-relay-test-key-0123456789abcdefXYZ"


def claude_bin() -> str:
    """The pinned CLI installed by ./dev.sh (CLAUDE_RELAY_TEST_CLAUDE_BIN), else `claude`."""
    return os.environ.get("CLAUDE_RELAY_TEST_CLAUDE_BIN", "claude")


def make_home(home: Path, *, trust: tuple[Path, ...] = ()) -> None:
    home.mkdir(parents=True, exist_ok=True)
    state = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "customApiKeyResponses": {"approved": [FAKE_API_KEY[-20:]], "rejected": []},
        "projects": {str(p): {"hasTrustDialogAccepted": True, "allowedTools": []} for p in trust},
    }
    path = home / ".claude.json"
    path.write_text(json.dumps(state))
    path.chmod(0o600)


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
