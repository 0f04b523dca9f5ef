"""The listening socket's defences against hostile HTTP clients, below the app (daemon.cli).

aiohttp's server answers a malformed request itself (a text/plain 400), waits for a request's
headers and body as long as the client likes, and accepts every connection. `RelayRunner` serves
the app with a request handler (one per connection) that instead:
- answers aiohttp's own protocol errors as JSON in the Anthropic envelope;
- closes a connection whose request headers are not complete `read_timeout` seconds after it
  opened or after its previous response (slowloris; also the idle keep-alive limit);
- fails a body that falls behind `read_timeout` plus a second per `MIN_BODY_RATE` bytes received
  with a 408 in the route's envelope, then closes the connection;
- refuses connections beyond `max_connections` at once with a 503.
The clocks run only while the relay waits for the client: a response being written, such as a
long SSE stream, is never timed here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from claude_relay.daemon.config import Config
from claude_relay.daemon.errors import (
    REQUEST_ID_HEADER,
    RequestTimeoutError,
    error_response,
    new_request_id,
)
from claude_relay.protocols import anthropic
from claude_relay.protocols.errors import (
    ApiError,
    InvalidRequestError,
    RelayError,
    ServiceUnavailableError,
)

log = logging.getLogger(__name__)

MIN_BODY_RATE: Final = 16 * 1024  # bytes/s a body must average once read_timeout has passed
_EXCERPT: Final = 120

RequestFactory = Callable[
    [
        RawRequestMessage,
        StreamReader,
        web.RequestHandler,
        AbstractStreamWriter,
        "asyncio.Task[None]",
    ],
    web.BaseRequest,
]
RequestHandlerFunc = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class TransportLimits:
    read_timeout: float = 10.0
    max_connections: int = 256

    @classmethod
    def from_config(cls, config: Config) -> TransportLimits:
        return cls(read_timeout=config.read_timeout, max_connections=config.max_connections)


def _refusal(limit: int) -> bytes:
    """The whole answer to a connection over the cap, written before anything is read."""
    err = ServiceUnavailableError(
        f"too many open connections (max_connections is {limit}); retry shortly", retry_after=1
    )
    body = orjson.dumps(anthropic.error_body(err))
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _parse_error_message(message: str | None, status: int) -> str:
    # aiohttp's text quotes the offending line over several lines with a caret; its first line
    # is the reason, and it may carry an excerpt of what was sent, so it is cut short as well.
    lines = (message or "").strip().splitlines()
    reason = (lines[0].rstrip(": ") if lines else "") or f"HTTP {status}"
    if len(reason) > _EXCERPT:
        reason = reason[:_EXCERPT] + "…"
    return f"malformed HTTP request: {reason}"


class RelayRunner(web.AppRunner):
    """An `AppRunner` whose connections are handled by `RelayRequestHandler`."""

    def __init__(
        self, app: web.Application, *, limits: TransportLimits, shutdown_timeout: float
    ) -> None:
        super().__init__(
            app,
            handle_signals=False,
            access_log=None,  # the error middleware writes one structured line per request
            shutdown_timeout=shutdown_timeout,
        )
        self._limits = limits

    async def _make_server(self) -> web.Server:
        # AppRunner's own starts the app and wires its request handler and factory into a plain
        # server; aiohttp has no public way to choose the per-connection class, so the server is
        # rebuilt around those two. This method, Server's constructor and the RequestHandler
        # methods overridden below have kept their signatures from aiohttp 3.9 to 3.14.
        plain = await super()._make_server()
        return RelayServer(
            plain.request_handler,
            plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            limits=self._limits,
        )


class RelayServer(web.Server):
    """The protocol factory: one `RelayRequestHandler` per connection, and the connection count."""

    def __init__(
        self,
        handler: RequestHandlerFunc,
        request_factory: RequestFactory,
        *,
        handler_cancellation: bool,
        limits: TransportLimits,
    ) -> None:
        super().__init__(
            handler, request_factory=self._new_request, handler_cancellation=handler_cancellation
        )
        self._app_request_factory = request_factory
        self._relay_loop = asyncio.get_running_loop()
        self.limits = limits
        self.open: set[RelayRequestHandler] = set()
        self.refusal = _refusal(limits.max_connections)
        self.saturated = False  # logged once per episode, not once per refused connection

    def __call__(self) -> RelayRequestHandler:
        return RelayRequestHandler(
            self,
            loop=self._relay_loop,
            access_log=None,
            # The guard refuses compressed bodies unread; without decompression, what the
            # server still reads and discards of one is never inflated (a zip bomb stays small).
            auto_decompress=False,
        )

    def _new_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # Called once a request's headers are complete (also for a malformed one).
        if isinstance(protocol, RelayRequestHandler):
            protocol.request_started(payload)
        return self._app_request_factory(message, payload, protocol, writer, task)


class RelayRequestHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, with read clocks, the connection cap and JSON errors.

    Its own attributes carry a `_relay_` prefix so that they can never shadow aiohttp's.
    """

    def __init__(
        self, server: RelayServer, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(server, loop=loop, **kwargs)
        self._relay_server = server
        self._relay_loop = loop
        self._relay_refused = False
        self._relay_busy = False  # between a request's headers and the end of its response
        self._relay_timer: asyncio.TimerHandle | None = None
        self._relay_waiting_bytes = 0  # received while no request was being handled
        self._relay_body: StreamReader | None = None  # a body the relay may still be waiting for
        self._relay_body_since = 0.0
        self._relay_body_bytes = 0
        self._relay_body_expired = False

    # --- the connection cap ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._relay_server
        if len(server.open) >= server.limits.max_connections:
            # Refused before aiohttp sees it: no parser task, and the socket is released at once.
            self._relay_refused = True
            if not server.saturated:
                server.saturated = True
                log.warning("refusing connections: %d open (max_connections)", len(server.open))
            tcp = cast(asyncio.Transport, transport)
            tcp.write(server.refusal)
            tcp.close()
            return
        server.open.add(self)
        super().connection_made(transport)
        self._relay_wait_for_request()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._relay_refused:
            return  # aiohttp never knew this connection
        server = self._relay_server
        server.open.discard(self)
        if server.saturated and len(server.open) < server.limits.max_connections:
            server.saturated = False
            log.info("accepting connections again: %d open", len(server.open))
        self._relay_stop_clock()
        self._relay_body = None
        super().connection_lost(exc)

    # --- read clocks ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._relay_busy:
            self._relay_waiting_bytes += len(data)
        elif self._relay_body is not None:
            self._relay_body_bytes += len(data)
        super().data_received(data)

    def request_started(self, payload: StreamReader) -> None:
        self._relay_stop_clock()
        self._relay_busy = True
        self._relay_waiting_bytes = 0
        if payload.is_eof():
            return
        self._relay_body = payload
        self._relay_body_since = self._relay_loop.time()
        self._relay_body_bytes = 0
        self._relay_start_clock(self._relay_server.limits.read_timeout, self._relay_check_body)

    async def finish_response(
        self,
        request: web.BaseRequest,
        resp: web.StreamResponse,
        start_time: float | None,
    ) -> tuple[web.StreamResponse, bool]:
        # Passed through as is: aiohttp before 3.11 returns a bool here.
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._relay_busy = False
            self._relay_body = None
            self._relay_stop_clock()
            if self._relay_body_expired:
                self.force_close()  # the rest of a body that stalled is not worth waiting for
            else:
                self._relay_wait_for_request()

    def _relay_start_clock(self, delay: float, callback: Callable[[], None]) -> None:
        self._relay_stop_clock()
        self._relay_timer = self._relay_loop.call_later(delay, callback)

    def _relay_stop_clock(self) -> None:
        if self._relay_timer is not None:
            self._relay_timer.cancel()
            self._relay_timer = None

    def _relay_wait_for_request(self) -> None:
        self._relay_start_clock(self._relay_server.limits.read_timeout, self._relay_request_late)

    def _relay_request_late(self) -> None:
        self._relay_timer = None
        if self._relay_busy:
            return
        timeout = self._relay_server.limits.read_timeout
        if self._relay_waiting_bytes:
            log.info(
                "closing a connection: no complete request headers after %gs (%d bytes)",
                timeout,
                self._relay_waiting_bytes,
            )
        else:
            log.debug("closing a connection idle for %gs", timeout)
        self.force_close()

    def _relay_check_body(self) -> None:
        self._relay_timer = None
        body = self._relay_body
        if body is None or body.is_eof():
            return
        limits = self._relay_server.limits
        received = self._relay_body_bytes
        due = self._relay_body_since + limits.read_timeout + received / MIN_BODY_RATE
        now = self._relay_loop.time()
        if now < due:
            self._relay_timer = self._relay_loop.call_at(due, self._relay_check_body)
            return
        self._relay_body_expired = True
        waited = now - self._relay_body_since
        log.info("request body too slow: %d bytes in %.1fs", received, waited)
        # The handler reading the body gets this error, rendered in its route's envelope.
        body.set_exception(
            RequestTimeoutError(
                f"the request body arrived too slowly: {received} bytes in {waited:.0f}s "
                f"(after {limits.read_timeout:g}s at least {MIN_BODY_RATE} bytes/s are needed)"
            )
        )

    # --- aiohttp's own errors ---------------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to what never reached the app (a malformed request), or escaped it;
        the same status, as JSON in the Anthropic envelope (no route is known)."""
        err: RelayError
        if status >= 500:
            # aiohttp's own handling logs the traceback, and raises if a reply had begun.
            super().handle_error(request, status, exc, message)
            err = ApiError("internal error")
        else:
            log.info("malformed request from %s: %s", request.remote, exc or message)
            err = InvalidRequestError(_parse_error_message(message, status))
        err.status = status
        request_id = new_request_id()
        response = error_response(err, request_id, anthropic.error_body)
        response.headers[REQUEST_ID_HEADER] = request_id
        response.force_close()
        return response
