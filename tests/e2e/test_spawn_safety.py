"""Request values that reach claude's argv, end to end: checked first (400 in the API's
envelope, the pool untouched), and secrets never in argv, where any local user can read them.

Before: `"model": "-p"` made claude start as `--print` and exit, turning health degraded and
every client's request into a 503; a NUL in `model` or `system` wedged the spawner for good; the
system prompt and the MCP URL with its token were in /proc/<pid>/cmdline.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any, cast

import aiohttp
import anthropic
import openai
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply, ToolUse
from tests.support.relay_proc import Relay, children_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO: Any = [{"role": "user", "content": "hello"}]


async def _healthy_after(relay: Relay, up: FakeUpstream) -> None:
    """Nothing poisoned: health is ok and a normal request is answered at once."""
    health = await relay.health()
    assert health["status"] == "ok", health
    up.push(Reply(text="still fine"))
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        msg = await sdk.messages.create(model="default", max_tokens=20, messages=HELLO)
    assert msg.content[0].text == "still fine"  # type: ignore[union-attr]
    # every child of the daemon is a claude that exec'd: no forked copy of the daemon
    for pid in children_of(relay.proc.pid):
        try:
            exe = await asyncio.to_thread(os.readlink, f"/proc/{pid}/exe")
        except FileNotFoundError:
            continue  # a disposed claude, just reaped
        assert "python" not in Path(exe).name, exe


@pytest.mark.parametrize("model", ["-p", "--print", "x\u0000y", "m" * 200_000, "a b"])
async def test_a_model_that_is_not_a_name_is_a_400_and_poisons_nothing(
    relay: Relay, up: FakeUpstream, model: str
) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/v1/messages", "/v1/chat/completions"):
            body = {"model": model, "max_tokens": 20, "messages": HELLO}
            async with http.post(relay.url + path, json=body) as r:
                assert r.status == 400, await r.text()
                err = await r.json()
                assert err["error"]["type"] == "invalid_request_error"
                assert len(await r.read()) < 1024  # an excerpt, never the value itself
    before: Any = (await relay.health())["pool"]
    spawned = before["spawned"]
    await _healthy_after(relay, up)
    # the refused requests started no claude (only the normal one took a warm claude)
    pool: Any = (await relay.health())["pool"]
    assert pool["spawned"] <= spawned + 1


async def test_a_system_prompt_with_nul_is_a_400(relay: Relay, up: FakeUpstream) -> None:
    async with openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key="x", max_retries=0) as oai:
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.chat.completions.create(
                model="default",
                messages=[
                    {"role": "system", "content": "a\u0000b"},
                    {"role": "user", "content": "hi"},
                ],
            )
    assert "NUL" in str(refused.value)
    await _healthy_after(relay, up)


@pytest.mark.parametrize("text", ["\u0000", "\u001b\u001b", "   ", "\u009b"])
async def test_a_prompt_empty_once_sanitised_is_a_400_at_once(
    relay: Relay, up: FakeUpstream, text: str
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=relay.url, api_key="x", max_retries=0, timeout=5.0
    ) as sdk:
        with pytest.raises(anthropic.BadRequestError, match=r"no text|non-whitespace"):
            await sdk.messages.create(
                model="default", max_tokens=20, messages=[{"role": "user", "content": text}]
            )
    async with openai.AsyncOpenAI(
        base_url=relay.url + "/v1", api_key="x", max_retries=0, timeout=5.0
    ) as oai:
        with pytest.raises(openai.BadRequestError, match=r"no text|non-whitespace"):
            await oai.chat.completions.create(
                model="default", messages=[{"role": "user", "content": text}]
            )
    assert up.main_requests == []


def _inspect_claudes_with_system(daemon: int) -> int:
    """Check every claude started with a system prompt file (the parked one, and those the
    pool warms for the same settings); how many there are."""
    found = []
    for pid in children_of(daemon):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--append-system-prompt-file" not in argv:
            continue
        joined = b" ".join(argv)
        assert b"SYSTEM-MARKER" not in joined and b"pirate" not in joined
        assert b"/mcp/" not in joined and b"http" not in joined
        for flag in (b"--append-system-prompt-file", b"--mcp-config"):
            path = Path(argv[argv.index(flag) + 1].decode())
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
            found.append(path.parent)
    # other tests' claudes (with prompts of their own) may be alive too: count this one's
    return sum("SYSTEM-MARKER" in (d / "system-prompt.md").read_text() for d in set(found))


async def test_system_prompt_and_mcp_token_are_not_in_argv(relay: Relay, up: FakeUpstream) -> None:
    """A claude parked in a tool call is alive to inspect: its cmdline names private files
    (0600, in a 0700 dir of its own), never the system prompt or the MCP endpoint's token."""
    system = "You answer like a pirate. SYSTEM-MARKER-7f3a"
    up.on(
        "",
        times=1,
        reply=lambda body: Reply(
            text="", tool_uses=(ToolUse("mcp__api__lookup", {"q": "x"}, "toolu_01SAFE"),)
        ),
    )
    tool: Any = {"name": "lookup", "description": "Look up.", "input_schema": {"type": "object"}}
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        first = await sdk.messages.create(
            model="default",
            max_tokens=50,
            system=system,
            messages=HELLO,
            tools=[tool],
        )
    assert first.stop_reason == "tool_use"
    # the system prompt reached the model through the file
    assert system in up.main_requests[0].system_text
    assert await asyncio.to_thread(_inspect_claudes_with_system, relay.proc.pid) >= 1
    # answering the call ends the turn
    up.on("", lambda body: Reply(text="done"))
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        final = await sdk.messages.create(
            model="default",
            max_tokens=50,
            system=system,
            tools=[tool],
            messages=[
                *HELLO,
                cast(
                    Any, {"role": "assistant", "content": [b.model_dump() for b in first.content]}
                ),
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_01SAFE", "content": "42"}
                    ],
                },
            ],
        )
    assert final.content[0].text == "done"  # type: ignore[union-attr]
