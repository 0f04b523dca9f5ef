"""Raw-socket clients for the transport defences: what no SDK does (a slowloris trickle)."""

from __future__ import annotations

import asyncio
import contextlib


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF or reset) without a reply."""
    try:
        return await reader.read(1) == b""
    except ConnectionResetError:
        return True


async def trickle_until_closed(port: int, *, pace: float, within: float) -> None:
    """A slowloris client: a header line every `pace` seconds, never the end of the headers;
    returns once the server closes the connection, fails after `within` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            while True:
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                await asyncio.sleep(pace)  # the pace is the attack, not a wait for the server

    trickling = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(within):
            assert await closed_by_server(reader)
    finally:
        trickling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickling
        writer.close()
