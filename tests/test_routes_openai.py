"""POST /v1/chat/completions against a scripted fake pool, with the official openai SDK as client:
JSON and chunk shapes, the tool round trip, images, sticky ids, response_format and every error
path in the OpenAI envelope (the SDK must raise the right exception class)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pydantic
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from claude_relay.daemon.app import make_app
from claude_relay.daemon.config import Config
from claude_relay.protocols.errors import OverloadedError, RateLimitError
from claude_relay.protocols.model import (
    ImageBlock,
    Message,
    TextBlock,
    TextDelta,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    TurnResult,
    Usage,
)
from tests.support import media
from tests.test_app import FakePool, Step

Client = TestClient[web.Request, web.Application]
MODEL = "gpt-4o-mini"
PNG = media.png()
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def result(
    text: str = "Hello world!",
    *,
    tools: tuple[ToolUseBlock, ...] = (),
    usage: Usage | None = None,
) -> TurnResult:
    return TurnResult(
        content=((TextBlock(text),) if text else ()) + tools,
        stop_reason="tool_use" if tools else "end_turn",
        usage=usage if usage is not None else Usage(11, 5, 3, 40),
    )


Relay = Callable[..., Awaitable[tuple[FakePool, openai.AsyncOpenAI]]]


@pytest.fixture
async def relay(aiohttp_client: AiohttpClient, tmp_path: Any) -> AsyncIterator[Relay]:
    clients: list[openai.AsyncOpenAI] = []

    async def make(script: list[Step], *, prefix: str = "/v1", **kw: Any) -> Any:
        pool = FakePool(script, **kw)
        client: Client = await aiohttp_client(make_app(Config(workspace=tmp_path), pool=pool))
        sdk = openai.AsyncOpenAI(
            base_url=str(client.make_url(prefix)), api_key="unused", max_retries=0
        )
        clients.append(sdk)
        return pool, sdk

    yield make
    for sdk in clients:
        await sdk.close()


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


# --- completions ---------------------------------------------------------------------------------


async def test_completion_is_exact_with_usage(relay: Relay) -> None:
    pool, sdk = await relay([TextDelta("Hello"), result("Hello world!")])
    completion = await sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be nice."}, *user("Hi")],
        temperature=0.2,
        max_tokens=50,
        seed=1,
        user="end-user-1",
    )
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    (choice,) = completion.choices
    assert choice.message.content == "Hello world!"
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (54, 5, 59)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 40
    (request,) = pool.requests
    assert request.system == "Be nice."
    assert request.messages == (Message("user", (TextBlock("Hi"),)),)
    assert request.metadata_user_id == "end-user-1"


async def test_bare_base_url_works(relay: Relay) -> None:
    _, sdk = await relay([result("bare")], prefix="")
    completion = await sdk.chat.completions.create(model=MODEL, messages=user("Hi"))
    assert completion.choices[0].message.content == "bare"


@pytest.mark.parametrize("how", ["header", "body"])
async def test_sticky_session_id(relay: Relay, how: str) -> None:
    pool, sdk = await relay([result()])
    if how == "header":
        await sdk.chat.completions.create(
            model=MODEL, messages=user("Hi"), extra_headers={"X-IR-Session-ID": "conv-7"}
        )
    else:
        await sdk.chat.completions.create(
            model=MODEL, messages=user("Hi"), extra_body={"session_id": "conv-7"}
        )
    assert pool.requests[0].session_id == "conv-7"


async def test_stop_cuts_the_reply(relay: Relay) -> None:
    _, sdk = await relay([result("Answer: 42\nObservation: x")])
    completion = await sdk.chat.completions.create(
        model=MODEL, messages=user("q"), stop=["Observation:"]
    )
    assert completion.choices[0].message.content == "Answer: 42\n"
    assert completion.choices[0].finish_reason == "stop"


# --- streaming ------------------------------------------------------------------------------------


async def test_stream_chunks_concatenate_to_the_text(relay: Relay) -> None:
    _, sdk = await relay([TextDelta("Hello"), TextDelta(" world"), result("Hello world!")])
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=user("Hi"), stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ["Hello", " world", "!"]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 59


async def test_stream_helper_accumulates(relay: Relay) -> None:
    _, sdk = await relay([TextDelta("Hi "), result("Hi there")])
    async with sdk.chat.completions.stream(model=MODEL, messages=user("Hi")) as stream:
        deltas = [ev.delta async for ev in stream if ev.type == "content.delta"]
        final = await stream.get_final_completion()
    assert "".join(deltas) == "Hi there"
    assert final.choices[0].message.content == "Hi there"


async def test_mid_stream_error_raises_in_the_sdk(relay: Relay) -> None:
    _, sdk = await relay([TextDelta("part"), OverloadedError("claude is overloaded")])
    stream = await sdk.chat.completions.create(model=MODEL, messages=user("Hi"), stream=True)
    seen: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIError) as info:
        await read()
    assert seen == ["part"]
    assert info.value.message == "claude is overloaded"
    assert info.value.code == "overloaded"


async def test_stream_without_result_is_an_error(relay: Relay) -> None:
    _, sdk = await relay([TextDelta("x")])
    stream = await sdk.chat.completions.create(model=MODEL, messages=user("Hi"), stream=True)
    with pytest.raises(openai.APIError, match="without a result"):
        async for _ in stream:
            pass


# --- tools ---------------------------------------------------------------------------------------


async def test_tool_round_trip(relay: Relay) -> None:
    call = ToolUseBlock("toolu_01", "get_weather", {"city": "Paris"})
    pool, sdk = await relay([result("", tools=(call,))])
    messages: list[Any] = user("Weather in Paris?")
    first = await sdk.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.type == "function"
    assert tool_call.function.name == "get_weather"
    assert tool_call.function.arguments == '{"city":"Paris"}'
    request = pool.requests[0]
    assert request.tools == (
        ToolSpec("get_weather", "Current weather", WEATHER["function"]["parameters"]),
    )
    assert request.tool_choice == ToolChoice("any")

    pool.script = [result("It is sunny in Paris.")]
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": "sunny, 24 C"})
    second = await sdk.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert pool.requests[1].messages[1:] == (
        Message("assistant", (call,)),
        Message("user", (ToolResultBlock("toolu_01", (TextBlock("sunny, 24 C"),)),)),
    )


async def test_streamed_tool_calls(relay: Relay) -> None:
    calls = (
        ToolUseBlock("toolu_a", "get_weather", {"city": "Paris"}),
        ToolUseBlock("toolu_b", "get_weather", {"city": "Rome"}),
    )
    _, sdk = await relay([TextDelta("Checking."), result("Checking.", tools=calls)])
    async with sdk.chat.completions.stream(
        model=MODEL, messages=user("Paris and Rome?"), tools=[WEATHER]
    ) as stream:
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "Checking."
    assert message.tool_calls is not None
    assert [(c.id, c.function.arguments) for c in message.tool_calls] == [
        ("toolu_a", '{"city":"Paris"}'),
        ("toolu_b", '{"city":"Rome"}'),
    ]


async def test_image_data_url_reaches_the_pool(relay: Relay) -> None:
    pool, sdk = await relay([result("a black square")])
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    await sdk.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    )
    assert pool.requests[0].messages[0].content == (
        TextBlock("Describe"),
        ImageBlock("image/png", PNG),
    )


# --- response_format -----------------------------------------------------------------------------


class Person(pydantic.BaseModel):
    name: str
    age: int


async def test_json_schema_with_the_sdk_parse_helper(relay: Relay) -> None:
    pool, sdk = await relay([result('```json\n{"name": "Ann", "age": 31}\n```')])
    completion = await sdk.chat.completions.parse(
        model=MODEL, messages=user("A person"), response_format=Person
    )
    message = completion.choices[0].message
    assert message.parsed == Person(name="Ann", age=31)
    assert message.content == '{"name": "Ann", "age": 31}'
    system = pool.requests[0].system
    assert system is not None
    assert '<json_schema name="Person">' in system


async def test_invalid_json_reply_is_a_server_error(relay: Relay) -> None:
    _, sdk = await relay([result("Sure! Here it is: {}")])
    with pytest.raises(openai.InternalServerError) as info:
        await sdk.chat.completions.create(
            model=MODEL, messages=user("json please"), response_format={"type": "json_object"}
        )
    assert info.value.status_code == 500
    assert info.value.code == "invalid_json_output"
    assert "Sure! Here it is" in info.value.message


async def test_json_mode_streams_the_checked_text_once(relay: Relay) -> None:
    _, sdk = await relay([TextDelta('{"a":'), TextDelta("1}"), result('{"a": 1}')])
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=user("json"), stream=True, response_format={"type": "json_object"}
    )
    texts = [c.choices[0].delta.content async for c in stream if c.choices]
    assert [t for t in texts if t] == ['{"a": 1}']


async def test_json_mode_stream_error(relay: Relay) -> None:
    _, sdk = await relay([TextDelta("nope"), result("nope")])
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=user("json"), stream=True, response_format={"type": "json_object"}
    )
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert info.value.code == "invalid_json_output"


# --- errors --------------------------------------------------------------------------------------


async def test_validation_error_is_a_bad_request(relay: Relay) -> None:
    pool, sdk = await relay([result()])
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(model=MODEL, messages=user("Hi"), n=2)
    assert info.value.param == "n"
    assert info.value.code == "unsupported_value"
    assert info.value.type == "invalid_request_error"
    assert info.value.response.headers["request-id"].startswith("req_")
    with pytest.raises(openai.BadRequestError, match="remote URLs are not fetched"):
        await sdk.chat.completions.create(
            model=MODEL,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                    ],
                }
            ],
        )
    assert pool.requests == []


@pytest.mark.parametrize(
    ("kw", "exc", "status"),
    [
        ({"admission_error": RateLimitError("slow", retry_after=3)}, openai.RateLimitError, 429),
        ({"admission_error": OverloadedError("full")}, openai.InternalServerError, 529),
        ({"claude_error": "`claude` not found"}, openai.InternalServerError, 503),
    ],
)
async def test_pool_errors_map_to_sdk_classes(
    relay: Relay, kw: dict[str, Any], exc: type[openai.APIStatusError], status: int
) -> None:
    _, sdk = await relay([], **kw)
    for stream in (False, True):
        with pytest.raises(exc) as info:
            await sdk.chat.completions.create(model=MODEL, messages=user("Hi"), stream=stream)
        assert info.value.status_code == status
        body = info.value.body
        assert isinstance(body, dict)
        assert set(body) == {"message", "type", "param", "code"}


async def test_unexpected_exception_hides_details(relay: Relay) -> None:
    _, sdk = await relay([RuntimeError("secret detail")])
    with pytest.raises(openai.InternalServerError) as info:
        await sdk.chat.completions.create(model=MODEL, messages=user("Hi"))
    assert info.value.body == {
        "message": "internal error",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert "secret" not in info.value.response.text
