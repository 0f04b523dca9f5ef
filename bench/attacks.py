"""Attack primitives for bench.hostile: PDF bombs, slowloris sockets, a reader that stops
reading, and a monitor that watches the daemon's health latency and RSS while one runs.

Everything here targets 127.0.0.1 only and is bounded in sockets, bytes and seconds by its
caller's arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp

from bench import reliability as rel

# --- PDFs ----------------------------------------------------------------------------------------


def _flate(data: bytes) -> bytes:
    co = zlib.compressobj(9)
    step = 1 << 20
    return b"".join(co.compress(data[i : i + step]) for i in range(0, len(data), step)) + co.flush()


def pdf(pages: Sequence[Sequence[bytes]], *, compress: bool = False) -> bytes:
    """A well-formed PDF (xref and all) whose pages have these content streams; one font."""
    objs: list[bytes] = [b"", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for contents in pages:
        refs = []
        for content in contents:
            data = _flate(content) if compress else content
            flt = b" /Filter /FlateDecode" if compress else b""
            objs.append(b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(data), flt, data))
            refs.append(len(objs))
        arr = b" ".join(b"%d 0 R" % r for r in refs)
        objs.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents [%s] >>" % arr
        )
        kids.append(len(objs))
    objs[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    refs_text = b" ".join(b"%d 0 R" % k for k in kids)
    objs[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (refs_text, len(kids))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, obj in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (i, obj))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    )
    return out.getvalue()


def many_pages(n: int) -> bytes:
    return pdf([[b"BT /F1 12 Tf 10 10 Td (page %d) Tj ET" % i] for i in range(n)])


def huge_stream(megabytes: int) -> bytes:
    """One page whose (deflated) content stream inflates to `megabytes` MiB of text operators."""
    op = b"(AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA) Tj "
    body = b"BT /F1 1 Tf 0 0 Td " + op * (megabytes * 1024 * 1024 // len(op)) + b"ET"
    return pdf([[body]], compress=True)


# --- monitoring ----------------------------------------------------------------------------------


@dataclass
class Watch:
    worst_health: float = 0.0  # slowest /v1/health answer (a timeout counts as its limit)
    rss_peak_kib: int = 0


@contextlib.asynccontextmanager
async def monitor(url: str, pid: int, interval: float = 0.25) -> AsyncIterator[Watch]:
    """Poll health and the daemon's RSS while the block runs: a blocked event loop shows as a
    slow health answer, memory blow-up as the peak."""
    watch = Watch()

    async def loop() -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                t0 = time.monotonic()
                await rel.health(http, url, timeout=10)
                watch.worst_health = max(watch.worst_health, time.monotonic() - t0)
                watch.rss_peak_kib = max(watch.rss_peak_kib, rel.rss_kib(pid))
                await asyncio.sleep(interval)

    task = asyncio.create_task(loop())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- slowloris -----------------------------------------------------------------------------------


@dataclass
class Slowloris:
    opened: int = 0
    closed_by_server: int = 0
    last_close: float = 0.0  # seconds after the start when the last socket was closed


async def slowloris(port: int, sockets: int, seconds: float) -> Slowloris:
    """Open `sockets` connections that send their headers one byte a second, for `seconds`.

    A socket counts as closed by the server when reading it ends (EOF, a reset, or any answer,
    e.g. 408). Everything is closed at the end.
    """
    result = Slowloris()
    t0 = time.monotonic()
    header = b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        result.opened += 1
        try:
            writer.write(header)

            async def drip() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    writer.write(b"a")
                    await writer.drain()

            dripping = asyncio.create_task(drip())
            try:
                async with asyncio.timeout(seconds):
                    with contextlib.suppress(OSError):
                        await reader.read(4096)
                    result.closed_by_server += 1
                    result.last_close = time.monotonic() - t0
            except TimeoutError:
                pass
            finally:
                dripping.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await dripping
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(sockets)))
    return result


# --- a reader that stops reading ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def stalled_reader(port: int, path: str, body: bytes) -> AsyncIterator[None]:
    """Send a request, then never read its answer: a tiny receive buffer and a paused reader,
    so the daemon's writes back up once the socket buffers are full. Closed on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body)
    await writer.drain()
    transport = writer.transport
    assert isinstance(transport, asyncio.ReadTransport)
    transport.pause_reading()
    try:
        yield
    finally:
        writer.close()
        del reader
