"""The HTTP edge of claude-relay: aiohttp app, routes, SSE writer, middleware, config and CLI.

The only package that imports aiohttp. Handlers decode with `protocols`, run turns on the
`pty_pool` pool, and encode the results back. This module holds what every part of the daemon
shares — the typed app keys and the pool seam — so route modules need not import `daemon.app`
(which imports them).
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from types import TracebackType
from typing import Protocol

from aiohttp import web

from claude_relay.daemon.config import Config
from claude_relay.protocols.model import TurnEvent, TurnRequest


class TurnHandle(Protocol):
    """What `pty_pool.pool.Pool.open_turn` returns: admission on enter, events by iteration."""

    async def __aenter__(self) -> AsyncIterable[TurnEvent]: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class RelayPool(Protocol):
    """The pool as the daemon uses it; `pty_pool.pool.Pool` is the real one, tests pass fakes."""

    async def start(self) -> None: ...

    async def close(self, grace: float = ...) -> None: ...

    def open_turn(self, request: TurnRequest) -> TurnHandle: ...

    def stats(self) -> dict[str, int]: ...

    def recycle(self) -> None: ...

    def sessions(self, owner: str | None = None) -> list[dict[str, object]]: ...

    async def close_session(self, sid: str, owner: str | None = None) -> bool: ...

    @property
    def claude_error(self) -> str | None: ...

    @property
    def claude_problem(self) -> str | None:
        """`claude_error` as a category word, for unauthenticated readers (health)."""


CONFIG_KEY = web.AppKey("config", Config)
POOL_KEY = web.AppKey[RelayPool]("pool")
STARTED_KEY = web.AppKey("started", float)  # time.monotonic() when the app was made
