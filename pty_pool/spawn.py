"""How a claude process is started: argv and environment for one `SpawnSpec` (pure).

The flags make the interactive TUI a plain model endpoint: no built-in tools (unless agent mode
names some), no MCP servers but the relay's own (the caller's tools, pre-allowed), permission mode
`dontAsk` so nothing can wait on a permission prompt, skills/slash commands off, no settings file
of the user's (`isolation`), and a session id chosen by the relay so the transcript file is known
in advance.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping

from protocols import errors
from protocols.model import SpawnSpec, SystemMode

from . import isolation
from .broker import SERVER_NAME
from .settings import PoolSettings

# Placeholders clients send when they mean "whatever the relay uses by default".
DEFAULT_MODEL_NAMES = frozenset({"", "default", "auto", "claude", "claude-code", "claude-cli"})
# argv strings are limited to 128 KiB each on Linux (MAX_ARG_STRLEN).
MAX_SYSTEM_PROMPT = 100_000


def resolve_model(requested: str, default: str | None) -> str | None:
    """The `--model` value for a request's `model` (None: claude's own default)."""
    if requested.strip().lower() in DEFAULT_MODEL_NAMES:
        return default
    return requested.strip()


def spawn_spec(model: str, system: str | None, settings: PoolSettings) -> SpawnSpec:
    if system is not None and len(system.encode()) > MAX_SYSTEM_PROMPT:
        raise errors.InvalidRequestError(
            f"system: the system prompt is longer than {MAX_SYSTEM_PROMPT} bytes, "
            "which claude-relay cannot pass to claude",
            param="system",
        )
    mode: SystemMode = "replace" if settings.system_mode == "replace" else "append"
    return SpawnSpec(
        model=resolve_model(model, settings.default_model), system=system or None, system_mode=mode
    )


def find_claude(claude_bin: str) -> str | None:
    """Absolute path of the claude binary, or None when it cannot be found."""
    return shutil.which(claude_bin)


def build_argv(
    binary: str,
    spec: SpawnSpec,
    session_id: str,
    *,
    resume: bool,
    settings: PoolSettings,
    mcp_url: str | None = None,
    cli_version: str | None = None,
) -> list[str]:
    builtin = ",".join(settings.agent_tools)
    allowed = list(settings.agent_tools)
    argv = [
        binary,
        "--tools",
        builtin,
        "--strict-mcp-config",
        "--disable-slash-commands",
        # anything not allowed below is refused at once instead of asking: a permission prompt
        # would hang the request
        "--permission-mode",
        "dontAsk",
        # no user, project or local settings file: hooks, plugins, output styles, status line,
        # `env` and permissions of the user's own setup stay out of API turns
        "--setting-sources",
        "",
        "--settings",
        json.dumps(isolation.flag_settings(settings, cli_version), separators=(",", ":")),
    ]
    if mcp_url is not None:
        server = {"type": "http", "url": mcp_url}
        argv += ["--mcp-config", json.dumps({"mcpServers": {SERVER_NAME: server}})]
        allowed.append(f"mcp__{SERVER_NAME}")
    if allowed:
        argv += ["--allowedTools", ",".join(allowed)]
    argv += ["--resume", session_id] if resume else ["--session-id", session_id]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.system:
        flag = "--system-prompt" if spec.system_mode == "replace" else "--append-system-prompt"
        argv += [flag, spec.system]
    argv += list(settings.extra_args)
    return argv


def build_env(base: Mapping[str, str], settings: PoolSettings) -> dict[str, str]:
    """The daemon's environment (so ANTHROPIC_* reach claude), isolated and bounded."""
    env = isolation.child_env(base, settings)
    env["TERM"] = "xterm-256color"
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("DISABLE_AUTOUPDATER", "1")
    env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    # claude's default is 10 retries (~3 minutes for a persistent 500); a client waiting on
    # HTTP wants a bounded answer and can retry itself.
    env["CLAUDE_CODE_MAX_RETRIES"] = str(settings.max_retries)
    # A parked tool call waits for the caller's next request; the relay cancels it itself after
    # tool_result_timeout, so claude's own MCP timeouts must not fire first.
    tool_ms = str(int((settings.tool_result_timeout + 60) * 1000))
    env["MCP_TOOL_TIMEOUT"] = tool_ms
    env["CLAUDE_CODE_MCP_TOOL_IDLE_TIMEOUT"] = tool_ms
    env.update(dict(settings.extra_env))
    return env
