"""How a claude process is started: argv and environment for one `SpawnSpec` (pure).

The flags make the interactive TUI a plain model endpoint: no built-in tools (unless agent mode
names some), no MCP servers but the relay's own (the caller's tools, pre-allowed), permission mode
`dontAsk` so nothing can wait on a permission prompt, skills/slash commands off, no settings file
of the user's (`isolation`), and a session id chosen by the relay so the transcript file is known
in advance.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from claude_relay.protocols import errors
from claude_relay.protocols.model import SpawnSpec, SystemMode

from . import isolation, versions
from .broker import SERVER_NAME
from .settings import PoolSettings

# Placeholders clients send when they mean "whatever the relay uses by default".
DEFAULT_MODEL_NAMES = frozenset({"", "default", "auto", "claude", "claude-code", "claude-cli"})
# The system prompt reaches claude in a private file (argv is readable by every local user), so
# the limit is not exec's; it only bounds what one request can make the relay write and hold.
MAX_SYSTEM_PROMPT = 1_000_000
# A model name becomes `--model <name>`: letters, digits and the punctuation of real ids and
# aliases (`claude-sonnet-4-5-20250929`, `sonnet[1m]`, `us.anthropic.claude…:0`,
# `arn:aws:bedrock:…/…`), starting with a letter or digit so it can never read as a flag.
MAX_MODEL = 256
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@\[\]+-]*")


def check_model(model: str) -> str:
    """`model` as the client sent it, stripped, or a 400 before it can reach argv."""
    name = model.strip()
    if len(name) > MAX_MODEL:
        raise errors.InvalidRequestError(
            f"model: the model name is longer than {MAX_MODEL} characters", param="model"
        )
    if name.lower() not in DEFAULT_MODEL_NAMES and not _MODEL.fullmatch(name):
        raise errors.InvalidRequestError(
            f"model: {errors.excerpt(name)} is not a model name (letters, digits and . _ : / @ "
            "[ ] + -, starting with a letter or digit)",
            param="model",
        )
    return name


def resolve_model(requested: str, default: str | None) -> str | None:
    """The `--model` value for a request's `model` (None: claude's own default)."""
    name = check_model(requested)
    if name.lower() in DEFAULT_MODEL_NAMES:
        return default
    return name


def spawn_spec(model: str, system: str | None, settings: PoolSettings) -> SpawnSpec:
    """The spawn settings a request needs; a 400 for values claude could not be started with."""
    if system is not None and len(system.encode(errors="surrogatepass")) > MAX_SYSTEM_PROMPT:
        raise errors.InvalidRequestError(
            f"system: the system prompt is longer than {MAX_SYSTEM_PROMPT} bytes",
            param="system",
        )
    if system is not None and "\0" in system:
        raise errors.InvalidRequestError(
            "system: the system prompt contains a NUL character", param="system"
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
    mcp_config: Path | None = None,
    system_file: Path | None = None,
    cli_version: str | None = None,
) -> list[str]:
    """claude's argv. What a request or a secret decides — the system prompt, the MCP
    endpoint with its token — is in private files (`mcp_config`, `system_file`: see
    `write_private_args`), never in argv, which every local user can read in /proc."""
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
    if mcp_config is not None:
        argv += ["--mcp-config", str(mcp_config)]
        allowed.append(f"mcp__{SERVER_NAME}")
    if allowed:
        argv += ["--allowedTools", ",".join(allowed)]
    argv += ["--resume", session_id] if resume else ["--session-id", session_id]
    if not versions.at_least(cli_version, versions.NO_TITLE_REQUEST):
        # A named session gets no generated title: 2.1.197 otherwise spends one extra upstream
        # request (the user's quota) per new conversation on a title nobody sees. Unique, so
        # that no two live sessions share a name. It shows in the input box's top rule
        # (`tui._RULE`).
        argv += ["--name", f"{SESSION_NAME}-{session_id[:8]}"]
    if spec.model:
        argv += ["--model", spec.model]
    if spec.system and system_file is not None:
        replace = spec.system_mode == "replace"
        argv += ["--system-prompt-file" if replace else "--append-system-prompt-file"]
        argv += [str(system_file)]
    argv += list(settings.extra_args)
    return argv


def private_args(spec: SpawnSpec, mcp_url: str | None) -> dict[str, bytes]:
    """The files `build_argv` names, by file name: the MCP config (its URL carries the
    channel's token) and the system prompt. Written 0600 into the claude's private temp dir,
    they live exactly as long as that claude."""
    files: dict[str, bytes] = {}
    if mcp_url is not None:
        server = {"type": "http", "url": mcp_url}
        files[MCP_CONFIG_FILE] = json.dumps({"mcpServers": {SERVER_NAME: server}}).encode()
    if spec.system:
        files[SYSTEM_PROMPT_FILE] = spec.system.encode(errors="surrogatepass")
    return files


SESSION_NAME = "api"
MCP_CONFIG_FILE = "mcp.json"
SYSTEM_PROMPT_FILE = "system-prompt.md"


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
