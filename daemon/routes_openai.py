"""POST /v1/chat/completions: the OpenAI Chat Completions API served from the pool.

body → `protocols.openai.decode_request` → `pool.open_turn` → events → `chat.completion` JSON via
`encode_completion`, or `chat.completion.chunk` frames via `StreamEncoder`. Errors use the OpenAI
envelope (`@error_envelope(openai.error_body)`). With a JSON `response_format`, the reply is
checked before anything of it is sent, so a stream then carries the text in one chunk at the end:
screen deltas could not be taken back if the exact text turned out not to be the JSON.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable
from contextlib import aclosing

import orjson
from aiohttp import web

from daemon import CONFIG_KEY, POOL_KEY, RelayPool
from daemon.errors import error_envelope, request_info
from daemon.routes_messages import SESSION_HEADER
from daemon.sse import SSEWriter, client_gone, with_heartbeat
from protocols import openai, response_format, stops
from protocols.errors import ApiError, RelayError, ServiceUnavailableError
from protocols.model import TextDelta, TurnEvent, TurnResult

log = logging.getLogger(__name__)


def _no_result() -> ApiError:
    return ApiError("the turn ended without a result")


@error_envelope(openai.error_body)
async def post_chat_completions(request: web.Request) -> web.StreamResponse:
    info = request_info(request)
    body = await request.read()  # bounded by client_max_size: larger bodies are a 413
    chat = openai.decode_request(body, session_header=request.headers.get(SESSION_HEADER))
    info.model = chat.turn.model
    info.stream = chat.turn.stream
    log.debug("chat request: %r", chat, extra={"request_id": info.request_id})

    pool = request.app[POOL_KEY]
    if pool.claude_error is not None:
        raise ServiceUnavailableError(f"claude is not available: {pool.claude_error}")
    if chat.turn.stream:
        return await _stream(request, pool, chat)
    return await _complete(request, pool, chat)


def _events(turn: AsyncIterable[TurnEvent], chat: openai.ChatRequest) -> AsyncIterable[TurnEvent]:
    """The turn's events with `stop` applied (claude cannot apply it itself)."""
    if not chat.turn.stop_sequences:
        return turn
    return stops.apply(aiter(turn), chat.turn.stop_sequences)


async def _complete(
    request: web.Request, pool: RelayPool, chat: openai.ChatRequest
) -> web.StreamResponse:
    info = request_info(request)
    interval = request.app[CONFIG_KEY].ping_interval
    result: TurnResult | None = None
    # Nothing is written while waiting, so a departed client is noticed by polling on the
    # heartbeat tick; that keeps an abandoned turn from holding a slot until it finishes.
    async with (
        pool.open_turn(chat.turn) as turn,
        aclosing(with_heartbeat(_events(turn, chat), interval)) as events,
    ):
        async for ev in events:
            if ev is None:
                if client_gone(request):
                    log.info("client left; abandoning turn", extra={"request_id": info.request_id})
                    return web.Response(status=499)
            elif isinstance(ev, TurnResult):
                result = ev
    if result is None:
        raise _no_result()
    result = response_format.check_reply(chat.response_format, result)
    payload = openai.encode_completion(
        result,
        request_model=chat.turn.model,
        completion_id=openai.new_completion_id(),
        created=int(time.time()),
    )
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def _stream(
    request: web.Request, pool: RelayPool, chat: openai.ChatRequest
) -> web.StreamResponse:
    info = request_info(request)
    encoder = openai.StreamEncoder(
        chat.turn.model,
        openai.new_completion_id(),
        int(time.time()),
        include_usage=chat.include_usage,
    )
    # Admission comes before the response starts, so 529/503 are still plain JSON errors.
    async with pool.open_turn(chat.turn) as turn:
        sse = SSEWriter(request)
        if await sse.open() and await sse.send(encoder.start()):
            failure = await _pump(sse, encoder, chat, _events(turn, chat))
            if failure is not None and not sse.disconnected and not encoder.closed:
                info.stream_error = failure.openai_type
                await sse.send(encoder.error(failure, info.request_id))
        if sse.disconnected:
            log.info("client left mid-stream", extra={"request_id": info.request_id})
    await sse.close()
    return sse.response


async def _pump(
    sse: SSEWriter,
    encoder: openai.StreamEncoder,
    chat: openai.ChatRequest,
    turn: AsyncIterable[TurnEvent],
) -> RelayError | None:
    """Relay the turn as chunks; return the error to report in-stream, if any."""
    interval = sse.request.app[CONFIG_KEY].ping_interval
    ids = {"request_id": request_info(sse.request).request_id}
    try:
        async with aclosing(sse.relay(turn, ping=encoder.ping, interval=interval)) as events:
            async for ev in events:
                # Read on after the result so the pool's iterator finishes its own bookkeeping.
                if encoder.closed:
                    continue
                if isinstance(ev, TextDelta):
                    if chat.response_format is not None:
                        continue  # sent whole, once checked (see the module docstring)
                    frame = encoder.delta(ev)
                else:
                    frame = encoder.finish(response_format.check_reply(chat.response_format, ev))
                if not await sse.send(frame):
                    return None
    except RelayError as err:
        if encoder.closed:
            log.warning("turn failed after its result: %s", err, extra=ids)
            return None
        return err
    except Exception:
        # The 200 is already committed; the middleware can no longer answer, so report here.
        log.exception("stream failed", extra=ids)
        return ApiError("internal error")
    if not encoder.closed and not sse.disconnected:
        return _no_result()
    return None


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", post_chat_completions)
