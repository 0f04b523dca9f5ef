"""A scratch HOME like a real user's, for claude against a fake upstream: e2e tests and
`claude-relay doctor --self-test`.

`~/.claude.json` marks onboarding done and approves the fake API key (claude matches the last 20
characters of the key, observed on v2.1.197). The workspace trust is not recorded: the relay
settles it in its own claude config dir.

The home is not a clean room, because no user's is: `~/.claude/settings.json` has hooks that
touch marker files, an output style, a status line and `env`; `~/.claude/CLAUDE.md` and
`~/CLAUDE.md` (a parent of the relay's default workspace) carry marker strings; `~/.claude.json`
has a user MCP server whose start touches a marker; `history.jsonl` has a line of its own. None
of it may show in an API turn (`leaks`).
"""

from __future__ import annotations

import json
from pathlib import Path

FAKE_API_KEY = "sk-ant-api03-relay-test-key-0123456789abcdefXYZ"

# Strings only the user's own Claude Code setup contains: an upstream request with one of them
# means that setup leaked into an API turn.
USER_MEMORY_MARKER = "USER-MEMORY-MARKER-7731"
HOME_MEMORY_MARKER = "HOME-MEMORY-MARKER-7732"
SETTINGS_MARKER = "SETTINGS-MARKER-7733"  # in the user's output style
HISTORY_LINE = '{"display":"the user\'s own prompt","timestamp":1,"project":"/x"}\n'
MARKERS = (USER_MEMORY_MARKER, HOME_MEMORY_MARKER, SETTINGS_MARKER)


def markers_dir(home: Path) -> Path:
    """Where the user's hooks, status line and MCP server leave a file when they run."""
    return home / "markers"


def make_home(home: Path, *, trust: tuple[Path, ...] = ()) -> None:
    home.mkdir(parents=True, exist_ok=True)
    marks = markers_dir(home)
    marks.mkdir(exist_ok=True)
    touch = "touch " + str(marks) + "/{}"
    state = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "customApiKeyResponses": {"approved": [FAKE_API_KEY[-20:]], "rejected": []},
        "projects": {str(p): {"hasTrustDialogAccepted": True, "allowedTools": []} for p in trust},
        "mcpServers": {
            "user-mcp": {"type": "stdio", "command": "sh", "args": ["-c", touch.format("mcp")]}
        },
    }
    path = home / ".claude.json"
    path.write_text(json.dumps(state))
    path.chmod(0o600)
    cfg = home / ".claude"
    (cfg / "output-styles").mkdir(parents=True, exist_ok=True)
    (cfg / "output-styles" / "marker.md").write_text(
        f"---\nname: Marker\ndescription: marker style\n---\nAlways say {SETTINGS_MARKER}.\n"
    )
    settings = {
        "hooks": {
            event: [{"hooks": [{"type": "command", "command": touch.format(f"hook-{event}")}]}]
            for event in ("SessionStart", "UserPromptSubmit", "Stop", "PreToolUse")
        },
        "statusLine": {"type": "command", "command": touch.format("statusline")},
        "outputStyle": "Marker",
        "env": {"CLAUDE_CODE_MAX_RETRIES": "9"},
        "permissions": {"allow": ["Read", "Bash"]},
    }
    (cfg / "settings.json").write_text(json.dumps(settings))
    (cfg / "CLAUDE.md").write_text(f"Remember: {USER_MEMORY_MARKER}\n")
    (home / "CLAUDE.md").write_text(f"Project note: {HOME_MEMORY_MARKER}\n")
    (cfg / "history.jsonl").write_text(HISTORY_LINE)


def leaks(home: Path, bodies: list[bytes]) -> list[str]:
    """What of the user's setup showed: marker strings in upstream request bodies, marker files
    left by hooks/status line/MCP server, a changed history.jsonl. Empty when isolated."""
    found = [m for m in MARKERS if any(m.encode() in b for b in bodies)]
    found += sorted(p.name for p in markers_dir(home).iterdir())
    history = home / ".claude" / "history.jsonl"
    if history.read_text() != HISTORY_LINE:
        found.append("history.jsonl changed")
    return found
