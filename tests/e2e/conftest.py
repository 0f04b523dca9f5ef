"""End-to-end fixtures: the real claude CLI, driven by `claude-relay serve`, vs the fake upstream.

The daemon is started as a user starts it (the console script in a subprocess) with a scratch HOME;
the tests talk to it with the official SDKs. One daemon serves most tests of the session; tests
that need other settings start their own with `start_relay`.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from claude_relay.daemon.fake_upstream import FakeUpstream
from tests.support.claude_env import claude_bin
from tests.support.relay_proc import Relay, alive, children_of, start_relay

__all__ = ["Relay", "alive", "children_of", "start_relay"]

if shutil.which(claude_bin()) is None:  # pragma: no cover - ./dev.sh test always installs it
    pytest.skip(
        "the pinned claude CLI is not installed (run ./dev.sh test)", allow_module_level=True
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as up:
        yield up


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def relay(upstream: FakeUpstream) -> AsyncIterator[Relay]:
    async with start_relay(upstream, stall_timeout="6", max_retries="1") as r:
        yield r


@pytest_asyncio.fixture(loop_scope="session")
async def up(upstream: FakeUpstream, relay: Relay) -> AsyncIterator[FakeUpstream]:
    """The shared fake upstream, with scripts cleared before and after each test."""
    upstream.clear()
    await relay.wait_warm(1)
    yield upstream
    upstream.clear()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
