"""A `RelayPool` that forwards everything to another one: the base of the daemon's pool wrappers.

The HTTP routes only know `app[POOL_KEY]`; wrapping the real pool is how the daemon observes
turns (metrics) and refuses them (license gate) without touching the routes or `pty_pool`.
Subclasses override what they watch. When `RelayPool` gains a method, add its forwarder here:
mypy then checks every wrapper at the one place that stores it as a `RelayPool` (daemon.app).
"""

from __future__ import annotations

from claude_relay.daemon import RelayPool, TurnHandle
from claude_relay.protocols.model import TurnRequest


class PoolProxy:
    def __init__(self, inner: RelayPool) -> None:
        self.inner = inner

    async def start(self) -> None:
        await self.inner.start()

    async def close(self, grace: float = 10.0) -> None:
        await self.inner.close(grace)

    def open_turn(self, request: TurnRequest) -> TurnHandle:
        return self.inner.open_turn(request)

    def stats(self) -> dict[str, int]:
        return self.inner.stats()

    def recycle(self) -> None:
        self.inner.recycle()

    def sessions(self, owner: str | None = None) -> list[dict[str, object]]:
        return self.inner.sessions(owner)

    async def close_session(self, sid: str, owner: str | None = None) -> bool:
        return await self.inner.close_session(sid, owner)

    @property
    def claude_error(self) -> str | None:
        return self.inner.claude_error

    @property
    def claude_problem(self) -> str | None:
        return self.inner.claude_problem
