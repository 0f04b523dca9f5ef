"""The OpenAI Chat Completions wire format: request decoding, response and chunk encoding, errors.

`decode_request` turns a `POST /v1/chat/completions` body into the neutral `TurnRequest` (plus the
few OpenAI-only settings, in `ChatRequest`); `encode_completion` and `StreamEncoder` turn a turn's
events back into a `chat.completion` object or `chat.completion.chunk` frames. Shapes follow the
openai SDK's types field by field; validation errors use the API's own sentences and codes
(`missing_required_parameter`, `invalid_type`, `invalid_value`, `unsupported_parameter`, ...) with
`param` as the API writes it (`messages[0].content`). Only the first problem is reported.

The messages, tools and tool_choice mapping is in `protocols.openai_messages`; response_format
in `protocols.response_format`.

Top-level fields:

=======================  ========================================================================
field                    handling
=======================  ========================================================================
model                    required non-empty string; echoed back verbatim
messages                 see `protocols.openai_messages`
stream, stream_options   enforced; `include_usage` adds the usage chunk
stop                     string or up to 4 strings; applied by the relay (`protocols.stops`)
tools, tool_choice,      enforced (`protocols.openai_messages`)
parallel_tool_calls
response_format          `text`, `json_object`, `json_schema`: best effort (instruction + check)
n                        1 only
logprobs, top_logprobs   false/null only: claude reports no log probabilities
modalities, audio        text only
functions,               deprecated; rejected with a pointer to `tools`
function_call
web_search_options       rejected
max_tokens,              enforced: integer >= 1 (default 8192); reaches claude bucketed
max_completion_tokens    (`pty_pool.spawn.max_output_bucket`)
reasoning_effort         enforced: none/minimal (no thinking), low, medium, high, xhigh → a
                         thinking budget (`REASONING_BUDGETS`); thinking returned as
                         `reasoning_content`
temperature, top_p,      validated like the API, not applied (claude sets its own sampling);
seed, user               `user` becomes the neutral `metadata_user_id`
session_id               claude-relay extension, as on /v1/messages (the header wins)
frequency_penalty, ...   accepted and ignored (`_IGNORED`)
anything else            400 "Unrecognized request argument supplied: <field>"
=======================  ========================================================================
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from claude_relay.protocols import openai_params as p
from claude_relay.protocols.attachments import AttachmentLimits
from claude_relay.protocols.errors import RelayError
from claude_relay.protocols.model import (
    StopReason,
    TextDelta,
    ToolUseBlock,
    TurnRequest,
    TurnResult,
    Usage,
    session_id,
)
from claude_relay.protocols.openai_messages import (
    TOOL_NAME,
    decode_messages,
    decode_tool_choice,
    decode_tools,
)
from claude_relay.protocols.response_format import JsonFormat, schema_error, with_instruction

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DONE_FRAME",
    "PING_FRAME",
    "ChatRequest",
    "StreamEncoder",
    "decode_request",
    "encode_completion",
    "encode_usage",
    "error_body",
    "finish_reason",
    "new_completion_id",
]

# The neutral model needs a number; claude applies its own output limit whatever it is.
DEFAULT_MAX_TOKENS: Final = 8192
MAX_STOP_SEQUENCES: Final = 4  # the API's limit for `stop`

_ENFORCED: Final = frozenset(
    {
        "messages",
        "model",
        "stream",
        "stream_options",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "n",
        "logprobs",
        "top_logprobs",
        "modalities",
        "audio",
        "functions",
        "function_call",
        "web_search_options",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "user",
        "session_id",
        "reasoning_effort",
    }
)
# `reasoning_effort` as a thinking budget (claude's MAX_THINKING_TOKENS, bucketed by the pool);
# "none" and "minimal" mean no thinking, as the API's reasoning models read them.
REASONING_BUDGETS: Final[dict[str, int | None]] = {
    "none": None,
    "minimal": None,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
}
# Knobs for how the API runs a model, which the relay does not control; accepted unread.
_IGNORED: Final = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "metadata",
        "store",
        "service_tier",
        "verbosity",
        "prediction",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
        "moderation",
    }
)
_ALLOWED: Final = _ENFORCED | _IGNORED

# --- other fields -------------------------------------------------------------------------------


def _response_format(raw: object) -> JsonFormat | None:
    if raw is None:
        return None
    fmt = p.obj(raw, "response_format")
    kind = p.required(fmt, "type", "response_format")
    if kind == "text":
        p.no_extras(fmt, frozenset({"type"}), "response_format")
        return None
    if kind == "json_object":
        p.no_extras(fmt, frozenset({"type"}), "response_format")
        return JsonFormat("json_object")
    if kind != "json_schema":
        p.bad_value(kind, "response_format.type", ("text", "json_object", "json_schema"))
    p.no_extras(fmt, frozenset({"type", "json_schema"}), "response_format")
    spec = p.obj(p.required(fmt, "json_schema", "response_format"), "response_format.json_schema")
    where = "response_format.json_schema"
    p.no_extras(spec, frozenset({"name", "description", "schema", "strict"}), where)
    name = p.string(p.required(spec, "name", where), f"{where}.name")
    if not TOOL_NAME.fullmatch(name):
        p.fail(
            f"Invalid '{where}.name': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
            f"{where}.name",
            "invalid_value",
        )
    description = spec.get("description")
    schema = spec.get("schema")
    if schema is not None:
        problem = schema_error(p.obj(schema, f"{where}.schema"))
        if problem is not None:
            p.fail(
                f"Invalid schema for response_format '{name}': {problem}",
                f"{where}.schema",
                "invalid_json_schema",
            )
    return JsonFormat(
        "json_schema",
        schema=schema,
        name=name,
        description="" if description is None else p.string(description, f"{where}.description"),
    )


def _stop(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else p.array(raw, "stop")
    if len(stops) > MAX_STOP_SEQUENCES:
        p.fail(
            f"Invalid 'stop': array too long. Expected an array with maximum length "
            f"{MAX_STOP_SEQUENCES}, but got an array with length {len(stops)} instead.",
            "stop",
            "array_above_max_length",
        )
    # Empty strings would match everywhere; the API ignores them, and so does the relay.
    return tuple(s for j, s in enumerate(stops) if p.string(s, f"stop[{j}]"))


def _check_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and p.integer(n, "n", ge=1) != 1:
        p.fail(
            "Unsupported value: 'n' must be 1: claude-relay generates one choice per request.",
            "n",
            "unsupported_value",
        )
    logprobs = body.get("logprobs")
    if logprobs is not None and p.boolean(logprobs, "logprobs"):
        p.unsupported("logprobs", "is not supported by claude-relay: claude reports no logprobs.")
    if body.get("top_logprobs") is not None:
        p.unsupported("top_logprobs", "is not supported by claude-relay: claude reports none.")
    modalities = body.get("modalities")
    if modalities is not None and any(m != "text" for m in p.array(modalities, "modalities")):
        p.fail(
            "Unsupported value: 'modalities' supports only ['text'] with claude-relay.",
            "modalities",
            "unsupported_value",
        )
    if body.get("audio") is not None:
        p.unsupported("audio", "is not supported by claude-relay: it produces text only.")
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            p.unsupported(name, "is deprecated and not supported by claude-relay; use tools.")
    if body.get("web_search_options") is not None:
        p.unsupported("web_search_options", "is not supported by claude-relay.")


def _checked_knobs(body: dict[str, Any]) -> tuple[int, float | None, float | None, str | None]:
    """Validate the harmless knobs like the API does; claude cannot apply them."""
    max_tokens = DEFAULT_MAX_TOKENS
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins
        if body.get(name) is not None:
            max_tokens = p.integer(body[name], name, ge=1)
    temperature = body.get("temperature")
    temperature = None if temperature is None else p.number(temperature, "temperature", 0, 2)
    top_p = body.get("top_p")
    top_p = None if top_p is None else p.number(top_p, "top_p", 0, 1)
    if body.get("seed") is not None:
        p.integer(body["seed"], "seed")
    user = body.get("user")
    user = None if user is None else p.string(user, "user")
    return max_tokens, temperature, top_p, user


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A decoded request: the neutral turn plus what only the OpenAI encoders need.

    `turn.system` already carries the response_format instruction, if any.
    """

    turn: TurnRequest
    include_usage: bool = False
    response_format: JsonFormat | None = None


def decode_request(
    raw: bytes,
    *,
    session_header: str | None = None,
    attachment_limits: AttachmentLimits | None = None,
) -> ChatRequest:
    """Parse and validate a POST /v1/chat/completions body; raise `InvalidRequestError`."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        p.fail(f"We could not parse the JSON body of your request: {exc}", None)
    if not isinstance(body, dict):
        p.fail("The request body must be a JSON object.", None)
    p.no_extras(body, _ALLOWED, "")

    model = body.get("model")
    if model is None:
        p.missing("model")
    model = p.string(model, "model")
    if not model:
        p.fail("Invalid 'model': empty string.", "model", "empty_string")
    messages, system = decode_messages(body.get("messages", p.MISSING), attachment_limits)
    _check_unsupported(body)

    stream = body.get("stream")
    stream = False if stream is None else p.boolean(stream, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        options = p.obj(options, "stream_options")
        if not stream:
            p.fail(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        p.no_extras(options, frozenset({"include_usage", "include_obfuscation"}), "stream_options")
        usage_flag = options.get("include_usage")
        include_usage = usage_flag is not None and p.boolean(
            usage_flag, "stream_options.include_usage"
        )

    tools = decode_tools(body.get("tools"))
    tool_choice = decode_tool_choice(
        body.get("tool_choice"), tools, body.get("parallel_tool_calls")
    )
    fmt = _response_format(body.get("response_format"))
    max_tokens, temperature, top_p, user = _checked_knobs(body)

    body_session = body.get("session_id")
    if body_session is not None:
        p.string(body_session, "session_id")
    effort = body.get("reasoning_effort")
    if effort is not None and p.string(effort, "reasoning_effort") not in REASONING_BUDGETS:
        p.fail(
            f"Invalid value: '{effort}'. Supported values are: "
            + ", ".join(f"'{k}'" for k in REASONING_BUDGETS)
            + ".",
            "reasoning_effort",
            "invalid_value",
        )
    thinking_budget = None if effort is None else REASONING_BUDGETS[effort]

    turn = TurnRequest(
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        stream=stream,
        system=with_instruction(system, fmt),
        stop_sequences=_stop(body.get("stop")),
        temperature=temperature,
        top_p=top_p,
        metadata_user_id=user,
        session_id=session_id(session_header, body_session),
        tools=tools,
        tool_choice=tool_choice,
        thinking_budget=thinking_budget,
    )
    return ChatRequest(turn=turn, include_usage=include_usage, response_format=fmt)


# --- responses ----------------------------------------------------------------------------------

_BASE62: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase

_FINISH: Final[dict[StopReason, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    # Without tool calls to show, "tool_calls" would send clients looking for ones that are not
    # there; a turn that has calls says so in finish_reason() whatever upstream reported.
    "tool_use": "stop",
    "refusal": "content_filter",
}


def new_completion_id() -> str:
    """A fresh id shaped like the API's (`chatcmpl-` + 29 base62 characters)."""
    return "chatcmpl-" + "".join(secrets.choice(_BASE62) for _ in range(29))


def finish_reason(result: TurnResult) -> str:
    return "tool_calls" if result.tool_uses else _FINISH.get(result.stop_reason, "stop")


def encode_usage(usage: Usage) -> dict[str, Any]:
    """The API's `usage`: prompt tokens include cached ones, which the details break out."""
    prompt = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": usage.cache_read_input_tokens,
            "cache_write_tokens": usage.cache_creation_input_tokens,
        },
    }


def _tool_call(block: ToolUseBlock) -> dict[str, Any]:
    return {
        "id": block.id,
        "type": "function",
        "function": {"name": block.name, "arguments": orjson.dumps(block.input).decode()},
    }


def reasoning_text(result: TurnResult) -> str:
    """The reply's thinking as one `reasoning_content` string (the field DeepSeek, vLLM and
    other OpenAI-compatible servers use; the OpenAI shape has no place for the signatures)."""
    return "\n\n".join(b.thinking for b in result.thinking)


def encode_completion(
    result: TurnResult, *, request_model: str, completion_id: str, created: int
) -> dict[str, Any]:
    """The API's `chat.completion` object for a finished turn (one choice)."""
    calls = [_tool_call(b) for b in result.tool_uses]
    message: dict[str, Any] = {
        "role": "assistant",
        # The API sends null content beside tool calls when the model wrote no text.
        "content": result.text if result.text or not calls else None,
        "refusal": None,
        "annotations": [],
    }
    if result.thinking:
        message["reasoning_content"] = reasoning_text(result)
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": request_model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(result),
            }
        ],
        "usage": encode_usage(result.usage),
        "system_fingerprint": None,
    }


def error_body(err: RelayError, request_id: str | None = None) -> dict[str, Any]:
    """The API's error envelope, exactly: the request id travels in the `request-id` header only,
    since the envelope has no field for it."""
    del request_id
    return {
        "error": {
            "message": err.message,
            "type": err.openai_type,
            "param": err.param,
            "code": err.openai_code,
        }
    }


# --- streaming ----------------------------------------------------------------------------------

DONE_FRAME: Final = b"data: [DONE]\n\n"
# An SSE comment: keeps proxies from timing out, and every SSE parser skips it.
PING_FRAME: Final = b": ping\n\n"


def chunk_frame(data: dict[str, Any]) -> bytes:
    # The API sends bare `data:` lines, no `event:`; orjson escapes newlines, so one line is safe.
    return b"data: " + orjson.dumps(data) + b"\n\n"


class StreamEncoder:
    """Turns one turn's events into the API's chunk sequence.

    A first chunk with `delta.role`, then a chunk per text delta, then at finish the rest of the
    exact text, one chunk per tool call (`delta.tool_calls`, whole arguments), a chunk with
    `finish_reason`, the usage chunk (empty `choices`) if `include_usage`, and `[DONE]`. Calls out
    of order are programming errors and fail an assertion.
    """

    def __init__(
        self,
        request_model: str,
        completion_id: str,
        created: int,
        *,
        include_usage: bool,
        thinking: bool = False,
    ) -> None:
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": request_model,
            "system_fingerprint": None,
        }
        self._include_usage = include_usage
        self._started = False
        self._closed = False
        self._streamed: list[str] = []
        # with thinking asked for, `reasoning_content` comes first and is known only from the
        # transcript at the turn's end: content deltas are held until then (docs/openai.md)
        self._thinking = thinking
        self._held: list[TextDelta] = []

    @property
    def closed(self) -> bool:
        return self._closed

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        data = {**self._base, "choices": [choice]}
        if self._include_usage:
            data["usage"] = None  # the API sends null on every chunk but the last
        return chunk_frame(data)

    def start(self) -> bytes:
        assert not self._started, "start() called twice"
        self._started = True
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def delta(self, ev: TextDelta) -> bytes:
        assert self._started, "delta() before start()"
        assert not self._closed, "delta() after finish()/error()"
        if not ev.text:
            return b""
        if self._thinking:
            self._held.append(ev)
            return b""
        self._streamed.append(ev.text)
        return self._chunk({"content": ev.text})

    def _tail(self, result: TurnResult) -> Iterator[bytes]:
        if self._thinking:
            self._thinking = False
            if result.thinking:
                yield self._chunk({"reasoning_content": reasoning_text(result)})
            for ev in self._held:
                yield self.delta(ev)
            self._held = []
        # Deltas come from the screen and may lag the transcript: when what was streamed is a
        # prefix of the exact text, send the rest. A divergent stream cannot be retracted.
        streamed = "".join(self._streamed)
        final = result.text
        if len(final) > len(streamed) and final.startswith(streamed):
            yield self.delta(TextDelta(final[len(streamed) :]))
        for index, block in enumerate(result.tool_uses):
            yield self._chunk({"tool_calls": [{"index": index, **_tool_call(block)}]})
        yield self._chunk({}, finish_reason(result))
        if self._include_usage:
            yield chunk_frame({**self._base, "choices": [], "usage": encode_usage(result.usage)})
        yield DONE_FRAME

    def finish(self, result: TurnResult) -> bytes:
        assert self._started, "finish() before start()"
        assert not self._closed, "finish() after finish()/error()"
        out = b"".join(self._tail(result))
        self._closed = True
        return out

    def ping(self) -> bytes:
        assert not self._closed, "ping() after finish()/error()"
        return PING_FRAME

    def error(self, err: RelayError, request_id: str | None = None) -> bytes:
        """A mid-stream failure as the API sends it (the SDK raises it); no `[DONE]` follows."""
        assert not self._closed, "error() after finish()/error()"
        self._closed = True
        return chunk_frame(error_body(err, request_id))
