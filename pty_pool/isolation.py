"""claude's configuration, owned by the relay: an API turn sees what its caller sent, nothing else.

An interactive claude loads the user's whole Claude Code setup — settings (hooks, plugins, output
style, status line, `env`), CLAUDE.md from the user dir and from every parent of its cwd,
auto-memory, MCP servers from ~/.claude.json — and appends every prompt to history.jsonl. None of
that may reach an API turn, and a request must not be able to make claude read a file or run a
command. All of it is settled through what claude reads, never through its screen:

- `CLAUDE_CONFIG_DIR` points at a directory the relay owns: settings, ~/.claude.json (trust,
  onboarding, MCP servers), plugins, memory, transcripts and history are the relay's, seeded
  here before any claude starts (the trust record claude writes when a person accepts the
  workspace dialog, so no dialog appears);
- `CLAUDE_SECURESTORAGE_CONFIG_DIR` keeps the *login* where the user's claude keeps it (the
  credentials file, or the macOS keychain entry, whose name derives from it): refreshes land in
  the user's store, so neither claude logs the other out;
- `--setting-sources ""` loads no user/project/local settings file at all; the relay's own
  settings go in with `--settings` (flag settings, which claude always honours);
- environment switches for what settings do not cover (CLAUDE.md discovery, auto-memory, file
  mentions) and a shell prefix that refuses to run anything (bash mode, `!cmd`);
- file mentions (`@path`) off: CLAUDE_CODE_DISABLE_FILE_MENTIONS where claude has it (2.1.332),
  else a permission deny rule for every absolute path, which 2.1.197's mentions honour.

Each fact is observed on every supported CLI version (docs/isolation.md); the e2e tests prove it
against a HOME with hooks, CLAUDE.md files and an MCP server of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from . import versions
from .files import write_private
from .settings import PoolSettings

# Variables claude sets for its own children; inherited, they make claude think it is nested.
_DROP_ENV: Final = ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "CLAUDE_CODE_SSE_PORT")
# The daemon's own settings (API keys among them) are no business of claude's.
_DROP_PREFIX: Final = "CLAUDE_RELAY_"

# `@path` mentions go through claude's Read permission check: a deny rule for every absolute path
# stops them (2.1.197 and 2.1.332; a bare `Read` deny does not on 2.1.197). `~/` and relative
# forms resolve to absolute paths before the check; they are listed so a rule-matching change in
# a later CLI still finds one that fits.
READ_DENY: Final = ("Read(//**)", "Read(~/**)", "Read(**)")
# Built-in tools that read or run: with one of them enabled (agent mode) the operator has chosen
# to let the model reach files or commands, and the matching guard is left off.
_READERS: Final = frozenset({"Read", "Glob", "Grep", "Bash", "Edit", "Write", "NotebookEdit"})
_RUNNERS: Final = frozenset({"Bash"})

# Top-level keys of the user's ~/.claude.json that carry their login decisions (which API key
# they approved, which account they signed in with): copied, so the login keeps working.
_LOGIN_KEYS: Final = ("oauthAccount", "primaryApiKey")


def relay_config_dir(settings: PoolSettings) -> Path:
    return settings.claude_config_dir or settings.workspace.parent / "claude-config"


def attachments_root(settings: PoolSettings) -> Path:
    """Where turns write the image files they paste (private per-turn directories)."""
    return settings.attachments_dir or settings.workspace.parent / "attachments"


def claude_tmp_root(settings: PoolSettings) -> Path:
    """Where each claude gets a private temp dir of its own (CLAUDE_CODE_TMPDIR): 2.1.332 keeps a
    copy of every pasted image under its temp dir, by default a shared /tmp/claude-<uid>/. Next
    to the attachments, so it has their properties (private, tmpfs where there is one, no space
    in the path)."""
    return attachments_root(settings).parent / "claude-tmp"


def private_dir_env(private: Path) -> dict[str, str]:
    """What points one claude's own files at `private`, its temp dir (0700, removed with it):
    its temp files (2.1.332: copies of pasted images), TMPDIR (2.1.197 still made an empty
    /tmp/claude-<uid> without it) and, on Linux, its cache, where both versions write a log
    file per claude for its MCP connection (~/.cache/claude-cli-nodejs/; macOS keeps it in
    ~/Library/Caches, which no variable moves)."""
    path = str(private)
    return {"CLAUDE_CODE_TMPDIR": path, "TMPDIR": path, "XDG_CACHE_HOME": path}


def user_config_dir(env: Mapping[str, str]) -> Path:
    """Where the user's own claude keeps its config (CLAUDE_CONFIG_DIR, else ~/.claude)."""
    override = env.get("CLAUDE_CONFIG_DIR")
    if override:
        return Path(override)
    return Path(env.get("HOME") or str(Path.home())) / ".claude"


def user_global_config(env: Mapping[str, str]) -> Path:
    """The user's `.claude.json` (inside CLAUDE_CONFIG_DIR when set, else in HOME)."""
    override = env.get("CLAUDE_CONFIG_DIR")
    if override:
        return Path(override) / ".claude.json"
    return Path(env.get("HOME") or str(Path.home())) / ".claude.json"


def flag_settings(settings: PoolSettings, cli_version: str | None = None) -> dict[str, Any]:
    """The relay's settings for a claude of `cli_version` (None: unknown), passed with
    `--settings` (no secrets in them)."""
    out: dict[str, Any] = {
        "spinnerTipsEnabled": False,  # no `⎿ Tip:` rows under the spinner
        # belt and braces: no settings file is loaded at all (--setting-sources ""), and this
        # also covers hooks that a managed or flag source could bring
        "disableAllHooks": True,
        "autoMemoryEnabled": False,
        # After its first turn claude registers itself as the handler of claude-cli:// links in
        # the user's desktop (~/.local/share/applications, the macOS app registry): a side effect
        # in the user's home, and a way for web pages to start claude, that an API turn must not
        # leave behind (2.1.197 and 2.1.332 honour this setting)
        "disableDeepLinkRegistration": "disable",
    }
    mentions_switch = versions.at_least(cli_version, versions.FILE_MENTIONS_SWITCH)
    if not _READERS & set(settings.agent_tools) and not mentions_switch:
        out["permissions"] = {"deny": list(READ_DENY)}
    return out


# Every command claude would run is prefixed with this. Looked up once, at import (a PATH
# search is blocking file I/O, and child_env runs on the event loop).
_FALSE: Final = shutil.which("false") or "/bin/false"


def child_env(base: Mapping[str, str], settings: PoolSettings) -> dict[str, str]:
    """The environment of a claude: the daemon's own (so ANTHROPIC_* reach it), isolated."""
    env = {k: v for k, v in base.items() if k not in _DROP_ENV and not k.startswith(_DROP_PREFIX)}
    env["CLAUDE_CONFIG_DIR"] = str(relay_config_dir(settings))
    # "" means "the default place" (~/.claude, and the default keychain entry); a user who set
    # CLAUDE_CONFIG_DIR keeps their login there.
    env.setdefault("CLAUDE_SECURESTORAGE_CONFIG_DIR", base.get("CLAUDE_CONFIG_DIR", ""))
    # each session replaces this with a private dir of its own; short-lived probes (`--version`,
    # `auth status`) use the root, never a shared /tmp/claude-<uid>
    env["CLAUDE_CODE_TMPDIR"] = str(claude_tmp_root(settings))
    env["CLAUDE_CODE_DISABLE_CLAUDE_MDS"] = "1"  # user, project and every parent dir's CLAUDE.md
    env["CLAUDE_CODE_DISABLE_AUTO_MEMORY"] = "1"
    env["CLAUDE_CODE_DISABLE_FILE_MENTIONS"] = "1"  # 2.1.332; older versions rely on READ_DENY
    # Left alone, claude fetches the official plugin marketplace on start (downloads.claude.ai,
    # then `git clone` from GitHub) into the relay's config dir, retrying with backoff: network
    # traffic and a git process that API turns do not need (seen in 2.1.332's debug log).
    env["CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL"] = "1"
    # 2.1.332's cross-session messaging: each claude listens on a Unix socket (an inbox other
    # sessions can queue prompts into) and publishes its key in the config dir, where the relay's
    # other claudes, each serving another caller, would find it. This is claude's own switch for
    # that gate (it wins over the remote feature flag); older versions have no inbox.
    env["CLAUDE_CODE_HARBOR_KITE"] = "0"
    if not _RUNNERS & set(settings.agent_tools):
        # Bash mode (`!cmd`) runs whatever follows even with --tools "" and a Bash deny rule;
        # every command claude runs is prefixed with this, so nothing runs (2.1.197, 2.1.332).
        env["CLAUDE_CODE_SHELL_PREFIX"] = _FALSE
    return env


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def seeded_state(
    ours: Mapping[str, Any], user: Mapping[str, Any], workspaces: tuple[str, ...]
) -> dict[str, Any]:
    """The relay's `.claude.json`: claude's own keys kept, onboarding done, the workspace trusted,
    and the user's login decisions (approved API keys, signed-in account) carried over."""
    out = dict(ours)
    out["hasCompletedOnboarding"] = True
    projects = dict(out.get("projects") or {})
    for ws in workspaces:
        entry = dict(projects.get(ws) or {})
        entry["hasTrustDialogAccepted"] = True
        entry.setdefault("allowedTools", [])
        projects[ws] = entry
    out["projects"] = projects
    for key in _LOGIN_KEYS:
        if key in user:
            out[key] = user[key]
    responses = user.get("customApiKeyResponses")
    if isinstance(responses, dict):
        mine = dict(out.get("customApiKeyResponses") or {})
        for k in ("approved", "rejected"):
            theirs = responses.get(k)
            if isinstance(theirs, list):
                merged = [*mine.get(k, []), *theirs]
                mine[k] = [x for i, x in enumerate(merged) if x not in merged[:i]]
        out["customApiKeyResponses"] = mine
    return out


def prepare(settings: PoolSettings, user_env: Mapping[str, str]) -> Path:
    """Create or refresh the relay's claude config dir (blocking: run it in a thread).

    Safe to repeat while claudes run: only the relay's keys change, atomically.
    """
    cfg = relay_config_dir(settings)
    cfg.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg.chmod(0o700)
    settings.workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
    ws = str(settings.workspace)
    workspaces = tuple(dict.fromkeys((ws, os.path.realpath(ws))))
    state_path = cfg / ".claude.json"
    state = seeded_state(
        _read_json(state_path), _read_json(user_global_config(user_env)), workspaces
    )
    write_private(state_path, json.dumps(state, indent=2).encode())
    # Interactive claude appends every prompt to history.jsonl; API prompts are not history.
    history = cfg / "history.jsonl"
    if not history.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            history.unlink()
        history.symlink_to(os.devnull)
    return cfg
