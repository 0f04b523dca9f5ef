"""Recent turns for the dashboard: each one's model, latency, outcome and error, the last few kept.

`RecordingPool` wraps the pool the routes see (outermost, so turns the license gate or admission
refuses, such as a 529 when the pool is full, are listed too) and watches each turn's events the
way `daemon.metrics.MeteredPool` does, without touching the routes or `pty_pool`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from claude_relay.daemon import RelayPool, TurnHandle
from claude_relay.daemon.metrics import ObservedEvents
from claude_relay.daemon.pool_proxy import PoolProxy
from claude_relay.protocols.errors import RelayError
from claude_relay.protocols.model import TextDelta, TurnEvent, TurnRequest, TurnResult

KEEP: Final = 50


@dataclass(slots=True)
class TurnRecord:
    started: float  # time.time()
    model: str
    stream: bool
    session_id: str | None
    owner: str | None  # the caller's tenant tag: a dashboard shows each key only its own
    outcome: str = "running"  # running, ok, error, rejected, abandoned
    status: int | None = None  # the HTTP status the turn's error maps to; 200 when it ended well
    error_type: str | None = None
    error: str | None = None
    first_text_ms: float | None = None
    duration_ms: float | None = None
    stop_reason: str | None = None
    output_tokens: int | None = None

    def body(self) -> dict[str, object]:
        return {
            "started": self.started,
            "model": self.model,
            "stream": self.stream,
            "session_id": self.session_id,
            "outcome": self.outcome,
            "status": self.status,
            "error_type": self.error_type,
            "error": self.error,
            "first_text_ms": self.first_text_ms,
            "duration_ms": self.duration_ms,
            "stop_reason": self.stop_reason,
            "output_tokens": self.output_tokens,
        }


class RecentTurns:
    """The last `KEEP` turns, newest first."""

    def __init__(self) -> None:
        self._turns: deque[TurnRecord] = deque(maxlen=KEEP)

    def add(self, record: TurnRecord) -> None:
        self._turns.appendleft(record)

    def visible_to(self, owner: str | None, *, all_owners: bool) -> list[dict[str, object]]:
        return [t.body() for t in self._turns if all_owners or t.owner == owner]


class RecordingPool(PoolProxy):
    def __init__(self, inner: RelayPool, recent: RecentTurns) -> None:
        super().__init__(inner)
        self.recent = recent

    def open_turn(self, request: TurnRequest) -> TurnHandle:
        record = TurnRecord(
            started=time.time(),
            model=request.model,
            stream=request.stream,
            session_id=request.session_id,
            owner=request.owner,
        )
        self.recent.add(record)
        return _RecordedTurn(self.inner.open_turn(request), record)


class _RecordedTurn:
    def __init__(self, inner: TurnHandle, record: TurnRecord) -> None:
        self._inner = inner
        self.record = record
        self._t0 = time.monotonic()

    def ms(self) -> float:
        return round((time.monotonic() - self._t0) * 1000, 1)

    async def __aenter__(self) -> AsyncIterable[TurnEvent]:
        try:
            events = await self._inner.__aenter__()
        except RelayError as err:
            self.failed(err, outcome="rejected")
            raise
        return ObservedEvents(events, self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.record.outcome == "running":
            self.record.outcome = "error" if isinstance(exc, Exception) else "abandoned"
            self.record.duration_ms = self.ms()
        await self._inner.__aexit__(exc_type, exc, tb)

    def raised(self, exc: Exception) -> None:
        if isinstance(exc, RelayError):
            self.failed(exc)

    def failed(self, err: RelayError, *, outcome: str = "error") -> None:
        record = self.record
        record.outcome = outcome
        record.status = err.status
        record.error_type = err.anthropic_type
        record.error = err.message[:300]
        record.duration_ms = self.ms()

    def saw(self, ev: TurnEvent) -> None:
        record = self.record
        if isinstance(ev, TextDelta):
            if record.first_text_ms is None and ev.text:
                record.first_text_ms = self.ms()
        elif isinstance(ev, TurnResult):
            record.outcome = "ok"
            record.status = 200
            record.duration_ms = self.ms()
            record.stop_reason = ev.stop_reason
            record.output_tokens = ev.usage.output_tokens
            if record.first_text_ms is None and ev.text:
                record.first_text_ms = record.duration_ms
