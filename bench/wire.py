"""One request to the daemon in either API shape, read to its end and judged: the answer's text
and tool calls, or its error, which must be in the protocol's envelope (Anthropic
`{"type":"error","error":{"type","message"}}`, OpenAI `{"error":{"message","type",...}}`).

Shared by the reliability scripts (bench.faults, bench.soak, bench.fuzz, bench.hostile).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import orjson

Api = Literal["anthropic", "openai"]
PATHS: Mapping[Api, str] = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
SESSION_HEADER = "X-IR-Session-ID"


# --- envelopes -----------------------------------------------------------------------------------


def api_of_path(path: str) -> Api:
    """Which envelope a path's errors use: OpenAI's on chat/completions, else Anthropic's."""
    route = path.partition("?")[0].rstrip("/")
    return "openai" if route.endswith("chat/completions") else "anthropic"


def envelope_type(api: Api, obj: object) -> str | None:
    """The error type if `obj` is exactly the protocol's error envelope, else None.

    Anthropic: {"type":"error","error":{"type","message"}}; OpenAI: {"error":{"message","type",
    ...}} with string message and type.
    """
    if not isinstance(obj, dict):
        return None
    err = obj.get("error")
    if not isinstance(err, dict):
        return None
    etype, message = err.get("type"), err.get("message")
    if not isinstance(etype, str) or not isinstance(message, str):
        return None
    if api == "anthropic" and obj.get("type") != "error":
        return None
    return etype


# --- one call ------------------------------------------------------------------------------------

Kind = Literal[
    "ok",  # 2xx, complete (JSON body or a stream that ended properly)
    "error",  # error status, body in the protocol's envelope
    "stream_error",  # 200 stream that ended with an error event in the envelope
    "bad_envelope",  # an error (or a broken 2xx) not in the protocol's shape
    "truncated",  # a 200 stream that ended without its final event
    "hang",  # no complete answer within the timeout
    "conn_error",  # the connection failed or was cut without a response
]


@dataclass
class Outcome:
    kind: Kind
    status: int | None = None
    etype: str | None = None
    message: str = ""
    text: str = ""
    tool_uses: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    retry_after: str | None = None
    elapsed: float = 0.0
    raw: bytes = b""

    @property
    def label(self) -> str:
        match self.kind:
            case "ok":
                return f"{self.status} ok" + (" tool_use" if self.tool_uses else "")
            case "error":
                return f"{self.status} {self.etype}"
            case "stream_error":
                return f"{self.status}+sse {self.etype}"
            case "bad_envelope":
                return f"{self.status} non-envelope"
            case "truncated":
                return f"{self.status} truncated stream"
            case "hang":
                return "hang"
            case _:
                return f"conn error ({self.message[:40]})"


def message_body(
    api: Api,
    messages: Sequence[Mapping[str, Any]],
    *,
    stream: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    max_tokens: int = 200,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "default", "messages": list(messages), "stream": stream}
    if api == "anthropic":
        body["max_tokens"] = max_tokens
    if tools:
        body["tools"] = list(tools)
    body.update(extra)
    return body


def _sse_events(data: bytes) -> Iterator[tuple[str, bytes]]:
    for frame in data.replace(b"\r\n", b"\n").split(b"\n\n"):
        event, payload = "", b""
        for line in frame.split(b"\n"):
            if line.startswith(b"event:"):
                event = line[6:].strip().decode(errors="replace")
            elif line.startswith(b"data:"):
                payload += line[5:].strip()
        if payload:
            yield event, payload


def read_stream(api: Api, status: int, data: bytes) -> Outcome:
    """Judge a 200 event stream: its text and tool calls, an error event, or a truncation."""
    out = Outcome("truncated", status, raw=data[-2000:])
    tools: dict[int, list[Any]] = {}
    for event, payload in _sse_events(data):
        if payload == b"[DONE]":
            out.kind = "ok" if out.kind == "truncated" else out.kind
            continue
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return Outcome("bad_envelope", status, message="non-JSON SSE data", raw=payload)
        if api == "anthropic":
            kind = obj.get("type") if isinstance(obj, dict) else None
            if event == "error" or kind == "error":
                etype = envelope_type(api, obj)
                if etype is None:
                    return Outcome("bad_envelope", status, message="error event", raw=payload)
                return Outcome("stream_error", status, etype, obj["error"]["message"], out.text)
            if kind == "content_block_start" and obj["content_block"]["type"] == "tool_use":
                block = obj["content_block"]
                tools[obj["index"]] = [block["id"], block["name"], ""]
            elif kind == "content_block_delta":
                delta = obj["delta"]
                if delta.get("type") == "text_delta":
                    out.text += delta["text"]
                elif delta.get("type") == "input_json_delta":
                    tools[obj["index"]][2] += delta["partial_json"]
            elif kind == "message_stop":
                out.kind = "ok"
        else:
            if isinstance(obj, dict) and "error" in obj:
                etype = envelope_type(api, obj)
                if etype is None:
                    return Outcome("bad_envelope", status, message="error chunk", raw=payload)
                return Outcome("stream_error", status, etype, obj["error"]["message"], out.text)
            for choice in obj.get("choices") or []:
                delta = choice.get("delta") or {}
                out.text += delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    slot = tools.setdefault(call["index"], ["", "", ""])
                    slot[0] = call.get("id") or slot[0]
                    fn = call.get("function") or {}
                    slot[1] = fn.get("name") or slot[1]
                    slot[2] += fn.get("arguments") or ""
    for tid, name, args in tools.values():
        out.tool_uses.append((tid, name, orjson.loads(args or "{}")))
    return out


def read_json(api: Api, status: int, data: bytes, retry_after: str | None = None) -> Outcome:
    """Judge a whole JSON answer: success body, or an error that must be in the envelope."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Outcome("bad_envelope", status, message="not JSON", raw=data[:2000])
    if status >= 300:
        etype = envelope_type(api, obj)
        if etype is None:
            return Outcome("bad_envelope", status, message="not the envelope", raw=data[:2000])
        return Outcome(
            "error", status, etype, obj["error"]["message"], retry_after=retry_after, raw=data
        )
    out = Outcome("ok", status, raw=data[:2000])
    if api == "anthropic":
        for block in obj.get("content") or []:
            if block.get("type") == "text":
                out.text += block["text"]
            elif block.get("type") == "tool_use":
                out.tool_uses.append((block["id"], block["name"], block["input"]))
    else:
        message = (obj.get("choices") or [{}])[0].get("message") or {}
        out.text = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            fn = call["function"]
            out.tool_uses.append((call["id"], fn["name"], orjson.loads(fn["arguments"] or "{}")))
    return out


async def call(
    http: aiohttp.ClientSession,
    url: str,
    api: Api,
    body: Mapping[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Outcome:
    """POST `body` to the API's route, read the answer to its end and judge it."""
    t0 = time.monotonic()
    try:
        async with (
            asyncio.timeout(timeout),
            http.post(url + PATHS[api], json=body, headers=headers) as r,
        ):
            data = await r.read()
            is_sse = r.headers.get("content-type", "").startswith("text/event-stream")
            if r.status == 200 and is_sse:
                out = read_stream(api, r.status, data)
            else:
                out = read_json(api, r.status, data, r.headers.get("retry-after"))
    except TimeoutError:
        out = Outcome("hang", message=f"no answer within {timeout:g}s")
    except aiohttp.ClientError as exc:
        out = Outcome("conn_error", message=f"{type(exc).__name__}: {exc}")
    out.elapsed = time.monotonic() - t0
    return out
