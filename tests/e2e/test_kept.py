"""Kept conversations: a stateless client that re-sends its whole history (no session id)
continues on the claude that answered the previous turn, which gets only the new message.

Asserted through what only a continued claude sends upstream (the earlier turns as real
messages, not one rendered prompt) and the pool's own counters.
"""

from __future__ import annotations

import uuid
from typing import Any

import anthropic
import openai
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream
from tests.e2e.test_sticky_continuation import conversation
from tests.support.relay_proc import Relay

pytestmark = pytest.mark.asyncio(loop_scope="session")


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def pool(relay: Relay) -> dict[str, Any]:
    stats = (await relay.health())["pool"]
    assert isinstance(stats, dict)
    return stats


async def ask(c: anthropic.AsyncAnthropic, history: list[Any], **kw: Any) -> str:
    msg = await c.messages.create(model="default", max_tokens=50, messages=history, **kw)
    assert msg.content[0].type == "text"
    text: str = msg.content[0].text
    return text


def anthropic_client(relay: Relay) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=relay.url, api_key="unused", max_retries=0)


async def test_a_resent_history_continues_on_the_kept_claude(
    relay: Relay, up: FakeUpstream
) -> None:
    t = tag()
    async with anthropic_client(relay) as c:
        history: list[Any] = [{"role": "user", "content": f"first {t}"}]
        first = await ask(c, history)
        assert first == f"echo: first {t}"
        before = await pool(relay)
        assert before["kept"] >= 1
        history += [
            {"role": "assistant", "content": first},
            {"role": "user", "content": f"second {t}"},
        ]
        assert await ask(c, history) == f"echo: second {t}"
        after = await pool(relay)
        assert after["kept_hits"] == before["kept_hits"] + 1
        assert after["spawned"] == before["spawned"]  # no claude was started for it
        # the upstream saw the earlier turn as real messages: only the new one was pasted
        assert conversation(up)[-3:] == [
            ("user", f"first {t}"),
            ("assistant", first),
            ("user", f"second {t}"),
        ]
        # and again, three turns deep
        history += [
            {"role": "assistant", "content": f"echo: second {t}"},
            {"role": "user", "content": f"third {t}"},
        ]
        assert await ask(c, history) == f"echo: third {t}"
        assert (await pool(relay))["kept_hits"] == before["kept_hits"] + 2
        assert conversation(up)[-1] == ("user", f"third {t}")
        assert len(conversation(up)) >= 5


async def test_a_streamed_reply_resent_as_assembled_continues_too(
    relay: Relay, up: FakeUpstream
) -> None:
    t = tag()
    async with openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key="unused", max_retries=0) as c:
        history: list[Any] = [{"role": "user", "content": f"stream {t}"}]
        stream = await c.chat.completions.create(model="default", messages=history, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert text == f"echo: stream {t}"
        before = await pool(relay)
        history += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"next {t}"},
        ]
        reply = await c.chat.completions.create(model="default", messages=history)
        assert reply.choices[0].message.content == f"echo: next {t}"
        assert (await pool(relay))["kept_hits"] == before["kept_hits"] + 1
        assert conversation(up)[-3:] == [
            ("user", f"stream {t}"),
            ("assistant", text),
            ("user", f"next {t}"),
        ]


# (another API key never continues another's conversation: tests/test_pool_unit.py, since a
# daemon without api_keys has one tenant)
@pytest.mark.parametrize("change", ["edited reply", "other system prompt"])
async def test_anything_but_an_exact_extension_runs_fresh(
    relay: Relay, up: FakeUpstream, change: str
) -> None:
    t = tag()
    async with anthropic_client(relay) as c:
        history: list[Any] = [{"role": "user", "content": f"base {t}"}]
        first = await ask(c, history)
        before = await pool(relay)
        reply = first + " (edited)" if change == "edited reply" else first
        history += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": f"more {t}"},
        ]
        kw: dict[str, Any] = {}
        if change == "other system prompt":
            kw["system"] = f"be brief {t}"
        await ask(c, history, **kw)
        assert (await pool(relay))["kept_hits"] == before["kept_hits"]
        # replayed: the whole history went into one fresh claude's prompt
        assert f"base {t}" in conversation(up)[-1][1]
