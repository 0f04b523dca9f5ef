"""The Anthropic wire format: request validation, Message/SSE/error encoding, checked by the SDK."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from anthropic.types import Message as SDKMessage
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from claude_relay.protocols.anthropic import (
    PING_FRAME,
    StreamEncoder,
    decode_request,
    encode_message,
    error_body,
    new_message_id,
    sse_frame,
)
from claude_relay.protocols.errors import InvalidRequestError, OverloadedError, RelayError
from claude_relay.protocols.model import (
    Message,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    TurnRequest,
    TurnResult,
    Usage,
)

# Not a real id: the SDK warns (an error under pytest) on deprecated real ones.
MODEL = "claude-test-model"
DROP = object()  # marks a key to remove from the base body


def body(**fields: object) -> bytes:
    base: dict[str, object] = {
        "model": MODEL,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not DROP})


def user(content: object) -> dict[str, object]:
    return {"role": "user", "content": content}


def assistant(content: object) -> dict[str, object]:
    return {"role": "assistant", "content": content}


def text(value: object, **extra: object) -> dict[str, object]:
    return {"type": "text", "text": value, **extra}


def result(
    reply: str = "Hello, world",
    *,
    stop_reason: Any = "end_turn",
    stop_sequence: str | None = None,
    usage: Usage | None = None,
) -> TurnResult:
    return TurnResult(
        content=(TextBlock(reply),),
        stop_reason=stop_reason,
        usage=usage if usage is not None else Usage(12, 5, 0, 3),
        stop_sequence=stop_sequence,
    )


# --- decode_request: rejections ----------------------------------------------------------------

BAD_BODIES = [
    pytest.param(b"[]", "The request body must be a JSON object", None, id="not-object"),
    pytest.param(b"null", "The request body must be a JSON object", None, id="null-body"),
    # unknown fields
    pytest.param(body(foo=1), "foo: Extra inputs are not permitted", "foo", id="extra-field"),
    pytest.param(
        body(max_tokens=DROP, max_token=5),
        "max_token: Extra inputs are not permitted",
        "max_token",
        id="typo-reported-as-extra",
    ),
    pytest.param(
        body(response_format={"type": "json"}),
        "response_format: Extra inputs are not permitted",
        "response_format",
        id="openai-field",
    ),
    # model
    pytest.param(body(model=DROP), "model: Field required", "model", id="model-missing"),
    pytest.param(body(model=5), "model: Input should be a valid string", "model", id="model-int"),
    pytest.param(
        body(model=""), "model: String should have at least 1 character", "model", id="model-empty"
    ),
    pytest.param(
        body(model=None), "model: Input should be a valid string", "model", id="model-null"
    ),
    # max_tokens
    pytest.param(
        body(max_tokens=DROP), "max_tokens: Field required", "max_tokens", id="mt-missing"
    ),
    pytest.param(
        body(max_tokens=0),
        "max_tokens: Input should be greater than or equal to 1",
        "max_tokens",
        id="mt-zero",
    ),
    pytest.param(
        body(max_tokens=-3),
        "max_tokens: Input should be greater than or equal to 1",
        "max_tokens",
        id="mt-negative",
    ),
    pytest.param(
        body(max_tokens="16"),
        "max_tokens: Input should be a valid integer",
        "max_tokens",
        id="mt-str",
    ),
    pytest.param(
        body(max_tokens=True),
        "max_tokens: Input should be a valid integer",
        "max_tokens",
        id="mt-bool",
    ),
    pytest.param(
        body(max_tokens=1.5),
        "max_tokens: Input should be a valid integer, got a number with a fractional part",
        "max_tokens",
        id="mt-fraction",
    ),
    # messages
    pytest.param(body(messages=DROP), "messages: Field required", "messages", id="msgs-missing"),
    pytest.param(
        body(messages={}), "messages: Input should be a valid list", "messages", id="msgs-object"
    ),
    pytest.param(
        body(messages=[]), "messages: at least one message is required", "messages", id="msgs-empty"
    ),
    pytest.param(
        body(messages=["Hi"]),
        "messages.0: Input should be a valid dictionary or object to extract fields from",
        "messages.0",
        id="msg-not-object",
    ),
    pytest.param(
        body(messages=[{"content": "Hi"}]),
        "messages.0.role: Field required",
        "messages.0.role",
        id="role-missing",
    ),
    pytest.param(
        body(messages=[{"role": "bot", "content": "Hi"}]),
        "messages.0.role: Input should be 'user' or 'assistant'",
        "messages.0.role",
        id="role-bad",
    ),
    pytest.param(
        body(messages=[user("Hi"), {"role": None, "content": "x"}]),
        "messages.1.role: Input should be 'user' or 'assistant'",
        "messages.1.role",
        id="role-null",
    ),
    pytest.param(
        body(messages=[{"role": "system", "content": "Be brief"}, user("Hi")]),
        "messages.0.role: messages with role 'system' are not supported yet by claude-relay; "
        "use the top-level system parameter",
        "messages.0.role",
        id="role-system",
    ),
    pytest.param(
        body(messages=[{"role": "user"}]),
        "messages.0.content: Field required",
        "messages.0.content",
        id="content-missing",
    ),
    pytest.param(
        body(messages=[{"role": "user", "content": "Hi", "name": "bob"}]),
        "messages.0.name: Extra inputs are not permitted",
        "messages.0.name",
        id="message-extra-key",
    ),
    pytest.param(
        body(messages=[user(5)]),
        "messages.0.content: Input should be a valid string or a list of content blocks",
        "messages.0.content",
        id="content-int",
    ),
    pytest.param(
        body(messages=[user("")]),
        "messages.0: all messages must have non-empty content except for the optional final "
        "assistant message",
        "messages.0",
        id="user-empty-string",
    ),
    pytest.param(
        body(messages=[user([])]),
        "messages.0: all messages must have non-empty content except for the optional final "
        "assistant message",
        "messages.0",
        id="user-empty-list",
    ),
    pytest.param(
        body(messages=[user("Hi"), assistant(""), user("Again")]),
        "messages.1: all messages must have non-empty content except for the optional final "
        "assistant message",
        "messages.1",
        id="middle-assistant-empty",
    ),
    pytest.param(
        body(messages=[user([text("")])]),
        "messages: text content blocks must be non-empty",
        "messages.0.content.0.text",
        id="empty-text-block",
    ),
    pytest.param(
        body(messages=[user("Hi"), assistant([text("")])]),
        "messages: text content blocks must be non-empty",
        "messages.1.content.0.text",
        id="empty-prefill-block",
    ),
    pytest.param(
        body(messages=[user(" \n\t")]),
        "messages: text content blocks must contain non-whitespace text",
        "messages.0.content",
        id="whitespace-string",
    ),
    pytest.param(
        body(messages=[user([text("a"), text("  ")])]),
        "messages: text content blocks must contain non-whitespace text",
        "messages.0.content.1.text",
        id="whitespace-block",
    ),
    pytest.param(
        body(messages=[user("Q"), assistant("The answer is ")]),
        "messages: final assistant content cannot end with trailing whitespace",
        "messages.1.content",
        id="prefill-trailing-space",
    ),
    pytest.param(
        body(messages=[user("Q"), assistant([text("A"), text("B\n")])]),
        "messages: final assistant content cannot end with trailing whitespace",
        "messages.1.content.1.text",
        id="prefill-trailing-newline-block",
    ),
    # content blocks
    pytest.param(
        body(messages=[user([5])]),
        "messages.0.content.0: Input should be a valid dictionary or object to extract fields from",
        "messages.0.content.0",
        id="block-not-object",
    ),
    pytest.param(
        body(messages=[user([{"text": "Hi"}])]),
        "messages.0.content.0: Unable to extract tag using discriminator 'type'",
        "messages.0.content.0",
        id="block-type-missing",
    ),
    pytest.param(
        body(
            messages=[
                user([{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}])
            ]
        ),
        "messages.0.content.0.image.source.type: URL sources are not fetched by claude-relay; "
        "send the data inline (source type 'base64')",
        "messages.0.content.0.image.source.type",
        id="image-url",
    ),
    pytest.param(
        body(
            messages=[
                user("Weather?"),
                assistant([{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]),
                user([text("here")]),
            ]
        ),
        "messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: "
        "toolu_1. Each `tool_use` block must have a corresponding `tool_result` block in the "
        "next message.",
        "messages.2",
        id="tool-use-unanswered",
    ),
    pytest.param(
        body(messages=[user([text("here"), {"type": "tool_result", "tool_use_id": "t"}])]),
        "messages.0: unexpected `tool_use_id` found in `tool_result` blocks: t. Each "
        "`tool_result` block must have a corresponding `tool_use` block in the previous message.",
        "messages.0",
        id="tool-result-stray",
    ),
    pytest.param(
        body(
            messages=[
                user("Weather?"),
                assistant([{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]),
            ]
        ),
        "messages.1: the final assistant message cannot contain tool_use blocks: send the "
        "tool_result blocks in a user message after it",
        "messages.1",
        id="tool-use-final",
    ),
    pytest.param(
        body(messages=[user([{"type": "tool_use", "id": "t", "name": "w", "input": {}}])]),
        "messages.0: tool_use blocks can only appear in assistant messages",
        "messages.0",
        id="tool-use-in-user",
    ),
    pytest.param(
        body(
            messages=[
                user("Q"),
                assistant([{"type": "tool_use", "id": "bad id", "name": "w", "input": {}}]),
                user([{"type": "tool_result", "tool_use_id": "bad id"}]),
            ]
        ),
        "messages.1.content.0.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'",
        "messages.1.content.0.tool_use.id",
        id="tool-use-id",
    ),
    pytest.param(
        body(
            messages=[
                user("Q"),
                assistant([{"type": "tool_use", "id": "t", "name": "w", "input": {}}]),
                user([{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}]),
            ]
        ),
        "messages.2.content.0.tool_result.is_error: Input should be a valid boolean",
        "messages.2.content.0.tool_result.is_error",
        id="tool-result-is-error",
    ),
    pytest.param(
        body(messages=[user("Q"), assistant([{"type": "thinking", "thinking": "hm"}])]),
        "messages.1.content.0.thinking.signature: Field required",
        "messages.1.content.0.thinking.signature",
        id="thinking-without-signature",
    ),
    pytest.param(
        body(messages=[user([{"type": "thinking", "thinking": "hm", "signature": "s"}])]),
        "messages.0.content.0: thinking blocks are only allowed in assistant messages",
        "messages.0.content.0",
        id="thinking-in-user-message",
    ),
    pytest.param(
        body(thinking={"type": "enabled", "budget_tokens": 1024}),
        "max_tokens: `max_tokens` must be greater than `thinking.budget_tokens`",
        "thinking.budget_tokens",
        id="thinking-budget-not-below-max-tokens",
    ),
    pytest.param(
        body(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1000}),
        "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024",
        "thinking.enabled.budget_tokens",
        id="thinking-budget-below-minimum",
    ),
    pytest.param(
        body(max_tokens=4096, thinking={"type": "enabled"}),
        "thinking.enabled.budget_tokens: Field required",
        "thinking.enabled.budget_tokens",
        id="thinking-budget-missing",
    ),
    pytest.param(
        body(messages=[user([{"type": "document", "source": {}}])]),
        "messages.0.content.0.document.source.type: Field required",
        "messages.0.content.0.document.source.type",
        id="document-no-source-type",
    ),
    pytest.param(
        body(messages=[user([{"type": "input_text", "text": "Hi"}])]),
        "messages.0.content.0: Input tag 'input_text' found using 'type' does not match any of the "
        "expected tags: 'text', 'image', ",
        "messages.0.content.0",
        id="unknown-block-type",
    ),
    pytest.param(
        body(messages=[user([{"type": "text"}])]),
        "messages.0.content.0.text.text: Field required",
        "messages.0.content.0.text.text",
        id="text-missing",
    ),
    pytest.param(
        body(messages=[user([text(5)])]),
        "messages.0.content.0.text.text: Input should be a valid string",
        "messages.0.content.0.text.text",
        id="text-int",
    ),
    pytest.param(
        body(messages=[user([text("Hi", foo=1)])]),
        "messages.0.content.0.text.foo: Extra inputs are not permitted",
        "messages.0.content.0.text.foo",
        id="text-block-extra",
    ),
    # system
    pytest.param(
        body(system=5),
        "system: Input should be a valid string or a list of text blocks",
        "system",
        id="system-int",
    ),
    pytest.param(
        body(system=[{"type": "image"}]),
        "system.0.type: Input should be 'text'",
        "system.0.type",
        id="system-image",
    ),
    pytest.param(
        body(system=[{"text": "x"}]), "system.0.type: Field required", "system.0.type", id="sys-tag"
    ),
    pytest.param(
        body(system=[text("")]),
        "system: text content blocks must be non-empty",
        "system.0.text",
        id="system-empty-block",
    ),
    pytest.param(
        body(system=[text("a", cache_control={"type": "ephemeral"}, bar=2)]),
        "system.0.bar: Extra inputs are not permitted",
        "system.0.bar",
        id="system-block-extra",
    ),
    # stop_sequences
    pytest.param(
        body(stop_sequences="END"),
        "stop_sequences: Input should be a valid list",
        "stop_sequences",
        id="stop-str",
    ),
    pytest.param(
        body(stop_sequences=["END", 3]),
        "stop_sequences.1: Input should be a valid string",
        "stop_sequences.1",
        id="stop-int",
    ),
    pytest.param(
        body(stop_sequences=[""]),
        "stop_sequences.0: stop sequences must contain non-whitespace characters",
        "stop_sequences.0",
        id="stop-empty",
    ),
    pytest.param(
        body(stop_sequences=["\n"]),
        "stop_sequences.0: stop sequences must contain non-whitespace characters",
        "stop_sequences.0",
        id="stop-newline",
    ),
    # stream and sampling
    pytest.param(
        body(stream="yes"), "stream: Input should be a valid boolean", "stream", id="stream-str"
    ),
    pytest.param(
        body(stream=1), "stream: Input should be a valid boolean", "stream", id="stream-1"
    ),
    pytest.param(
        body(temperature=1.5),
        "temperature: Input should be less than or equal to 1",
        "temperature",
        id="temp-high",
    ),
    pytest.param(
        body(temperature=-0.1),
        "temperature: Input should be greater than or equal to 0",
        "temperature",
        id="temp-low",
    ),
    pytest.param(
        body(temperature="hot"),
        "temperature: Input should be a valid number",
        "temperature",
        id="temp-str",
    ),
    pytest.param(
        body(top_p=2), "top_p: Input should be less than or equal to 1", "top_p", id="top-p-high"
    ),
    pytest.param(
        body(top_k=-1), "top_k: Input should be greater than or equal to 0", "top_k", id="top-k-neg"
    ),
    pytest.param(
        body(top_k=2.5),
        "top_k: Input should be a valid integer, got a number with a fractional part",
        "top_k",
        id="top-k-fraction",
    ),
    # metadata
    pytest.param(
        body(metadata=[]),
        "metadata: Input should be a valid dictionary",
        "metadata",
        id="meta-list",
    ),
    pytest.param(
        body(metadata={"user_id": 5}),
        "metadata.user_id: Input should be a valid string",
        "metadata.user_id",
        id="meta-user-int",
    ),
    pytest.param(
        body(metadata={"session": "x"}),
        "metadata.session: Extra inputs are not permitted",
        "metadata.session",
        id="meta-extra",
    ),
    # tools
    pytest.param(
        body(tools=[{"name": "get weather", "input_schema": {"type": "object"}}]),
        "tools.0.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
        "tools.0.name",
        id="tool-name-pattern",
    ),
    pytest.param(
        body(tools=[{"name": "n" * 55, "input_schema": {"type": "object"}}]),
        "tools.0.name: tool names are limited to 54 characters by claude-relay: claude offers "
        "them to the model as `mcp__api__<name>`, which must fit the API's 64",
        "tools.0.name",
        id="tool-name-length",
    ),
    pytest.param(
        body(tools=[{"name": "w", "input_schema": {"type": "string"}}]),
        "tools.0.input_schema.type: Input should be 'object'",
        "tools.0.input_schema.type",
        id="tool-schema-type",
    ),
    pytest.param(
        body(tools=[{"name": "w", "input_schema": {"type": "object", "required": "city"}}]),
        "tools.0.input_schema: JSON schema is invalid at required: 'city' is not of type 'array'",
        "tools.0.input_schema",
        id="tool-schema-invalid",
    ),
    pytest.param(
        body(tools=[{"name": "w"}]),
        "tools.0.input_schema: Field required",
        "tools.0.input_schema",
        id="tool-schema-missing",
    ),
    pytest.param(
        body(
            tools=[
                {"name": "w", "input_schema": {"type": "object"}},
                {"name": "w", "input_schema": {"type": "object"}},
            ]
        ),
        "tools: Tool names must be unique: 'w' appears twice",
        "tools",
        id="tool-duplicate",
    ),
    pytest.param(
        body(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
        "tools.0.type: server tools ('web_search_20250305') are not supported by claude-relay; "
        "only custom tools with an input_schema",
        "tools.0.type",
        id="server-tool",
    ),
    pytest.param(body(tools={}), "tools: Input should be a valid list", "tools", id="tools-object"),
    pytest.param(
        body(tool_choice={"type": "any"}),
        "tool_choice: tool_choice 'any' needs at least one tool in tools",
        "tool_choice",
        id="tool-choice-any",
    ),
    pytest.param(
        body(
            tools=[{"name": "w", "input_schema": {"type": "object"}}],
            tool_choice={"type": "tool", "name": "x"},
        ),
        "tool_choice.name: tool 'x' is not one of the tools offered",
        "tool_choice.name",
        id="tool-choice-tool",
    ),
    pytest.param(
        body(tool_choice="auto"),
        "tool_choice: Input should be a valid dictionary",
        "tool_choice",
        id="tool-choice-str",
    ),
    # output_config
    pytest.param(
        body(output_config={"format": {"type": "json_schema", "schema": {}}}),
        "output_config.format: structured outputs are not supported yet by claude-relay",
        "output_config.format",
        id="structured-output",
    ),
    pytest.param(
        body(output_config=5),
        "output_config: Input should be a valid dictionary",
        "output_config",
        id="output-config-int",
    ),
    # session_id
    pytest.param(
        body(session_id=5), "session_id: Input should be a valid string", "session_id", id="sid-int"
    ),
    # degenerate: nothing to answer at all
    pytest.param(
        body(messages=[assistant("")]),
        "messages: at least one message must have non-empty content",
        "messages",
        id="only-empty-prefill",
    ),
]


@pytest.mark.parametrize(("raw", "message", "param"), BAD_BODIES)
def test_decode_rejects(raw: bytes, message: str, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_request(raw)
    err = info.value
    assert err.status == 400
    assert err.anthropic_type == "invalid_request_error"
    if message.endswith(", "):  # long enumerations are checked by prefix
        assert err.message.startswith(message)
    else:
        assert err.message == message
    assert err.param == param


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b'{"model": "x",}', b"\xff\xfe", b'{"a": 1} trailing'],
    ids=["garbage", "empty", "trailing-comma", "not-utf8", "trailing-content"],
)
def test_decode_rejects_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_request(raw)
    assert info.value.status == 400
    assert info.value.message.startswith("The request body is not valid JSON: ")
    assert "line 1 column" in info.value.message  # the parser's position, as the API reports it
    assert info.value.param is None


def test_unknown_block_type_lists_every_known_tag() -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_request(body(messages=[user([{"type": "foo"}])]))
    tags = re.findall(r"'([a-z_]+)'", info.value.message.split("expected tags:")[1])
    assert tags[0] == "text"
    assert {"image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"} <= set(
        tags
    )


# --- decode_request: accepted bodies -----------------------------------------------------------


def test_decode_minimal() -> None:
    assert decode_request(body()) == TurnRequest(
        messages=(Message("user", (TextBlock("Hi"),)),), model=MODEL, max_tokens=16
    )


def test_decode_full() -> None:
    raw = body(
        messages=[
            user([text("Part one.", cache_control={"type": "ephemeral"}), text("Part two.")]),
            assistant("Noted."),
            user("Go on"),
        ],
        system="Be brief.",
        stream=True,
        stop_sequences=["END", "\n\nHuman:"],
        temperature=0.2,
        top_p=1,
        top_k=5,
        metadata={"user_id": "u-1"},
    )
    assert decode_request(raw) == TurnRequest(
        messages=(
            Message("user", (TextBlock("Part one."), TextBlock("Part two."))),
            Message("assistant", (TextBlock("Noted."),)),
            Message("user", (TextBlock("Go on"),)),
        ),
        model=MODEL,
        max_tokens=16,
        stream=True,
        system="Be brief.",
        stop_sequences=("END", "\n\nHuman:"),
        temperature=0.2,
        top_p=1.0,
        top_k=5,
        metadata_user_id="u-1",
    )


def test_decode_text_is_exact() -> None:
    # No trimming or normalisation: leading whitespace, unicode and control characters survive.
    weird = '  leading space\r\n\ttab → ünïcode 🦀 \x00 <tag> & "quotes"\nlast'
    req = decode_request(body(messages=[user(weird)]))
    assert req.messages[0].content == (TextBlock(weird),)


def test_decode_integral_float_max_tokens() -> None:
    assert decode_request(body(max_tokens=1024.0)).max_tokens == 1024


def test_decode_consecutive_same_roles_kept_as_sent() -> None:
    req = decode_request(body(messages=[user("a"), user("b"), assistant("c"), assistant("d")]))
    assert [m.role for m in req.messages] == ["user", "user", "assistant", "assistant"]


def test_decode_assistant_first_is_accepted() -> None:
    # The first-party API accepts a leading assistant turn; clients that trim history rely on it.
    req = decode_request(body(messages=[assistant("How can I help?"), user("Sky colour?")]))
    assert [m.role for m in req.messages] == ["assistant", "user"]


@pytest.mark.parametrize(
    ("prefill", "expected"),
    [
        ("The best answer is (", (TextBlock("The best answer is ("),)),
        ("", ()),
        ([], ()),
        ([text("A"), text("B")], (TextBlock("A"), TextBlock("B"))),
        ("  leading ok", (TextBlock("  leading ok"),)),
    ],
)
def test_decode_prefill(prefill: object, expected: tuple[TextBlock, ...]) -> None:
    req = decode_request(body(messages=[user("Q"), assistant(prefill)]))
    assert req.messages[-1] == Message("assistant", expected)


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ("You are terse.", "You are terse."),
        ("", None),
        (None, None),
        ([], None),
        ([text("One.")], "One."),
        (
            [text("One.", cache_control={"type": "ephemeral"}), text("Two.", citations=None)],
            "One.\nTwo.",
        ),
    ],
)
def test_decode_system(system: object, expected: str | None) -> None:
    assert decode_request(body(system=system)).system == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"system": None, "stop_sequences": None, "temperature": None, "top_p": None},
        {"top_k": None, "metadata": None, "tools": None, "tool_choice": None, "stream": None},
        {"session_id": None, "output_config": None},
        {"metadata": {}},
        {"metadata": {"user_id": None}},
        {"tools": []},
        {"tool_choice": {"type": "auto"}},
        {"tool_choice": {"type": "none"}},
        {"tools": [], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
        {"output_config": {"effort": "high"}},
        {"output_config": {"format": None}},
        {"stream": False},
        {"stop_sequences": []},
        {"temperature": 0, "top_p": 0.0, "top_k": 0},
        {"temperature": 1},
    ],
)
def test_decode_accepts_optional_forms(fields: dict[str, object]) -> None:
    req = decode_request(body(**fields))
    assert req.messages == (Message("user", (TextBlock("Hi"),)),)
    assert req.stream is False


def test_decode_ignores_accepted_but_unenforced_fields() -> None:
    ignored: dict[str, object] = {
        "service_tier": "auto",
        "container": "container_1",
        "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}],
        "context_management": {"edits": []},
        "cache_control": {"type": "ephemeral"},
        "diagnostics": {"previous_message_id": "msg_1"},
        "inference_geo": "us",
        "speed": "fast",
        "user_profile_id": "up_1",
        "workspace_id": "wrkspc_1",
    }
    assert decode_request(body(**ignored)) == decode_request(body())


# --- session ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "in_body", "expected"),
    [
        (None, DROP, None),
        ("hdr", DROP, "hdr"),
        (None, "from-body", "from-body"),
        ("hdr", "from-body", "hdr"),  # the header wins
        ("", "from-body", "from-body"),  # an unusable header does not hide the body's id
        ("x" * 129, "from-body", "from-body"),
        ("x" * 128, DROP, "x" * 128),
        (None, "", None),
        (None, "   ", None),
        (None, "y" * 129, None),
        (None, "a\nb", None),
        ("a\x00b", DROP, None),
        (None, None, None),
    ],
)
def test_session_id(header: str | None, in_body: object, expected: str | None) -> None:
    assert decode_request(body(session_id=in_body), session_header=header).session_id == expected


# --- encode_message ----------------------------------------------------------------------------


def test_encode_message_exact_shape() -> None:
    encoded = encode_message(
        result(stop_reason="stop_sequence", stop_sequence="END"),
        request_model="my-alias",
        message_id="msg_01ABC",
    )
    assert encoded == {
        "id": "msg_01ABC",
        "type": "message",
        "role": "assistant",
        "model": "my-alias",
        "content": [{"type": "text", "text": "Hello, world"}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 3,
            "output_tokens": 5,
        },
    }
    # Key order matches the API's responses (dicts keep insertion order; orjson preserves it).
    assert list(encoded) == [
        "id",
        "type",
        "role",
        "model",
        "content",
        "stop_reason",
        "stop_sequence",
        "usage",
    ]


@pytest.mark.parametrize(
    "stop_reason", ["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]
)
def test_encode_message_validates_with_sdk(stop_reason: Any) -> None:
    res = TurnResult(
        content=(TextBlock("one"), TextBlock("two")),
        stop_reason=stop_reason,
        usage=Usage(1, 2, 3, 4),
        model="claude-upstream-id",
    )
    msg = SDKMessage.model_validate(
        orjson.loads(orjson.dumps(encode_message(res, request_model=MODEL, message_id="msg_01X")))
    )
    assert msg.model == MODEL  # the request's model is echoed, not the upstream's
    assert msg.stop_reason == stop_reason
    assert [b.type for b in msg.content] == ["text", "text"]
    assert msg.usage.input_tokens == 1
    assert msg.usage.output_tokens == 2
    assert msg.usage.cache_creation_input_tokens == 3
    assert msg.usage.cache_read_input_tokens == 4


def test_encode_message_drops_empty_text() -> None:
    res = TurnResult(content=(TextBlock(""),), stop_reason="end_turn", usage=Usage())
    encoded = encode_message(res, request_model=MODEL, message_id="msg_01X")
    assert encoded["content"] == []
    assert SDKMessage.model_validate(encoded).content == []


def test_new_message_id() -> None:
    ids = {new_message_id() for _ in range(200)}
    assert len(ids) == 200
    for mid in ids:
        assert re.fullmatch(r"msg_01[0-9A-Za-z]{22}", mid), mid


# --- errors ------------------------------------------------------------------------------------


def test_error_body() -> None:
    err = InvalidRequestError("max_tokens: Field required", param="max_tokens")
    assert error_body(err) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    assert error_body(OverloadedError("Overloaded"), "req_011") == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_011",
    }


# --- SSE ---------------------------------------------------------------------------------------


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Strict parser for the relay's own framing: one event line, one data line, blank line."""
    assert raw.endswith(b"\n\n")
    frames = []
    for chunk in raw[:-2].split(b"\n\n"):
        event_line, data_line = chunk.split(b"\n")
        assert event_line.startswith(b"event: ")
        assert data_line.startswith(b"data: ")
        data = orjson.loads(data_line[len(b"data: ") :])
        event = event_line[len(b"event: ") :].decode()
        assert data["type"] == event
        frames.append((event, data))
    return frames


_EVENT_ADAPTER: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)


def test_sse_frame_is_compact() -> None:
    assert sse_frame("x", {"type": "x", "a": [1, None], "t": "é\n"}) == (
        b'event: x\ndata: {"type":"x","a":[1,null],"t":"\xc3\xa9\\n"}\n\n'
    )


def test_ping() -> None:
    assert PING_FRAME == b'event: ping\ndata: {"type": "ping"}\n\n'
    assert StreamEncoder(MODEL, "msg_01X").ping() == PING_FRAME


def two_delta_stream() -> bytes:
    enc = StreamEncoder(MODEL, "msg_01TEST")
    return (
        enc.start(Usage(input_tokens=12, cache_read_input_tokens=3))
        + enc.delta(TextDelta("Hello"))
        + enc.delta(TextDelta(""))
        + enc.delta(TextDelta(", world"))
        + enc.finish(result())
    )


def test_golden_two_delta_stream() -> None:
    assert two_delta_stream() == (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"id":"msg_01TEST","type":"message",'
        b'"role":"assistant","model":"claude-test-model","content":[],"stop_reason":null,'
        b'"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,'
        b'"cache_read_input_tokens":3,"output_tokens":1}}}\n\n'
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'
        b"\n\n"
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        b'"text":"Hello"}}\n\n'
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        b'"text":", world"}}\n\n'
        b"event: content_block_stop\n"
        b'data: {"type":"content_block_stop","index":0}\n\n'
        b"event: message_delta\n"
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
        b'"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":3,'
        b'"output_tokens":5}}\n\n'
        b"event: message_stop\n"
        b'data: {"type":"message_stop"}\n\n'
    )


def test_every_frame_is_a_valid_sdk_event() -> None:
    for _, data in parse_sse(two_delta_stream()):
        _EVENT_ADAPTER.validate_python(data)


def test_empty_reply_has_no_content_block() -> None:
    enc = StreamEncoder(MODEL, "msg_01X")
    res = TurnResult(content=(), stop_reason="end_turn", usage=Usage(3, 1))
    events = [e for e, _ in parse_sse(enc.start() + enc.finish(res))]
    assert events == ["message_start", "message_delta", "message_stop"]


def test_finish_sends_what_the_deltas_missed() -> None:
    enc = StreamEncoder(MODEL, "msg_01X")
    raw = enc.start() + enc.delta(TextDelta("Hel")) + enc.finish(result("Hello"))
    deltas = [d["delta"]["text"] for e, d in parse_sse(raw) if e == "content_block_delta"]
    assert deltas == ["Hel", "lo"]


def test_finish_without_any_delta_streams_the_whole_text() -> None:
    enc = StreamEncoder(MODEL, "msg_01X")
    frames = parse_sse(enc.start() + enc.finish(result("All at once")))
    assert [e for e, _ in frames] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert frames[2][1]["delta"]["text"] == "All at once"


def test_finish_does_not_patch_a_divergent_stream() -> None:
    enc = StreamEncoder(MODEL, "msg_01X")
    raw = enc.start() + enc.delta(TextDelta("abc")) + enc.finish(result("xyz"))
    deltas = [d["delta"]["text"] for e, d in parse_sse(raw) if e == "content_block_delta"]
    assert deltas == ["abc"]


def test_stream_error_event() -> None:
    enc = StreamEncoder(MODEL, "msg_01X")
    enc.start()
    enc.delta(TextDelta("partial"))
    raw = enc.error(OverloadedError("Overloaded"), request_id="req_1")
    assert raw == (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},'
        b'"request_id":"req_1"}\n\n'
    )
    assert enc.closed


@pytest.mark.parametrize(
    "misuse",
    [
        lambda e: e.delta(TextDelta("x")),  # before start
        lambda e: e.finish(result()),  # before start
        lambda e: (e.start(), e.start()),
        lambda e: (e.start(), e.finish(result()), e.finish(result())),
        lambda e: (e.start(), e.finish(result()), e.delta(TextDelta("x"))),
        lambda e: (e.start(), e.finish(result()), e.error(RelayError("boom"))),
        lambda e: (e.start(), e.error(RelayError("boom")), e.delta(TextDelta("x"))),
        lambda e: (e.error(RelayError("boom")), e.start()),
        lambda e: (e.start(), e.finish(result()), e.ping()),
    ],
)
def test_stream_misuse_is_a_programming_error(misuse: Callable[[StreamEncoder], object]) -> None:
    with pytest.raises(AssertionError):
        misuse(StreamEncoder(MODEL, "msg_01X"))


# --- end to end through the real SDK ----------------------------------------------------------


class FakeRelay:
    """An httpx2 transport handler doing what the daemon will: decode, then encode a fixed turn."""

    def __init__(self, turn: TurnResult, deltas: list[str], *, fail: RelayError | None = None):
        self.turn = turn
        self.deltas = deltas
        self.fail = fail
        self.requests: list[TurnRequest] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        try:
            req = decode_request(
                request.content, session_header=request.headers.get("x-ir-session-id")
            )
        except RelayError as err:
            return httpx2.Response(err.status, json=error_body(err, "req_test"))
        self.requests.append(req)
        mid = new_message_id()
        if not req.stream:
            return httpx2.Response(
                200, json=encode_message(self.turn, request_model=req.model, message_id=mid)
            )
        enc = StreamEncoder(req.model, mid)
        frames = [enc.start(Usage(input_tokens=self.turn.usage.input_tokens)), enc.ping()]
        frames += [enc.delta(TextDelta(d)) for d in self.deltas]
        frames.append(enc.error(self.fail) if self.fail else enc.finish(self.turn))
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(frames)
        )


def drop_nones(value: Any) -> Any:
    """The SDK's models spell out every optional field as None; the API leaves most out."""
    if isinstance(value, dict):
        return {k: drop_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nones(v) for v in value]
    return value


@pytest.fixture
def sdk() -> Iterator[Callable[[FakeRelay], anthropic.Anthropic]]:
    clients: list[anthropic.Anthropic] = []

    def make(relay: FakeRelay) -> anthropic.Anthropic:
        client = anthropic.Anthropic(
            api_key="test",
            base_url="http://relay.test",
            max_retries=0,
            http_client=httpx2.Client(transport=httpx2.MockTransport(relay)),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_sdk_create_round_trip(sdk: Callable[[FakeRelay], anthropic.Anthropic]) -> None:
    relay = FakeRelay(result("Hi there"), [])
    msg = sdk(relay).messages.create(
        model=MODEL,
        max_tokens=64,
        system=[{"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi!"}]},
            {"role": "user", "content": "How are you?"},
        ],
        metadata={"user_id": "u1"},
        stop_sequences=["STOP"],
        thinking={"type": "disabled"},
        extra_body={"temperature": 0.5, "session_id": "s-1"},
    )
    assert relay.requests == [
        TurnRequest(
            messages=(
                Message("user", (TextBlock("Hello"),)),
                Message("assistant", (TextBlock("Hi!"),)),
                Message("user", (TextBlock("How are you?"),)),
            ),
            model=MODEL,
            max_tokens=64,
            system="Be kind.",
            stop_sequences=("STOP",),
            temperature=0.5,
            metadata_user_id="u1",
            session_id="s-1",
        )
    ]
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Hi there"
    assert msg.model == MODEL
    assert msg.stop_reason == "end_turn"
    assert msg.usage.cache_read_input_tokens == 3


def test_sdk_stream_accumulates_to_the_same_message(
    sdk: Callable[[FakeRelay], anthropic.Anthropic],
) -> None:
    turn = result("Hello, world", usage=Usage(12, 7, 2, 3))
    relay = FakeRelay(turn, ["Hel", "lo, ", "world"])
    with sdk(relay).messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert relay.requests[0].stream is True
    assert pieces == ["Hel", "lo, ", "world"]
    expected = encode_message(turn, request_model=MODEL, message_id=final.id)
    assert drop_nones(final.model_dump(mode="json")) == drop_nones(expected)


def test_sdk_stream_of_empty_reply(sdk: Callable[[FakeRelay], anthropic.Anthropic]) -> None:
    turn = TurnResult(content=(), stop_reason="max_tokens", usage=Usage(4, 1))
    with sdk(FakeRelay(turn, [])).messages.stream(
        model=MODEL, max_tokens=1, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content == []
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 1


def test_sdk_sees_invalid_request_as_bad_request(
    sdk: Callable[[FakeRelay], anthropic.Anthropic],
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk(FakeRelay(result(), [])).messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}],
        )
    assert info.value.status_code == 400
    assert info.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages: text content blocks must be non-empty",
        },
        "request_id": "req_test",
    }


def test_sdk_raises_on_mid_stream_error(sdk: Callable[[FakeRelay], anthropic.Anthropic]) -> None:
    relay = FakeRelay(result(), ["partial"], fail=OverloadedError("Overloaded"))
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        sdk(relay).messages.stream(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        stream.get_final_message()
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"] == {"type": "overloaded_error", "message": "Overloaded"}


# --- thinking ----------------------------------------------------------------------------------

THOUGHT = ThinkingBlock("Let me see.", "c2lnbmF0dXJl")


def thinking_result() -> TurnResult:
    return TurnResult(content=(THOUGHT, TextBlock("Hello")), stop_reason="end_turn", usage=Usage())


@pytest.mark.parametrize(
    ("thinking", "budget"),
    [
        (None, None),
        ({"type": "disabled"}, None),
        ({"type": "enabled", "budget_tokens": 2048}, 2048),
        ({"type": "enabled", "budget_tokens": 2048, "display": "summarized"}, 2048),
        ({"type": "adaptive"}, 4095),  # the model decides: everything below max_tokens
    ],
)
def test_decode_thinking(thinking: object, budget: int | None) -> None:
    assert decode_request(body(max_tokens=4096, thinking=thinking)).thinking_budget == budget


def test_decode_keeps_thinking_blocks_of_assistant_history() -> None:
    raw = body(
        messages=[
            user("Q"),
            assistant(
                [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "A"},
                ]
            ),
            user("Q2"),
        ]
    )
    req = decode_request(raw)
    assert req.messages[1].content == (ThinkingBlock("hm", "sig"), TextBlock("A"))
    assert req.messages[1].text == "A"


def test_encode_message_with_thinking_validates_with_sdk() -> None:
    payload = encode_message(thinking_result(), request_model=MODEL, message_id="msg_01X")
    assert payload["content"] == [
        {"type": "thinking", "thinking": "Let me see.", "signature": "c2lnbmF0dXJl"},
        {"type": "text", "text": "Hello"},
    ]
    SDKMessage.model_validate(payload)


def test_stream_with_thinking_sends_it_first_and_holds_the_text() -> None:
    enc = StreamEncoder(MODEL, "msg_01X", thinking=True)
    raw = enc.start()
    assert enc.delta(TextDelta("Hel")) == b""  # held until the thinking is known
    raw += enc.finish(thinking_result())
    frames = parse_sse(raw)
    for _, data in frames:
        _EVENT_ADAPTER.validate_python(data)
    blocks = [(d["index"], d["delta"]) for e, d in frames if e == "content_block_delta"]
    assert blocks == [
        (0, {"type": "thinking_delta", "thinking": "Let me see."}),
        (0, {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}),
        (1, {"type": "text_delta", "text": "Hel"}),
        (1, {"type": "text_delta", "text": "lo"}),
    ]
    starts = [d["content_block"] for e, d in frames if e == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
    ]


def test_result_without_thinking() -> None:
    assert thinking_result().without_thinking().content == (TextBlock("Hello"),)
