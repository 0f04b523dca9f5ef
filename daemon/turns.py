"""How a route consumes one turn, whatever the wire format: shared by /v1/messages and
/v1/chat/completions so that client-gone handling, stop sequences and mid-stream errors behave
the same on both. Routes supply only their encoder's frames.

Decoding leaves a request's PDFs unread (`attachment_limits`); `read_documents` reads them in
child processes (daemon.pdf_worker) once the request is decoded and the relay can serve it, before
the turn takes its place in the pool: a 400 about a PDF is still a plain JSON error.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterable, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Final, ParamSpec, Protocol, TypeVar
from weakref import WeakKeyDictionary

from aiohttp import web

from claude_relay.daemon import CONFIG_KEY, RelayPool, pdf_worker
from claude_relay.daemon.auth import tenant
from claude_relay.daemon.errors import request_info
from claude_relay.daemon.sse import GONE_POLL, SSEWriter, client_gone, with_heartbeat
from claude_relay.protocols import stops
from claude_relay.protocols.attachments import AttachmentLimits
from claude_relay.protocols.errors import ApiError, RelayError
from claude_relay.protocols.model import TurnEvent, TurnRequest, TurnResult

log = logging.getLogger(__name__)


_P = ParamSpec("_P")
_T = TypeVar("_T")
# Bodies above this are decoded in a thread: base64 and JSON of many megabytes are CPU work that
# would stall every other request's stream. (PDF text is read later, in a child process.)
DECODE_IN_THREAD_BYTES = 256 * 1024
# Set only in demo mode (daemon.demo): every turn runs with this model, whatever the body named,
# and replies carry it. The body is still checked as sent.
MODEL_OVERRIDE: Final = web.AppKey("model_override", str)
# Each app's PDF gate, made on its first PDF (an AppKey would have to be set before it starts).
_PDF_GATES: WeakKeyDictionary[web.Application, pdf_worker.PdfGate] = WeakKeyDictionary()


async def decode(body: bytes, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`fn(*args, **kwargs)`, a request decoder, off the event loop when `body` is large."""
    if len(body) > DECODE_IN_THREAD_BYTES:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def with_app_model(request: web.Request, req: TurnRequest) -> TurnRequest:
    """`req` with the app's model override (`MODEL_OVERRIDE`) applied, if it has one."""
    model = request.app.get(MODEL_OVERRIDE)
    return req if model is None else replace(req, model=model)


def attachment_limits(request: web.Request) -> AttachmentLimits:
    """The config's attachment limits, with PDFs left for `read_documents` by the decoder."""
    return replace(request.app[CONFIG_KEY].attachment_limits(), defer_pdf_text=True)


async def read_documents(request: web.Request, req: TurnRequest) -> TurnRequest:
    """`req` with its PDFs' text read, in child processes under the app's PDF gate.

    The gate admits as many readers as turns may run (`max_busy`) but no more than there are
    CPUs, since reading is all CPU, and queues like the pool (`max_queue`, `queue_timeout`).
    """
    config = request.app[CONFIG_KEY]
    gate = _PDF_GATES.get(request.app)
    if gate is None:
        gate = _PDF_GATES[request.app] = pdf_worker.PdfGate(
            readers=min(config.max_busy, os.cpu_count() or 1),
            max_waiting=config.max_queue,
            wait_timeout=config.queue_timeout,
            retry_after=config.pool_settings().retry_after,
        )
    return await pdf_worker.read_documents(gate, req, config.attachment_limits().pdf)


class ClientGone(Exception):
    """The client disconnected while a non-streamed turn ran; the handler answers 499."""


def no_result() -> ApiError:
    return ApiError("the turn ended without a result")


def with_stops(turn: AsyncIterable[TurnEvent], req: TurnRequest) -> AsyncIterable[TurnEvent]:
    """The turn's events with the request's stop sequences applied (claude cannot apply them)."""
    if not req.stop_sequences:
        return turn
    return stops.apply(aiter(turn), req.stop_sequences)


async def result_of(request: web.Request, pool: RelayPool, req: TurnRequest) -> TurnResult:
    """Run a non-streamed turn to its result; raise `ClientGone` if the client leaves first.

    Nothing is written while waiting, so a departed client is noticed by polling: at each
    event, and on a tick of at most GONE_POLL seconds while none comes. An abandoned turn is
    interrupted within about a second, whatever claude is doing, and its slot freed.
    """
    interval = min(request.app[CONFIG_KEY].ping_interval, GONE_POLL)
    req = await read_documents(request, replace(req, owner=tenant(request)))
    result: TurnResult | None = None
    async with (
        pool.open_turn(req) as turn,
        aclosing(with_heartbeat(with_stops(turn, req), interval)) as events,
    ):
        async for ev in events:
            if client_gone(request):
                log.info(
                    "client left; abandoning turn",
                    extra={"request_id": request_info(request).request_id},
                )
                raise ClientGone
            if isinstance(ev, TurnResult):
                result = ev
    if result is None:
        raise no_result()
    return result


async def pump(
    sse: SSEWriter,
    turn: AsyncIterable[TurnEvent],
    *,
    frame: Callable[[TurnEvent], bytes],
    closed: Callable[[], bool],
    ping: Callable[[], bytes],
) -> RelayError | None:
    """Relay the turn's events as `frame(event)`s; return the error to report in-stream, if any.

    `closed()` tells when the encoder has sent its last frame; events after that are read but
    dropped, so the pool's iterator finishes its own bookkeeping instead of being abandoned.
    """
    interval = sse.request.app[CONFIG_KEY].ping_interval
    ids = {"request_id": request_info(sse.request).request_id}
    try:
        async with aclosing(sse.relay(turn, ping=ping, interval=interval)) as events:
            async for ev in events:
                if closed():
                    continue
                data = frame(ev)
                if data and not await sse.send(data):
                    return None
    except RelayError as err:
        if closed():  # the client already has the whole message; nothing left to correct
            log.warning("turn failed after its result: %s", err, extra=ids)
            return None
        return err
    except Exception:
        # The 200 is already committed; the middleware can no longer answer, so report here.
        log.exception("stream failed", extra=ids)
        return ApiError("internal error")
    if not closed() and not sse.disconnected:
        return no_result()
    return None


class StreamEncoder(Protocol):
    """What `stream` needs of a wire format's SSE encoder (anthropic's and openai's have it)."""

    @property
    def closed(self) -> bool: ...

    def start(self) -> bytes: ...

    def ping(self) -> bytes: ...

    def error(self, err: RelayError, request_id: str | None = None) -> bytes: ...


async def stream(
    request: web.Request,
    pool: RelayPool,
    req: TurnRequest,
    encoder: StreamEncoder,
    *,
    frame: Callable[[TurnEvent], bytes],
    error_type: Callable[[RelayError], str],
) -> web.StreamResponse:
    """Serve the turn as SSE: the encoder's first frame at once, then `frame(event)`s, and an
    in-stream error event (`error_type` names it for the log) if the turn fails midway."""
    info = request_info(request)
    # PDFs and admission come before the response is prepared, so 400/529/503 are still plain
    # JSON errors with a status code (and retry-after), which clients understand better than an
    # event.
    req = await read_documents(request, replace(req, owner=tenant(request)))
    async with pool.open_turn(req) as turn:
        sse = SSEWriter(request)
        # the first frame goes out at once: clients and proxies see the stream alive before
        # claude has produced anything
        if await sse.open() and await sse.send(encoder.start()):
            failure = await pump(
                sse,
                with_stops(turn, req),
                frame=frame,
                closed=lambda: encoder.closed,
                ping=encoder.ping,
            )
            if failure is not None and not sse.disconnected and not encoder.closed:
                info.stream_error = error_type(failure)
                await sse.send(encoder.error(failure, info.request_id))
        if sse.disconnected:
            log.info("client left mid-stream", extra={"request_id": info.request_id})
    await sse.close()
    return sse.response
