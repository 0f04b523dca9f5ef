"""GET /metrics: what the pool wrapper and the middleware count, in a valid exposition.

Every scrape is parsed with prometheus_client's parser, and checked with `promtool check metrics`
(Prometheus's own linter) where the Debian `prometheus` package is installed.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from claude_relay.daemon.app import make_app
from claude_relay.daemon.config import Config
from claude_relay.daemon.metrics import CONTENT_TYPE, Metrics
from claude_relay.protocols.errors import OverloadedError
from claude_relay.protocols.model import TextDelta
from tests.test_app import Client, FakePool, body, result

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample by (name, labels); the parser raises on anything malformed."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, tmp_path: Path) -> MakeClient:
    async def make(pool: FakePool, **config: Any) -> Client:
        return await aiohttp_client(make_app(Config(workspace=tmp_path, **config), pool=pool))

    return make


async def scrape(client: Client) -> str:
    async with client.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == CONTENT_TYPE
        return await resp.text()


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout  # lint findings are printed, not failed


def test_a_fresh_registry_is_valid_exposition() -> None:
    text = Metrics().render(
        {"warm": 2, "busy": 1, "sticky": 0, "queued": 3, "max_busy": 4, "spawned": 5, "deaths": 1},
        claude_available=True,
        logged_in=True,
        version="0.1.0",
        claude_version="2.1.197",
    )
    samples = parse(text)
    promtool_check(text)
    assert value(samples, "claude_relay_turns_total", outcome="ok") == 0
    assert value(samples, "claude_relay_tokens_total", type="output") == 0
    assert value(samples, "claude_relay_pool_sessions", state="warm") == 2
    assert value(samples, "claude_relay_pool_queued_requests") == 3
    assert value(samples, "claude_relay_claude_restarts_total") == 1
    assert value(samples, "claude_relay_claude_spawned_total") == 5
    assert value(samples, "claude_relay_claude_logged_in") == 1
    assert value(samples, "claude_relay_build_info", version="0.1.0", claude_version="2.1.197")
    assert value(samples, "claude_relay_turn_duration_seconds_count") == 0


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.requests.labels('/odd"\\\npath', "GET", "200").inc()
    text = m.render({}, claude_available=False, logged_in=None, version="x", claude_version=None)
    samples = parse(text)
    route = '/odd"\\\npath'
    assert value(
        samples, "claude_relay_http_requests_total", route=route, method="GET", status="200"
    )
    assert not any(name == "claude_relay_claude_logged_in" for name, _ in samples)


async def test_turns_are_counted_with_latency_and_tokens(make_client: MakeClient) -> None:
    pool = FakePool([TextDelta("Hel"), TextDelta("lo"), result("Hello", output_tokens=7)])
    client = await make_client(pool)
    for _ in range(2):
        async with client.post("/v1/messages", json=body()) as resp:
            assert resp.status == 200
    async with client.post("/v1/messages", json=body(stream=True)) as resp:
        assert resp.status == 200
        await resp.read()
    async with client.get("/v1/nothing-here") as resp:
        assert resp.status == 404

    text = await scrape(client)
    promtool_check(text)
    samples = parse(text)
    assert value(samples, "claude_relay_turns_total", outcome="ok") == 3
    assert value(samples, "claude_relay_tokens_total", type="input") == 33
    assert value(samples, "claude_relay_tokens_total", type="output") == 21
    assert value(samples, "claude_relay_turn_duration_seconds_count") == 3
    assert value(samples, "claude_relay_time_to_first_delta_seconds_count") == 3
    assert value(samples, "claude_relay_turn_duration_seconds_bucket", le="+Inf") == 3
    requests = "claude_relay_http_requests_total"
    assert value(samples, requests, route="/v1/messages", method="POST", status="200") == 3
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 1
    # the FakePool's stats
    assert value(samples, "claude_relay_pool_sessions", state="warm") == 1
    assert value(samples, "claude_relay_pool_sessions", state="starting") == 1
    assert value(samples, "claude_relay_claude_available") == 1


async def test_errors_are_counted_by_type_and_phase(make_client: MakeClient) -> None:
    failing = FakePool([TextDelta("x"), OverloadedError("upstream overloaded")])
    client = await make_client(failing)
    async with client.post("/v1/messages", json=body()) as resp:
        assert resp.status == 529
    failing.admission_error = OverloadedError("queue full")
    async with client.post("/v1/messages", json=body()) as resp:
        assert resp.status == 529

    samples = parse(await scrape(client))
    assert value(samples, "claude_relay_upstream_errors_total", type="overloaded_error") == 1
    assert value(samples, "claude_relay_admission_rejections_total", type="overloaded_error") == 1
    assert value(samples, "claude_relay_turns_total", outcome="error") == 1
    requests = "claude_relay_http_requests_total"
    assert value(samples, requests, route="/v1/messages", method="POST", status="529") == 2


async def test_a_client_that_leaves_is_an_abandoned_turn(make_client: MakeClient) -> None:
    never = asyncio.Event()
    pool = FakePool([TextDelta("a"), never, result("a b")])
    client = await make_client(pool, ping_interval=0.01)
    resp = await client.post("/v1/messages", json=body(stream=True))
    await resp.content.readline()  # the stream is open
    resp.close()
    await asyncio.wait_for(pool.exited.wait(), 10)

    samples = parse(await scrape(client))
    assert value(samples, "claude_relay_turns_total", outcome="abandoned") == 1
    assert value(samples, "claude_relay_time_to_first_delta_seconds_count") == 1
    assert value(samples, "claude_relay_turn_duration_seconds_count") == 0


def test_process_metrics_and_one_registry_per_app() -> None:
    """RSS and open fds of the daemon (what a PTY pool runs out of), and two apps in one process
    count apart."""
    one, two = Metrics(), Metrics()
    one.turns.labels("ok").inc()
    kwargs: dict[str, Any] = {
        "claude_available": True,
        "logged_in": None,
        "version": "x",
        "claude_version": None,
    }
    first, second = parse(one.render({}, **kwargs)), parse(two.render({}, **kwargs))
    assert value(first, "claude_relay_turns_total", outcome="ok") == 1
    assert value(second, "claude_relay_turns_total", outcome="ok") == 0
    if Path("/proc/self/stat").exists():  # the process collector reads /proc
        assert value(first, "process_resident_memory_bytes") > 0
        assert value(first, "process_open_fds") >= 3
        assert value(first, "process_max_fds") > 0
    # no OpenMetrics `_created` series: the text format Prometheus scrapes ignores them
    assert not any(name.endswith("_created") for name, _ in first)
