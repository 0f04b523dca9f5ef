"""A scriptable fake of the Anthropic Messages API, for tests and benchmarks.

The real `claude` CLI is pointed at it with ANTHROPIC_BASE_URL=http://127.0.0.1:<port>, so it
answers the way api.anthropic.com does, down to the SSE byte layout (`event: <name>\\ndata:
<json>\\n\\n`, compact JSON, a `ping` after the first content_block_start, final usage in
message_delta). Everything the fake does is driven by `Reply` scripts:

- rules (`up.on(token, reply)`) match a substring of the last user message; they exist so that
  concurrent tests can route each prompt by a unique token regardless of arrival order;
- otherwise the FIFO queue (`up.push(...)`) is consumed;
- otherwise the default answers, which echoes the prompt so a test can see which text arrived.

claude's per-session "title generation" request is answered separately and never consumes a
script, because when it is sent is up to claude, not to the test.

Failures are scripted too (HTTP error statuses, a dropped connection mid-stream, an SSE `error`
event, a stall, a request whose headers never come), and every request is recorded with how it
ended, so tests can assert that a client timed out or went away.

Run `python -m claude_relay.daemon.fake_upstream --port 18080` for an out-of-process instance; it
prints its URL on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias, cast

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "DEFAULT_TITLE_TEXT",
    "Body",
    "FakeUpstream",
    "Outcome",
    "RecordedRequest",
    "Reply",
    "RequestKind",
    "Responder",
    "Rule",
    "ToolUse",
    "Usage",
    "echo",
    "error_type_for",
    "is_title_request",
    "last_user_text",
    "main",
    "system_text",
    "turn_images",
    "user_text",
]

Body: TypeAlias = dict[str, Any]
RequestKind: TypeAlias = Literal["main", "title", "count_tokens", "other"]
# How a recorded request ended; None while it is still being answered.
Outcome: TypeAlias = Literal[
    "complete",  # the whole reply was written
    "http_error",  # answered with an error status (scripted, or a bad request)
    "sse_error",  # an `event: error` was sent mid-stream and the stream ended
    "dropped",  # the fake closed the connection on purpose (break_after)
    "client_gone",  # the client disconnected before the reply was finished
    "shutdown",  # the fake was shut down while still answering
]

DEFAULT_TITLE_TEXT = '{"title": "Fake session title"}'

# The real API's error `type` for each status, with a message in its usual wording.
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit"),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}
# aiohttp knows no reason phrase for 529, and an empty one looks unlike the real API.
_REASONS: dict[int, str] = {529: "Overloaded"}

# The real API sends ping with a space after the colon, unlike its other (compact) events.
_PING_FRAME = b'event: ping\ndata: {"type": "ping"}\n\n'


def error_type_for(status: int) -> str:
    """The Anthropic error `type` the real API uses for an HTTP status."""
    if status in _ERRORS:
        return _ERRORS[status][0]
    return "api_error" if status >= 500 else "invalid_request_error"


def _default_error_message(status: int) -> str:
    return _ERRORS[status][1] if status in _ERRORS else f"Error {status}"


# --- scripts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token counts reported for one reply (message_start and message_delta / the JSON body)."""

    input_tokens: int = 11
    output_tokens: int = 7
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclass(frozen=True)
class ToolUse:
    """A tool_use block sent after the text; `id` defaults to `toolu_fake_<msg>_<i>`."""

    name: str
    input: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """One scripted answer to a Messages request (streaming or not).

    Content is thinking (optional), then text (omitted only when empty and tool uses follow),
    then tool uses. At most one failure mode may be set. `break_after`, `sse_error_after` and
    `stall_after` count `content_block_delta` events of every kind (thinking, signature, text,
    input_json); if N is at least the number of deltas, the failure happens right before
    message_delta, so a scripted failure always happens.

    On a non-streaming request (claude's retry after a broken stream is one): `break_after`
    closes the connection without an answer, `stall_after` hangs, `sse_error_after` becomes an
    HTTP 529 JSON error, and the Message is sent after `first_delay` plus `delay` per gap
    between deltas, so that the timing resembles the streamed case.
    """

    text: str = "OK"  # sent verbatim
    thinking: str | None = None  # a thinking block (with a fake signature) before the text
    tool_uses: tuple[ToolUse, ...] = ()
    # 0: each block's text in one delta; else deltas of this many code points (text, thinking
    # and tool-input JSON alike).
    chunk_chars: int = 0
    delay: float = 0.0  # seconds between consecutive deltas (of any block)
    first_delay: float = 0.0  # seconds before anything (status, headers, message_start) is sent
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None  # None: "tool_use" if there are tool uses, else "end_turn"
    stop_sequence: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers, e.g. x-should-retry
    # failures
    status: int = 200  # 4xx/5xx: an error JSON body with the real API's type for the status
    error_type: str | None = None  # overrides the type for `status` / `sse_error_after`
    error_message: str | None = None
    retry_after: float | None = None  # `retry-after` header (seconds) with `status`
    break_after: int | None = None  # close the TCP connection after N deltas
    sse_error_after: int | None = None  # `event: error` after N deltas, then end the stream
    stall_after: int | None = None  # after N deltas send nothing more until the client leaves
    headers_never: bool = False  # never send the status line (hang until the client leaves)

    def __post_init__(self) -> None:
        failures = [
            self.status != 200,
            self.break_after is not None,
            self.sse_error_after is not None,
            self.stall_after is not None,
            self.headers_never,
        ]
        if sum(failures) > 1:
            raise ValueError("Reply: set at most one failure mode")
        if self.chunk_chars < 0:
            raise ValueError("Reply: chunk_chars must be >= 0")
        if self.status != 200 and not 400 <= self.status <= 599:
            raise ValueError(f"Reply: bad status {self.status}")
        for n in (self.break_after, self.sse_error_after, self.stall_after):
            if n is not None and n < 0:
                raise ValueError("Reply: failure counts must be >= 0")

    @property
    def fail_at(self) -> int | None:
        """Number of deltas sent before the scripted mid-stream failure, if any."""
        for n in (self.break_after, self.sse_error_after, self.stall_after):
            if n is not None:
                return n
        return None

    @property
    def effective_stop_reason(self) -> str:
        if self.stop_reason is not None:
            return self.stop_reason
        return "tool_use" if self.tool_uses else "end_turn"


Responder: TypeAlias = Reply | Callable[[Body], Reply]


def _resolve(responder: Responder, body: Body) -> Reply:
    return responder if isinstance(responder, Reply) else responder(body)


def echo(template: Reply | None = None) -> Callable[[Body], Reply]:
    """A responder answering `echo: <last_user_text>`, otherwise shaped like `template`."""
    base = template if template is not None else Reply()

    def respond(body: Body) -> Reply:
        return replace(base, text=f"echo: {last_user_text(body)}")

    return respond


@dataclass
class Rule:
    """A responder used while the last user message contains `contains` (see FakeUpstream.on)."""

    contains: str
    responder: Responder
    times: int | None = None  # None: unlimited
    hits: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


# --- request bodies --------------------------------------------------------------------------


def _last_user_message(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return cast(Mapping[str, Any], message)
    return None


def _texts(content: object, *, into_tool_results: bool) -> list[str]:
    """The text blocks of a message `content` (a string counts as one block)."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    out: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            out.append(block["text"])
        elif into_tool_results and block.get("type") == "tool_result":
            out.extend(_texts(block.get("content"), into_tool_results=False))
    return out


def last_user_text(body: Mapping[str, Any]) -> str:
    """The last text block of the last user message ("" if none).

    claude prepends <system-reminder> text blocks to the user's prompt, so the prompt itself is
    the last block.
    """
    message = _last_user_message(body)
    if message is None:
        return ""
    texts = _texts(message.get("content"), into_tool_results=False)
    return texts[-1] if texts else ""


def user_text(body: Mapping[str, Any]) -> str:
    """All text of the last user message, including inside tool_result blocks, joined by \\n.

    Rules match against this, so a token anywhere in the turn (even in a tool result) routes it.
    """
    message = _last_user_message(body)
    if message is None:
        return ""
    return "\n".join(_texts(message.get("content"), into_tool_results=True))


def system_text(body: Mapping[str, Any]) -> str:
    """The system prompt as one string (text blocks joined by \\n)."""
    return "\n".join(_texts(body.get("system"), into_tool_results=False))


def turn_images(body: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """(media_type, bytes) of every base64 image block of the current turn, in order.

    The current turn is every user message after the last assistant message: claude sends an
    image attached with `@path` in a user message of its own before the prompt's (v2.1.197).
    Images inside tool_result blocks count too.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    start = 0
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            start = i + 1
    out: list[tuple[str, bytes]] = []

    def collect(content: object) -> None:
        if not isinstance(content, list):
            return
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_result":
                collect(block.get("content"))
            source = block.get("source")
            if (
                block.get("type") == "image"
                and isinstance(source, dict)
                and source.get("type") == "base64"
            ):
                data = base64.b64decode(str(source.get("data", "")))
                out.append((str(source.get("media_type", "")), data))

    for message in messages[start:]:
        if isinstance(message, dict) and message.get("role") == "user":
            collect(message.get("content"))
    return out


def is_title_request(body: Mapping[str, Any]) -> bool:
    """Whether a Messages body is claude's session-title generation request.

    claude asks for a "sentence-case title" with a json_schema output of just `{title}` and no
    tools; either signal suffices, so a rewording of the prompt does not silently turn title
    requests into main ones that eat scripted replies.
    """
    if "sentence-case title" in system_text(body).lower():
        return True
    if body.get("tools"):
        return False
    output_config = body.get("output_config")
    fmt = output_config.get("format") if isinstance(output_config, dict) else None
    schema = fmt.get("schema") if isinstance(fmt, dict) else None
    props = schema.get("properties") if isinstance(schema, dict) else None
    return isinstance(props, dict) and set(props) == {"title"}


# --- recorded requests -----------------------------------------------------------------------


@dataclass(eq=False)
class RecordedRequest:
    """One request as the fake saw it, and how its answer ended."""

    kind: RequestKind
    method: str
    path: str
    query_string: str
    headers: CIMultiDictProxy[str]
    body: Body  # {} when the body was empty or not a JSON object
    raw_body: bytes
    time: float  # time.monotonic() at arrival
    request_id: str
    reply: Reply | None = None
    message_id: str | None = None
    outcome: Outcome | None = None
    finished_time: float | None = None  # time.monotonic() when the answer ended
    sent_deltas: int = 0  # streamed deltas written so far

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def client_gone(self) -> bool:
        """The client disconnected before the reply was finished."""
        return self.outcome == "client_gone"

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def model(self) -> str:
        model = self.body.get("model")
        return model if isinstance(model, str) else ""

    @property
    def api_key(self) -> str | None:
        """The key from x-api-key, else from `Authorization: Bearer`."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        auth = self.headers.get("authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    @property
    def last_user_text(self) -> str:
        return last_user_text(self.body)

    @property
    def user_text(self) -> str:
        return user_text(self.body)

    @property
    def system_text(self) -> str:
        return system_text(self.body)

    @property
    def images(self) -> list[tuple[str, bytes]]:
        """(media_type, bytes) of the current turn's image blocks (see `turn_images`)."""
        return turn_images(self.body)


# --- wire format -----------------------------------------------------------------------------


def _json(obj: object) -> bytes:
    # Compact and UTF-8 like the real API (which does not \u-escape non-ASCII).
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _frame(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _json(data) + b"\n\n"


def _error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def _chunks(text: str, size: int) -> list[str]:
    # Python slices by code point, so no code point is ever split (grapheme clusters may be).
    if not text:
        return []
    if size <= 0 or len(text) <= size:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)]


def _json_pieces(partial: str, size: int) -> list[str]:
    # The real API opens every tool input with an empty partial_json, then streams the JSON.
    if size <= 0:
        size = max(1, -(-len(partial) // 3))  # about three pieces
    return ["", *_chunks(partial, size)]


def _signature(thinking: str) -> str:
    return base64.b64encode(
        b"fake-signature:" + hashlib.sha256(thinking.encode()).digest()
    ).decode()


def _usage_json(usage: Usage, *, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_creation_input_tokens,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


@dataclass(frozen=True)
class _Block:
    final: dict[str, Any]  # the block as it appears in a non-streamed Message
    start: dict[str, Any]  # content_block_start's content_block
    deltas: tuple[dict[str, Any], ...]


def _blocks(reply: Reply, message_n: int) -> list[_Block]:
    blocks: list[_Block] = []
    if reply.thinking is not None:
        signature = _signature(reply.thinking)
        blocks.append(
            _Block(
                final={"type": "thinking", "thinking": reply.thinking, "signature": signature},
                start={"type": "thinking", "thinking": "", "signature": ""},
                deltas=(
                    *(
                        {"type": "thinking_delta", "thinking": piece}
                        for piece in _chunks(reply.thinking, reply.chunk_chars)
                    ),
                    {"type": "signature_delta", "signature": signature},
                ),
            )
        )
    if reply.text or not reply.tool_uses:
        blocks.append(
            _Block(
                final={"type": "text", "text": reply.text},
                start={"type": "text", "text": ""},
                deltas=tuple(
                    {"type": "text_delta", "text": piece}
                    for piece in _chunks(reply.text, reply.chunk_chars)
                ),
            )
        )
    for i, tool in enumerate(reply.tool_uses):
        tool_id = tool.id if tool.id is not None else f"toolu_fake_{message_n}_{i}"
        partial = json.dumps(dict(tool.input), ensure_ascii=False, separators=(",", ":"))
        blocks.append(
            _Block(
                final={
                    "type": "tool_use",
                    "id": tool_id,
                    "name": tool.name,
                    "input": dict(tool.input),
                },
                start={"type": "tool_use", "id": tool_id, "name": tool.name, "input": {}},
                deltas=tuple(
                    {"type": "input_json_delta", "partial_json": piece}
                    for piece in _json_pieces(partial, reply.chunk_chars)
                ),
            )
        )
    return blocks


@dataclass(frozen=True)
class _Event:
    name: str
    frame: bytes

    @property
    def is_delta(self) -> bool:
        return self.name == "content_block_delta"


def _stream_events(reply: Reply, message_id: str, model: str, message_n: int) -> list[_Event]:
    shell: dict[str, Any] = {
        "model": model,
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        # message_start reports output_tokens=1, as the real API does before any output.
        "usage": _usage_json(reply.usage, output_tokens=1),
    }
    events = [
        _Event(
            "message_start", _frame("message_start", {"type": "message_start", "message": shell})
        )
    ]
    for index, block in enumerate(_blocks(reply, message_n)):
        start = {"type": "content_block_start", "index": index, "content_block": block.start}
        events.append(_Event("content_block_start", _frame("content_block_start", start)))
        if index == 0:
            # Where the real API sends its (only) ping: after the first content_block_start.
            events.append(_Event("ping", _PING_FRAME))
        for delta in block.deltas:
            data = {"type": "content_block_delta", "index": index, "delta": delta}
            events.append(_Event("content_block_delta", _frame("content_block_delta", data)))
        stop = {"type": "content_block_stop", "index": index}
        events.append(_Event("content_block_stop", _frame("content_block_stop", stop)))
    usage = reply.usage
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": reply.effective_stop_reason, "stop_sequence": reply.stop_sequence},
        # Final, cumulative counts; the current API repeats the input side here too.
        "usage": {
            "input_tokens": usage.input_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "output_tokens": usage.output_tokens,
        },
    }
    events.append(_Event("message_delta", _frame("message_delta", message_delta)))
    events.append(_Event("message_stop", _frame("message_stop", {"type": "message_stop"})))
    return events


def _message_json(reply: Reply, message_id: str, model: str, message_n: int) -> dict[str, Any]:
    return {
        "model": model,
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [block.final for block in _blocks(reply, message_n)],
        "stop_reason": reply.effective_stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": _usage_json(reply.usage, output_tokens=reply.usage.output_tokens),
    }


def _delta_count(reply: Reply) -> int:
    return sum(len(block.deltas) for block in _blocks(reply, 0))


def _estimate_tokens(body: Body) -> int:
    # Roughly four characters per token over what the model would read.
    relevant = {key: body.get(key) for key in ("system", "messages", "tools")}
    return max(1, len(json.dumps(relevant, ensure_ascii=False)) // 4)


# --- control flow inside a handler ------------------------------------------------------------


class _ShuttingDown(Exception):
    """The fake is closing: stop answering and drop the connection."""


class _ClientGone(Exception):
    """Writing failed because the client has disconnected."""


# --- the server ------------------------------------------------------------------------------


class FakeUpstream:
    """The fake Anthropic API server: `async with FakeUpstream() as up: ... up.url ...`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Responder | None = None,
        title_text: str = DEFAULT_TITLE_TEXT,
        title_detector: Callable[[Body], bool] = is_title_request,
        api_key: str | None = None,
        count_tokens: int | None = None,
        log: Callable[[str], None] | None = None,
        shutdown_timeout: float = 0.5,
    ) -> None:
        """
        default: answers main requests no rule or queued reply claims (None: `echo()`).
        title_text: the text streamed back to title-generation requests.
        title_detector: tells claude's side requests (answered with title_text, recorded in
            title_requests, never consuming scripts) from main ones; swap it if claude's
            wording changes or another side request shows up.
        api_key: if set, /v1/ requests without this key get 401 authentication_error.
        count_tokens: fixed answer for count_tokens (None: an estimate from the body size).
        log: called with one line per request and per finished answer.
        shutdown_timeout: how long closing waits for handlers before cancelling them.
        """
        self.host = host
        self._requested_port = port
        self.default: Responder = default if default is not None else echo()
        self.title_text = title_text
        self.title_detector = title_detector
        self.api_key = api_key
        self.count_tokens = count_tokens
        self._log = log
        self._shutdown_timeout = shutdown_timeout

        self.main_requests: list[RecordedRequest] = []
        self.title_requests: list[RecordedRequest] = []
        self.count_tokens_requests: list[RecordedRequest] = []
        self.other_requests: list[RecordedRequest] = []
        self.all_requests: list[RecordedRequest] = []  # every recorded request, in arrival order
        self.head_count = 0

        self.rules: list[Rule] = []
        self._queue: deque[Reply] = deque()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._request_seq = 0
        self._message_seq = 0
        self._stopping = asyncio.Event()
        # Replaced on every change; waiters wait on the instance current when they checked.
        self._changed = asyncio.Event()

    # lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeUpstream already started")
        # claude's requests carry whole conversations; aiohttp's 1 MiB default is too small.
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # handler_cancellation: a client disconnect cancels its handler, which is how a stalled
        # or hanging answer learns that the client went away without polling the socket.
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
            self._port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        self._stopping.clear()
        self._runner = runner

    async def close(self) -> None:
        """Stop: pending stalls, hangs and delays end at once, then connections are closed."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        self._notify()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeUpstream not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # scripting

    def push(self, *replies: Reply) -> None:
        """Queue replies for main requests that no rule claims, first in first out."""
        self._queue.extend(replies)

    def on(self, contains: str, reply: Responder, times: int | None = None) -> Rule:
        """Answer main requests whose last user message contains `contains` with `reply`.

        Rules are tried in the order they were added, before the queue; a rule with `times`
        stops matching after that many hits. A callable gets the request body.
        """
        rule = Rule(contains, reply, times)
        self.rules.append(rule)
        return rule

    @property
    def pending_replies(self) -> int:
        return len(self._queue)

    def clear(self) -> None:
        """Forget rules, queued replies and recorded requests (the server keeps running)."""
        self.rules.clear()
        self._queue.clear()
        for records in (
            self.main_requests,
            self.title_requests,
            self.count_tokens_requests,
            self.other_requests,
            self.all_requests,
        ):
            records.clear()
        self.head_count = 0

    def _select(self, body: Body) -> Reply:
        text = user_text(body)
        for rule in self.rules:
            if not rule.exhausted and rule.contains in text:
                rule.hits += 1
                return _resolve(rule.responder, body)
        if self._queue:
            return self._queue.popleft()
        return _resolve(self.default, body)

    # waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # The timeout parameters (ASYNC109) are deliberate: every wait in a test must be bounded,
    # and a default here keeps call sites short; they are enforced with asyncio.timeout.
    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
        what: str = "a condition",
    ) -> None:
        """Wait until `predicate()` holds; it is re-checked whenever a request arrives or ends."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"fake upstream: no {what} within {timeout}s") from None

    async def wait_for_requests(
        self,
        n: int,
        timeout: float = 5.0,
    ) -> list[RecordedRequest]:
        """Wait until `n` main requests have arrived; returns the first `n`."""
        await self.wait_for(lambda: len(self.main_requests) >= n, timeout, f"{n} main requests")
        return self.main_requests[:n]

    async def wait_finished(
        self,
        record: RecordedRequest,
        timeout: float = 5.0,
    ) -> Outcome:
        """Wait until the answer to `record` has ended; returns how it ended."""
        await self.wait_for(lambda: record.outcome is not None, timeout, "finished answer")
        assert record.outcome is not None
        return record.outcome

    # HTTP

    def _say(self, line: str) -> None:
        if self._log is not None:
            self._log(line)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self._request_seq += 1
        request_id = f"req_fake_{self._request_seq}"
        common = {"request-id": request_id}

        if request.method == "HEAD":
            # claude probes the base URL with `HEAD /` at startup.
            if request.path == "/":
                self.head_count += 1
                self._notify()
                return web.Response(headers=common)
            return web.Response(status=404, headers=common)

        raw = await request.read()
        parsed: object = None
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw) if raw else None
        body: Body = cast(Body, parsed) if isinstance(parsed, dict) else {}

        kind: RequestKind = "other"
        if request.method == "POST" and request.path == "/v1/messages":
            kind = "title" if self.title_detector(body) else "main"
        elif request.method == "POST" and request.path == "/v1/messages/count_tokens":
            kind = "count_tokens"
        record = RecordedRequest(
            kind=kind,
            method=request.method,
            path=request.path,
            query_string=request.query_string,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            raw_body=raw,
            time=time.monotonic(),
            request_id=request_id,
        )
        {
            "main": self.main_requests,
            "title": self.title_requests,
            "count_tokens": self.count_tokens_requests,
            "other": self.other_requests,
        }[kind].append(record)
        self.all_requests.append(record)
        self._say(
            f"{kind} {request.method} {request.path_qs} stream={record.stream} "
            f"model={record.model!r} text={record.last_user_text[:80]!r}"
        )
        self._notify()

        if (
            self.api_key is not None
            and request.path.startswith("/v1/")
            and record.api_key != self.api_key
        ):
            return self._finish_error(record, 401, "authentication_error", "invalid x-api-key")
        if kind == "other":
            message = f"{request.method} {request.path} is not served by the fake upstream"
            return self._finish_error(record, 404, "not_found_error", message)
        if not isinstance(parsed, dict):
            return self._finish_error(
                record, 400, "invalid_request_error", "body: not a JSON object"
            )
        if kind == "count_tokens":
            tokens = self.count_tokens if self.count_tokens is not None else _estimate_tokens(body)
            self._finish(record, "complete")
            return web.json_response({"input_tokens": tokens}, headers=common)

        try:
            reply = Reply(text=self.title_text) if kind == "title" else self._select(body)
        except Exception as exc:  # a scripted callable failed: make that visible to the test
            return self._finish_error(record, 500, "api_error", f"fake upstream responder: {exc!r}")
        return await self._answer(request, record, reply)

    def _finish(self, record: RecordedRequest, outcome: Outcome) -> None:
        if record.outcome is None:
            record.outcome = outcome
            record.finished_time = time.monotonic()
            self._say(f"{record.kind} {record.request_id} {record.message_id or ''} -> {outcome}")
            self._notify()

    def _finish_error(
        self,
        record: RecordedRequest,
        status: int,
        error_type: str,
        message: str,
        *,
        retry_after: float | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> web.Response:
        headers = CIMultiDict({"request-id": record.request_id})
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        headers.extend(extra_headers)
        self._finish(record, "http_error")
        return web.Response(
            status=status,
            reason=_REASONS.get(status),
            body=_json(_error_body(error_type, message, record.request_id)),
            content_type="application/json",
            headers=headers,
        )

    async def _answer(
        self, request: web.Request, record: RecordedRequest, reply: Reply
    ) -> web.StreamResponse:
        self._message_seq += 1
        message_n = self._message_seq
        record.reply = reply
        record.message_id = f"msg_fake_{message_n}"
        response = web.StreamResponse(headers={"request-id": record.request_id})
        for name, value in reply.headers:
            response.headers.add(name, value)
        try:
            await self._pause(reply.first_delay)
            if reply.headers_never:
                await self._hang()
            if reply.status != 200:
                return self._finish_error(
                    record,
                    reply.status,
                    reply.error_type or error_type_for(reply.status),
                    reply.error_message or _default_error_message(reply.status),
                    retry_after=reply.retry_after,
                    extra_headers=reply.headers,
                )
            if record.stream:
                await self._stream(request, response, record, reply, message_n)
            else:
                return await self._whole(request, response, record, reply, message_n)
        except _ClientGone:
            self._finish(record, "client_gone")
        except _ShuttingDown:
            self._finish(record, "shutdown")
            _close_transport(request)
        except asyncio.CancelledError:
            # handler_cancellation: the client disconnected (or the server is going away).
            self._finish(record, "shutdown" if self._stopping.is_set() else "client_gone")
            raise
        # Returned even when the connection is gone: aiohttp's write_eof then fails with a
        # ConnectionError, which it treats as a quiet client disconnect.
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: RecordedRequest,
        reply: Reply,
        message_n: int,
    ) -> None:
        response.headers["Content-Type"] = "text/event-stream; charset=utf-8"
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)  # headers go out with the first event
        model = record.model
        assert record.message_id is not None
        fail_at = reply.fail_at
        sent = 0
        for event in _stream_events(reply, record.message_id, model, message_n):
            if fail_at is not None and (
                (event.is_delta and sent == fail_at) or event.name == "message_delta"
            ):
                await self._fail_stream(request, response, record, reply)
                return
            if event.is_delta:
                if sent:
                    await self._pause(reply.delay)
                sent += 1
            await _write(response, event.frame)
            record.sent_deltas = sent
            if event.is_delta:
                self._notify()
        await _write_eof(response)
        self._finish(record, "complete")

    async def _fail_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: RecordedRequest,
        reply: Reply,
    ) -> None:
        if reply.break_after is not None:
            self._finish(record, "dropped")
            _close_transport(request)
        elif reply.sse_error_after is not None:
            error = _error_body(
                reply.error_type or "overloaded_error",
                reply.error_message or _default_error_message(529),
                record.request_id,
            )
            await _write(response, _frame("error", error))
            await _write_eof(response)
            self._finish(record, "sse_error")
        else:
            await self._hang()

    async def _whole(
        self,
        request: web.Request,
        response: web.StreamResponse,
        record: RecordedRequest,
        reply: Reply,
        message_n: int,
    ) -> web.StreamResponse:
        # As long as the streamed reply would take.
        await self._pause(reply.delay * max(0, _delta_count(reply) - 1))
        if reply.break_after is not None:
            self._finish(record, "dropped")
            _close_transport(request)
            return response
        if reply.stall_after is not None:
            await self._hang()
        if reply.sse_error_after is not None:
            return self._finish_error(
                record,
                529,
                reply.error_type or "overloaded_error",
                reply.error_message or _default_error_message(529),
                extra_headers=reply.headers,
            )
        assert record.message_id is not None
        data = _json(_message_json(reply, record.message_id, record.model, message_n))
        response.content_type = "application/json"
        response.content_length = len(data)  # not chunked, like the real API's JSON answers
        await response.prepare(request)
        await _write(response, data)
        await _write_eof(response)
        self._finish(record, "complete")
        return response

    async def _pause(self, seconds: float) -> None:
        """Sleep, but end at once (raising _ShuttingDown) when the fake is closing."""
        if self._stopping.is_set():
            raise _ShuttingDown
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return
        raise _ShuttingDown

    async def _hang(self) -> None:
        """Send nothing until the client leaves (the handler is cancelled) or the fake closes."""
        await self._stopping.wait()
        raise _ShuttingDown


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError as exc:
        raise _ClientGone from exc


async def _write_eof(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except ConnectionError as exc:
        raise _ClientGone from exc


def _close_transport(request: web.Request) -> None:
    # close() (not abort()) sends what is buffered, then FIN: the client reliably reads every
    # byte sent before the cut, then sees the body end early, as when the API's connection breaks.
    transport = request.transport
    if transport is not None:
        transport.close()


# --- CLI -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m claude_relay.daemon.fake_upstream",
        description="Run the fake Anthropic Messages API in the foreground; prints its URL.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--reply-text", default=None, help="fixed reply text (default: echo)")
    parser.add_argument("--thinking", default=None, help="also send this thinking block")
    parser.add_argument("--chunk-chars", type=int, default=0, help="characters per text delta")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between deltas")
    parser.add_argument("--first-delay", type=float, default=0.0, help="seconds before answering")
    parser.add_argument("--output-tokens", type=int, default=Usage().output_tokens)
    parser.add_argument("--api-key", default=None, help="reject /v1/ requests without this key")
    parser.add_argument("--quiet", action="store_true", help="no per-request lines on stderr")
    args = parser.parse_args(argv)

    template = Reply(
        text=args.reply_text if args.reply_text is not None else "OK",
        thinking=args.thinking,
        chunk_chars=args.chunk_chars,
        delay=args.delay,
        first_delay=args.first_delay,
        usage=Usage(output_tokens=args.output_tokens),
    )
    default: Responder = template if args.reply_text is not None else echo(template)

    def log(line: str) -> None:
        print(f"[fake-upstream] {line}", file=sys.stderr, flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with FakeUpstream(
            host=args.host,
            port=args.port,
            default=default,
            api_key=args.api_key,
            log=None if args.quiet else log,
        ) as upstream:
            print(upstream.url, flush=True)
            await stop.wait()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
