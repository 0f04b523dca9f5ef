"""A client that leaves is noticed within about a second, whatever the turn is doing.

Before: a non-streamed turn noticed its client only when no event had arrived for
`ping_interval` (10 s), so a turn that kept producing output ran to its end with the slot held.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support.relay_proc import Relay

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _busy(relay: Relay) -> int:
    pool: Any = (await relay.health())["pool"]
    return int(pool["busy"])


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
async def test_a_json_client_that_leaves_mid_output_frees_its_claude(
    relay: Relay, up: FakeUpstream, path: str
) -> None:
    # ~12 s of steady output: the turn never goes quiet long enough for a heartbeat tick
    up.push(Reply(text="steady " * 240, chunk_chars=7, delay=0.05))
    body = {"model": "default", "max_tokens": 2000, "messages": [{"role": "user", "content": "go"}]}
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(http.post(relay.url + path, json=body))
        await up.wait_for_requests(1, timeout=20)
        await up.wait_for(
            lambda: up.main_requests[0].sent_deltas > 5, timeout=10, what="output flowing"
        )
        call.cancel()  # the client hangs up while claude is still writing
        await asyncio.gather(call, return_exceptions=True)
    # claude is interrupted (it hangs up on the upstream) well before its reply would end
    await up.wait_for(lambda: up.main_requests[0].client_gone, timeout=4, what="the interrupt")
    assert up.main_requests[0].sent_deltas < 200
    async with asyncio.timeout(10):
        while await _busy(relay):
            await asyncio.sleep(0.05)  # polling the daemon over HTTP: no event to wait on
