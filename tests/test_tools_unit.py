"""Tool calling below the e2e tier: the broker, the MCP endpoint, decoding/encoding, rendering and
the transcript's view of tool turns."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest_asyncio
from aiohttp import ClientSession

from claude_relay.daemon import mcp
from claude_relay.protocols import anthropic
from claude_relay.protocols.model import (
    Message,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    TurnResult,
    Usage,
)
from claude_relay.protocols.render import render_prompt
from claude_relay.pty_pool.broker import LIST_CHANGED, Broker, caller_name, mcp_result
from claude_relay.pty_pool.transcript import TurnLog

WEATHER = ToolSpec("get_weather", "Weather.", {"type": "object", "properties": {}})


# --- broker ------------------------------------------------------------------------------------
async def test_channel_parks_calls_until_answered() -> None:
    broker = Broker()
    channel = broker.open()
    assert broker.get(channel.token) is channel
    assert channel.set_tools((WEATHER,)) is True
    assert channel.set_tools((WEATHER,)) is False  # unchanged: claude is not told to re-list
    assert not channel.listed
    assert channel.list_tools() == [
        {"name": "get_weather", "description": "Weather.", "inputSchema": WEATHER.input_schema}
    ]
    assert channel.listed
    call = asyncio.ensure_future(channel.call("mcp__api__get_weather", {"city": "X"}, "toolu_1"))
    await asyncio.wait_for(channel.arrived.wait(), 5)
    (parked,) = channel.parked
    assert (parked.tool_use_id, parked.name, parked.arguments) == (
        "toolu_1",
        "get_weather",
        {"city": "X"},
    )
    channel.answer("toolu_1", {"content": [], "isError": False})
    assert await call == {"content": [], "isError": False}
    assert channel.parked == ()
    # a result given before claude asks (claude makes parallel calls one after another)
    channel.answer("toolu_2", {"content": [{"type": "text", "text": "early"}], "isError": False})
    assert (await channel.call("mcp__api__get_weather", {}, "toolu_2"))["content"][0]["text"] == (
        "early"
    )
    broker.close(channel)
    assert broker.get(channel.token) is None


async def test_a_missed_list_changed_is_sent_again_until_claude_lists() -> None:
    channel = Broker().open()
    channel.set_tools((WEATHER,))
    notes = aiter(channel.notifications())
    assert await anext(notes) == LIST_CHANGED
    channel.nudge()  # claude did not fetch the list: tell it again
    assert await anext(notes) == LIST_CHANGED
    channel.list_tools()
    channel.nudge()  # listed: nothing more to say
    assert channel._notes.empty()


async def test_closing_a_channel_answers_parked_calls_with_an_error() -> None:
    broker = Broker()
    channel = broker.open()
    call = asyncio.ensure_future(channel.call("mcp__api__x", {}, "toolu_9"))
    await asyncio.wait_for(channel.arrived.wait(), 5)
    broker.close(channel)
    result = await call
    assert result["isError"] is True


def test_mcp_result_shapes() -> None:
    block = ToolResultBlock("t", (TextBlock("a"), TextBlock("b")), is_error=True)
    assert mcp_result(block) == {
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        "isError": True,
    }
    assert caller_name("mcp__api__get_weather") == "get_weather"


# --- the MCP endpoint --------------------------------------------------------------------------
@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[tuple[Broker, str]]:
    broker = Broker()
    async with mcp.serving(broker) as url:
        yield broker, url


async def _rpc(http: ClientSession, url: str, method: str, **params: Any) -> tuple[int, Any]:
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    async with http.post(url, json=body) as r:
        if r.content_type == "text/event-stream":
            raw = await r.read()
            frames = [ln[6:] for ln in raw.decode().splitlines() if ln.startswith("data: ")]
            return r.status, json.loads(frames[-1])
        return r.status, (await r.json() if r.status == 200 else None)


async def test_endpoint_serves_only_its_own_channel(endpoint: tuple[Broker, str]) -> None:
    broker, url = endpoint
    a, b = broker.open(), broker.open()
    a.set_tools((WEATHER,))
    async with ClientSession() as http:
        status, init = await _rpc(
            http, f"{url}/{a.token}", "initialize", protocolVersion="2025-11-25"
        )
        assert status == 200
        assert init["result"]["capabilities"] == {"tools": {"listChanged": True}}
        assert init["result"]["protocolVersion"] == "2025-11-25"
        _, listed = await _rpc(http, f"{url}/{a.token}", "tools/list")
        assert [t["name"] for t in listed["result"]["tools"]] == ["get_weather"]
        _, other = await _rpc(http, f"{url}/{b.token}", "tools/list")
        assert other["result"]["tools"] == []
        assert (await _rpc(http, f"{url}/{a.token[:-1]}x", "tools/list"))[0] == 404
        assert (await _rpc(http, f"{url}/", "tools/list"))[0] in (404, 405)
        _, missing = await _rpc(http, f"{url}/{a.token}", "resources/list")
        assert missing["error"]["code"] == -32601


async def test_endpoint_parks_a_call_and_streams_the_answer(endpoint: tuple[Broker, str]) -> None:
    broker, url = endpoint
    channel = broker.open()
    async with ClientSession() as http:
        call = asyncio.ensure_future(
            _rpc(
                http,
                f"{url}/{channel.token}",
                "tools/call",
                name="mcp__api__get_weather",
                arguments={"city": "Oslo"},
                _meta={"claudecode/toolUseId": "toolu_7"},
            )
        )
        await asyncio.wait_for(channel.arrived.wait(), 5)
        assert channel.parked[0].arguments == {"city": "Oslo"}
        channel.answer("toolu_7", mcp_result(ToolResultBlock("toolu_7", (TextBlock("Snow"),))))
        status, frame = await call
    assert status == 200
    assert frame == {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {"content": [{"type": "text", "text": "Snow"}], "isError": False},
    }


async def test_cancelled_notification_releases_the_parked_call(
    endpoint: tuple[Broker, str],
) -> None:
    broker, url = endpoint
    channel = broker.open()
    async with ClientSession() as http:
        call = asyncio.ensure_future(
            http.post(
                f"{url}/{channel.token}",
                json={
                    "jsonrpc": "2.0",
                    "id": 3,
                    "method": "tools/call",
                    "params": {
                        "name": "x",
                        "arguments": {},
                        "_meta": {"claudecode/toolUseId": "t3"},
                    },
                },
            )
        )
        await asyncio.wait_for(channel.arrived.wait(), 5)
        note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}}
        async with http.post(f"{url}/{channel.token}", json=note) as r:
            assert r.status == 202
        async with asyncio.timeout(5):
            while channel.parked:
                await asyncio.sleep(0.01)
        response = await call
        response.release()


async def test_get_stream_delivers_list_changed(endpoint: tuple[Broker, str]) -> None:
    broker, url = endpoint
    channel = broker.open()
    async with ClientSession() as http, http.get(f"{url}/{channel.token}") as stream:
        assert stream.status == 200
        channel.set_tools((WEATHER,))
        line = b""
        async with asyncio.timeout(5):
            while not line.startswith(b"data: "):
                line = await stream.content.readline()
        assert orjson.loads(line[6:]) == LIST_CHANGED
        broker.close(channel)


# --- wire shapes -------------------------------------------------------------------------------
def _body(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "q"}],
    }
    return orjson.dumps(base | fields)


def test_decode_tools_and_choice() -> None:
    req = anthropic.decode_request(
        _body(
            tools=[
                {
                    "name": "get_weather",
                    "description": "Weather.",
                    "input_schema": {"type": "object", "properties": {}},
                    "cache_control": {"type": "ephemeral"},
                }
            ],
            tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        )
    )
    assert req.tools == (WEATHER,)
    assert (req.tool_choice.type, req.tool_choice.name, req.tool_choice.disable_parallel) == (
        "tool",
        "get_weather",
        True,
    )


def test_decode_tool_exchange() -> None:
    req = anthropic.decode_request(
        _body(
            messages=[
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "r"}],
                            "is_error": True,
                        },
                        {"type": "text", "text": "and more"},
                    ],
                },
            ]
        )
    )
    assert req.messages[1].content[1] == ToolUseBlock("toolu_1", "w", {"a": 1})
    assert req.messages[2].content[0] == ToolResultBlock("toolu_1", (TextBlock("r"),), True)


def _tool_result() -> TurnResult:
    return TurnResult(
        (TextBlock("Checking."), ToolUseBlock("toolu_1", "get_weather", {"city": "Oslo"})),
        "tool_use",
        Usage(10, 4),
    )


def test_encode_message_with_tool_use() -> None:
    out = anthropic.encode_message(_tool_result(), request_model="m", message_id="msg_1")
    assert out["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert out["stop_reason"] == "tool_use"


def test_stream_encoder_emits_tool_blocks_after_text() -> None:
    enc = anthropic.StreamEncoder("m", "msg_1")
    raw = enc.start() + enc.finish(_tool_result())
    events = [
        json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")
    ]
    kinds = [(e["type"], e.get("index")) for e in events]
    assert kinds == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[4]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "get_weather",
        "input": {},
    }
    assert events[5]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Oslo"}'}
    assert events[7]["delta"]["stop_reason"] == "tool_use"


def test_render_replays_a_tool_exchange() -> None:
    prompt = render_prompt(
        (
            Message("user", (TextBlock("Weather?"),)),
            Message(
                "assistant",
                (TextBlock("Checking."), ToolUseBlock("toolu_1", "get_weather", {"city": "Oslo"})),
            ),
            Message("user", (ToolResultBlock("toolu_1", (TextBlock("Snow"),), is_error=True),)),
        )
    )
    assert "<tool_use> with their input" in prompt
    assert (
        '<assistant>\nChecking.\n\n<tool_use id="toolu_1" name="get_weather">{"city":"Oslo"}'
        "</tool_use>\n</assistant>" in prompt
    )
    assert prompt.endswith('<tool_result tool_use_id="toolu_1" is_error="true">Snow</tool_result>')


# --- transcript --------------------------------------------------------------------------------
def _entry(ts: str, mid: str, block: dict[str, Any], stop: str) -> dict[str, Any]:
    usage = {"input_tokens": 5, "output_tokens": 2}
    message = {"id": mid, "content": [block], "stop_reason": stop, "usage": usage}
    return {"type": "assistant", "timestamp": ts, "message": message}


def test_turn_log_tool_use_message() -> None:
    log = TurnLog()
    log.add(
        [
            _entry("2026-01-01T00:00:01.000Z", "m1", {"type": "text", "text": "Hi."}, "tool_use"),
            _entry(
                "2026-01-01T00:00:01.002Z",
                "m1",
                {"type": "tool_use", "id": "toolu_1", "name": "mcp__api__w", "input": {"a": 1}},
                "tool_use",
            ),
        ]
    )
    assert log.tool_use_ids == {"toolu_1"}
    result = log.result()
    assert result.content == (TextBlock("Hi."), ToolUseBlock("toolu_1", "w", {"a": 1}))
    assert result.stop_reason == "tool_use"
    assert result.usage == Usage(5, 2)


def test_turn_log_orders_by_timestamp_and_keeps_the_last_segment() -> None:
    """A call answered inside the turn (refused): the reply is what follows its result, even
    when claude wrote the later message's entry first (seen on v2.1.197)."""
    log = TurnLog()
    log.add(
        [
            _entry(
                "2026-01-01T00:00:03.000Z", "m2", {"type": "text", "text": "Final."}, "end_turn"
            ),
            _entry(
                "2026-01-01T00:00:01.000Z", "m1", {"type": "text", "text": "Let me."}, "tool_use"
            ),
            _entry(
                "2026-01-01T00:00:01.001Z",
                "m1",
                {"type": "tool_use", "id": "t", "name": "mcp__api__w", "input": {}},
                "tool_use",
            ),
            {
                "type": "user",
                "timestamp": "2026-01-01T00:00:02.000Z",
                "toolUseResult": "refused",
                "message": {"content": [{"type": "tool_result", "tool_use_id": "t"}]},
            },
        ]
    )
    result = log.result()
    assert result.content == (TextBlock("Final."),)
    assert result.stop_reason == "end_turn"
    assert result.usage == Usage(10, 4)  # both upstream requests count
