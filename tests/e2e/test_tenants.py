"""With several API keys, each key's sticky sessions and parked tool calls are its own; and
parked claudes are capped.

Before: any key could list, delete or continue another's sticky sessions, and answer (and so
read the continuation of) another's parked tool calls; parked claudes were unbounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio

from claude_relay.daemon.fake_upstream import Body, FakeUpstream, Reply, ToolUse
from tests.support.relay_proc import Relay, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOOL: Any = {"name": "lookup", "description": "Look up.", "input_schema": {"type": "object"}}


@pytest_asyncio.fixture(loop_scope="session")
async def keyed(upstream: FakeUpstream) -> AsyncIterator[Relay]:
    upstream.clear()
    async with start_relay(upstream, api_keys="key-alice,key-bob", max_parked="2") as r:
        yield r
    upstream.clear()


def sdk(relay: Relay, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=relay.url, api_key=key, max_retries=0)


async def _sessions(relay: Relay, key: str) -> list[str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(relay.url + "/v1/sessions", headers={"x-api-key": key}) as r,
    ):
        body: Any = await r.json()
        return [s["id"] for s in body["sessions"]]


async def test_sticky_ids_belong_to_the_key_that_made_them(
    keyed: Relay, upstream: FakeUpstream
) -> None:
    upstream.clear()
    sid = {"X-IR-Session-ID": "shared-name"}
    upstream.push(Reply(text="alice's answer"))
    async with sdk(keyed, "key-alice") as alice:
        await alice.messages.create(
            model="default",
            max_tokens=50,
            messages=[{"role": "user", "content": "ALICE-PRIVATE-TEXT"}],
            extra_headers=sid,
        )
    assert await _sessions(keyed, "key-alice") == ["shared-name"]
    assert await _sessions(keyed, "key-bob") == []
    async with (
        aiohttp.ClientSession() as http,
        http.delete(keyed.url + "/v1/sessions/shared-name", headers={"x-api-key": "key-bob"}) as r,
    ):
        assert r.status == 404
        assert (await r.json())["error"]["type"] == "not_found_error"
    # bob's call with the same id is a conversation of his own: nothing of alice's reaches it
    upstream.push(Reply(text="bob's answer"))
    async with sdk(keyed, "key-bob") as bob:
        reply = await bob.messages.create(
            model="default",
            max_tokens=50,
            messages=[{"role": "user", "content": "bob asks"}],
            extra_headers=sid,
        )
    assert reply.content[0].text == "bob's answer"  # type: ignore[union-attr]
    assert "ALICE-PRIVATE-TEXT" not in upstream.main_requests[-1].raw_body.decode()
    assert await _sessions(keyed, "key-alice") == ["shared-name"]
    assert await _sessions(keyed, "key-bob") == ["shared-name"]


def _model(body: Body) -> Reply:
    last = body["messages"][-1]["content"]
    if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
        return Reply(text="continued in the parked claude")
    if "conversation_history" in str(body["messages"]):
        return Reply(text="replayed on a fresh claude")
    n = str(body["messages"]).count("call")
    return Reply(text="", tool_uses=(ToolUse("mcp__api__lookup", {"n": n}, f"toolu_0{n}TEN"),))


def _followup(first: anthropic.types.Message, prompt: str, tool_id: str) -> list[Any]:
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "42"}],
        },
    ]


async def test_parked_calls_answer_only_their_own_key_and_are_capped(
    keyed: Relay, upstream: FakeUpstream
) -> None:
    upstream.clear()
    upstream.on("", _model)
    async with sdk(keyed, "key-alice") as alice, sdk(keyed, "key-bob") as bob:
        first = await alice.messages.create(
            model="default",
            max_tokens=50,
            tools=[TOOL],
            messages=[{"role": "user", "content": "call"}],
        )
        assert first.stop_reason == "tool_use"
        tool_id = first.content[-1].id  # type: ignore[union-attr]
        # bob replays alice's exchange with a result for her call: he gets a fresh claude
        stolen = await bob.messages.create(
            model="default", max_tokens=50, tools=[TOOL], messages=_followup(first, "call", tool_id)
        )
        assert stolen.content[0].text == "replayed on a fresh claude"  # type: ignore[union-attr]
        pool: Any = (await keyed.health())["pool"]
        assert pool["parked"] == 1  # alice's claude still waits for her
        # more parked claudes than max_parked (2): the oldest (alice's) is let go
        for prompt in ("call call", "call call call"):
            more = await bob.messages.create(
                model="default",
                max_tokens=50,
                tools=[TOOL],
                messages=[{"role": "user", "content": prompt}],
            )
            assert more.stop_reason == "tool_use"
        pool = (await keyed.health())["pool"]
        assert pool["parked"] == 2
        # alice's follow-up still works: her history is replayed on a fresh claude
        done = await alice.messages.create(
            model="default", max_tokens=50, tools=[TOOL], messages=_followup(first, "call", tool_id)
        )
        assert done.content[0].text == "replayed on a fresh claude"  # type: ignore[union-attr]
