"""Operations endpoints: /v1/version, /v1/availability, /v1/license (+ refresh) and /metrics.

Read-only views of cached state (the license monitor's last check, the pool's counters, the
metrics): none of them starts a claude or waits for one, except `POST /v1/license/refresh`, which
runs one check (bounded by the probe timeout) because the caller asked for exactly that.
"""

from __future__ import annotations

import asyncio
import platform
import sys
from functools import cache
from importlib import metadata

import orjson
from aiohttp import web

from claude_relay.daemon import POOL_KEY
from claude_relay.daemon.license import LICENSE_KEY, LicenseState
from claude_relay.daemon.metrics import CONTENT_TYPE, METRICS_KEY


@cache
def relay_version() -> str:
    """The installed package's version. Blocking the first time (it searches sys.path):
    routes call `version_now`."""
    try:
        return metadata.version("claude-relay")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


async def version_now() -> str:
    return await asyncio.to_thread(relay_version)


def _json(body: object) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def missing(state: LicenseState, claude_error: str | None) -> list[str]:
    """What keeps the relay from serving: "claude" (binary not found), "login", "ready"."""
    out = []
    if state.missing:
        out.append("claude")
    elif state.logged_out:
        out.append("login")
    elif claude_error is not None:
        out.append("ready")  # found and logged in, but it cannot be started (see /v1/health)
    return out


async def get_version(request: web.Request) -> web.Response:
    state = request.app[LICENSE_KEY].state
    return _json(
        {
            "relay": await version_now(),
            "platform": sys.platform,
            "arch": platform.machine(),
            "python": platform.python_version(),
            "claudeAvailable": state.version is not None,
            "claudeVersion": state.version,
            "claudeMissing": state.missing,
            "claudePath": state.binary,
        }
    )


async def get_availability(request: web.Request) -> web.Response:
    gaps = missing(request.app[LICENSE_KEY].state, request.app[POOL_KEY].claude_error)
    return _json({"ok": not gaps, "missing": gaps})


async def get_license(request: web.Request) -> web.Response:
    return _json(request.app[LICENSE_KEY].state.body())


async def post_license_refresh(request: web.Request) -> web.Response:
    state = await request.app[LICENSE_KEY].refresh()
    return _json(state.body())


async def get_metrics(request: web.Request) -> web.Response:
    pool = request.app[POOL_KEY]
    state = request.app[LICENSE_KEY].state
    version = await version_now()
    text = await asyncio.to_thread(
        request.app[METRICS_KEY].render,
        dict(pool.stats()),
        claude_available=pool.claude_error is None,
        logged_in=state.auth.logged_in if state.auth is not None else None,
        version=version,
        claude_version=state.version,
    )
    # The exposition format's content type has a version parameter, which `content_type=` in
    # aiohttp rejects; set the header as a whole.
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/version", get_version)
    app.router.add_get("/v1/availability", get_availability)
    app.router.add_get("/v1/license", get_license)
    app.router.add_post("/v1/license/refresh", post_license_refresh)
    app.router.add_get("/metrics", get_metrics)
