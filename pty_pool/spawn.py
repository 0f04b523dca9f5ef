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

from . import ax, isolation, versions
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


# What claude honours per spawn (both 2.1.197 and 2.1.332, read in their bundled code and checked
# against the fake upstream's recorded requests): CLAUDE_CODE_MAX_OUTPUT_TOKENS becomes each
# upstream request's `max_tokens` (clamped by claude to the model's ceiling: 64000 for
# claude-sonnet-4-5, 128000 for claude-opus-4-8 / claude-opus-5-5); MAX_THINKING_TOKENS=N > 0
# becomes `thinking: {type: enabled, budget_tokens: min(N, max_tokens - 1)}` on models with
# budgeted thinking and `{type: adaptive}` on adaptive-only ones (the budget is then not sent);
# MAX_THINKING_TOKENS=0 turns thinking off, which 2.1.332 does not do for claude-opus-5-5
# (thinking is always on there). Neither is settable in a running claude, so each value is a
# separate claude: values are rounded up (output) or down (budget) to a few buckets.
MAX_OUTPUT_BUCKETS = (8192, 32768, 65536)
MIN_THINKING_BUDGET = 1024  # the API's own minimum for budget_tokens


def max_output_bucket(max_tokens: int) -> int | None:
    """The output cap claude is started with for a request's `max_tokens`: the smallest bucket
    that holds it (None beyond the largest: claude's own default, the model's ceiling)."""
    return next((b for b in MAX_OUTPUT_BUCKETS if max_tokens <= b), None)


def thinking_bucket(budget: int | None) -> int:
    """MAX_THINKING_TOKENS for a request's thinking budget (None: not asked, 0: off): the
    largest power of two at most `budget`, and at least the API's minimum of 1024."""
    if budget is None:
        return 0
    bucket = MIN_THINKING_BUDGET
    while bucket * 2 <= budget:
        bucket *= 2
    return bucket


def spawn_spec(
    model: str,
    system: str | None,
    settings: PoolSettings,
    *,
    max_tokens: int | None = None,
    thinking: int | None = None,
) -> SpawnSpec:
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
        model=resolve_model(model, settings.default_model),
        system=system or None,
        system_mode=mode,
        max_output=max_output_bucket(max_tokens or 1),
        thinking=thinking_bucket(thinking),
    )


def find_claude(claude_bin: str) -> str | None:
    """Absolute path of the claude binary, or None when it cannot be found. Blocking (it stats
    each PATH entry): call through a thread."""
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
        # no Claude in Chrome (browser-control tools through the user's browser extension),
        # whatever the user's config or CLAUDE_CODE_ENABLE_CFC in the daemon's environment says
        # (2.1.197 and 2.1.332 take the flag)
        "--no-chrome",
    ]
    if not spec.commands:
        # No slash commands: a caller's text that starts with `/` is sent as text (behind the
        # space `tui.sanitize_prompt` adds; with commands on, 2.1.332 trims it and runs one).
        argv.append("--disable-slash-commands")
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
    if settings.screen_mode == "ax":
        # word-level screen-reader rendering with OSC 133 turn marks (ax.py reads it)
        argv.append(ax.FLAG)
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


def build_env(
    base: Mapping[str, str], settings: PoolSettings, spec: SpawnSpec | None = None
) -> dict[str, str]:
    """The daemon's environment (so ANTHROPIC_* reach claude), isolated and bounded; with
    `spec`, the output and thinking limits it was started for."""
    env = isolation.child_env(base, settings)
    if spec is not None:
        # the request's limits, not whatever the daemon's own environment says
        env.pop("CLAUDE_CODE_MAX_OUTPUT_TOKENS", None)
        if spec.max_output is not None:
            env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(spec.max_output)
        if spec.thinking is not None:
            env["MAX_THINKING_TOKENS"] = str(spec.thinking)
    env["TERM"] = "xterm-256color"
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("DISABLE_AUTOUPDATER", "1")
    env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
    # claude's default is 10 retries (~3 minutes for a persistent 500); a client waiting on
    # HTTP wants a bounded answer and can retry itself.
    env["CLAUDE_CODE_MAX_RETRIES"] = str(settings.max_retries)
    if settings.screen_mode == "ax":
        # 2.1.332 in screen-reader mode stays quiet for 3 s after its "[Screen Reader Mode: on]"
        # line, so a person's screen reader can read it, and only then draws its first screen:
        # every spawn took 2.5 s longer than in rows mode. The relay reads the screen itself.
        env["CLAUDE_AX_STARTUP_QUIET_MS"] = "0"
    # A parked tool call waits for the caller's next request; the relay cancels it itself after
    # tool_result_timeout, so claude's own MCP timeouts must not fire first.
    tool_ms = str(int((settings.tool_result_timeout + 60) * 1000))
    env["MCP_TOOL_TIMEOUT"] = tool_ms
    env["CLAUDE_CODE_MCP_TOOL_IDLE_TIMEOUT"] = tool_ms
    env.update(dict(settings.extra_env))
    return env
