"""The listening socket against hostile clients: raw sockets against a real bound server.

The server is the daemon's own stack (`RelayRunner` + `TCPSite` on 127.0.0.1, an ephemeral port)
serving the app with a scripted pool. Clients write bytes by hand, since what is tested is what
well-behaved HTTP clients never send: malformed requests, headers or bodies that trickle in,
and more connections than the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from claude_relay.daemon.app import make_app
from claude_relay.daemon.config import Config
from claude_relay.daemon.transport import RelayRunner, RelayServer, TransportLimits
from claude_relay.protocols.model import TextDelta
from tests.helpers.proc import until
from tests.support.raw_http import closed_by_server, trickle_until_closed
from tests.test_app import FakePool, body, next_event, result


@dataclass
class Served:
    port: int
    server: RelayServer
    pool: FakePool


@contextlib.asynccontextmanager
async def serving(
    tmp_path: Path, pool: FakePool | None = None, **config: Any
) -> AsyncIterator[Served]:
    cfg = Config(workspace=tmp_path, **config)
    pool = pool if pool is not None else FakePool([result("hi")])
    runner = RelayRunner(
        make_app(cfg, pool=pool), limits=TransportLimits.from_config(cfg), shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        assert isinstance(runner.server, RelayServer)
        yield Served(runner.addresses[0][1], runner.server, pool)
    finally:
        await runner.cleanup()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return Reply(int(status_line.split()[1]), headers, await reader.readexactly(length))


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def request(
    method: str, path: str, *, headers: str = "", data: bytes = b"", length: int | None = None
) -> bytes:
    size = len(data) if length is None else length
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {size}\r\n\r\n"
    ).encode() + data


def message_body() -> bytes:
    return orjson.dumps(body())


# --- aiohttp's own errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-IR-Session-ID: a\x01b\r\n\r\n",
        b"GET /v1/health HTTP/9.9 extra\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
    ],
    ids=["header-too-long", "control-character", "request-line", "tls"],
)
async def test_malformed_requests_get_json_in_the_anthropic_envelope(
    tmp_path: Path, raw: bytes
) -> None:
    async with serving(tmp_path) as served:
        reader, writer = await connect(served.port)
        writer.write(raw)
        async with asyncio.timeout(5):
            reply = await read_reply(reader)
            assert await closed_by_server(reader)
        writer.close()
    assert reply.status == 400
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["request-id"].startswith("req_")
    payload = reply.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["message"].startswith("malformed HTTP request: ")
    assert payload["request_id"] == reply.headers["request-id"]
    assert len(reply.body) < 1024


async def test_a_brotli_body_is_a_415_too(tmp_path: Path) -> None:
    # aiohttp would try to inflate it while parsing; the relay's server leaves bodies as sent.
    async with serving(tmp_path) as served:
        reader, writer = await connect(served.port)
        headers = "Content-Type: application/json\r\nContent-Encoding: br\r\n"
        writer.write(request("POST", "/v1/messages", headers=headers, data=b"\x1b\x00garbage"))
        async with asyncio.timeout(5):
            reply = await read_reply(reader)
        writer.close()
    assert reply.status == 415
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert served.pool.requests == []


# --- read clocks --------------------------------------------------------------------------------


async def test_headers_that_trickle_in_are_cut_off(tmp_path: Path) -> None:
    async with serving(tmp_path, read_timeout=0.3) as served:
        loop = asyncio.get_running_loop()
        started = loop.time()  # before the server can have accepted the connection
        await trickle_until_closed(served.port, pace=0.05, within=5)
        # a deadline from the connection's opening, however steadily bytes kept coming
        assert loop.time() - started >= 0.3


async def test_an_idle_connection_is_closed(tmp_path: Path) -> None:
    async with serving(tmp_path, read_timeout=0.3) as served:
        reader, writer = await connect(served.port)
        async with asyncio.timeout(5):
            assert await closed_by_server(reader)
        writer.close()
        await until(lambda: not served.server.open, timeout=5, what="the connection to be freed")


async def test_keep_alive_serves_the_next_request_then_idles_out(tmp_path: Path) -> None:
    pool = FakePool([result("hi")])
    # long enough that a loaded machine sends the second request in time
    async with serving(tmp_path, pool, read_timeout=1.0) as served:
        reader, writer = await connect(served.port)
        async with asyncio.timeout(5):
            for _ in range(2):
                writer.write(request("GET", "/v1/health"))
                assert (await read_reply(reader)).status == 200
            assert await closed_by_server(reader)
        writer.close()


@pytest.mark.parametrize(
    ("path", "openai"), [("/v1/messages", False), ("/v1/chat/completions", True)]
)
async def test_a_body_that_stalls_is_a_408_in_the_route_envelope(
    tmp_path: Path, path: str, openai: bool
) -> None:
    async with serving(tmp_path, read_timeout=0.3) as served:
        reader, writer = await connect(served.port)
        headers = "Content-Type: application/json\r\n"
        writer.write(request("POST", path, headers=headers, data=b'{"model":', length=1000))
        async with asyncio.timeout(5):
            reply = await read_reply(reader)
            assert await closed_by_server(reader)
        writer.close()
    assert reply.status == 408
    payload = reply.json()
    error = payload["error"]
    if openai:
        assert set(payload) == {"error"}
    else:
        assert payload["type"] == "error"
    assert error["type"] == "invalid_request_error"
    assert "too slowly" in error["message"]
    assert served.pool.requests == []


async def test_a_stream_outlives_the_read_timeout(tmp_path: Path) -> None:
    gate = asyncio.Event()
    pool = FakePool([TextDelta("Hel"), gate, TextDelta("lo"), result("Hello")])
    async with (
        serving(tmp_path, pool, read_timeout=0.2) as served,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{served.port}/v1/messages"
        async with session.post(url, json=body(stream=True)) as resp:
            assert resp.status == 200
            while (event := await next_event(resp)) is not None and event[
                0
            ] != "content_block_delta":
                pass
            # The server's read clock has certainly run out meanwhile: a connection opened
            # after the stream began is closed for idling first.
            reader, writer = await connect(served.port)
            async with asyncio.timeout(5):
                assert await closed_by_server(reader)
            writer.close()
            gate.set()
            rest = []
            async with asyncio.timeout(5):
                while (event := await next_event(resp)) is not None:
                    rest.append(event[0])
    assert rest[-1] == "message_stop"
    assert "error" not in rest


# --- the connection cap -------------------------------------------------------------------------


async def test_connections_beyond_the_cap_are_refused_at_once(tmp_path: Path) -> None:
    async with serving(tmp_path, max_connections=2) as served:
        held = []
        for _ in range(2):
            reader, writer = await connect(served.port)
            writer.write(request("GET", "/v1/health"))  # keep-alive: the connection stays
            assert (await read_reply(reader)).status == 200
            held.append((reader, writer))
        reader, writer = await connect(served.port)
        async with asyncio.timeout(5):
            reply = await read_reply(reader)
            assert await closed_by_server(reader)
        writer.close()
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
        error = reply.json()["error"]
        assert error["type"] == "api_error"
        assert "max_connections" in error["message"]
        # a held connection still works, and once one is gone a new one is served
        reader, writer = held[0]
        writer.write(request("GET", "/v1/health"))
        assert (await read_reply(reader)).status == 200
        writer.close()
        await until(lambda: len(served.server.open) == 1, timeout=5, what="a freed slot")
        reader, writer = await connect(served.port)
        writer.write(request("GET", "/v1/health"))
        assert (await read_reply(reader)).status == 200
        writer.close()
        held[1][1].close()
