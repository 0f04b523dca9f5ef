"""Assemble the aiohttp application: config and pool in typed keys, middleware, routes.

aiohttp owns the pool's lifetime: one cleanup_ctx starts it with the app and closes it at cleanup.
The CLI (or a test client) runs the app; nothing here binds a socket.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from claude_relay.daemon import (
    CONFIG_KEY,
    POOL_KEY,
    STARTED_KEY,
    RelayPool,
    dashboard,
    demo,
    mcp,
    routes_health,
    routes_messages,
    routes_models,
    routes_openai,
    routes_ops,
    routes_sessions,
    turns,
)
from claude_relay.daemon.auth import make_auth_middleware
from claude_relay.daemon.config import Config
from claude_relay.daemon.dashboard_turns import RecentTurns, RecordingPool
from claude_relay.daemon.errors import make_error_middleware
from claude_relay.daemon.guard import GuardPolicy, make_guard_middleware
from claude_relay.daemon.license import (
    LICENSE_KEY,
    FixedLicense,
    LicensedPool,
    LicenseMonitor,
    LicenseSource,
    LicenseState,
    license_lifetime,
)
from claude_relay.daemon.mcp import BROKER_KEY
from claude_relay.daemon.metrics import METRICS_KEY, MeteredPool, Metrics, metrics_middleware
from claude_relay.protocols import anthropic
from claude_relay.pty_pool.broker import Broker
from claude_relay.pty_pool.pool import Pool


async def _mcp_lifetime(app: web.Application) -> AsyncIterator[None]:
    async with mcp.serving(app[BROKER_KEY]):
        yield


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


def make_app(
    config: Config,
    *,
    pool: RelayPool | None = None,
    license_source: LicenseSource | None = None,
    demo_url: str | None = None,
) -> web.Application:
    app = web.Application(
        # Also bounds request.read(): a larger body raises 413, rendered as request_too_large.
        client_max_size=config.max_body_bytes,
        # Anthropic is the default envelope, also for unmatched routes; routes of other APIs
        # mark themselves with daemon.errors.error_envelope. Metrics sit outside to see the
        # final status; the browser guard and auth inside, so their 403/415/401 get the envelope
        # of the route asked for. The guard goes first: a rebound page learns nothing, not even
        # whether keys are required.
        middlewares=[
            metrics_middleware,
            make_error_middleware(anthropic.error_body),
            make_guard_middleware(GuardPolicy.from_config(config)),
            # the dashboard's page files hold no data and a browser navigation sends no key
            dashboard.shell_middleware,
            make_auth_middleware(config.key_list()),
            # demo mode (serve --demo): replies' model and health say "demo"
            *([demo.demo_middleware] if demo_url is not None else []),
        ],
    )
    if demo_url is not None:
        app[demo.DEMO_KEY] = demo_url
        app[turns.MODEL_OVERRIDE] = demo.DEMO_MODEL
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = Metrics()
    license = license_source
    if license is None:
        # A test pool has no claude to ask; the real pool gets a monitor of its claude's login.
        license = (
            LicenseMonitor.for_config(config)
            if pool is None
            else FixedLicense(LicenseState(config.claude_bin))
        )
    app[LICENSE_KEY] = license
    # The broker serves requests' tools to each claude over MCP (daemon.mcp); a test pool has
    # its own or none.
    app[BROKER_KEY] = Broker()
    inner = pool if pool is not None else Pool(config.pool_settings(), broker=app[BROKER_KEY])
    # Routes see the pool through these wrappers: the dashboard's turn list outermost (it lists
    # refused turns too), then the license gate, metrics inside.
    recent = RecentTurns()
    app[POOL_KEY] = RecordingPool(
        LicensedPool(MeteredPool(inner, app[METRICS_KEY]), license), recent
    )
    app[STARTED_KEY] = time.monotonic()
    # MCP first: claudes spawned by the pool connect to it at startup, and it must outlive them.
    app.cleanup_ctx.append(_mcp_lifetime)
    app.cleanup_ctx.append(_pool_lifetime)
    if isinstance(license, LicenseMonitor):
        app.cleanup_ctx.append(license_lifetime(license))
    app.on_shutdown.append(_drain_pool)
    routes_messages.add_routes(app)
    routes_health.add_routes(app)
    routes_sessions.add_routes(app)
    routes_ops.add_routes(app)
    routes_openai.add_routes(app)
    routes_models.add_routes(app)
    dashboard.install(app, inner, recent)
    _add_unprefixed_routes(app)  # last, so that every module's routes are covered
    return app


def _add_unprefixed_routes(app: web.Application) -> None:
    """Serve every `/v1/...` route at `/...` too, for clients configured with a bare base URL
    (an OpenAI client's base_url usually ends in /v1, an Anthropic one's does not). A path that
    is already registered without the prefix keeps its own handler."""
    taken = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    for route in list(app.router.routes()):
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/v1/") and (route.method, path[3:]) not in taken:
            app.router.add_route(route.method, path[3:], route.handler)
