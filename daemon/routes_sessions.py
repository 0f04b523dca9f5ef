"""GET /v1/sessions and DELETE /v1/sessions/{id}: inspect the pool and its sticky sessions.

Read from the pool's own bookkeeping; nothing here touches a process except DELETE, which asks
the pool to close the session (the pool waits for a running turn on it to finish first).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from claude_relay.daemon import POOL_KEY
from claude_relay.daemon.auth import tenant
from claude_relay.protocols.errors import NotFoundError, excerpt


async def list_sessions(request: web.Request) -> web.Response:
    pool = request.app[POOL_KEY]
    stats = pool.stats()
    body = {
        "pool": {
            "warm": stats.get("warm", 0),
            "busy": stats.get("busy", 0),
            "sticky": stats.get("sticky", 0),
            "max": stats.get("max_busy", 0),
            "max_sticky": stats.get("max_sticky", 0),
            "queued": stats.get("queued", 0),
        },
        # With API keys each key sees (and may delete or continue) only the ids it made;
        # without keys there is one tenant.
        "sessions": pool.sessions(tenant(request)),
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def delete_session(request: web.Request) -> web.Response:
    sid = request.match_info["id"]
    if not await request.app[POOL_KEY].close_session(sid, tenant(request)):
        raise NotFoundError(f"no session with id {excerpt(sid)}")
    return web.Response(
        body=orjson.dumps({"id": sid, "deleted": True}), content_type="application/json"
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/sessions", list_sessions)
    app.router.add_delete("/v1/sessions/{id}", delete_session)
