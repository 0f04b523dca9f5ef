"""The official Node SDKs (`@anthropic-ai/sdk`, `openai` from npm) against the relay.

Each case is a small script in tests/node/ that prints one JSON object; the test scripts the fake
upstream and compares the object exactly. The SDK versions are pinned by tests/node/package-lock
.json and installed once with `npm ci` into .cache/node-clients/<hash of the lock>/ (git-ignored),
so a fresh clone needs only node and npm, which the pinned claude CLI needs anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, RecordedRequest, Reply, ToolUse, Usage
from tests.support.client_proc import run_client
from tests.support.relay_proc import Relay

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "tests" / "node"
CACHE = REPO / ".cache" / "node-clients"
TOOL_PREFIX = "mcp__api__"  # how claude names the relay's MCP tools upstream
# Several paragraphs: the relay streams what claude's screen shows, row by row, so a reply of
# one short line arrives in one delta. Each test routes its replies by a token in the scripts'
# prompts (`up.on`), not by queue order, so a side request of a claude still warming up cannot
# take them.
PROSE = "\n\n".join(" ".join(f"n{p}w{i}" for i in range(30)) for p in range(3)) + "\n\nDone."
NPM_TIMEOUT = 240.0

# The first test pays for a one-time `npm ci` (about 50 s on the test machine, mostly the
# registry's latency); later runs find the cache and each case takes about a second.
pytestmark = [
    pytest.mark.pin_only,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(NPM_TIMEOUT + 60),
]

if shutil.which("node") is None or shutil.which("npm") is None:  # pragma: no cover
    pytest.skip("node and npm are needed for the Node SDK tests", allow_module_level=True)


def _install() -> Path:
    """node_modules for the pinned lock file, installed once per lock (by its hash)."""
    manifest = (NODE_DIR / "package.json").read_bytes()
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    target = CACHE / hashlib.sha256(manifest + b"\0" + lock).hexdigest()[:16]
    if (target / "node_modules").is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    # install beside the target and rename it into place, so an interrupted install is never
    # mistaken for a finished one
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=CACHE))
    try:
        shutil.copy(NODE_DIR / "package.json", staging)
        shutil.copy(NODE_DIR / "package-lock.json", staging)
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            check=True,
            timeout=NPM_TIMEOUT,
            stdout=subprocess.DEVNULL,
        )
        try:
            staging.rename(target)
        except OSError:  # another run installed it first
            if not (target / "node_modules").is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in CACHE.iterdir():  # installs of earlier lock files
        if old != target and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def scripts() -> Iterator[Path]:
    """A directory holding copies of tests/node/*.mjs next to the installed node_modules (Node
    resolves a script's imports from the script's own directory upwards)."""
    installed = _install()
    run = Path(tempfile.mkdtemp(prefix="run-", dir=installed))
    try:
        for script in NODE_DIR.glob("*.mjs"):
            shutil.copy(script, run)
        yield run
    finally:
        shutil.rmtree(run, ignore_errors=True)


async def node(scripts: Path, script: str, case: str, relay: Relay) -> Any:
    """Run one case and return the JSON it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    env["RELAY_URL"] = relay.url
    return json.loads(await run_client("node", str(scripts / script), case, env=env))


def has_tool_result(request: RecordedRequest) -> bool:
    content = request.body["messages"][-1]["content"]
    return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)


# --- @anthropic-ai/sdk ---------------------------------------------------------------------


async def test_anthropic_text(scripts: Path, relay: Relay, up: FakeUpstream) -> None:
    up.on("node text", Reply(text="Hello from Node — ünïcödé 👍", usage=Usage(21, 4)))
    got = await node(scripts, "anthropic.mjs", "text", relay)
    assert got["id"].startswith("msg_")
    del got["id"]
    assert got == {
        "model": "default",
        "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "Hello from Node — ünïcödé 👍"}],
        "usage": {"input_tokens": 21, "output_tokens": 4},
    }


async def test_anthropic_stream(scripts: Path, relay: Relay, up: FakeUpstream) -> None:
    text = PROSE
    up.on("node stream", Reply(text=text, usage=Usage(30, 9), chunk_chars=20, delay=0.2))
    got = await node(scripts, "anthropic.mjs", "stream", relay)
    events = got["events"]
    assert events[0] == "message_start"
    assert events[-2:] == ["message_delta", "message_stop"]
    assert "content_block_delta" in events
    assert len(got["deltas"]) >= 2, got  # it streamed, not one block at the end
    assert "".join(got["deltas"]) == text
    final = got["final"]
    assert final["content"] == [{"type": "text", "text": text}]
    assert (final["stop_reason"], final["usage"]) == (
        "end_turn",
        {"input_tokens": 30, "output_tokens": 9},
    )


async def test_anthropic_tool_round_trip(scripts: Path, relay: Relay, up: FakeUpstream) -> None:
    use = ToolUse(TOOL_PREFIX + "get_weather", {"city": "Oslo"}, "toolu_node1")
    up.on("node weather?", Reply(text="Checking.", tool_uses=(use,), usage=Usage(50, 20)))
    up.on("sunny in Oslo", Reply(text="Oslo is sunny.", usage=Usage(80, 5)))
    got = await node(scripts, "anthropic.mjs", "tools", relay)
    first, final = got["first"], got["final"]
    assert first["stop_reason"] == "tool_use"
    assert first["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_node1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert final["stop_reason"] == "end_turn"
    assert final["content"] == [{"type": "text", "text": "Oslo is sunny."}]
    # the parked claude got the SDK's tool_result as a real one, not a re-rendered history
    (follow,) = [r for r in up.main_requests if "sunny in Oslo" in r.user_text]
    (result,) = [b for b in follow.body["messages"][-1]["content"] if b["type"] == "tool_result"]
    assert result["tool_use_id"] == "toolu_node1"
    assert result["content"] == [{"type": "text", "text": "sunny in Oslo"}]


# --- openai ----------------------------------------------------------------------------------


async def test_openai_text(scripts: Path, relay: Relay, up: FakeUpstream) -> None:
    up.on("node text", Reply(text="Hello from Node — ünïcödé 👍", usage=Usage(21, 4)))
    got = await node(scripts, "openai.mjs", "text", relay)
    assert got["object"] == "chat.completion"
    assert got["model"] == "default"
    assert got["finish_reason"] == "stop"
    assert got["message"]["role"] == "assistant"
    assert got["message"]["content"] == "Hello from Node — ünïcödé 👍"
    assert got["usage"]["prompt_tokens"] == 21
    assert got["usage"]["completion_tokens"] == 4
    assert got["usage"]["total_tokens"] == 25


async def test_openai_stream(scripts: Path, relay: Relay, up: FakeUpstream) -> None:
    text = PROSE
    up.on("node stream", Reply(text=text, usage=Usage(30, 9), chunk_chars=20, delay=0.2))
    got = await node(scripts, "openai.mjs", "stream", relay)
    assert len(got["deltas"]) >= 2
    assert "".join(got["deltas"]) == text
    assert got["finish_reason"] == "stop"
    assert (got["usage"]["prompt_tokens"], got["usage"]["completion_tokens"]) == (30, 9)


async def test_openai_tool_round_trip(scripts: Path, relay: Relay, up: FakeUpstream) -> None:
    use = ToolUse(TOOL_PREFIX + "get_weather", {"city": "Oslo"})
    up.on("node weather?", Reply(text="", tool_uses=(use,)))
    up.on("sunny in Oslo", Reply(text="Oslo is sunny."))
    got = await node(scripts, "openai.mjs", "tools", relay)
    first, final = got["first"], got["final"]
    assert first["finish_reason"] == "tool_calls"
    (call,) = first["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert final["finish_reason"] == "stop"
    assert final["message"]["content"] == "Oslo is sunny."
    (follow,) = [r for r in up.main_requests if "sunny in Oslo" in r.user_text]
    assert has_tool_result(follow)  # a real tool_result, not a history rendered as text


async def test_openai_streamed_tool_round_trip(
    scripts: Path, relay: Relay, up: FakeUpstream
) -> None:
    use = ToolUse(TOOL_PREFIX + "get_weather", {"city": "Rome"})
    up.on("node streamed weather?", Reply(text="", tool_uses=(use,)))
    up.on("rainy, 12 C", Reply(text="Rainy in Rome.", chunk_chars=4))
    got = await node(scripts, "openai.mjs", "stream_tools", relay)
    first, final = got["first"], got["final"]
    assert first["finish_reason"] == "tool_calls"
    (call,) = first["message"]["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        "get_weather",
        {"city": "Rome"},
    )
    assert final["message"]["content"] == "Rainy in Rome."
    (follow,) = [r for r in up.main_requests if "rainy, 12 C" in r.user_text]
    assert has_tool_result(follow)
