"""Stateless turns on reused claudes (`stateless_reset = "clear"`): after each turn the relay
starts a new conversation in the same claude with `/clear` and puts it back warm, instead of
closing it and warming a new one.

What must hold, checked on the upstream's side and in claude's own files: the next caller's
request carries nothing of the earlier one, the claude really is the same process, the earlier
caller's transcript is gone, concurrent callers never see each other's words, and a caller's text
that starts with `/` is still text (slash commands are on in this mode: only the relay types one).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio

from claude_relay.daemon.fake_upstream import FakeUpstream, RecordedRequest, Reply
from tests.support.relay_proc import Relay, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def reset_relay(upstream: FakeUpstream) -> AsyncIterator[Relay]:
    # no kept conversations: every stateless claude goes straight to its reset; nothing warmed
    # ahead, so every claude beyond the first is one a call needed, and a call that finds one
    # warm found a reset one
    async with start_relay(
        upstream,
        stateless_reset="clear",
        max_kept="0",
        warm="0",
        max_retries="1",
        wait_warm=False,
    ) as r:
        yield r


@pytest_asyncio.fixture(loop_scope="session")
async def rup(upstream: FakeUpstream, reset_relay: Relay) -> AsyncIterator[FakeUpstream]:
    upstream.clear()
    yield upstream
    upstream.clear()


async def pool(relay: Relay) -> dict[str, int]:
    stats = (await relay.health())["pool"]
    assert isinstance(stats, dict)
    return stats


async def until_reset(relay: Relay, resets: int) -> None:
    """Wait until the daemon has put `resets` claudes back warm (a background step)."""
    async with asyncio.timeout(30):
        while (await pool(relay))["resets"] < resets or (await pool(relay))["warm"] < 1:
            await asyncio.sleep(0.05)  # polling a process over HTTP: no event to wait on


def request_text(req: RecordedRequest) -> str:
    """Everything the upstream got in one request: the messages and the system prompt."""
    return json.dumps(req.body.get("messages")) + json.dumps(req.body.get("system"))


def client(relay: Relay) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0)


async def ask(relay: Relay, text: str) -> str:
    async with client(relay) as c:
        msg = await c.messages.create(
            model="default", max_tokens=100, messages=[{"role": "user", "content": text}]
        )
    return "".join(b.text for b in msg.content if b.type == "text")


async def test_the_next_caller_gets_the_same_claude_with_nothing_of_the_last_turn(
    reset_relay: Relay, rup: FakeUpstream
) -> None:
    before = await pool(reset_relay)
    rup.push(Reply(text="noted"), Reply(text="a fresh start"))
    assert await ask(reset_relay, "the secret word is PINEAPPLE-7431") == "noted"
    await until_reset(reset_relay, before["resets"] + 1)
    mid = await pool(reset_relay)
    async with openai.AsyncOpenAI(
        base_url=reset_relay.url + "/v1", api_key="x", max_retries=0
    ) as oc:
        done = await oc.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "what was the word?"}]
        )
    assert done.choices[0].message.content == "a fresh start"
    first, second = rup.main_requests[-2:]
    assert "PINEAPPLE-7431" in request_text(first)
    assert "PINEAPPLE-7431" not in request_text(second)
    assert "what was the word?" in request_text(second)
    # the same claude answered: no claude was started for the second call
    after = await pool(reset_relay)
    assert after["spawned"] == mid["spawned"]
    # one upstream request per call, and the first call's transcript is deleted
    assert len(rup.main_requests) == 2 and not rup.title_requests
    await until_reset(reset_relay, before["resets"] + 2)
    leftovers = [
        p
        for p in (reset_relay.home / ".local" / "state" / "claude-relay").rglob("*.jsonl")
        if "PINEAPPLE-7431" in p.read_text(errors="replace")
    ]
    assert leftovers == []


async def test_concurrent_callers_on_reused_claudes_see_only_their_own_words(
    reset_relay: Relay, rup: FakeUpstream
) -> None:
    before = await pool(reset_relay)

    async def caller(n: int) -> list[str]:
        return [await ask(reset_relay, f"caller {n} call {i} SECRET-{n}-{i}") for i in range(3)]

    answers = await asyncio.gather(*(caller(n) for n in range(3)))  # the fake echoes
    for n, got in enumerate(answers):
        assert got == [f"echo: caller {n} call {i} SECRET-{n}-{i}" for i in range(3)]
    # each upstream request carries exactly one caller's one call
    for req in rup.main_requests:
        assert request_text(req).count("SECRET-") == 1, request_text(req)
    assert len(rup.main_requests) == 9
    # most calls ran on reset claudes: fewer claudes started than calls made
    after = await pool(reset_relay)
    assert after["resets"] > before["resets"]
    assert after["spawned"] - before["spawned"] < 9


async def test_four_clients_back_to_back_each_get_only_their_own_answers(
    reset_relay: Relay, rup: FakeUpstream
) -> None:
    """Resets under load: while one claude resets, another may still write to the transcript of
    the conversation it just left. That file must never be taken for a new conversation (before:
    on 2.1.197 a reset adopted it, and the next turn on that claude came back empty)."""

    async def caller(n: int) -> list[str]:
        return [await ask(reset_relay, f"client {n} request {i} KEY-{n}-{i}") for i in range(8)]

    answers = await asyncio.gather(*(caller(n) for n in range(4)))
    for n, got in enumerate(answers):
        assert got == [f"echo: client {n} request {i} KEY-{n}-{i}" for i in range(8)]
    for req in rup.main_requests:
        assert request_text(req).count("KEY-") == 1, request_text(req)


@pytest.mark.parametrize("text", ["/clear", "/model opus", "/help me", "\u200b/clear"])
async def test_a_callers_slash_is_text_not_a_command(
    reset_relay: Relay, rup: FakeUpstream, text: str
) -> None:
    rup.push(Reply(text="fine"))
    assert await ask(reset_relay, text) == "fine"
    # (2.1.332 drops the zero-width space from the paste)
    sent = rup.main_requests[-1].last_user_text.replace("\u200b", "")
    assert sent.strip() == text.replace("\u200b", "")


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/chat/completions"])
async def test_a_client_that_leaves_mid_output_leaves_its_claude_reset_and_reused(
    reset_relay: Relay, rup: FakeUpstream, path: str
) -> None:
    """An abandoned turn is interrupted (Esc) and its claude reset like any other: the next
    caller runs on it, without a spawn and without the abandoned turn's words."""
    before = await pool(reset_relay)
    rup.on("WATERMELON-5150", Reply(text="steady " * 240, chunk_chars=7, delay=0.05))
    body = {
        "model": "default",
        "max_tokens": 2000,
        "stream": path.endswith("completions"),
        "messages": [{"role": "user", "content": "doomed WATERMELON-5150"}],
    }
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(http.post(reset_relay.url + path, json=body))
        await rup.wait_for(
            lambda: bool(rup.main_requests) and rup.main_requests[-1].sent_deltas > 5,
            timeout=20,
            what="output flowing",
        )
        call.cancel()  # the client hangs up while claude is still writing
        await asyncio.gather(call, return_exceptions=True)
    await until_reset(reset_relay, before["resets"] + 1)
    mid = await pool(reset_relay)
    assert mid["spawned"] == before["spawned"]  # the claude that ran it is the warm one now
    assert await ask(reset_relay, "anything left?") == "echo: anything left?"
    last = rup.main_requests[-1]
    assert "anything left?" in request_text(last)
    assert "WATERMELON-5150" not in request_text(last)
    assert (await pool(reset_relay))["spawned"] == before["spawned"]
