"""Server-sent events out of an aiohttp handler, with idle pings and disconnect detection.

Routes encode frames with `protocols` and hand the bytes to `SSEWriter.send`. `with_heartbeat`
waits for the pool's next event with a timeout instead of running a ping task beside the writer,
so only the handler ever writes and frames cannot interleave. A vanished client turns into a False
return, not an exception, so the handler simply leaves its `async with turn` and the pool cleans up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from typing import Final, TypeVar

from aiohttp import web

from claude_relay.daemon import CONFIG_KEY
from claude_relay.daemon.errors import REQUEST_ID_HEADER, request_info

_T = TypeVar("_T")
log = logging.getLogger(__name__)
# How often a waiting handler checks that its client is still connected.
GONE_POLL = 0.5

SSE_HEADERS: Final = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    # nginx buffers proxied responses by default, which would hold back every delta.
    "x-accel-buffering": "no",
}


class _End:
    """Marks exhaustion of the source; a value, because StopAsyncIteration must not cross tasks."""


_END: Final = _End()


async def _next(it: AsyncIterator[_T]) -> _T | _End:
    try:
        return await anext(it)
    except StopAsyncIteration:
        return _END


async def with_heartbeat(
    source: AsyncIterable[_T], interval: float
) -> AsyncGenerator[_T | None, None]:
    """Yield `source`'s items, and None whenever `interval` seconds pass without one.

    The pending read is kept across ticks (a tick must not cancel the pool's iteration); only
    closing this generator early (client gone, handler cancelled) cancels it, so the turn is idle
    again by the time the handler leaves `async with turn`. Errors from `source` propagate.
    Use under `contextlib.aclosing` so an early exit cancels the read at once.
    """
    it = aiter(source)
    while True:
        pending = asyncio.create_task(_next(it))
        try:
            while True:
                done, _ = await asyncio.wait({pending}, timeout=interval)
                if done:
                    break
                yield None
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.wait({pending})
                if not pending.cancelled():
                    # Retrieve it so asyncio does not log "exception was never retrieved".
                    pending.exception()
        item = pending.result()
        if isinstance(item, _End):
            return
        yield item


def client_gone(request: web.Request) -> bool:
    """True once the peer has closed the connection (aiohttp drops the transport then)."""
    transport = request.transport
    return transport is None or transport.is_closing()


class SSEWriter:
    """One event-stream response. `open`, then `send` frames, then `close`."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        # Headers go out at prepare(), after which the error middleware can no longer add it.
        self.response.headers[REQUEST_ID_HEADER] = request_info(request).request_id
        self.disconnected = False

    async def open(self) -> bool:
        """Send the status line and headers; False if the client is already gone."""
        try:
            await self.response.prepare(self.request)
        except ConnectionResetError:  # includes aiohttp's ClientConnectionResetError
            self.disconnected = True
        return not self.disconnected

    async def send(self, frame: bytes) -> bool:
        """Write one or more encoded frames; False (and no exception) once the client is gone."""
        if self.disconnected:
            return False
        if not frame:
            return True
        try:
            # A client that stops reading fills the socket buffer and the write waits on it:
            # past the write timeout it counts as gone, so the turn is interrupted and its slot
            # freed instead of being held by a reader that never comes back.
            async with asyncio.timeout(self.request.app[CONFIG_KEY].write_timeout):
                await self.response.write(frame)
        except ConnectionResetError:
            self.disconnected = True
        except TimeoutError:
            log.info(
                "stream reader stalled; dropping it",
                extra={"request_id": request_info(self.request).request_id},
            )
            self.disconnected = True
            if self.request.transport is not None:
                self.request.transport.abort()
        return not self.disconnected

    async def relay(
        self, source: AsyncIterable[_T], *, ping: Callable[[], bytes], interval: float
    ) -> AsyncGenerator[_T, None]:
        """Yield `source`'s items; while it is idle for `interval` seconds, send `ping()`.

        Stops early (without raising) when a ping finds the client gone. Use under
        `contextlib.aclosing`, as for `with_heartbeat`.
        """
        # Ticks come at least every GONE_POLL seconds, so a client that left is noticed within
        # about that even while claude writes nothing; a ping goes out only after `interval`.
        ticks = with_heartbeat(source, min(interval, GONE_POLL))
        loop = asyncio.get_running_loop()
        last = loop.time()
        try:
            async for item in ticks:
                if client_gone(self.request):
                    self.disconnected = True
                    return
                if item is None:
                    if loop.time() - last < interval:
                        continue
                    if not await self.send(ping()):
                        self.disconnected = True
                        return
                    last = loop.time()
                    continue
                last = loop.time()
                yield item
        finally:
            await ticks.aclose()

    async def close(self) -> None:
        """End the response; a client that already left is not an error."""
        if self.disconnected:
            return
        try:
            await self.response.write_eof()
        except ConnectionResetError:
            self.disconnected = True
