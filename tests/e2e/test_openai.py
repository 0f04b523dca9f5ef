"""OpenAI Chat Completions end to end: openai SDK → claude-relay → real claude → fake upstream.

Also the model listing through both SDKs against the real daemon. More image and file cases are
in test_attachments.py.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply, ToolUse, Usage
from tests.support import media
from tests.support.relay_proc import Relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "default"
# The prefix claude's MCP client gives the relay's tools upstream (pty_pool.broker.TOOL_PREFIX).
TOOL_PREFIX = "mcp__api__"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def client(relay: Relay, *, prefix: str = "/v1", **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=relay.url + prefix, api_key="unused", max_retries=0, **kw)


@pytest_asyncio.fixture(loop_scope="session")
async def sdk(relay: Relay) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client(relay) as c:
        yield c


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    "text",
    ["Plain answer.", "中文 — Café 👍🏽 e\u0301 end", "  spaced  \n\n"],
    ids=["plain", "unicode", "whitespace"],
)
async def test_chat_is_exact_with_usage(
    sdk: openai.AsyncOpenAI, relay: Relay, up: FakeUpstream, text: str
) -> None:
    usage = Usage(
        input_tokens=123,
        output_tokens=45,
        cache_creation_input_tokens=6,
        cache_read_input_tokens=789,
    )
    up.push(Reply(text=text, usage=usage, chunk_chars=7))
    completion = await sdk.chat.completions.create(model=MODEL, messages=user("hi"))
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    (choice,) = completion.choices
    assert choice.message.content == text
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 123 + 6 + 789
    assert completion.usage.completion_tokens == 45
    assert completion.usage.total_tokens == 123 + 6 + 789 + 45
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 789


async def test_streaming_is_incremental_and_exact_for_prose(
    sdk: openai.AsyncOpenAI, relay: Relay, up: FakeUpstream
) -> None:
    text = "\n\n".join(" ".join(f"p{p}w{i}" for i in range(40)) for p in range(4)) + "\n\nThe end."
    up.push(Reply(text=text, chunk_chars=20, delay=0.05))
    arrivals: list[float] = []
    pieces: list[str] = []
    finish: list[str] = []
    usage_chunks = []
    t0 = time.monotonic()
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=user("write"), stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage_chunks.append(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
                arrivals.append(time.monotonic() - t0)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    total = time.monotonic() - t0
    assert len(pieces) >= 3
    assert arrivals[0] < total / 2  # the first chunk comes well before the end
    assert "".join(pieces) == text  # prose streams exactly
    assert finish == ["stop"]
    (usage,) = usage_chunks
    assert usage.completion_tokens == 7


async def test_system_and_developer_reach_the_model(
    sdk: openai.AsyncOpenAI, relay: Relay, up: FakeUpstream
) -> None:
    await sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a pirate named Zed."},
            {"role": "developer", "content": "Answer in one line."},
            {"role": "user", "content": "my name is Ann"},
            {"role": "assistant", "content": "Hello Ann, I am ZED-REPLY."},
            {"role": "user", "content": "what is my name?"},
        ],
        temperature=0.3,
        max_completion_tokens=100,
        seed=42,
        user="someone",
    )
    request = up.main_requests[-1]
    assert "You are a pirate named Zed.\n\nAnswer in one line." in request.system_text
    sent = json.dumps(request.body["messages"])
    assert "my name is Ann" in sent and "ZED-REPLY" in sent and "what is my name?" in sent


async def test_bare_base_url(relay: Relay, up: FakeUpstream) -> None:
    async with client(relay, prefix="") as bare:
        completion = await bare.chat.completions.create(model=MODEL, messages=user("bare"))
    assert completion.choices[0].message.content == "echo: bare"


async def test_sticky_session_over_openai(relay: Relay, up: FakeUpstream) -> None:
    history: list[Any] = []
    async with client(relay, default_headers={"X-IR-Session-ID": "openai-conv"}) as c:
        for question in ("first question", "second question"):
            history.append({"role": "user", "content": question})
            completion = await c.chat.completions.create(model=MODEL, messages=history)
            reply = completion.choices[0].message.content
            assert reply == f"echo: {question}"
            history.append({"role": "assistant", "content": reply})
    body = up.main_requests[-1].body
    # the second call extended the same claude: the first exchange is real upstream history
    assert "conversation_history" not in json.dumps(body)
    assert len(body["messages"]) >= 3


async def test_json_mode_end_to_end(
    sdk: openai.AsyncOpenAI, relay: Relay, up: FakeUpstream
) -> None:
    up.push(Reply(text='{"city": "Paris", "sunny": true}', chunk_chars=5))
    completion = await sdk.chat.completions.create(
        model=MODEL,
        messages=user("weather as json"),
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "weather",
                "schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}},
                    "required": ["city", "sunny"],
                },
            },
        },
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert json.loads(content) == {"city": "Paris", "sunny": True}
    assert '<json_schema name="weather">' in up.main_requests[-1].system_text


async def test_errors_use_the_openai_envelope(
    sdk: openai.AsyncOpenAI, relay: Relay, up: FakeUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(model=MODEL, messages=user("x"), n=3)
    assert (bad.value.param, bad.value.code) == ("n", "unsupported_value")
    with pytest.raises(openai.BadRequestError, match="remote URLs are not fetched"):
        await sdk.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                }
            ],
        )
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            relay.url + "/v1/chat/completions",
            data=b"{not json",
            headers={"content-type": "application/json"},
        ) as r,
    ):
        assert r.status == 400
        body = await r.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "invalid_request_error"
    assert up.main_requests == []


@pytest.mark.parametrize(
    ("status", "exc", "etype"),
    [
        (401, openai.AuthenticationError, "authentication_error"),
        (500, openai.InternalServerError, "server_error"),
    ],
)
async def test_upstream_errors_map_to_sdk_classes(
    sdk: openai.AsyncOpenAI,
    relay: Relay,
    up: FakeUpstream,
    status: int,
    exc: type[openai.APIStatusError],
    etype: str,
) -> None:
    up.on("trigger", Reply(status=status))
    with pytest.raises(exc) as info:
        await sdk.chat.completions.create(model=MODEL, messages=user("trigger"))
    assert info.value.status_code == status
    assert info.value.type == etype
    up.clear()
    completion = await sdk.chat.completions.create(model=MODEL, messages=user("after"))
    assert completion.choices[0].message.content == "echo: after"


async def test_models_list_in_both_sdks(relay: Relay, up: FakeUpstream) -> None:
    async with (
        client(relay) as o,
        anthropic.AsyncAnthropic(base_url=relay.url, api_key="unused", max_retries=0) as a,
    ):
        openai_ids = [m.id async for m in o.models.list()]
        anthropic_ids = [m.id async for m in a.models.list()]
        count = await a.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "hello world"}]
        )
    assert openai_ids == anthropic_ids
    assert "default" in openai_ids and "sonnet" in openai_ids
    assert count.input_tokens > 0
    assert up.main_requests == []  # listing and counting never start a turn


async def test_tool_round_trip(sdk: openai.AsyncOpenAI, relay: Relay, up: FakeUpstream) -> None:
    up.push(
        Reply(text="", tool_uses=(ToolUse(TOOL_PREFIX + "get_weather", {"city": "Paris"}),)),
        Reply(text="It is sunny in Paris."),
    )
    messages: list[Any] = user("What is the weather in Paris?")
    first = await sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"})
    final = await sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == "It is sunny in Paris."
    assert final.choices[0].finish_reason == "stop"
    assert "sunny, 24 C" in up.main_requests[-1].user_text


async def test_streamed_tool_call(sdk: openai.AsyncOpenAI, relay: Relay, up: FakeUpstream) -> None:
    up.push(
        Reply(text="", tool_uses=(ToolUse(TOOL_PREFIX + "get_weather", {"city": "Rome"}),)),
        Reply(text="Rainy in Rome.", chunk_chars=4),
    )
    messages: list[Any] = user("Weather in Rome?")
    async with sdk.chat.completions.stream(
        model=MODEL, messages=messages, tools=[WEATHER]
    ) as stream:
        first = await stream.get_final_completion()
    assert first.choices[0].finish_reason == "tool_calls"
    calls = first.choices[0].message.tool_calls
    assert calls is not None
    (call,) = calls
    assert call.type == "function"
    assert json.loads(call.function.arguments) == {"city": "Rome"}
    # answer the call, so that claude is not left waiting for it
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "rain"})
    async with sdk.chat.completions.stream(
        model=MODEL, messages=messages, tools=[WEATHER]
    ) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.content == "Rainy in Rome."


async def test_image_data_url_reaches_the_model(
    sdk: openai.AsyncOpenAI, relay: Relay, up: FakeUpstream
) -> None:
    png = media.png()
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    completion = await sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What colour is this?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content
    # the exact bytes, as an image block of the prompt's user message
    assert up.main_requests[-1].images == [("image/png", png)]
    images = [b for b in _blocks(up.main_requests[-1].body["messages"]) if b.get("type") == "image"]
    assert len(images) == 1


def _blocks(value: object) -> list[dict[str, Any]]:
    """Every JSON object nested in `value`."""
    if isinstance(value, dict):
        return [value, *(b for v in value.values() for b in _blocks(v))]
    if isinstance(value, list):
        return [b for v in value for b in _blocks(v)]
    return []
