"""Every test runs with a blocking-call detector (house style: never block the loop).

Scanned is the relay's own code only (`claude_relay`): a blocking call it makes while an event
loop runs in this thread raises `BlockingError`, whoever called it. The tests' own helpers and
third-party code (the SDK clients, pytest plugins) are not judged. Daemons that e2e tests start
run the same detector in their own process (`CLAUDE_RELAY_DETECT_BLOCKING`, daemon/cli.py).
A test that must see blocking calls itself (to name them) opts out with `@pytest.mark.blocking`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import blockbuster_ctx


@pytest.fixture(autouse=True)
def _no_blocking_calls(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("blocking") is not None:
        yield
        return
    with blockbuster_ctx("claude_relay"):
        yield
