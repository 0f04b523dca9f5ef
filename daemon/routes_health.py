"""GET /v1/health (and /health): is the relay up, and can it run claude?

Read-only: reports the pool's counters and why claude is unavailable, if it is. A daemon without a
usable claude binary still answers here with status "degraded" — that is how users find out.
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from claude_relay.daemon import CONFIG_KEY, POOL_KEY, STARTED_KEY
from claude_relay.daemon.errors import request_info
from claude_relay.daemon.license import LICENSE_KEY
from claude_relay.pty_pool import versions


def _port(request: web.Request) -> int:
    # The socket's own port, so `port = 0` (ephemeral, tests) reports the real one.
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
        return sockname[1]
    return request.app[CONFIG_KEY].port


def _claude(app: web.Application, problem: str | None) -> dict[str, object]:
    """Whether claude can run, and whether its version is one the relay is tested on (the
    license monitor asks `claude --version` at start and then every few minutes).

    Health is open to anyone who can connect, so a failure is a category word
    (`claude_not_found`, `dialog:login`, …); the message, which can name paths under the home
    directory or quote claude's screen, is in the daemon's log and in the API errors."""
    source = app.get(LICENSE_KEY)
    version = source.state.version if source is not None else None
    return {
        "available": problem is None,
        "error": problem,
        "version": version,
        "supported": versions.supported(version) if version is not None else None,
        "tested": list(versions.TESTED),
    }


async def get_health(request: web.Request) -> web.Response:
    request_info(request).quiet = True
    pool = request.app[POOL_KEY]
    stats = pool.stats()
    problem = pool.claude_problem
    body = {
        "status": "degraded" if problem is not None else "ok",
        "port": _port(request),
        "sessions": stats.get("sessions", 0),
        "uptime": round(time.monotonic() - request.app[STARTED_KEY], 3),
        "pool": stats,
        "claude": _claude(request.app, problem),
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/health", get_health)
