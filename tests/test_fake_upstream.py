"""The fake upstream speaks the Messages API well enough for the official SDK, and its scripts work.

Every check goes through the `anthropic` SDK (or raw aiohttp where bytes matter), so a shape the
SDK would reject fails here rather than confusing claude later.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx2
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam

from claude_relay.daemon.fake_upstream import (
    DEFAULT_TITLE_TEXT,
    FakeUpstream,
    Reply,
    ToolUse,
    Usage,
    is_title_request,
    last_user_text,
    system_text,
    user_text,
)

# Not a real model name, so SDK deprecation warnings (errors under filterwarnings) never fire.
MODEL = "claude-fake-model"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def up() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def client(up: FakeUpstream) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=up.url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def user(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


async def ask(client: AsyncAnthropic, text: str) -> str:
    """Non-streaming request; returns the text of the (single) text block."""
    message = await client.messages.create(model=MODEL, max_tokens=64, messages=user(text))
    block = message.content[0]
    assert block.type == "text"
    return block.text


async def collect_text(client: AsyncAnthropic, received: list[str]) -> None:
    """Streams a request, appending each text delta to `received` (kept if this raises)."""
    async with client.messages.stream(model=MODEL, max_tokens=9, messages=user("x")) as stream:
        async for piece in stream.text_stream:
            received.append(piece)


def title_body(*, stream: bool = True) -> dict[str, Any]:
    """A body shaped like claude's session-title request."""
    return {
        "model": "claude-fake-small",
        "max_tokens": 512,
        "stream": stream,
        "tools": [],
        "system": [
            {
                "type": "text",
                "text": "Generate a concise, sentence-case title (3-7 words) for this session.",
            }
        ],
        "messages": [{"role": "user", "content": "please fix the login bug"}],
        "output_config": {
            "format": {
                "type": "json_schema",
                "schema": {
                    "type": "object",
                    "properties": {"title": {"type": "string"}},
                    "required": ["title"],
                    "additionalProperties": False,
                },
            }
        },
    }


def parse_sse(raw: bytes) -> list[tuple[str, str]]:
    """(event, data) pairs, insisting on the exact `event: x\\ndata: y\\n\\n` framing."""
    text = raw.decode()
    assert text.endswith("\n\n")
    pairs = []
    for frame in text[:-2].split("\n\n"):
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ")
        assert data_line.startswith("data: ")
        pairs.append((event_line[len("event: ") :], data_line[len("data: ") :]))
    return pairs


# --- the wire format -------------------------------------------------------------------------


async def test_stream_bytes_match_the_real_api_layout(up: FakeUpstream) -> None:
    up.push(Reply(text="héllo", chunk_chars=3))
    body = {"model": MODEL, "max_tokens": 9, "stream": True, "messages": user("hi")}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{up.url}/v1/messages?beta=true", json=body, headers={"x-api-key": "sk-raw"}
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["request-id"].startswith("req_fake_")
        raw = await resp.read()

    events = parse_sse(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2][1] == '{"type": "ping"}'
    assert "é" in events[3][1]  # raw UTF-8, not \u-escaped
    for name, data in events:
        assert json.loads(data)["type"] == name
    start = json.loads(events[0][1])["message"]
    assert start["id"] == "msg_fake_1"
    assert start["model"] == MODEL
    assert start["usage"]["output_tokens"] == 1
    assert start["usage"]["input_tokens"] == 11
    final = json.loads(events[6][1])
    assert final["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == 7

    (record,) = up.main_requests
    assert record.path == "/v1/messages"
    assert record.query_string == "beta=true"
    assert record.api_key == "sk-raw"
    assert record.stream
    assert record.outcome == "complete"


async def test_non_streaming_text_and_usage(up: FakeUpstream, client: AsyncAnthropic) -> None:
    usage = Usage(
        input_tokens=100, output_tokens=42, cache_creation_input_tokens=5, cache_read_input_tokens=7
    )
    up.push(Reply(text="Hello there", usage=usage, stop_reason="max_tokens"))
    message = await client.messages.create(model=MODEL, max_tokens=64, messages=user("hi"))

    assert message.id.startswith("msg_fake_")
    assert message.model == MODEL
    assert message.role == "assistant"
    assert message.stop_reason == "max_tokens"
    assert message.stop_sequence is None
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "Hello there")
    ]
    assert message.usage.input_tokens == 100
    assert message.usage.output_tokens == 42
    assert message.usage.cache_creation_input_tokens == 5
    assert message.usage.cache_read_input_tokens == 7
    (record,) = up.main_requests
    assert not record.stream
    assert record.api_key == "sk-test"
    assert record.body["messages"] == user("hi")


async def test_streaming_text_and_usage(up: FakeUpstream, client: AsyncAnthropic) -> None:
    usage = Usage(
        input_tokens=30, output_tokens=9, cache_creation_input_tokens=3, cache_read_input_tokens=4
    )
    up.push(Reply(text="streamed reply", usage=usage))
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("hi")) as stream:
        message = await stream.get_final_message()

    assert message.content[0].type == "text"
    assert message.content[0].text == "streamed reply"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 30
    assert message.usage.output_tokens == 9
    assert message.usage.cache_creation_input_tokens == 3
    assert message.usage.cache_read_input_tokens == 4


async def test_chunked_slow_text_keeps_code_points_whole(
    up: FakeUpstream, client: AsyncAnthropic
) -> None:
    text = "héllo wörld 👩‍👩‍👧 日本語 ok"
    up.push(Reply(text=text, chunk_chars=3, delay=0.02, first_delay=0.1))
    started = time.monotonic()
    deltas: list[str] = []
    first_at = None
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("hi")) as stream:
        async for piece in stream.text_stream:
            first_at = first_at if first_at is not None else time.monotonic() - started
            deltas.append(piece)
    total = time.monotonic() - started

    assert "".join(deltas) == text
    assert len(deltas) == math.ceil(len(text) / 3)
    assert all(1 <= len(piece) <= 3 for piece in deltas)
    assert first_at is not None
    assert first_at >= 0.1
    assert total >= 0.1 + 0.02 * (len(deltas) - 1)


async def test_thinking_block_comes_first_with_a_signature(
    up: FakeUpstream, client: AsyncAnthropic
) -> None:
    up.push(Reply(thinking="Let me think about it.", text="42", chunk_chars=8))
    kinds: list[str] = []
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("q")) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                kinds.append(event.delta.type)
        message = await stream.get_final_message()

    assert kinds == ["thinking_delta"] * 3 + ["signature_delta", "text_delta"]
    thinking, text = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "Let me think about it."
    assert thinking.signature
    assert text.type == "text"
    assert text.text == "42"


async def test_tool_use_streamed_and_not(up: FakeUpstream, client: AsyncAnthropic) -> None:
    tool_input = {"city": "Paris", "days": [1, 2], "note": "naïve"}
    up.push(
        Reply(text="Checking.", tool_uses=(ToolUse("get_weather", tool_input),)),
        Reply(text="", tool_uses=(ToolUse("get_time", {}, id="toolu_given"),)),
    )

    json_pieces = 0
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("w")) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                json_pieces += 1
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text"
    assert text.text == "Checking."
    assert tool.type == "tool_use"
    assert tool.name == "get_weather"
    assert tool.input == tool_input
    assert tool.id.startswith("toolu_")
    assert json_pieces > 2  # the input really arrived in pieces

    plain = await client.messages.create(model=MODEL, max_tokens=64, messages=user("t"))
    assert plain.stop_reason == "tool_use"
    (only,) = plain.content  # no empty text block before a tool use
    assert only.type == "tool_use"
    assert only.id == "toolu_given"
    assert only.input == {}


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
async def test_error_status_maps_to_the_sdk_exception(
    up: FakeUpstream,
    client: AsyncAnthropic,
    status: int,
    exc_class: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    up.push(Reply(status=status, error_message="scripted failure", retry_after=3))
    with pytest.raises(exc_class) as caught:
        await ask(client, "hi")
    exc = caught.value
    assert exc.status_code == status
    assert isinstance(exc.body, dict)
    assert exc.body["type"] == "error"
    assert exc.body["error"] == {"type": error_type, "message": "scripted failure"}
    assert exc.response.headers["retry-after"] == "3"
    assert exc.response.headers["request-id"] == exc.body["request_id"]
    assert up.main_requests[0].outcome == "http_error"


async def test_error_status_on_a_streaming_request(
    up: FakeUpstream, client: AsyncAnthropic
) -> None:
    up.push(Reply(status=529, headers=(("x-should-retry", "false"),)))
    with pytest.raises(anthropic.OverloadedError) as caught:
        async with client.messages.stream(model=MODEL, max_tokens=9, messages=user("hi")) as s:
            await s.get_final_message()
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.response.reason_phrase == "Overloaded"


async def test_break_after_drops_the_connection_then_a_retry_gets_the_next_reply(
    up: FakeUpstream, client: AsyncAnthropic
) -> None:
    up.push(Reply(text="abcdef", chunk_chars=2, break_after=1), Reply(text="recovered"))
    received: list[str] = []
    # The SDK wraps transport errors only until the headers arrive; mid-stream they surface raw.
    with pytest.raises(httpx2.RemoteProtocolError, match="incomplete chunked read"):
        await collect_text(client, received)
    assert received == ["ab"]
    assert up.main_requests[0].outcome == "dropped"

    # claude's recovery: the same request again, without streaming.
    assert await ask(client, "x") == "recovered"
    assert [r.stream for r in up.main_requests] == [True, False]


async def test_sse_error_after_n_deltas(up: FakeUpstream, client: AsyncAnthropic) -> None:
    up.push(Reply(text="abcdef", chunk_chars=2, sse_error_after=2))
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        await collect_text(client, received)
    assert received == ["ab", "cd"]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert up.main_requests[0].outcome == "sse_error"


async def test_stall_ends_when_the_client_times_out(
    up: FakeUpstream, client: AsyncAnthropic
) -> None:
    up.push(Reply(text="abcdef", chunk_chars=2, stall_after=1))
    impatient = client.with_options(timeout=0.3)
    received: list[str] = []
    with pytest.raises(httpx2.ReadTimeout):
        await collect_text(impatient, received)
    assert received == ["ab"]
    (record,) = up.main_requests
    assert await up.wait_finished(record) == "client_gone"
    assert record.client_gone


async def test_headers_never_sent(up: FakeUpstream, client: AsyncAnthropic) -> None:
    up.push(Reply(headers_never=True))
    with pytest.raises(anthropic.APITimeoutError):
        await client.with_options(timeout=0.3).messages.create(
            model=MODEL, max_tokens=9, messages=user("x")
        )
    assert await up.wait_finished(up.main_requests[0]) == "client_gone"


async def test_failures_on_non_streaming_requests(up: FakeUpstream, client: AsyncAnthropic) -> None:
    up.push(Reply(break_after=0), Reply(sse_error_after=0), Reply(stall_after=0))
    with pytest.raises(anthropic.APIConnectionError):
        await ask(client, "break")
    with pytest.raises(anthropic.OverloadedError):
        await ask(client, "sse error becomes a 529")
    with pytest.raises(anthropic.APITimeoutError):
        await ask(client.with_options(timeout=0.2), "stall")
    await up.wait_finished(up.main_requests[2])
    assert [r.outcome for r in up.main_requests] == ["dropped", "http_error", "client_gone"]

    up.push(Reply(text="sized"))
    raw = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=9, messages=user("x")
    )
    assert raw.headers["content-type"] == "application/json"
    assert int(raw.headers["content-length"]) == len(raw.http_response.content)


async def test_close_ends_stalled_answers_at_once(client: AsyncAnthropic, up: FakeUpstream) -> None:
    up.push(Reply(stall_after=0), Reply(headers_never=True), Reply(delay=60, chunk_chars=1))
    streaming = [asyncio.Event() for _ in range(3)]

    async def stream_one(i: int) -> None:
        async with client.messages.stream(model=MODEL, max_tokens=9, messages=user("x")) as s:
            streaming[i].set()  # the response headers have arrived
            await s.get_final_message()

    tasks = [asyncio.create_task(stream_one(i)) for i in range(3)]
    records = await up.wait_for_requests(3)
    await streaming[0].wait()
    await streaming[2].wait()
    started = time.monotonic()
    await up.close()
    assert time.monotonic() - started < 1.0
    results = await asyncio.gather(*tasks, return_exceptions=True)
    # Mid-stream the body is cut short; before the headers the SDK reports a connection error.
    assert [type(r) for r in results] == [
        httpx2.RemoteProtocolError,
        anthropic.APIConnectionError,
        httpx2.RemoteProtocolError,
    ], results
    assert [r.outcome for r in records] == ["shutdown"] * 3


# --- routing: title, rules, queue, echo ------------------------------------------------------


async def test_title_requests_are_answered_apart(up: FakeUpstream, client: AsyncAnthropic) -> None:
    up.push(Reply(text="main answer"))
    stream = await client.messages.create(**title_body(stream=True))
    title = "".join(
        [
            event.delta.text
            async for event in stream
            if event.type == "content_block_delta" and event.delta.type == "text_delta"
        ]
    )
    assert json.loads(title) == {"title": "Fake session title"}
    assert title == DEFAULT_TITLE_TEXT

    non_streamed = await client.messages.create(**title_body(stream=False))
    assert non_streamed.content[0].type == "text"
    assert non_streamed.content[0].text == DEFAULT_TITLE_TEXT

    assert len(up.title_requests) == 2
    assert up.main_requests == []
    assert up.pending_replies == 1
    assert await ask(client, "hi") == "main answer"


async def test_rules_then_queue_then_echo(up: FakeUpstream, client: AsyncAnthropic) -> None:
    once = up.on("TOKEN-A", Reply(text="rule a"), times=1)
    up.on("LEN?", lambda body: Reply(text=f"len={len(last_user_text(body))}"))
    up.push(Reply(text="queued 1"), Reply(text="queued 2"))

    assert await ask(client, "hi TOKEN-A") == "rule a"
    assert once.exhausted
    assert await ask(client, "again TOKEN-A") == "queued 1"  # the rule is used up
    assert await ask(client, "LEN?") == "len=4"  # rules win over the queue
    assert await ask(client, "plain") == "queued 2"
    assert await ask(client, "now empty") == "echo: now empty"
    assert len(up.main_requests) == 5


async def test_echo_uses_the_last_text_block(client: AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL,
        max_tokens=9,
        messages=[
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "the prompt"},
                ],
            },
        ],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: the prompt"


async def test_concurrent_requests_route_by_token(up: FakeUpstream, client: AsyncAnthropic) -> None:
    tokens = [f"tok-{i}" for i in range(6)]
    for i, token in enumerate(tokens):
        # Later tokens answer faster, so arrival and completion orders differ.
        up.on(token, Reply(text=f"answer {token}", chunk_chars=2, delay=0.005 * (6 - i)))
    answers = await asyncio.gather(*(ask(client, f"question {t}") for t in tokens))
    assert answers == [f"answer {t}" for t in tokens]
    records = await up.wait_for_requests(6)
    assert sorted(r.last_user_text for r in records) == sorted(f"question {t}" for t in tokens)


async def test_wait_for_requests_times_out_clearly(up: FakeUpstream) -> None:
    with pytest.raises(TimeoutError, match="1 main requests"):
        await up.wait_for_requests(1, timeout=0.05)


# --- other endpoints -------------------------------------------------------------------------


async def test_head_count_tokens_and_unknown_paths(
    up: FakeUpstream, client: AsyncAnthropic
) -> None:
    counted = await client.messages.count_tokens(model=MODEL, messages=user("hello world"))
    assert counted.input_tokens > 0
    up.count_tokens = 123
    counted = await client.messages.count_tokens(model=MODEL, messages=user("hello world"))
    assert counted.input_tokens == 123
    assert len(up.count_tokens_requests) == 2

    async with aiohttp.ClientSession() as session:
        async with session.head(up.url + "/") as resp:
            assert resp.status == 200
        async with session.get(up.url + "/v1/models") as resp:
            assert resp.status == 404
            error = await resp.json()
    assert error["error"]["type"] == "not_found_error"
    assert up.head_count == 1
    assert [r.path for r in up.other_requests] == ["/v1/models"]
    assert up.main_requests == []


async def test_api_key_enforcement() -> None:
    async with FakeUpstream(api_key="sk-right") as up:
        for key, ok in (("sk-wrong", False), ("sk-right", True)):
            async with AsyncAnthropic(base_url=up.url, api_key=key, max_retries=0) as sdk:
                if ok:
                    assert await ask(sdk, "hi") == "echo: hi"
                else:
                    with pytest.raises(anthropic.AuthenticationError):
                        await ask(sdk, "hi")


async def test_cli_serves_in_the_foreground() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "claude_relay.daemon.fake_upstream",
        "--port",
        "0",
        "--reply-text",
        "from the cli",
        "--quiet",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            url = (await proc.stdout.readline()).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with AsyncAnthropic(base_url=url, api_key="k", max_retries=0) as sdk:
            assert await ask(sdk, "hi") == "from the cli"
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    assert proc.returncode == 0


# --- pure helpers ----------------------------------------------------------------------------


def test_body_helpers() -> None:
    body: dict[str, Any] = {
        "system": [{"type": "text", "text": "You are"}, {"type": "text", "text": "claude"}],
        "messages": [
            {"role": "user", "content": "old"},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "result TOKEN"},
                    {"type": "text", "text": "first"},
                    {"type": "image", "source": {}},
                    {"type": "text", "text": "last"},
                ],
            },
        ],
    }
    assert system_text(body) == "You are\nclaude"
    assert system_text({"system": "plain"}) == "plain"
    assert last_user_text(body) == "last"
    assert user_text(body) == "result TOKEN\nfirst\nlast"
    assert last_user_text({}) == ""
    assert is_title_request(title_body())
    assert not is_title_request(body)


def test_reply_validation() -> None:
    with pytest.raises(ValueError, match="at most one failure"):
        Reply(status=500, break_after=1)
    with pytest.raises(ValueError, match="chunk_chars"):
        Reply(chunk_chars=-1)
    assert Reply(tool_uses=(ToolUse("t"),)).effective_stop_reason == "tool_use"
