"""`claude-relay serve --demo`: the real pipeline (claude in PTYs) against a built-in stand-in.

The stand-in is the package's fake Anthropic upstream (daemon.fake_upstream) on loopback, scripted
by `respond`: deterministic replies, and a tool_use when the request offers tools, so every
endpoint can be tried before `claude` is logged in and app developers get stable replies in CI.
claude runs in a scratch HOME whose only content approves the stand-in's API key, so demo mode
never reads or changes the user's own login, config or sessions. `doctor --self-test` points
claude at the fake upstream the same way (`claude_env`, `swapped_environ`).

Marked where a person or a program looks: a warning in the log at start, `"demo": true` in
/v1/health, and `model: "demo"` in every reply (the request's model is replaced on the way in,
so claude itself asks the stand-in for "demo" and the routes echo it back).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from claude_relay.daemon.claude_probe import API_KEY_WARNING
from claude_relay.daemon.config import Config
from claude_relay.daemon.fake_upstream import Body, FakeUpstream, Reply, ToolUse, Usage
from claude_relay.daemon.scratch_home import FAKE_API_KEY
from claude_relay.pty_pool.files import write_private

log = logging.getLogger(__name__)

DEMO_MODEL: Final = "demo"
_HEALTH_PATHS: Final = frozenset({"/v1/health", "/health"})
_KEEP_RECORDS: Final = 50  # the stand-in records every request; a long demo keeps the last few
# Streamed like a model writes: a few characters at a time, fast enough for CI.
_CHUNK: Final = 24
_DELAY: Final = 0.02
_USAGE: Final = Usage(input_tokens=10, output_tokens=20)
DEMO_KEY: Final = web.AppKey("demo", str)  # the stand-in's URL, set only in demo mode


# --- the stand-in model ------------------------------------------------------------------------


def _prompt(body: Body) -> str:
    """The last text of the last user message (claude puts its reminders before the prompt)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            texts = [
                b.get("text", "")
                for b in content or []
                if isinstance(b, dict) and b.get("type") == "text"
            ]
            return str(texts[-1]) if texts else ""
    return ""


def _tool_results(body: Body) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return []
    content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def _result_text(block: Mapping[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))


def sample_input(schema: object) -> object:
    """A deterministic value that satisfies simple JSON Schemas: the first enum value, else
    "demo" for strings, 1 for numbers, true for booleans, and objects with their required
    properties filled in the same way."""
    if not isinstance(schema, dict):
        return "demo"
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = _object(schema.get("properties"))
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {name: sample_input(props.get(name)) for name in names}
    return {
        "array": [],
        "integer": 1,
        "number": 1,
        "boolean": True,
        "null": None,
    }.get(str(kind), "demo")


def _client_tools(body: Body) -> list[dict[str, Any]]:
    """Tools the caller offered: claude lists them under its MCP names (`mcp__api__<name>`)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    return [t for t in tools if isinstance(t, dict) and str(t.get("name", "")).startswith("mcp__")]


def respond(body: Body) -> Reply:
    """The stand-in's answer to one of claude's requests (docs/demo.md lists the rules)."""
    results = _tool_results(body)
    if results:
        quoted = "; ".join(
            f"{r.get('tool_use_id')}={'error: ' if r.get('is_error') else ''}{_result_text(r)}"
            for r in results
        )
        text = f"Demo reply: the tool returned {quoted}"
        return Reply(text=text, chunk_chars=_CHUNK, delay=_DELAY, usage=_USAGE)
    tools = _client_tools(body)
    if tools:
        tool = tools[0]
        name = str(tool["name"])
        use = ToolUse(name, dict(_object(sample_input(tool.get("input_schema")))))
        shown = name.split("__", 2)[-1]
        return Reply(text=f"Demo: calling {shown}.", tool_uses=(use,), usage=_USAGE)
    text = f"Demo reply (no model was called). You said: {_prompt(body)}"
    return Reply(text=text, chunk_chars=_CHUNK, delay=_DELAY, usage=_USAGE)


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _trimmer(up: Callable[[], FakeUpstream | None]) -> Callable[[str], None]:
    def on_line(line: str) -> None:
        log.debug("stand-in: %s", line)
        upstream = up()
        if upstream is None:
            return
        for records in (
            upstream.main_requests,
            upstream.title_requests,
            upstream.count_tokens_requests,
            upstream.other_requests,
            upstream.all_requests,
        ):
            del records[:-_KEEP_RECORDS]

    return on_line


# --- claude pointed at a fake upstream (shared with doctor --self-test) -------------------------


def claude_env(base: Mapping[str, str], home: Path, upstream_url: str) -> dict[str, str]:
    """`base` without the user's Anthropic, claude and XDG settings, with HOME and the API
    pointed at the fake upstream and its key (which `approve_key` lets claude use)."""
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "XDG_")) and k != "CLAUDECODE"
    }
    env.update(HOME=str(home), ANTHROPIC_BASE_URL=upstream_url, ANTHROPIC_API_KEY=FAKE_API_KEY)
    return env


@contextlib.contextmanager
def swapped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """The pool's claudes read the process environment (as the daemon's do): swap it."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def approve_key(home: Path) -> None:
    """A HOME with nothing but a `.claude.json` that has onboarding done and the fake key
    approved (claude matches the key's last 20 characters; seen on v2.1.197)."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = {
        "hasCompletedOnboarding": True,
        "customApiKeyResponses": {"approved": [FAKE_API_KEY[-20:]], "rejected": []},
    }
    write_private(home / ".claude.json", json.dumps(state).encode())


# --- the daemon in demo mode -------------------------------------------------------------------


def demo_config(config: Config, root: Path) -> Config:
    """`config` with claude's workspace, state and attachments in `root` (never the user's) and
    "demo" as the model every session runs with."""
    return dataclasses.replace(
        config,
        workspace=root / "state" / "workspace",
        attachments_dir=root / "attachments",
        default_model=DEMO_MODEL,
    )


async def run(config: Config, serve: Callable[[Config, str], Awaitable[int]]) -> int:
    """Start the stand-in, point claude at it, and run `serve(config, stand_in_url)`."""
    root = Path(tempfile.mkdtemp(prefix="claude-relay-demo-"))
    upstream: FakeUpstream | None = None
    try:
        home = root / "home"
        await asyncio.to_thread(approve_key, home)
        upstream = FakeUpstream(default=respond, log=_trimmer(lambda: upstream))
        async with upstream:
            log.warning(
                "DEMO MODE: replies come from claude-relay's built-in stand-in model at %s, "
                "not from Anthropic; every reply's model is %r",
                upstream.url,
                DEMO_MODEL,
            )
            with (
                swapped_environ(claude_env(os.environ, home, upstream.url)),
                _quiet_key_warning(),
            ):
                return await serve(demo_config(config, root), upstream.url)
    finally:
        await asyncio.to_thread(shutil.rmtree, root, True)


@contextlib.contextmanager
def _quiet_key_warning() -> Iterator[None]:
    """The license monitor warns that ANTHROPIC_API_KEY bills an API account; in demo mode that
    key is the stand-in's own and bills nothing."""
    license_log = logging.getLogger("claude_relay.daemon.license")

    def keep(record: logging.LogRecord) -> bool:
        return API_KEY_WARNING not in record.getMessage()

    license_log.addFilter(keep)
    try:
        yield
    finally:
        license_log.removeFilter(keep)


@web.middleware
async def demo_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if request.path in _HEALTH_PATHS and isinstance(response, web.Response) and response.body:
        data = orjson.loads(bytes(response.body))  # type: ignore[arg-type]
        if isinstance(data, dict):
            data["demo"] = True
            data["model"] = DEMO_MODEL
            return web.Response(body=orjson.dumps(data), content_type="application/json")
    return response
