"""curl against the relay, as the README and docs/clients.md show it: a plain call and a stream in
both API shapes, byte-level checks of what a shell user sees."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply, Usage
from tests.support.client_proc import run_client
from tests.support.relay_proc import Relay

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.pin_only]

if shutil.which("curl") is None:  # pragma: no cover
    pytest.skip("curl is not installed", allow_module_level=True)

# Several paragraphs: the relay streams what claude's screen shows, row by row.
# Each test routes its reply by a token in its prompt (`up.on`), not by queue order, so a side
# request of a claude still warming up cannot take it.
PROSE = "\n\n".join(" ".join(f"c{p}w{i}" for i in range(30)) for p in range(3)) + "\n\nDone."


async def curl(relay: Relay, path: str, body: dict[str, Any]) -> tuple[int, str, str]:
    """POST `body` with `curl -sN` (no buffering, as for a stream); returns status, content type
    and the response body."""
    out = await run_client(
        "curl",
        "-sSN",
        relay.url + path,
        "-H",
        "content-type: application/json",
        "-d",
        json.dumps(body),
        "-w",
        "\n%{http_code} %{content_type}",
    )
    text, _, trailer = out.decode().rpartition("\n")
    status, _, content_type = trailer.partition(" ")
    return int(status), content_type, text


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event name or None, data) per SSE frame."""
    frames = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
        frames.append((event, "\n".join(data)))
    return frames


async def test_messages_text(relay: Relay, up: FakeUpstream) -> None:
    up.on("curl-m-text", Reply(text="Hi from curl — ✓", usage=Usage(12, 3)))
    status, ctype, body = await curl(
        relay,
        "/v1/messages",
        {
            "model": "default",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "Hi curl-m-text"}],
        },
    )
    assert (status, ctype.split(";")[0]) == (200, "application/json")
    msg = json.loads(body)
    assert msg["type"] == "message"
    assert msg["role"] == "assistant"
    assert msg["content"] == [{"type": "text", "text": "Hi from curl — ✓"}]
    assert msg["stop_reason"] == "end_turn"
    assert (msg["usage"]["input_tokens"], msg["usage"]["output_tokens"]) == (12, 3)


async def test_messages_stream(relay: Relay, up: FakeUpstream) -> None:
    up.on("curl-m-stream", Reply(text=PROSE, usage=Usage(12, 30), chunk_chars=20, delay=0.2))
    status, ctype, body = await curl(
        relay,
        "/v1/messages",
        {
            "model": "default",
            "max_tokens": 500,
            "stream": True,
            "messages": [{"role": "user", "content": "Stream curl-m-stream"}],
        },
    )
    assert (status, ctype.split(";")[0]) == (200, "text/event-stream")
    frames = [(e, json.loads(d)) for e, d in sse(body)]
    # every frame's event name is its data's type, as the API sends them
    assert all(e == d["type"] for e, d in frames)
    names = [e for e, _ in frames if e != "ping"]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [d["delta"]["text"] for e, d in frames if e == "content_block_delta"]
    assert len(deltas) >= 2
    assert "".join(deltas) == PROSE
    (delta,) = [d for e, d in frames if e == "message_delta"]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == 30


async def test_chat_completions_text(relay: Relay, up: FakeUpstream) -> None:
    up.on("curl-c-text", Reply(text="Hi from curl — ✓", usage=Usage(12, 3)))
    status, ctype, body = await curl(
        relay,
        "/v1/chat/completions",
        {"model": "default", "messages": [{"role": "user", "content": "Hi curl-c-text"}]},
    )
    assert (status, ctype.split(";")[0]) == (200, "application/json")
    completion = json.loads(body)
    assert completion["object"] == "chat.completion"
    (choice,) = completion["choices"]
    assert choice["message"]["content"] == "Hi from curl — ✓"
    assert choice["finish_reason"] == "stop"
    assert completion["usage"]["prompt_tokens"] == 12
    assert completion["usage"]["completion_tokens"] == 3


async def test_chat_completions_stream(relay: Relay, up: FakeUpstream) -> None:
    up.on("curl-c-stream", Reply(text=PROSE, usage=Usage(12, 30), chunk_chars=20, delay=0.2))
    status, ctype, body = await curl(
        relay,
        "/v1/chat/completions",
        {
            "model": "default",
            "stream": True,
            "messages": [{"role": "user", "content": "Stream curl-c-stream"}],
        },
    )
    assert (status, ctype.split(";")[0]) == (200, "text/event-stream")
    frames = sse(body)
    assert all(e is None for e, _ in frames)  # data-only frames, as OpenAI sends them
    assert frames[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert len([p for p in pieces if p]) >= 2
    assert "".join(pieces) == PROSE
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert [f for f in finish if f] == ["stop"]
