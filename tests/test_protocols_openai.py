"""The OpenAI wire format: request decoding into the neutral model, chat.completion and chunk
encoding checked against the openai SDK's own types, error bodies, and response_format checks."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from claude_relay.protocols.attachments import AttachmentLimits
from claude_relay.protocols.errors import (
    ApiError,
    InvalidRequestError,
    OverloadedError,
    RateLimitError,
    RelayError,
    RequestTooLargeError,
)
from claude_relay.protocols.model import (
    ImageBlock,
    Message,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    TurnResult,
    Usage,
)
from claude_relay.protocols.openai import (
    DONE_FRAME,
    PING_FRAME,
    ChatRequest,
    StreamEncoder,
    decode_request,
    encode_completion,
    error_body,
    new_completion_id,
)
from claude_relay.protocols.response_format import (
    JsonFormat,
    check_reply,
    schema_problem,
    with_instruction,
)
from tests.support import media

MODEL = "gpt-4o"
DROP = object()
PNG = media.png()


def body(**fields: object) -> bytes:
    base: dict[str, object] = {"model": MODEL, "messages": [user("Hi")]}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not DROP})


def user(content: object) -> dict[str, object]:
    return {"role": "user", "content": content}


def assistant(content: object = None, **extra: object) -> dict[str, object]:
    return {"role": "assistant", "content": content, **extra}


def call(
    call_id: str, name: str = "get_weather", arguments: str = '{"city": "Paris"}'
) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool(call_id: str, content: object = "sunny") -> dict[str, object]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def image_part(url: str) -> dict[str, object]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def decode(**fields: object) -> ChatRequest:
    return decode_request(body(**fields))


def rejected(raw: bytes) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        decode_request(raw)
    return info.value


# --- decode_request: the neutral request ---------------------------------------------------------


def test_decode_minimal() -> None:
    chat = decode()
    assert chat.turn.model == MODEL
    assert chat.turn.messages == (Message("user", (TextBlock("Hi"),)),)
    assert chat.turn.system is None
    assert not chat.turn.stream
    assert not chat.include_usage
    assert chat.response_format is None
    assert chat.turn.tools == ()
    assert chat.turn.tool_choice == ToolChoice("auto")


def test_system_and_developer_messages_become_the_system_prompt() -> None:
    chat = decode(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            user("Hi"),
            assistant("Salut."),
            {"role": "system", "content": "Stay polite."},
            user("Again"),
        ]
    )
    assert chat.turn.system == "Be brief.\n\nAnswer in French.\n\nStay polite."
    assert [m.role for m in chat.turn.messages] == ["user", "assistant", "user"]


def test_user_parts_keep_text_and_decode_images() -> None:
    chat = decode(
        messages=[
            user([{"type": "text", "text": "What is this?"}, image_part(data_url(PNG))]),
        ]
    )
    (message,) = chat.turn.messages
    assert message.content == (TextBlock("What is this?"), ImageBlock("image/png", PNG))


def test_tool_round_trip_messages() -> None:
    chat = decode(
        messages=[
            user("Weather in Paris and Rome?"),
            assistant(
                "Let me check.",
                tool_calls=[call("call_1"), call("call_2", arguments='{"city": "Rome"}')],
            ),
            tool("call_1", "sunny"),
            tool("call_2", [{"type": "text", "text": "rain"}]),
            user("Thanks"),
        ],
        tools=[WEATHER],
    )
    assert chat.turn.messages == (
        Message("user", (TextBlock("Weather in Paris and Rome?"),)),
        Message(
            "assistant",
            (
                TextBlock("Let me check."),
                ToolUseBlock("call_1", "get_weather", {"city": "Paris"}),
                ToolUseBlock("call_2", "get_weather", {"city": "Rome"}),
            ),
        ),
        # consecutive tool messages merge into one user message
        Message(
            "user",
            (
                ToolResultBlock("call_1", (TextBlock("sunny"),)),
                ToolResultBlock("call_2", (TextBlock("rain"),)),
            ),
        ),
        Message("user", (TextBlock("Thanks"),)),
    )


def test_assistant_with_null_content_and_empty_arguments() -> None:
    chat = decode(
        messages=[
            user("time?"),
            assistant(None, tool_calls=[call("c", name="now", arguments="")]),
            tool("c", "12:00"),
        ]
    )
    assert chat.turn.messages[1] == Message("assistant", (ToolUseBlock("c", "now", {}),))
    assert chat.turn.messages[-1].content == (ToolResultBlock("c", (TextBlock("12:00"),)),)


def test_response_messages_sent_back_as_history_are_accepted() -> None:
    # What SDK users append after a call: the response message dumped with all its fields.
    echoed = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
        "parsed": None,
        "tool_calls": [{**call("c1"), "index": 0, "parsed_arguments": {"city": "Paris"}}],
    }
    chat = decode(messages=[user("q"), echoed, tool("c1")])
    assert chat.turn.messages[1] == Message(
        "assistant", (ToolUseBlock("c1", "get_weather", {"city": "Paris"}),)
    )


def test_tools_become_tool_specs() -> None:
    bare = {"type": "function", "function": {"name": "ping"}}
    chat = decode(tools=[WEATHER, bare])
    assert chat.turn.tools == (
        ToolSpec(
            "get_weather",
            "Weather for a city",
            {"type": "object", "properties": {"city": {"type": "string"}}},
        ),
        # omitted parameters mean no parameters
        ToolSpec("ping", "", {"type": "object", "properties": {}}),
    )


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, ToolChoice("auto")),
        ("none", None, ToolChoice("none")),
        ("required", None, ToolChoice("any")),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            ToolChoice("tool", name="get_weather"),
        ),
        (None, False, ToolChoice("auto", disable_parallel=True)),
        ("required", True, ToolChoice("any")),
    ],
)
def test_tool_choice(choice: object, parallel: object, expected: ToolChoice) -> None:
    chat = decode(tools=[WEATHER], tool_choice=choice, parallel_tool_calls=parallel)
    assert chat.turn.tool_choice == expected


def test_final_assistant_message_is_a_trimmed_prefill() -> None:
    chat = decode(messages=[user("Count"), assistant("1, 2, ")])
    assert chat.turn.messages[-1] == Message("assistant", (TextBlock("1, 2,"),))


def test_empty_messages_are_dropped() -> None:
    chat = decode(messages=[user(""), user("real"), assistant("")])
    assert chat.turn.messages == (Message("user", (TextBlock("real"),)),)


def test_stream_options_and_stop() -> None:
    chat = decode(stream=True, stream_options={"include_usage": True}, stop="END")
    assert chat.turn.stream
    assert chat.include_usage
    assert chat.turn.stop_sequences == ("END",)
    assert decode(stop=["a", "", "b"]).turn.stop_sequences == ("a", "b")


def test_harmless_knobs_are_accepted() -> None:
    chat = decode(
        temperature=1.5,
        top_p=0.9,
        max_tokens=100,
        max_completion_tokens=200,
        seed=7,
        user="u-1",
        n=1,
        logprobs=False,
        frequency_penalty=0.5,
        presence_penalty=0.1,
        logit_bias={"50256": -100},
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        reasoning_effort="low",
        modalities=["text"],
    )
    assert chat.turn.temperature == 1.5
    assert chat.turn.top_p == 0.9
    assert chat.turn.max_tokens == 200  # max_completion_tokens wins
    assert chat.turn.metadata_user_id == "u-1"


@pytest.mark.parametrize(
    ("header", "in_body", "expected"),
    [
        ("h-1", "b-1", "h-1"),
        (None, "b-1", "b-1"),
        ("", "b-1", "b-1"),
        (None, "x" * 129, None),
        (None, "bad\nid", None),
    ],
)
def test_session_id(header: str | None, in_body: object, expected: str | None) -> None:
    chat = decode_request(body(session_id=in_body), session_header=header)
    assert chat.turn.session_id == expected


def test_response_format_goes_into_the_system_prompt() -> None:
    chat = decode(
        messages=[{"role": "system", "content": "You are terse."}, user("Give me a person")],
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "person",
                "schema": {"type": "object", "required": ["name"]},
                "strict": True,
            },
        },
    )
    assert chat.response_format == JsonFormat(
        "json_schema", schema={"type": "object", "required": ["name"]}, name="person"
    )
    assert chat.turn.system is not None
    assert chat.turn.system.startswith("You are terse.\n\nRespond with one JSON value")
    assert '{"type":"object","required":["name"]}' in chat.turn.system
    assert decode(response_format={"type": "text"}).response_format is None
    json_object = decode(response_format={"type": "json_object"})
    assert json_object.response_format == JsonFormat("json_object")
    assert json_object.turn.system is not None
    assert "one valid JSON object" in json_object.turn.system


# --- decode_request: rejections ------------------------------------------------------------------

REJECTED = [
    pytest.param(b"{nope", None, None, "We could not parse the JSON body", id="bad-json"),
    pytest.param(b"[]", None, None, "must be a JSON object", id="not-object"),
    pytest.param(body(foo=1), "foo", "unknown_parameter", "Unrecognized request", id="unknown"),
    pytest.param(body(model=DROP), "model", "missing_required_parameter", "Missing", id="model"),
    pytest.param(body(model=3), "model", "invalid_type", "expected a string", id="model-int"),
    pytest.param(body(messages=DROP), "messages", "missing_required_parameter", "", id="no-msgs"),
    pytest.param(body(messages=[]), "messages", "empty_array", "empty array", id="empty-msgs"),
    pytest.param(
        body(messages=[{"role": "robot", "content": "x"}]),
        "messages[0].role",
        "invalid_value",
        "Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and",
        id="role",
    ),
    pytest.param(
        body(messages=[{"role": ["user"], "content": "x"}]),
        "messages[0].role",
        "invalid_type",
        "",
        id="role-list",
    ),
    pytest.param(
        body(messages=[user(5)]),
        "messages[0].content",
        "invalid_type",
        "expected one of a string or array of objects, but got an integer instead",
        id="content-int",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": "x", "id": 1}]),
        "messages[0].id",
        "unknown_parameter",
        "",
        id="message-extra",
    ),
    pytest.param(
        body(messages=[{"role": "system", "content": "only system"}]),
        "messages",
        "invalid_value",
        "at least one user, assistant or tool message",
        id="only-system",
    ),
    pytest.param(
        body(messages=[{"role": "function", "name": "f", "content": "x"}]),
        "messages[0].role",
        "unsupported_parameter",
        "use tools",
        id="function-role",
    ),
    pytest.param(
        body(messages=[user([image_part("https://example.com/cat.png")])]),
        "messages[0].content[0].image_url.url",
        "invalid_image_url",
        "remote URLs are not fetched by claude-relay",
        id="remote-image",
    ),
    pytest.param(
        body(messages=[user([image_part("data:image/png;base64,@@@")])]),
        "messages[0].content[0].image_url.url",
        "invalid_image_url",
        "invalid base64",
        id="bad-base64",
    ),
    pytest.param(
        body(messages=[user([image_part(data_url(b"just some bytes"))])]),
        "messages[0].content[0].image_url.url",
        "invalid_image_url",
        "not a PNG, JPEG, GIF or WebP image",
        id="not-an-image",
    ),
    pytest.param(
        body(messages=[user([image_part(data_url(PNG, "image/jpeg"))])]),
        "messages[0].content[0].image_url.url",
        "invalid_image_url",
        "specified as image/jpeg, but the data is a PNG image",
        id="mislabelled-image",
    ),
    pytest.param(
        body(messages=[user([image_part("data:image/png,rawbytes")])]),
        "messages[0].content[0].image_url.url",
        "invalid_image_url",
        "must be base64-encoded",
        id="not-base64-url",
    ),
    pytest.param(
        body(messages=[user([{"type": "input_audio", "input_audio": {}}])]),
        "messages[0].content[0].type",
        "unsupported_value",
        "not supported by claude-relay",
        id="audio-part",
    ),
    pytest.param(
        body(messages=[{"role": "system", "content": [image_part(data_url(PNG))]}]),
        "messages[0].content[0].type",
        "invalid_value",
        "not allowed in this message",
        id="image-in-system",
    ),
    pytest.param(
        body(messages=[user("q"), assistant(None, tool_calls=[call("c1")])]),
        "messages.[1].role",
        "invalid_value",
        "did not have response messages: c1",
        id="unanswered-call",
    ),
    pytest.param(
        body(messages=[user("q"), assistant(None, tool_calls=[call("c1")]), user("next")]),
        "messages.[1].role",
        "invalid_value",
        "did not have response messages",
        id="call-answered-by-user",
    ),
    pytest.param(
        body(messages=[user("q"), tool("c9")]),
        "messages.[1].role",
        "invalid_value",
        "must be a response to a preceding message with 'tool_calls'",
        id="orphan-tool",
    ),
    pytest.param(
        body(messages=[user("q"), assistant(None, tool_calls=[call("c1", arguments="[1]")])]),
        "messages[1].tool_calls[0].function.arguments",
        "invalid_value",
        "expected a JSON object",
        id="arguments-not-object",
    ),
    pytest.param(body(n=2), "n", "unsupported_value", "must be 1", id="n"),
    pytest.param(body(logprobs=True), "logprobs", "unsupported_parameter", "", id="logprobs"),
    pytest.param(body(top_logprobs=2), "top_logprobs", "unsupported_parameter", "", id="top-lp"),
    pytest.param(
        body(modalities=["text", "audio"]), "modalities", "unsupported_value", "", id="modalities"
    ),
    pytest.param(body(audio={"voice": "alloy"}), "audio", "unsupported_parameter", "", id="audio"),
    pytest.param(
        body(functions=[{"name": "f"}]), "functions", "unsupported_parameter", "tools", id="funcs"
    ),
    pytest.param(
        body(temperature=2.5), "temperature", "decimal_above_max_value", "<= 2", id="temperature"
    ),
    pytest.param(
        body(max_tokens=0), "max_tokens", "integer_below_min_value", ">= 1", id="max-tokens"
    ),
    pytest.param(body(stream="yes"), "stream", "invalid_type", "a boolean", id="stream"),
    pytest.param(
        body(stream_options={"include_usage": True}),
        "stream_options",
        "invalid_value",
        "only allowed when 'stream' is enabled",
        id="stream-options",
    ),
    pytest.param(
        body(stop=["a", "b", "c", "d", "e"]), "stop", "array_above_max_length", "", id="stop"
    ),
    pytest.param(
        body(tools=[{"type": "function", "function": {"name": "bad name"}}]),
        "tools[0].function.name",
        "invalid_value",
        "does not match pattern",
        id="tool-name",
    ),
    pytest.param(
        body(tools=[WEATHER, WEATHER]),
        "tools[1].function.name",
        "invalid_value",
        "duplicate",
        id="tool-dup",
    ),
    pytest.param(
        body(tools=[{"type": "custom", "custom": {"name": "x"}}]),
        "tools[0].type",
        "unsupported_parameter",
        "custom tools",
        id="custom-tool",
    ),
    pytest.param(
        body(tool_choice="required"),
        "tool_choice",
        "invalid_value",
        "only allowed when 'tools' are specified",
        id="required-without-tools",
    ),
    pytest.param(
        body(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}),
        "tool_choice.function.name",
        "invalid_value",
        "no function named 'nope'",
        id="unknown-named-tool",
    ),
    pytest.param(
        body(tools=[WEATHER], tool_choice="always"),
        "tool_choice",
        "invalid_value",
        "Supported values are: 'none', 'auto', and 'required'",
        id="tool-choice-value",
    ),
    pytest.param(
        body(response_format={"type": "yaml"}),
        "response_format.type",
        "invalid_value",
        "",
        id="format-type",
    ),
    pytest.param(
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "objekt"}},
            }
        ),
        "response_format.json_schema.schema",
        "invalid_json_schema",
        "Invalid schema for response_format 'x': $.type:",
        id="format-bad-schema",
    ),
    pytest.param(
        body(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        "missing_required_parameter",
        "",
        id="format-no-name",
    ),
]


@pytest.mark.parametrize(("raw", "param", "code", "message"), REJECTED)
def test_decode_rejects(raw: bytes, param: str | None, code: str | None, message: str) -> None:
    err = rejected(raw)
    assert err.status == 400
    assert err.param == param
    assert err.openai_code == code
    assert message in err.message
    envelope = error_body(err)["error"]
    assert (envelope["param"], envelope["code"]) == (param, code)


# --- images (the decoding itself is protocols.attachments') -----------------------------------


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (media.png(), "image/png"),
        (media.jpeg_header(), "image/jpeg"),
        (media.GIF_1X1, "image/gif"),
        (media.webp_vp8x(), "image/webp"),
    ],
)
def test_every_image_type_reaches_the_turn(data: bytes, media_type: str) -> None:
    chat = decode(messages=[user([image_part(data_url(data, media_type))])])
    assert chat.turn.messages[0].content == (ImageBlock(media_type, data),)


def test_images_count_against_the_attachment_limits() -> None:
    raw = body(messages=[user([image_part(data_url(PNG)), image_part(data_url(PNG))])])
    with pytest.raises(RequestTooLargeError):
        decode_request(raw, attachment_limits=AttachmentLimits(max_total_bytes=len(PNG) + 1))


# --- encode_completion -------------------------------------------------------------------------


def result(
    text: str = "Hello",
    *,
    stop_reason: Any = "end_turn",
    tools: tuple[ToolUseBlock, ...] = (),
    usage: Usage | None = None,
) -> TurnResult:
    content = ((TextBlock(text),) if text else ()) + tools
    return TurnResult(
        content=content,
        stop_reason=stop_reason,
        usage=usage if usage is not None else Usage(11, 5, 2, 30),
    )


def test_encode_completion_exact_shape() -> None:
    payload = encode_completion(
        result("Hi there"), request_model=MODEL, completion_id="chatcmpl-x", created=1700000000
    )
    assert payload == {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hi there",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 43,  # input + cache writes + cache reads
            "completion_tokens": 5,
            "total_tokens": 48,
            "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 2},
        },
        "system_fingerprint": None,
    }
    ChatCompletion.model_validate(payload)


def test_encode_tool_calls() -> None:
    calls = (
        ToolUseBlock("toolu_1", "get_weather", {"city": "Paris", "units": ["c"]}),
        ToolUseBlock("toolu_2", "now", {}),
    )
    payload = encode_completion(
        result("", stop_reason="tool_use", tools=calls),
        request_model=MODEL,
        completion_id=new_completion_id(),
        created=1,
    )
    completion = ChatCompletion.model_validate(payload)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    first, second = choice.message.tool_calls
    assert first.type == "function" and second.type == "function"
    assert (first.id, first.function.name) == ("toolu_1", "get_weather")
    assert orjson.loads(first.function.arguments) == {"city": "Paris", "units": ["c"]}
    assert second.function.arguments == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("tool_use", "stop"),  # no calls in the result to point at
    ],
)
def test_finish_reasons(stop_reason: Any, finish: str) -> None:
    payload = encode_completion(
        result(stop_reason=stop_reason), request_model=MODEL, completion_id="c", created=0
    )
    assert payload["choices"][0]["finish_reason"] == finish


def test_new_completion_id() -> None:
    ids = {new_completion_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("chatcmpl-") and len(i) == 38 and i[9:].isalnum() for i in ids)


@pytest.mark.parametrize(
    ("err", "status", "etype", "code"),
    [
        (InvalidRequestError("bad", param="n"), 400, "invalid_request_error", None),
        (RateLimitError("slow down"), 429, "rate_limit_error", "rate_limit_exceeded"),
        (OverloadedError("busy"), 529, "server_error", "overloaded"),
        (ApiError("boom"), 500, "server_error", None),
    ],
)
def test_error_body(err: RelayError, status: int, etype: str, code: str | None) -> None:
    assert err.status == status
    assert error_body(err, "req_1") == {
        "error": {"message": err.message, "type": etype, "param": err.param, "code": code}
    }


# --- StreamEncoder ------------------------------------------------------------------------------


def frames(raw: bytes) -> list[bytes]:
    return [f + b"\n\n" for f in raw.split(b"\n\n") if f]


def chunks(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in frames(raw):
        assert frame.startswith(b"data: ")
        if frame == DONE_FRAME:
            continue
        data = orjson.loads(frame[6:])
        ChatCompletionChunk.model_validate(data)
        out.append(data)
    return out


def run(
    encoder: StreamEncoder, deltas: list[str], final: TurnResult
) -> tuple[bytes, list[dict[str, Any]]]:
    raw = encoder.start()
    for d in deltas:
        raw += encoder.delta(TextDelta(d))
    raw += encoder.finish(final)
    return raw, chunks(raw)


def test_stream_text_chunks() -> None:
    encoder = StreamEncoder(MODEL, "chatcmpl-s", 5, include_usage=False)
    raw, data = run(encoder, ["Hel", "", "lo"], result("Hello, world"))
    assert raw.endswith(DONE_FRAME)
    assert b"event:" not in raw
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    texts = [c["choices"][0]["delta"].get("content") for c in data[1:-1]]
    assert texts == ["Hel", "lo", ", world"]  # the tail the screen had not shown yet
    assert data[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all(c["id"] == "chatcmpl-s" and c["model"] == MODEL for c in data)
    assert all("usage" not in c for c in data)
    assert encoder.closed


def test_stream_usage_chunk() -> None:
    encoder = StreamEncoder(MODEL, "c", 5, include_usage=True)
    _, data = run(encoder, ["Hi"], result("Hi"))
    assert all(c["usage"] is None for c in data[:-1])
    assert data[-1]["choices"] == []
    assert data[-1]["usage"]["total_tokens"] == 48


def test_stream_tool_calls() -> None:
    calls = (ToolUseBlock("toolu_1", "get_weather", {"city": "Paris"}),)
    encoder = StreamEncoder(MODEL, "c", 5, include_usage=False)
    _, data = run(encoder, ["Checking."], result("Checking.", stop_reason="tool_use", tools=calls))
    tool_chunk = data[-2]["choices"][0]["delta"]
    assert tool_chunk == {
        "tool_calls": [
            {
                "index": 0,
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ]
    }
    assert data[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_does_not_patch_a_divergent_stream() -> None:
    encoder = StreamEncoder(MODEL, "c", 5, include_usage=False)
    _, data = run(encoder, ["Hullo"], result("Hello"))
    assert [c["choices"][0]["delta"].get("content") for c in data] == ["", "Hullo", None]


def test_stream_error_ends_without_done() -> None:
    encoder = StreamEncoder(MODEL, "c", 5, include_usage=False)
    encoder.start()
    assert encoder.ping() == PING_FRAME
    raw = encoder.error(OverloadedError("busy"), "req_1")
    assert raw == b'data: {"error":{"message":"busy","type":"server_error","param":null,' + (
        b'"code":"overloaded"}}\n\n'
    )
    assert encoder.closed
    with pytest.raises(AssertionError):
        encoder.finish(result())


# --- response_format ----------------------------------------------------------------------------


def test_with_instruction() -> None:
    assert with_instruction("sys", None) == "sys"
    assert with_instruction(None, None) is None
    only = with_instruction(None, JsonFormat("json_object"))
    assert only is not None
    assert only.startswith("Respond with one valid JSON object")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('  \n{"a": 1}\n', '{"a": 1}'),
        ('```json\n{"a": 1}\n```', '{"a": 1}'),
        ('```\n{"a": 1}```', '{"a": 1}'),
    ],
)
def test_json_object_reply_is_the_json(reply: str, expected: str) -> None:
    checked = check_reply(JsonFormat("json_object"), result(reply))
    assert checked.text == expected


@pytest.mark.parametrize("reply", ["Sure! {}", "[1, 2]", '{"a": 1', ""])
def test_json_object_rejects(reply: str) -> None:
    with pytest.raises(ApiError) as info:
        check_reply(JsonFormat("json_object"), result(reply))
    assert info.value.status == 500
    assert info.value.openai_code == "invalid_json_output"
    assert "json_object" in info.value.message


def test_no_format_and_tool_turns_are_not_checked() -> None:
    plain = result("not json")
    assert check_reply(None, plain) is plain
    tools = result("", stop_reason="tool_use", tools=(ToolUseBlock("t", "f", {}),))
    assert check_reply(JsonFormat("json_object"), tools) is tools


PERSON: dict[str, object] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/pet"}},
        "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
    "$defs": {"pet": {"type": "object", "properties": {"species": {"const": "cat"}}}},
}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"name": "Ann", "age": 3}, None),
        ({"name": "Ann", "age": 3, "nick": None, "pets": [{"species": "cat"}]}, None),
        ({"name": "Ann"}, "$: 'age' is a required property"),
        ({"name": "Ann", "age": "3"}, "$.age: '3' is not of type 'integer'"),
        ({"name": "Ann", "age": 3, "x": 1}, "$: Additional properties are not allowed"),
        ({"name": "A", "age": 3, "pets": [{"species": "dog"}]}, "$.pets[0].species: 'cat' was"),
        ([], "$: [] is not of type 'object'"),
    ],
)
def test_schema_problems(value: object, problem: str | None) -> None:
    found = schema_problem(value, PERSON)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem)


def test_schema_problems_never_fetch_or_loop() -> None:
    remote = schema_problem(1, {"$ref": "https://example.com/schema.json"})
    assert remote is not None
    assert "cannot be resolved" in remote
    assert schema_problem({"a": 1}, {"$ref": "#"}) == "$: the schema's references form a cycle"


def test_json_schema_reply_checked_against_the_schema() -> None:
    fmt = JsonFormat("json_schema", schema=PERSON, name="person")
    assert check_reply(fmt, result('{"name": "Ann", "age": 3}')).text == '{"name": "Ann", "age": 3}'
    with pytest.raises(ApiError) as info:
        check_reply(fmt, result('{"name": "Ann"}'))
    assert "'age' is a required property" in info.value.message
    # without a schema, any JSON value passes
    assert check_reply(JsonFormat("json_schema", name="any"), result("[1]")).text == "[1]"


# --- reasoning --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "budget"),
    [(None, None), ("none", None), ("minimal", None), ("low", 1024), ("high", 16384)],
)
def test_reasoning_effort_is_a_thinking_budget(effort: object, budget: int | None) -> None:
    assert decode(reasoning_effort=effort).turn.thinking_budget == budget


def test_reasoning_effort_rejects_unknown_values() -> None:
    err = rejected(body(reasoning_effort="huge"))
    assert err.param == "reasoning_effort"
    assert err.openai_code == "invalid_value"


def thinking_result() -> TurnResult:
    content = (ThinkingBlock("Let me see.", "sig"), TextBlock("Hello"))
    return TurnResult(content=content, stop_reason="end_turn", usage=Usage(1, 2))


def test_completion_carries_reasoning_content() -> None:
    payload = encode_completion(
        thinking_result(), request_model=MODEL, completion_id="c", created=1
    )
    message = payload["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me see."
    assert message["content"] == "Hello"
    ChatCompletion.model_validate(payload)


def test_stream_sends_reasoning_before_the_held_content() -> None:
    encoder = StreamEncoder(MODEL, "c", 5, include_usage=False, thinking=True)
    _, data = run(encoder, ["Hel"], thinking_result())
    deltas = [c["choices"][0]["delta"] for c in data[1:-1]]
    assert deltas == [{"reasoning_content": "Let me see."}, {"content": "Hel"}, {"content": "lo"}]
