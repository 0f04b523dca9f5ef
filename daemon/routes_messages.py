"""POST /v1/messages: the Anthropic Messages API served from the pool.

body → `protocols.anthropic.decode_request` (PDFs left unread) → `turns` (PDF text read in child
processes, then `pool.open_turn`: admission) → events → JSON via `encode_message`, or SSE frames
via `StreamEncoder`. Handlers only consume turns: when the client
goes away they stop reading and leave the `async with`, and the pool interrupts claude.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from claude_relay.daemon import POOL_KEY, RelayPool, turns
from claude_relay.daemon.errors import error_envelope, request_info
from claude_relay.protocols import anthropic
from claude_relay.protocols.errors import ServiceUnavailableError
from claude_relay.protocols.model import TextDelta, TurnEvent, TurnRequest

log = logging.getLogger(__name__)

SESSION_HEADER = "X-IR-Session-ID"


@error_envelope(anthropic.error_body)
async def post_messages(request: web.Request) -> web.StreamResponse:
    info = request_info(request)
    # Bounded by the app's client_max_size; a larger body raises 413, rendered by the middleware.
    body = await request.read()
    turn_request = await turns.decode(
        body,
        anthropic.decode_request,
        body,
        session_header=request.headers.get(SESSION_HEADER),
        attachment_limits=turns.attachment_limits(request),
    )
    turn_request = turns.with_app_model(request, turn_request)
    info.model = turn_request.model
    info.stream = turn_request.stream
    log.debug("messages request: %r", turn_request, extra={"request_id": info.request_id})

    pool = request.app[POOL_KEY]
    if pool.claude_error is not None:
        # Say why here rather than relying on the pool's admission error: a daemon without claude
        # still runs (for health), and this is the message its users will read.
        raise ServiceUnavailableError(f"claude is not available: {pool.claude_error}")

    message_id = anthropic.new_message_id()
    if turn_request.stream:
        return await _stream(request, pool, turn_request, message_id)
    return await _complete(request, pool, turn_request, message_id)


async def _complete(
    request: web.Request,
    pool: RelayPool,
    turn_request: TurnRequest,
    message_id: str,
) -> web.StreamResponse:
    try:
        result = await turns.result_of(request, pool, turn_request)
    except turns.ClientGone:
        return web.Response(status=499)
    if turn_request.thinking_budget is None:
        result = result.without_thinking()  # only a request that asked for thinking gets it
    log.debug("reply: %r", result.text, extra={"request_id": request_info(request).request_id})
    payload = anthropic.encode_message(
        result, request_model=turn_request.model, message_id=message_id
    )
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def _stream(
    request: web.Request,
    pool: RelayPool,
    turn_request: TurnRequest,
    message_id: str,
) -> web.StreamResponse:
    thinking = turn_request.thinking_budget is not None
    encoder = anthropic.StreamEncoder(turn_request.model, message_id, thinking=thinking)

    def frame(ev: TurnEvent) -> bytes:
        if isinstance(ev, TextDelta):
            return encoder.delta(ev)
        return encoder.finish(ev if thinking else ev.without_thinking())

    return await turns.stream(
        request,
        pool,
        turn_request,
        encoder,
        frame=frame,
        error_type=lambda err: err.anthropic_type,
    )


def add_routes(app: web.Application) -> None:
    # The SDKs' beta clients POST to /v1/messages?beta=true; query strings do not affect routing.
    app.router.add_post("/v1/messages", post_messages)
