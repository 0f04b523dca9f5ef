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
from dataclasses import replace

import orjson
from aiohttp import web

from claude_relay.daemon import POOL_KEY, RelayPool, turns
from claude_relay.daemon.errors import error_envelope, request_info
from claude_relay.daemon.routes_messages import SESSION_HEADER
from claude_relay.protocols import openai, response_format
from claude_relay.protocols.errors import ServiceUnavailableError
from claude_relay.protocols.model import TextDelta, TurnEvent

log = logging.getLogger(__name__)


@error_envelope(openai.error_body)
async def post_chat_completions(request: web.Request) -> web.StreamResponse:
    info = request_info(request)
    body = await request.read()  # bounded by client_max_size: larger bodies are a 413
    chat = await turns.decode(
        body,
        openai.decode_request,
        body,
        session_header=request.headers.get(SESSION_HEADER),
        attachment_limits=turns.attachment_limits(request),
    )
    chat = replace(chat, turn=turns.with_app_model(request, chat.turn))
    info.model = chat.turn.model
    info.stream = chat.turn.stream
    log.debug("chat request: %r", chat, extra={"request_id": info.request_id})

    pool = request.app[POOL_KEY]
    if pool.claude_error is not None:
        raise ServiceUnavailableError(f"claude is not available: {pool.claude_error}")
    if chat.turn.stream:
        return await _stream(request, pool, chat)
    return await _complete(request, pool, chat)


async def _complete(
    request: web.Request, pool: RelayPool, chat: openai.ChatRequest
) -> web.StreamResponse:
    try:
        result = await turns.result_of(request, pool, chat.turn)
    except turns.ClientGone:
        return web.Response(status=499)
    result = response_format.check_reply(chat.response_format, result)
    if chat.turn.thinking_budget is None:
        result = result.without_thinking()  # only a request that asked for thinking gets it
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
    thinking = chat.turn.thinking_budget is not None
    encoder = openai.StreamEncoder(
        chat.turn.model,
        openai.new_completion_id(),
        int(time.time()),
        include_usage=chat.include_usage,
        thinking=thinking,
    )

    def frame(ev: TurnEvent) -> bytes:
        if isinstance(ev, TextDelta):
            # with a JSON response_format the text is sent whole, once checked (module doc)
            return b"" if chat.response_format is not None else encoder.delta(ev)
        result = response_format.check_reply(chat.response_format, ev)
        return encoder.finish(result if thinking else result.without_thinking())

    return await turns.stream(
        request, pool, chat.turn, encoder, frame=frame, error_type=lambda err: err.openai_type
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", post_chat_completions)
