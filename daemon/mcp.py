"""The daemon's MCP server (streamable HTTP, loopback only): each claude's tools and tool calls.

Every claude is started with `--mcp-config` naming `http://127.0.0.1:<port>/mcp/<token>`; the
token selects its `pty_pool.broker.Channel`, and an unknown token is a 404, so one session can
never see another's tools. It listens on its own ephemeral loopback port, not the API's: the
port must be known before the pool spawns its first claude (the API socket binds after startup),
and the endpoint stays off any non-loopback address the API may be bound to.

Only what claude (v2.1.197) uses is implemented: `initialize`, `tools/list`, `tools/call` (answered
on an SSE response, so headers go out at once however long the call is parked), `ping`,
`notifications/*`, and the GET stream that carries `notifications/tools/list_changed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from aiohttp import web

from claude_relay.pty_pool.broker import Broker, Channel, McpResult

log = logging.getLogger(__name__)

BROKER_KEY: Final = web.AppKey("broker", Broker)
_PROTOCOL_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
_KEEPALIVE: Final = 15.0  # seconds between SSE comments on a parked call or an idle GET stream
_SSE_HEADERS: Final = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def _json(obj: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
    )


def _error(rid: object, code: int, message: str, status: int = 200) -> web.Response:
    body = {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
    return _json(body, status)


def _channel(request: web.Request) -> Channel:
    channel = request.app[BROKER_KEY].get(request.match_info["token"])
    if channel is None:
        raise web.HTTPNotFound(text="unknown MCP session")
    return channel


async def post(request: web.Request) -> web.StreamResponse:
    channel = _channel(request)
    try:
        msg = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(None, -32700, "parse error", 400)
    if not isinstance(msg, dict):
        return _error(None, -32600, "one JSON-RPC message per request", 400)
    method = msg.get("method")
    rid = msg.get("id")
    params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
    assert isinstance(params, dict)
    if not isinstance(method, str) or rid is None:  # a notification or a response
        if method == "notifications/cancelled":
            _cancelled(request, channel, params.get("requestId"))
        return web.Response(status=202)
    if method == "initialize":
        asked = params.get("protocolVersion")
        version = asked if asked in _PROTOCOL_VERSIONS else _PROTOCOL_VERSIONS[1]
        result = {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": True}},
            "serverInfo": {"name": "claude-relay", "version": "1"},
        }
        return _json({"jsonrpc": "2.0", "id": rid, "result": result}, headers=_session(channel))
    if method == "tools/list":
        result = {"tools": channel.list_tools()}
        return _json({"jsonrpc": "2.0", "id": rid, "result": result})
    if method == "ping":
        return _json({"jsonrpc": "2.0", "id": rid, "result": {}})
    if method == "tools/call":
        return await _call(request, channel, rid, params)
    return _error(rid, -32601, f"method not found: {method}")


def _session(channel: Channel) -> dict[str, str]:
    # The token already identifies the session; echoing a derived id keeps clients that require
    # the header happy without a second secret.
    return {"mcp-session-id": channel.token[:16]}


_CALLS_KEY: Final = web.AppKey("mcp_calls", dict[tuple[str, str], str])


def _cancelled(request: web.Request, channel: Channel, request_id: object) -> None:
    tool_use_id = request.app[_CALLS_KEY].get((channel.token, repr(request_id)))
    if tool_use_id is not None:
        log.info("claude cancelled tool call %s", tool_use_id)
        channel.cancelled(tool_use_id)


async def _call(
    request: web.Request, channel: Channel, rid: object, params: dict[str, Any]
) -> web.StreamResponse:
    name = params.get("name")
    arguments = params.get("arguments") or {}
    meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
    assert isinstance(meta, dict)
    tool_use_id = meta.get("claudecode/toolUseId")
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return _error(rid, -32602, "tools/call needs a name and object arguments")
    if not isinstance(tool_use_id, str):
        # claude (v2.1.197) always sends it; without it a result could not be matched
        tool_use_id = f"call-{channel.token[:8]}-{rid}"
    log.info("claude called tool %s (%s)", name, tool_use_id)
    calls = request.app[_CALLS_KEY]
    key = (channel.token, repr(rid))
    calls[key] = tool_use_id
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    task = asyncio.ensure_future(channel.call(name, arguments, tool_use_id))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_KEEPALIVE)
            if done:
                break
            await response.write(b": keepalive\n\n")
        try:
            result: McpResult = task.result()
        except asyncio.CancelledError:
            return response  # claude cancelled the call: it expects no answer
        frame = {"jsonrpc": "2.0", "id": rid, "result": result}
        await response.write(b"event: message\ndata: " + orjson.dumps(frame) + b"\n\n")
        await response.write_eof()
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        channel.cancelled(tool_use_id)  # claude hung up
        raise
    finally:
        calls.pop(key, None)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def get_stream(request: web.Request) -> web.StreamResponse:
    """Server→client messages: claude keeps this open to hear `tools/list_changed`."""
    channel = _channel(request)
    response = web.StreamResponse(headers={**_SSE_HEADERS, **_session(channel)})
    await response.prepare(request)
    notes = aiter(channel.notifications())
    pending: asyncio.Task[dict[str, Any]] | None = None
    try:
        while not channel.closed:
            pending = pending or asyncio.ensure_future(anext(notes))
            done, _ = await asyncio.wait({pending}, timeout=_KEEPALIVE)
            if not done:
                await response.write(b": keepalive\n\n")
                continue
            note = pending.result()
            pending = None
            if note:
                await response.write(b"event: message\ndata: " + orjson.dumps(note) + b"\n\n")
    except (ConnectionResetError, StopAsyncIteration):
        pass
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
    return response


async def delete(request: web.Request) -> web.Response:
    _channel(request)
    return web.Response(status=204)


def make_mcp_app(broker: Broker) -> web.Application:
    app = web.Application()
    app[BROKER_KEY] = broker
    app[_CALLS_KEY] = {}
    app.router.add_post("/mcp/{token}", post)
    app.router.add_get("/mcp/{token}", get_stream)
    app.router.add_delete("/mcp/{token}", delete)
    return app


@contextlib.asynccontextmanager
async def serving(broker: Broker) -> AsyncIterator[str]:
    """Run the MCP endpoint on an ephemeral loopback port; yields (and sets) `broker.url`."""
    runner = web.AppRunner(make_mcp_app(broker), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    broker.url = f"http://{host}:{port}/mcp"
    try:
        yield broker.url
    finally:
        broker.url = None
        # parked calls and GET streams would otherwise hold the cleanup for their full timeout
        await runner.shutdown()
        await runner.cleanup()
