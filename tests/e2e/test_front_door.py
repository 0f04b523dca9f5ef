"""The front door of a real daemon (`claude-relay serve`): what a web page in the user's browser
and a hostile HTTP client get, and that the official SDKs still pass.

Browser requests are imitated by their headers (a rebound page's Host, an Origin, a no-cors
text/plain body); hostile clients write raw bytes on a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support.raw_http import trickle_until_closed
from tests.support.relay_proc import Relay, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

MESSAGE = {"model": "default", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


async def post(url: str, payload: object, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=payload, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def raw_reply(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], Any]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, orjson.loads(body) if body else None


def port_of(relay: Relay) -> int:
    return int(relay.url.rsplit(":", 1)[1])


async def test_web_pages_are_refused_in_each_envelope(relay: Relay, up: FakeUpstream) -> None:
    rebound = {"Host": "rebind.evil.example:7421"}
    async with aiohttp.ClientSession() as s, s.get(relay.url + "/v1/health", headers=rebound) as r:
        assert r.status == 403
        error = await r.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "permission_error"

    status, error = await post(relay.url + "/v1/messages", MESSAGE, **rebound)
    assert (status, error["error"]["type"]) == (403, "permission_error")
    status, error = await post(relay.url + "/v1/chat/completions", CHAT, **rebound)
    assert status == 403
    assert set(error) == {"error"}
    assert error["error"]["type"] == "permission_error"

    page = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    status, error = await post(relay.url + "/v1/messages", MESSAGE, **page)
    assert (status, error["error"]["type"]) == (403, "permission_error")

    # fetch(url, {mode: "no-cors", method: "POST", body: "..."}): text/plain, no preflight
    async with (
        aiohttp.ClientSession() as s,
        s.post(relay.url + "/v1/messages", data=orjson.dumps(MESSAGE).decode()) as r,
    ):
        assert r.status == 415
        error = await r.json()
    assert error["error"]["type"] == "invalid_request_error"
    assert up.main_requests == []


async def test_the_sdks_pass_the_guard(relay: Relay, up: FakeUpstream) -> None:
    up.push(Reply(text="Through the front door."), Reply(text="And again."))
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        msg = await sdk.messages.create(
            model="default", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
    assert msg.content[0].type == "text"
    assert msg.content[0].text == "Through the front door."
    async with openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key="x", max_retries=0) as oai:
        done = await oai.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}]
        )
    assert done.choices[0].message.content == "And again."


async def test_a_malformed_request_is_answered_in_json(relay: Relay) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(relay))
    writer.write(
        b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-IR-Session-ID: a\x01b\r\n"
        b"X-Big: " + b"a" * 9000 + b"\r\n\r\n"
    )
    async with asyncio.timeout(10):
        status, headers, body = await raw_reply(reader)
    writer.close()
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


async def test_slow_clients_are_cut_off_but_slow_streams_are_not(upstream: FakeUpstream) -> None:
    upstream.clear()
    async with start_relay(upstream, read_timeout="1") as relay:
        port = port_of(relay)

        # headers that trickle in: closed about read_timeout after the first byte
        await trickle_until_closed(port, pace=0.2, within=10)

        # a body that stalls: 408 in the route's envelope
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"model":'
        )
        async with asyncio.timeout(10):
            status, _, body = await raw_reply(reader)
        writer.close()
        assert status == 408
        assert set(body) == {"error"}

        # a reply streamed for longer than read_timeout is not cut
        text = "A reply that takes its time to arrive."
        upstream.push(Reply(text=text, chunk_chars=5, delay=0.3))
        async with (
            anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk,
            sdk.messages.stream(
                model="default", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            ) as stream,
        ):
            got = "".join([delta async for delta in stream.text_stream])
        assert got == text
        assert upstream.main_requests


async def test_connections_beyond_max_connections_get_a_503(upstream: FakeUpstream) -> None:
    upstream.clear()
    async with start_relay(upstream, max_connections="3", wait_warm=False) as relay:
        port = port_of(relay)
        held = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            async with asyncio.timeout(10):
                assert (await raw_reply(reader))[0] == 200
            held.append(writer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(10):
            status, headers, body = await raw_reply(reader)
        writer.close()
        assert status == 503
        assert headers["retry-after"] == "1"
        assert body["error"]["type"] == "api_error"
        for w in held:
            w.close()
        # once they are gone, the daemon serves again
        async with asyncio.timeout(10), aiohttp.ClientSession() as s:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(relay.url + "/v1/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.05)  # the daemon frees slots as it sees the closes
