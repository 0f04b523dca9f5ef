"""POST /v1/messages: the Anthropic Messages API served from the pool.

body → `protocols.anthropic.decode_request` → `pool.open_turn` (admission) → events → JSON via
`encode_message`, or SSE frames via `StreamEncoder`. Handlers only consume turns: when the client
goes away they stop reading and leave the `async with`, and the pool interrupts claude.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable
from contextlib import aclosing

import orjson
from aiohttp import web

from daemon import CONFIG_KEY, POOL_KEY, RelayPool
from daemon.errors import error_envelope, request_info
from daemon.sse import SSEWriter, client_gone, with_heartbeat
from protocols import anthropic, stops
from protocols.errors import ApiError, RelayError, ServiceUnavailableError
from protocols.model import TextDelta, TurnEvent, TurnRequest, TurnResult

log = logging.getLogger(__name__)

SESSION_HEADER = "X-IR-Session-ID"


def _no_result() -> ApiError:
    return ApiError("the turn ended without a result")


@error_envelope(anthropic.error_body)
async def post_messages(request: web.Request) -> web.StreamResponse:
    info = request_info(request)
    # Bounded by the app's client_max_size; a larger body raises 413, rendered by the middleware.
    body = await request.read()
    turn_request = anthropic.decode_request(
        body, session_header=request.headers.get(SESSION_HEADER)
    )
    info.model = turn_request.model
    info.stream = turn_request.stream
    log.debug("messages request: %r", turn_request, extra={"request_id": info.request_id})

    pool = request.app[POOL_KEY]
    if pool.claude_error is not None:
        # Say why here rather than relying on the pool's admission error: a daemon without claude
        # still runs (for health), and this is the message its users will read.
        raise ServiceUnavailableError(f"claude is not available: {pool.claude_error}")

    interval = request.app[CONFIG_KEY].ping_interval
    message_id = anthropic.new_message_id()
    if turn_request.stream:
        return await _stream(request, pool, turn_request, message_id, interval)
    return await _complete(request, pool, turn_request, message_id, interval)


async def _complete(
    request: web.Request,
    pool: RelayPool,
    turn_request: TurnRequest,
    message_id: str,
    interval: float,
) -> web.StreamResponse:
    info = request_info(request)
    ids = {"request_id": info.request_id}
    result: TurnResult | None = None
    # Nothing is written while waiting, so a departed client is only noticed by polling on the
    # heartbeat tick; that keeps an abandoned turn from holding a slot until it finishes.
    async with (
        pool.open_turn(turn_request) as turn,
        aclosing(with_heartbeat(_events(turn, turn_request), interval)) as events,
    ):
        async for ev in events:
            if ev is None:
                if client_gone(request):
                    log.info("client left; abandoning turn", extra=ids)
                    return web.Response(status=499)
            elif isinstance(ev, TurnResult):
                result = ev
    if result is None:
        raise _no_result()
    log.debug("reply: %r", result.text, extra=ids)
    payload = anthropic.encode_message(
        result, request_model=turn_request.model, message_id=message_id
    )
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def _stream(
    request: web.Request,
    pool: RelayPool,
    turn_request: TurnRequest,
    message_id: str,
    interval: float,
) -> web.StreamResponse:
    info = request_info(request)
    encoder = anthropic.StreamEncoder(turn_request.model, message_id)
    # Admission comes before the response is prepared, so 529/503 are still plain JSON errors
    # with a status code and retry-after header, which clients understand better than an event.
    async with pool.open_turn(turn_request) as turn:
        sse = SSEWriter(request)
        # message_start goes out at once: clients and proxies see the stream alive before claude
        # has produced anything.
        if await sse.open() and await sse.send(encoder.start()):
            failure = await _pump(sse, encoder, _events(turn, turn_request), interval)
            if failure is not None and not sse.disconnected and not encoder.closed:
                info.stream_error = failure.anthropic_type
                await sse.send(encoder.error(failure, info.request_id))
        if sse.disconnected:
            log.info("client left mid-stream", extra={"request_id": info.request_id})
    await sse.close()
    return sse.response


def _events(turn: AsyncIterable[TurnEvent], req: TurnRequest) -> AsyncIterable[TurnEvent]:
    """The turn's events with the request's stop_sequences applied (claude cannot apply them)."""
    if not req.stop_sequences:
        return turn
    return stops.apply(aiter(turn), req.stop_sequences)


async def _pump(
    sse: SSEWriter,
    encoder: anthropic.StreamEncoder,
    turn: AsyncIterable[TurnEvent],
    interval: float,
) -> RelayError | None:
    """Relay the turn's events as frames; return the error to report in-stream, if any."""
    try:
        async with aclosing(sse.relay(turn, ping=encoder.ping, interval=interval)) as events:
            async for ev in events:
                # Read on to the end even after the result, so the pool's iterator finishes its
                # own bookkeeping instead of being abandoned.
                if encoder.closed:
                    continue
                frame = encoder.delta(ev) if isinstance(ev, TextDelta) else encoder.finish(ev)
                if not await sse.send(frame):
                    return None
    except RelayError as err:
        if encoder.closed:  # the client already has the whole message; nothing left to correct
            log.warning("turn failed after its result: %s", err, extra=_ids(sse))
            return None
        return err
    except Exception:
        # The 200 is already committed; the middleware can no longer answer, so report here.
        log.exception("stream failed", extra=_ids(sse))
        return ApiError("internal error")
    if not encoder.closed and not sse.disconnected:
        return _no_result()
    return None


def _ids(sse: SSEWriter) -> dict[str, object]:
    return {"request_id": request_info(sse.request).request_id}


def add_routes(app: web.Application) -> None:
    # The SDKs' beta clients POST to /v1/messages?beta=true; query strings do not affect routing.
    app.router.add_post("/v1/messages", post_messages)
