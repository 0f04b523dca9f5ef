"""Prometheus metrics: what the daemon counts, served by `prometheus_client` at GET /metrics.

Counted where it happens without touching the routes or the pool: `MeteredPool` wraps the pool
and watches each turn's events (admission, first text, result with usage, errors), and
`metrics_middleware` sees every request's final status. Pool gauges are read from `pool.stats()`
at scrape time. Each app has a registry of its own (tests build several apps in one process),
with the process collector: the daemon's RSS and open fds are what a PTY pool runs out of.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Final, Protocol

import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from claude_relay.daemon import RelayPool, TurnHandle
from claude_relay.daemon.pool_proxy import PoolProxy
from claude_relay.protocols.errors import RelayError
from claude_relay.protocols.model import TextDelta, TurnEvent, TurnRequest, TurnResult

# The text format 0.0.4, which is what `generate_latest` writes (and every Prometheus reads).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_PREFIX: Final = "claude_relay_"
# Turns span queueing, a cold start (~2 s) and long generations (turn_timeout is 600 s).
TURN_BUCKETS: Final = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FIRST_DELTA_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
TOKEN_TYPES: Final = ("input", "output", "cache_read_input", "cache_creation_input")
OUTCOMES: Final = ("ok", "error", "abandoned")
POOL_STATES: Final = ("warm", "busy", "starting", "sticky")
# The method label's values: a client chooses the method, and each new label value is a new
# series kept for the daemon's lifetime, so anything else is counted as "other".
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# A `_created` series per counter and histogram child is an OpenMetrics notion that the text
# format Prometheus scrapes here ignores: only more series. Process-wide in prometheus_client,
# and this process is the daemon.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class _Scrape(Collector):
    """What is read, not counted: the pool's gauges and counters, claude's state, versions.

    `Metrics.render` stores the values of the scrape being answered; the registry collects them
    in the same call, on the event loop, so no other scrape interleaves.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.stats: Mapping[str, int] = {}
        self.claude_available = False
        self.logged_in: bool | None = None
        self.version = ""
        self.claude_version: str | None = None

    def collect(self) -> Iterable[Metric]:
        stats = self.stats
        sessions = GaugeMetricFamily(
            _PREFIX + "pool_sessions",
            "claude sessions by state (sticky ones can also be busy).",
            labels=("state",),
        )
        for state in POOL_STATES:
            sessions.add_metric((state,), stats.get(state, 0))
        yield sessions
        yield GaugeMetricFamily(
            _PREFIX + "pool_queued_requests",
            "Admitted turns waiting for a slot.",
            value=stats.get("queued", 0),
        )
        yield GaugeMetricFamily(
            _PREFIX + "pool_max_busy", "Turns allowed to run at once.", stats.get("max_busy", 0)
        )
        yield CounterMetricFamily(
            _PREFIX + "claude_spawned_total", "claude processes started.", stats.get("spawned", 0)
        )
        yield CounterMetricFamily(
            _PREFIX + "claude_restarts_total",
            "Idle claude processes that died and were replaced.",
            stats.get("deaths", 0),
        )
        yield GaugeMetricFamily(
            _PREFIX + "claude_available",
            "1 when claude can be started.",
            int(self.claude_available),
        )
        if self.logged_in is not None:
            yield GaugeMetricFamily(
                _PREFIX + "claude_logged_in", "1 when claude is logged in.", int(self.logged_in)
            )
        yield GaugeMetricFamily(
            _PREFIX + "start_time_seconds", "Unix time the daemon started.", self.started
        )
        info = GaugeMetricFamily(
            _PREFIX + "build_info",
            "Versions of the relay and of its claude CLI.",
            labels=("version", "claude_version"),
        )
        info.add_metric((self.version, self.claude_version or ""), 1)
        yield info


class Metrics:
    """The daemon's counters and its registry; one per app, filled by the wrapper and
    middleware below."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._render_lock = threading.Lock()  # render() runs in threads; one scrape at a time
        reg = self.registry
        self.requests = Counter(
            _PREFIX + "http_requests_total",
            "HTTP requests by route template, method and final status.",
            ("route", "method", "status"),
            registry=reg,
        )
        self.turns = Counter(
            _PREFIX + "turns_total",
            "Admitted turns by outcome: ok, error, abandoned (the client left first).",
            ("outcome",),
            registry=reg,
        )
        self.upstream_errors = Counter(
            _PREFIX + "upstream_errors_total",
            "Turns that failed after admission, by Anthropic error type.",
            ("type",),
            registry=reg,
        )
        self.rejections = Counter(
            _PREFIX + "admission_rejections_total",
            "Turns refused before they ran (queue full, claude unavailable), by error type.",
            ("type",),
            registry=reg,
        )
        self.turn_seconds = Histogram(
            _PREFIX + "turn_duration_seconds",
            "Seconds from admission to the turn's result (queueing and cold starts included).",
            buckets=TURN_BUCKETS,
            registry=reg,
        )
        self.first_delta_seconds = Histogram(
            _PREFIX + "time_to_first_delta_seconds",
            "Seconds from admission to the first text of the reply.",
            buckets=FIRST_DELTA_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            _PREFIX + "tokens_total",
            "Tokens the upstream reported for completed turns.",
            ("type",),
            registry=reg,
        )
        # Series that alerts divide by exist from the start, at zero.
        for outcome in OUTCOMES:
            self.turns.labels(outcome)
        for kind in TOKEN_TYPES:
            self.tokens.labels(kind)
        self._scrape = _Scrape(time.time())
        reg.register(self._scrape)
        # process_resident_memory_bytes, process_open_fds, process_max_fds, CPU seconds, …: read
        # from /proc at each scrape (a few small reads; nothing on platforms without /proc).
        ProcessCollector(registry=reg)

    def render(
        self,
        stats: Mapping[str, int],
        *,
        claude_available: bool,
        logged_in: bool | None,
        version: str,
        claude_version: str | None,
    ) -> str:
        """The exposition text. Blocking (the process collector reads /proc): use a thread."""
        with self._render_lock:
            s = self._scrape
            s.stats = stats
            s.claude_available = claude_available
            s.logged_in = logged_in
            s.version = version
            s.claude_version = claude_version
            return prometheus_client.generate_latest(self.registry).decode()


METRICS_KEY: Final = web.AppKey("metrics", Metrics)


# --- observing turns ---------------------------------------------------------------------------


class MeteredPool(PoolProxy):
    def __init__(self, inner: RelayPool, metrics: Metrics) -> None:
        super().__init__(inner)
        self.metrics = metrics

    def open_turn(self, request: TurnRequest) -> TurnHandle:
        return _MeteredTurn(self.inner.open_turn(request), self.metrics)


class TurnObserver(Protocol):
    """What ObservedEvents shows a turn's events and errors to."""

    def saw(self, ev: TurnEvent) -> None: ...

    def raised(self, exc: Exception) -> None: ...


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
            self._metrics.rejections.labels(err.anthropic_type).inc()
            raise
        self._admitted_at = time.monotonic()
        return ObservedEvents(events, self)

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
        self._metrics.turns.labels(outcome).inc()

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
        tokens.labels("input").inc(u.input_tokens)
        tokens.labels("output").inc(u.output_tokens)
        tokens.labels("cache_read_input").inc(u.cache_read_input_tokens)
        tokens.labels("cache_creation_input").inc(u.cache_creation_input_tokens)
        self._finish("ok")

    def raised(self, exc: Exception) -> None:
        # an unexpected error is what the edge renders it as: api_error
        self.failed(exc.anthropic_type if isinstance(exc, RelayError) else "api_error")

    def failed(self, error_type: str) -> None:
        self._metrics.upstream_errors.labels(error_type).inc()
        if self._outcome is None:
            self._finish("error")


class ObservedEvents:
    """A turn's events, passed through unchanged, each shown to `observer` (and an error before
    it propagates). Shared by the metrics here and the dashboard's turn list.

    A plain iterator class, not an async generator: the handler may stop reading at any point,
    and an abandoned generator would linger until garbage collection. The inner iterator is
    only created when the handler starts iterating, as the pool expects.
    """

    def __init__(self, source: AsyncIterable[TurnEvent], observer: TurnObserver) -> None:
        self._source = source
        self._it: AsyncIterator[TurnEvent] | None = None
        self._observer = observer

    def __aiter__(self) -> ObservedEvents:
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
        except Exception as exc:
            self._observer.raised(exc)
            raise
        self._observer.saw(ev)
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
        request.app[METRICS_KEY].requests.labels(
            _route(request), _method(request), str(status)
        ).inc()
