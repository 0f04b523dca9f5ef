"""Prometheus metrics: what the daemon counts, and the text exposition format (0.0.4) it serves.

Counted where it happens without touching the routes or the pool: `MeteredPool` wraps the pool
and watches each turn's events (admission, first text, result with usage, errors), and
`metrics_middleware` sees every request's final status. Pool gauges are read from `pool.stats()`
at scrape time. Hand-written rather than a client library: a few counters and two histograms do
not justify a runtime dependency; tests check the output with `prometheus_client`'s parser.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from claude_relay.daemon import RelayPool, TurnHandle
from claude_relay.daemon.pool_proxy import PoolProxy
from claude_relay.protocols.errors import RelayError
from claude_relay.protocols.model import TextDelta, TurnEvent, TurnRequest, TurnResult

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX: Final = "claude_relay_"
# Turns span queueing, a cold start (~2 s) and long generations (turn_timeout is 600 s).
TURN_BUCKETS: Final = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FIRST_DELTA_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
TOKEN_TYPES: Final = ("input", "output", "cache_read_input", "cache_creation_input")
OUTCOMES: Final = ("ok", "error", "abandoned")
# The method label's values: a client chooses the method, and each new label value is a new
# series kept for the daemon's lifetime, so anything else is counted as "other".
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)) + "}"


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = _PREFIX + name
        self.help = help_text
        self.labels = tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        lines = _header(self.name, "counter", self.help)
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.labels, key)} {_num(value)}")
        return lines


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name = _PREFIX + name
        self.help = help_text
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)  # per bucket, not yet cumulative
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = _header(self.name, "histogram", self.help)
        running = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            lines.append(f'{self.name}_bucket{{le="{_num(bound)}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {_num(self.sum)}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


def _gauge(name: str, help_text: str, samples: Mapping[str, float], label: str = "") -> list[str]:
    """A gauge; with `label`, one sample per key of `samples`, else the single value under ""."""
    full = _PREFIX + name
    lines = _header(full, "gauge", help_text)
    for key, value in samples.items():
        lines.append(f"{full}{_labels((label,), (key,)) if label else ''} {_num(value)}")
    return lines


class Metrics:
    """The daemon's counters; one per app, filled by the wrapper and middleware below."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by route template, method and final status.",
            ("route", "method", "status"),
        )
        self.turns = Counter(
            "turns_total",
            "Admitted turns by outcome: ok, error, abandoned (the client left first).",
            ("outcome",),
        )
        self.turn_seconds = Histogram(
            "turn_duration_seconds",
            "Seconds from admission to the turn's result (queueing and cold starts included).",
            TURN_BUCKETS,
        )
        self.first_delta_seconds = Histogram(
            "time_to_first_delta_seconds",
            "Seconds from admission to the first text of the reply.",
            FIRST_DELTA_BUCKETS,
        )
        self.upstream_errors = Counter(
            "upstream_errors_total",
            "Turns that failed after admission, by Anthropic error type.",
            ("type",),
        )
        self.rejections = Counter(
            "admission_rejections_total",
            "Turns refused before they ran (queue full, claude unavailable), by error type.",
            ("type",),
        )
        self.tokens = Counter(
            "tokens_total", "Tokens the upstream reported for completed turns.", ("type",)
        )
        # Series that alerts divide by exist from the start, at zero.
        for outcome in OUTCOMES:
            self.turns.inc(outcome, amount=0)
        for kind in TOKEN_TYPES:
            self.tokens.inc(kind, amount=0)

    def render(
        self,
        stats: Mapping[str, int],
        *,
        claude_available: bool,
        logged_in: bool | None,
        version: str,
        claude_version: str | None,
    ) -> str:
        lines: list[str] = []
        for counter in (self.requests, self.turns, self.upstream_errors, self.rejections):
            lines += counter.render()
        lines += self.turn_seconds.render()
        lines += self.first_delta_seconds.render()
        lines += self.tokens.render()
        states = ("warm", "busy", "starting", "sticky")
        lines += _gauge(
            "pool_sessions",
            "claude sessions by state (sticky ones can also be busy).",
            {s: stats.get(s, 0) for s in states},
            "state",
        )
        lines += _gauge(
            "pool_queued_requests",
            "Admitted turns waiting for a slot.",
            {"": stats.get("queued", 0)},
        )
        lines += _gauge(
            "pool_max_busy", "Turns allowed to run at once.", {"": stats.get("max_busy", 0)}
        )
        for name, key, help_text in (
            ("claude_spawned_total", "spawned", "claude processes started."),
            (
                "claude_restarts_total",
                "deaths",
                "Idle claude processes that died and were replaced.",
            ),
        ):
            lines += _header(_PREFIX + name, "counter", help_text)
            lines.append(f"{_PREFIX}{name} {stats.get(key, 0)}")
        lines += _gauge(
            "claude_available", "1 when claude can be started.", {"": int(claude_available)}
        )
        if logged_in is not None:
            lines += _gauge("claude_logged_in", "1 when claude is logged in.", {"": int(logged_in)})
        lines += _gauge("start_time_seconds", "Unix time the daemon started.", {"": self.started})
        info = _PREFIX + "build_info"
        lines += _header(info, "gauge", "Versions of the relay and of its claude CLI.")
        labels = _labels(("version", "claude_version"), (version, claude_version or ""))
        lines.append(f"{info}{labels} 1")
        return "\n".join(lines) + "\n"


METRICS_KEY: Final = web.AppKey("metrics", Metrics)


# --- observing turns ---------------------------------------------------------------------------


class MeteredPool(PoolProxy):
    def __init__(self, inner: RelayPool, metrics: Metrics) -> None:
        super().__init__(inner)
        self.metrics = metrics

    def open_turn(self, request: TurnRequest) -> TurnHandle:
        return _MeteredTurn(self.inner.open_turn(request), self.metrics)


class _MeteredTurn:
    """Same surface as the pool's turn handle; records what happens to the turn."""

    def __init__(self, inner: TurnHandle, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self._admitted_at: float | None = None
        self._first_text = False
        self._outcome: str | None = None

    async def __aenter__(self) -> AsyncIterable[TurnEvent]:
        try:
            events = await self._inner.__aenter__()
        except RelayError as err:
            self._metrics.rejections.inc(err.anthropic_type)
            raise
        self._admitted_at = time.monotonic()
        return _MeteredEvents(events, self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._admitted_at is not None and self._outcome is None:
            self._finish("error" if isinstance(exc, Exception) else "abandoned")
        await self._inner.__aexit__(exc_type, exc, tb)

    def _elapsed(self) -> float:
        assert self._admitted_at is not None  # events only flow after admission
        return time.monotonic() - self._admitted_at

    def _finish(self, outcome: str) -> None:
        self._outcome = outcome
        self._metrics.turns.inc(outcome)

    def saw(self, ev: TurnEvent) -> None:
        if isinstance(ev, TextDelta):
            if not self._first_text and ev.text:
                self._first_text = True
                self._metrics.first_delta_seconds.observe(self._elapsed())
            return
        if not isinstance(ev, TurnResult) or self._outcome is not None:
            return
        elapsed = self._elapsed()
        if not self._first_text and ev.text:  # the whole reply came with the result
            self._metrics.first_delta_seconds.observe(elapsed)
        self._metrics.turn_seconds.observe(elapsed)
        u = ev.usage
        tokens = self._metrics.tokens
        tokens.inc("input", amount=u.input_tokens)
        tokens.inc("output", amount=u.output_tokens)
        tokens.inc("cache_read_input", amount=u.cache_read_input_tokens)
        tokens.inc("cache_creation_input", amount=u.cache_creation_input_tokens)
        self._finish("ok")

    def failed(self, error_type: str) -> None:
        self._metrics.upstream_errors.inc(error_type)
        if self._outcome is None:
            self._finish("error")


class _MeteredEvents:
    """The turn's events, passed through unchanged.

    A plain iterator class, not an async generator: the handler may stop reading at any point,
    and an abandoned generator would linger until garbage collection. The inner iterator is
    only created when the handler starts iterating, as the pool expects.
    """

    def __init__(self, source: AsyncIterable[TurnEvent], turn: _MeteredTurn) -> None:
        self._source = source
        self._it: AsyncIterator[TurnEvent] | None = None
        self._turn = turn

    def __aiter__(self) -> _MeteredEvents:
        if self._it is None:
            self._it = aiter(self._source)
        return self

    async def __anext__(self) -> TurnEvent:
        if self._it is None:
            self._it = aiter(self._source)
        try:
            ev = await anext(self._it)
        except (StopAsyncIteration, asyncio.CancelledError):
            raise
        except RelayError as err:
            self._turn.failed(err.anthropic_type)
            raise
        except Exception:
            self._turn.failed("api_error")  # what the edge renders an unexpected error as
            raise
        self._turn.saw(ev)
        return ev


# --- observing requests ------------------------------------------------------------------------


def _method(request: web.Request) -> str:
    return request.method if request.method in METHODS else "other"


def _route(request: web.Request) -> str:
    # The template, not the path: /v1/sessions/{id} stays one series; unknown paths share one.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: counts each request once, with the status the client got."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects pass through the error middleware as raises
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client left; the same code the access log uses
        raise
    finally:
        request.app[METRICS_KEY].requests.inc(_route(request), _method(request), str(status))
