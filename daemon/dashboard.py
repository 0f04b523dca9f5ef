"""The live dashboard at /dashboard: the pool, sticky sessions, parked tool calls, recent turns,
the login, and each live claude's screen, mirrored read-only while it changes.

The page (daemon/static/, no build step, no CDN) is a shell with no data, served to any request
the browser guard lets through, because a browser's navigation cannot carry an API key. All data
comes from GET /dashboard/events, a server-sent event stream behind the same guard and keys as
the API (the page sends the key in a header, read through fetch: EventSource cannot send one).
Screens are the pyte snapshots the sessions already hold (`Session.screen()`): the mirror reads,
at most `SCREEN_RATE` times a second per session and only when the screen changed, and never
waits on a turn. With API keys, a caller sees only its own key's conversations and turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from importlib import resources
from typing import Final

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from claude_relay.daemon import CONFIG_KEY, POOL_KEY, STARTED_KEY
from claude_relay.daemon.auth import tenant
from claude_relay.daemon.dashboard_turns import RecentTurns
from claude_relay.daemon.demo import DEMO_KEY
from claude_relay.daemon.license import LICENSE_KEY
from claude_relay.pty_pool.pool import Pool
from claude_relay.pty_pool.screen import Snapshot
from claude_relay.pty_pool.session import Session

log = logging.getLogger(__name__)

SCREEN_RATE: Final = 10.0  # screen frames per second per session, at most
STATE_INTERVAL: Final = 1.0  # seconds between looks at the pool's state (sent when changed)
KEEPALIVE: Final = 15.0  # seconds of silence before a comment line keeps proxies from closing
# The page's files: name → content type. Nothing else under static/ is served.
_ASSETS: Final = {
    "dashboard.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
_SHELL: Final = {
    "/dashboard": "dashboard.html",
    "/dashboard/": "dashboard.html",
    "/dashboard/dashboard.js": "dashboard.js",
    "/dashboard/dashboard.css": "dashboard.css",
}
# The shell holds no data, but must not be framed by another site (clickjacking the key prompt)
# nor run anything but its own script.
_SHELL_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

RECENT_KEY: Final = web.AppKey("dashboard_recent", RecentTurns)
SCREENS_KEY: Final = web.AppKey("dashboard_pool", Pool)  # absent for test pools
_STOP_KEY: Final = web.AppKey("dashboard_stop", asyncio.Event)


@functools.cache
def _asset(name: str) -> bytes:
    """A page file's bytes; blocking the first time (a file read): call through a thread."""
    return (resources.files("claude_relay.daemon") / "static" / name).read_bytes()


async def shell(request: web.Request) -> web.Response:
    name = _SHELL[request.path]
    return web.Response(
        body=await asyncio.to_thread(_asset, name),
        content_type=_ASSETS[name],
        charset="utf-8",
        headers=_SHELL_HEADERS,
    )


@web.middleware
async def shell_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serves the page's files before the key check (sits inside the browser guard, outside
    auth): a navigation has no way to send a key, and these files hold nothing private."""
    if request.method in ("GET", "HEAD") and request.path in _SHELL:
        return await shell(request)
    return await handler(request)


# --- what a caller may see ---------------------------------------------------------------------


def _all_visible(request: web.Request) -> bool:
    """Without API keys there is one tenant, who may see everything."""
    return not request.app[CONFIG_KEY].key_list()


LiveSession = tuple[str, Session, str | None, str | None]  # role, session, sticky id, owner


def _visible(request: web.Request) -> list[LiveSession]:
    """The live claudes this caller may see.

    With keys: a warm claude (nothing asked of it yet) for anyone, a sticky or parked one only
    for the key whose conversation it holds, and one running a stateless turn for nobody (the
    pool does not record whose it is)."""
    pool = request.app.get(SCREENS_KEY)
    if pool is None:
        return []
    if _all_visible(request):
        return pool.live_sessions()
    me = tenant(request)
    return [
        live
        for live in pool.live_sessions()
        if live[0] == "warm" or (live[0] != "busy" and live[3] == me)
    ]


def _live(request: web.Request) -> list[dict[str, object]]:
    return [
        {
            "id": session.id,
            "role": role,
            "sticky_id": sticky_id,
            "state": session.state,
            "pid": session.pid,
            "turns": session.turns,
            "created": session.created,
            "last_used": session.last_used,
            "parked_tool_use_ids": list(session.parked_ids),
            "model": session.spec.model or "default",
        }
        for role, session, sticky_id, _ in _visible(request)
    ]


def state(request: web.Request) -> dict[str, object]:
    app = request.app
    pool = app[POOL_KEY]
    license = app[LICENSE_KEY].state
    everyone = _all_visible(request)
    live = _live(request)
    return {
        "relay": {
            "demo": DEMO_KEY in app,
            "keys": not everyone,
            "uptime": round(time.monotonic() - app[STARTED_KEY]),
        },
        "pool": pool.stats(),
        "claude": {
            "error": pool.claude_error,
            "version": license.version,
            "path": license.binary,
        },
        "license": license.body(),
        "sessions": pool.sessions(tenant(request)),
        "live": live,
        "parked": [
            {"session": s["id"], "sticky_id": s["sticky_id"], "tool_use_ids": ids}
            for s in live
            if (ids := s["parked_tool_use_ids"])
        ],
        "turns": app[RECENT_KEY].visible_to(tenant(request), all_owners=everyone),
    }


def screen_body(session_id: str, snap: Snapshot) -> dict[str, object]:
    rows = [row.text for row in snap.rows]
    while rows and not rows[-1]:
        rows.pop()
    return {"id": session_id, "seq": snap.seq, "title": snap.title, "rows": rows}


# --- the event stream --------------------------------------------------------------------------


def _frame(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold frames back
        }
    )
    await response.prepare(request)
    stop = request.app[_STOP_KEY]
    sent_state = b""
    sent_seq: dict[str, int] = {}
    next_state = 0.0
    quiet_since = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        while not stop.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the page was closed: nothing to write to
            now = time.monotonic()
            out: list[bytes] = []
            if now >= next_state:
                next_state = now + STATE_INTERVAL
                body = orjson.dumps(state(request))
                if body != sent_state:
                    sent_state = body
                    out.append(b"event: state\ndata: " + body + b"\n\n")
            visible = {live[1].id: live[1] for live in _visible(request)}
            for sid, session in visible.items():
                snap = session.screen()  # the session's own cached render while unchanged
                if sent_seq.get(sid) != snap.seq:
                    sent_seq[sid] = snap.seq
                    out.append(_frame("screen", screen_body(sid, snap)))
            for sid in set(sent_seq) - set(visible):
                del sent_seq[sid]
                out.append(_frame("gone", {"id": sid}))
            if out:
                quiet_since = now
                await response.write(b"".join(out))
            elif now - quiet_since >= KEEPALIVE:
                quiet_since = now
                await response.write(b": keepalive\n\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / SCREEN_RATE)
    return response


async def _stop_streams(app: web.Application) -> None:
    # Before the pool drains: an open dashboard must not hold up a shutdown.
    app[_STOP_KEY].set()


def install(app: web.Application, pool: object, recent: RecentTurns) -> None:
    """Routes, state and the shutdown hook; `pool` is the real pool (its screens are mirrored)
    or a test's stand-in (then no screens)."""
    app[RECENT_KEY] = recent
    if isinstance(pool, Pool):
        app[SCREENS_KEY] = pool
    app[_STOP_KEY] = asyncio.Event()
    app.on_shutdown.insert(0, _stop_streams)
    for path in _SHELL:
        app.router.add_get(path, shell)
    app.router.add_get("/dashboard/events", events)
