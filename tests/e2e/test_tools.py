"""Tool use end to end: anthropic SDK → claude-relay → real claude → the relay's MCP server.

The fake upstream plays the model: it answers the prompt with tool_use blocks (named as claude
offers them, `mcp__api__<name>`) and answers the follow-up claude sends after the tool results
with text that quotes them, so a test can see exactly what reached the model and in which form.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
import pytest_asyncio

from claude_relay.daemon.fake_upstream import Body, FakeUpstream, Reply, ToolUse, Usage
from tests.support.relay_proc import Relay, children_of, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "default"
WEATHER: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
    },
}
TIME: anthropic.types.ToolParam = {
    "name": "get_time",
    "description": "Local time in a time zone.",
    "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}},
}


@pytest_asyncio.fixture(loop_scope="session")
async def sdk(relay: Relay) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as c:
        yield c


def tool_results(body: Body) -> list[dict[str, Any]]:
    """The tool_result blocks of the upstream request's last message."""
    content = body["messages"][-1]["content"]
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [])


def model(*uses: ToolUse, text: str = "Let me check.") -> Callable[[Body], Reply]:
    """The fake model: call `uses` for a prompt; after tool results, quote them."""

    def respond(body: Body) -> Reply:
        results = tool_results(body)
        if not results:
            return Reply(text=text, tool_uses=uses, usage=Usage(input_tokens=50, output_tokens=20))
        quoted = "; ".join(
            f"{r['tool_use_id']}={'ERROR ' if r.get('is_error') else ''}{result_text(r)}"
            for r in results
        )
        return Reply(text=f"Results: {quoted}", usage=Usage(input_tokens=80, output_tokens=9))

    return respond


def history(
    prompt: str, reply: anthropic.types.Message, results: list[dict[str, Any]]
) -> list[Any]:
    """The conversation as a stateless client resends it (the SDK's MessageParam union is too
    strict for mypy to match these literals)."""
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": [b.model_dump() for b in reply.content]},
        {"role": "user", "content": results},
    ]


async def test_single_tool_round_trip(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream, relay: Relay
) -> None:
    up.on("", model(ToolUse("mcp__api__get_weather", {"city": "Paris", "unit": "C"}, "toolu_01W")))
    first = await sdk.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    assert first.content[0].text == "Let me check."  # type: ignore[union-attr]
    use = first.content[1]
    assert isinstance(use, anthropic.types.ToolUseBlock)
    assert (use.id, use.name, use.input) == (
        "toolu_01W",
        "get_weather",
        {"city": "Paris", "unit": "C"},
    )
    assert first.usage.input_tokens == 50
    # claude offered the tool upstream exactly as defined, under its MCP name
    offered = {t["name"]: t for t in up.main_requests[0].body["tools"]}
    assert offered["mcp__api__get_weather"]["description"] == WEATHER["description"]
    assert offered["mcp__api__get_weather"]["input_schema"] == WEATHER["input_schema"]

    final = await sdk.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        messages=history(
            "Weather in Paris?",
            first,
            [{"type": "tool_result", "tool_use_id": "toolu_01W", "content": "Sunny, 21°C"}],
        ),
    )
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == "Results: toolu_01W=Sunny, 21°C"  # type: ignore[union-attr]
    assert final.usage.input_tokens == 80
    # the same claude continued: the follow-up carries a real tool_result after its own tool_use
    requests = up.main_requests
    assert len(requests) == 2
    follow = requests[1].body
    # claude may mark the block for caching; the rest is exactly the client's result
    assert [{k: v for k, v in r.items() if k != "cache_control"} for r in tool_results(follow)] == [
        {
            "tool_use_id": "toolu_01W",
            "type": "tool_result",
            "content": [{"type": "text", "text": "Sunny, 21°C"}],
        }
    ]
    assert follow["messages"][-2]["content"][-1]["id"] == "toolu_01W"


async def test_parallel_tools_come_back_together(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream
) -> None:
    up.on(
        "",
        model(
            ToolUse("mcp__api__get_weather", {"city": "Oslo"}, "toolu_01P1"),
            ToolUse("mcp__api__get_time", {"tz": "CET"}, "toolu_01P2"),
        ),
    )
    first = await sdk.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER, TIME],
        messages=[{"role": "user", "content": "Weather and time?"}],
    )
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if isinstance(b, anthropic.types.ToolUseBlock)]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("toolu_01P1", "get_weather", {"city": "Oslo"}),
        ("toolu_01P2", "get_time", {"tz": "CET"}),
    ]
    final = await sdk.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER, TIME],
        messages=history(
            "Weather and time?",
            first,
            [
                {"type": "tool_result", "tool_use_id": "toolu_01P1", "content": "Snow"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01P2",
                    "content": [{"type": "text", "text": "09:30"}],
                },
            ],
        ),
    )
    assert final.content[0].text == "Results: toolu_01P1=Snow; toolu_01P2=09:30"  # type: ignore[union-attr]
    assert len(up.main_requests) == 2
    assert [r["tool_use_id"] for r in tool_results(up.main_requests[1].body)] == [
        "toolu_01P1",
        "toolu_01P2",
    ]


async def test_streamed_tool_use_and_error_result(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream
) -> None:
    up.on("", model(ToolUse("mcp__api__get_weather", {"city": "Rome"}, "toolu_01S"), text="On it."))
    kinds: list[str] = []
    async with sdk.messages.stream(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Weather in Rome?"}],
    ) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                assert json.loads(event.delta.partial_json) == {"city": "Rome"}
        first = await stream.get_final_message()
    assert "input_json" in kinds
    assert first.stop_reason == "tool_use"
    assert first.content[0].text == "On it."  # type: ignore[union-attr]
    use = first.content[1]
    assert isinstance(use, anthropic.types.ToolUseBlock)
    assert (use.id, use.name, use.input) == ("toolu_01S", "get_weather", {"city": "Rome"})

    async with sdk.messages.stream(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        messages=history(
            "Weather in Rome?",
            first,
            [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01S",
                    "content": "service down",
                    "is_error": True,
                }
            ],
        ),
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "Results: toolu_01S=ERROR service down"  # type: ignore[union-attr]
    (result,) = tool_results(up.main_requests[1].body)
    assert result["is_error"] is True


async def test_sticky_session_with_tools_then_plain_turn(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream, relay: Relay
) -> None:
    up.on("", model(ToolUse("mcp__api__get_time", {"tz": "UTC"}, "toolu_01K")))
    headers = {"X-IR-Session-ID": "tools-sticky"}
    first = await sdk.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[TIME],
        messages=[{"role": "user", "content": "Time?"}],
        extra_headers=headers,
    )
    msgs = history(
        "Time?", first, [{"type": "tool_result", "tool_use_id": "toolu_01K", "content": "noon"}]
    )
    second = await sdk.messages.create(
        model=MODEL, max_tokens=200, tools=[TIME], messages=msgs, extra_headers=headers
    )
    assert second.content[0].text == "Results: toolu_01K=noon"  # type: ignore[union-attr]
    up.clear()
    up.push(Reply(text="Plain follow-up."))
    third = await sdk.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[TIME],
        messages=[
            *msgs,
            *history("Thanks!", second, [])[1:2],
            {"role": "user", "content": "Thanks!"},
        ],
        extra_headers=headers,
    )
    assert third.content[0].text == "Plain follow-up."  # type: ignore[union-attr]
    # the same claude: only the new message was pasted, after the tool exchange it holds
    body = up.main_requests[0].body
    assert body["messages"][-1]["content"][-1]["text"] == "Thanks!"
    assert any(
        isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])
        for m in body["messages"]
    )
    async with aiohttp.ClientSession() as http:
        await http.delete(f"{relay.url}/v1/sessions/tools-sticky")


async def test_tool_choice_none_never_returns_tool_use(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream
) -> None:
    up.on("", model(ToolUse("mcp__api__get_weather", {"city": "Bern"}, "toolu_01N")))
    reply = await sdk.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        messages=[{"role": "user", "content": "Weather in Bern?"}],
    )
    assert reply.stop_reason == "end_turn"
    assert all(b.type == "text" for b in reply.content)
    assert reply.content[0].text.startswith("Results: toolu_01N=ERROR Tool use is disabled")  # type: ignore[union-attr]


def _mcp_endpoints(relay: Relay) -> list[str]:
    urls = []
    for pid in children_of(relay.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--mcp-config" in argv:
            # a private file: the URL carries the channel's token, so it is not in argv
            path = Path(argv[argv.index(b"--mcp-config") + 1].decode())
            try:
                config = json.loads(path.read_text())
            except OSError:
                continue  # that claude is just closing
            urls.append(config["mcpServers"]["api"]["url"])
    return urls


async def _mcp(http: aiohttp.ClientSession, url: str, method: str) -> tuple[int, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}
    headers = {"accept": "application/json, text/event-stream"}
    async with http.post(url, json=body, headers=headers) as r:
        return r.status, (await r.json() if r.status == 200 else None)


async def test_mcp_tokens_isolate_sessions(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream, relay: Relay
) -> None:
    up.on("", model(ToolUse("mcp__api__get_weather", {"city": "Lima"}, "toolu_01I")))
    first = await sdk.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Weather in Lima?"}],
    )
    assert first.stop_reason == "tool_use"  # this claude is now parked, holding get_weather
    await relay.wait_warm(1)
    urls = _mcp_endpoints(relay)
    assert len(urls) >= 2
    async with aiohttp.ClientSession() as http:
        listed = [await _mcp(http, u, "tools/list") for u in urls]
        names = [[t["name"] for t in body["result"]["tools"]] for _, body in listed]
        assert names.count(["get_weather"]) == 1  # only the parked claude's own endpoint has it
        assert all(n in ([], ["get_weather"]) for n in names)
        base = urls[0].rsplit("/", 1)[0]
        assert (await _mcp(http, f"{base}/not-a-token", "tools/list"))[0] == 404
        assert (await _mcp(http, f"{base}/{'A' * 43}", "tools/list"))[0] == 404
    # finish the exchange so the parked claude is released
    await sdk.messages.create(
        model=MODEL,
        max_tokens=200,
        tools=[WEATHER],
        messages=history(
            "Weather in Lima?",
            first,
            [{"type": "tool_result", "tool_use_id": "toolu_01I", "content": "Fog"}],
        ),
    )


async def test_bad_tools_get_api_style_400(sdk: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(
            model=MODEL,
            max_tokens=10,
            tools=[{"name": "bad name!", "input_schema": {"type": "object"}}],
            messages=[{"role": "user", "content": "x"}],
        )
    assert "tools.0.name" in info.value.message
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(
            model=MODEL,
            max_tokens=10,
            tools=[{"name": "t", "input_schema": {"type": "object", "properties": 3}}],
            messages=[{"role": "user", "content": "x"}],
        )
    assert "JSON schema is invalid" in info.value.message


async def test_abandoned_call_is_cancelled_and_history_replayed(upstream: FakeUpstream) -> None:
    """No result within tool_result_timeout: the call is cancelled and the claude disposed; a late
    result then runs on a fresh claude with the exchange rendered into the prompt."""
    upstream.clear()
    async with (
        start_relay(upstream, warm="1", tool_result_timeout="1.5") as relay,
        anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk,
    ):
        upstream.on("", model(ToolUse("mcp__api__get_weather", {"city": "Kyiv"}, "toolu_01X")))
        first = await sdk.messages.create(
            model=MODEL,
            max_tokens=200,
            tools=[WEATHER],
            messages=[{"role": "user", "content": "Weather in Kyiv?"}],
        )
        parked = [p for p in children_of(relay.proc.pid) if p]
        async with asyncio.timeout(30):
            while True:  # the parked claude goes away once the timeout passes
                pool = (await relay.health())["pool"]
                assert isinstance(pool, dict)
                if pool.get("parked", 0) == 0 and len(children_of(relay.proc.pid)) <= 1:
                    break
                await asyncio.sleep(0.1)
        assert parked
        upstream.clear()
        upstream.push(Reply(text="Rainy."))
        final = await sdk.messages.create(
            model=MODEL,
            max_tokens=200,
            tools=[WEATHER],
            messages=history(
                "Weather in Kyiv?",
                first,
                [{"type": "tool_result", "tool_use_id": "toolu_01X", "content": "Rain"}],
            ),
        )
        # replayed on a fresh claude: the exchange reached the model as text in one prompt
        assert final.content[0].text == "Rainy."  # type: ignore[union-attr]
        prompt = upstream.main_requests[-1].last_user_text
        assert '<tool_use id="toolu_01X" name="get_weather">{"city":"Kyiv"}</tool_use>' in prompt
        assert '<tool_result tool_use_id="toolu_01X">Rain</tool_result>' in prompt
    upstream.clear()


async def test_agent_mode_runs_allowed_builtins_and_never_prompts(upstream: FakeUpstream) -> None:
    """agent_tools=Read: claude's own Read runs without a prompt; Bash (not enabled) is refused
    at once, and the request still completes."""
    upstream.clear()
    async with (
        start_relay(upstream, warm="1", agent_tools="Read") as relay,
        anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk,
    ):
        relay.workspace.mkdir(parents=True, exist_ok=True)
        note = relay.workspace / "note.txt"
        note.write_text("the secret word is pelican\n")
        upstream.on(
            "",
            model(
                ToolUse("Read", {"file_path": str(note)}, "toolu_01R"),
                ToolUse("Bash", {"command": "echo hi"}, "toolu_01B"),
            ),
        )
        reply = await sdk.messages.create(
            model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "Read the note"}]
        )
        assert reply.stop_reason == "end_turn"
        text = reply.content[0].text  # type: ignore[union-attr]
        assert "pelican" in text
        assert "toolu_01B=ERROR" in text
    upstream.clear()
