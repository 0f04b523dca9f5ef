"""Assemble the aiohttp application: config and pool in typed keys, middleware, routes.

aiohttp owns the pool's lifetime: one cleanup_ctx starts it with the app and closes it at cleanup.
The CLI (or a test client) runs the app; nothing here binds a socket.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from daemon import (
    CONFIG_KEY,
    POOL_KEY,
    STARTED_KEY,
    RelayPool,
    routes_health,
    routes_messages,
    routes_sessions,
)
from daemon.config import Config
from daemon.errors import make_error_middleware
from protocols import anthropic
from pty_pool.pool import Pool


async def _pool_lifetime(app: web.Application) -> AsyncIterator[None]:
    pool = app[POOL_KEY]
    await pool.start()  # begins warming in the background; a missing claude is not an error here
    yield
    # Deliberately not in a `finally`: after a forced exit asyncio finalizes this generator, and
    # the CLI has already closed the pool with no grace; waiting out the grace then would undo
    # the force.
    await pool.close(grace=app[CONFIG_KEY].shutdown_grace)


async def _drain_pool(app: web.Application) -> None:
    # aiohttp runs on_shutdown after the listener has stopped but before it waits for (and then
    # cancels) running handlers, while cleanup_ctx exits only after that. Draining here lets
    # running turns finish within the grace period and interrupted streams still end with an
    # error event; the cleanup_ctx's close then finds the pool already closed.
    await app[POOL_KEY].close(grace=app[CONFIG_KEY].shutdown_grace)


def make_app(config: Config, *, pool: RelayPool | None = None) -> web.Application:
    app = web.Application(
        # Also bounds request.read(): a larger body raises 413, rendered as request_too_large.
        client_max_size=config.max_body_bytes,
        # Anthropic is the default envelope, also for unmatched routes; routes of other APIs
        # mark themselves with daemon.errors.error_envelope.
        middlewares=[make_error_middleware(anthropic.error_body)],
    )
    app[CONFIG_KEY] = config
    app[POOL_KEY] = pool if pool is not None else Pool(config.pool_settings())
    app[STARTED_KEY] = time.monotonic()
    app.cleanup_ctx.append(_pool_lifetime)
    app.on_shutdown.append(_drain_pool)
    routes_messages.add_routes(app)
    routes_health.add_routes(app)
    routes_sessions.add_routes(app)
    return app
