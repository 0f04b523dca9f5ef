"""Extended thinking and max_tokens end to end: what claude sends upstream, what comes back.

The fake upstream's thinking scenario answers with a thinking block (and its signature) before
the text, whatever the request said; the relay returns it only to a request that asked for it.
Limits reach claude as per-spawn settings, bucketed (`pty_pool.spawn`): the recorded upstream
request shows the `max_tokens` and `thinking` claude sent.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import anthropic
import openai
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support.relay_proc import Relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

# claude-haiku-4-5 has budgeted thinking on both supported CLI versions, so the budget claude
# sends is visible; the default models (claude-opus-4-8 on 2.1.197, claude-opus-5-5 on
# 2.1.332) only take adaptive thinking.
MODEL = "claude-haiku-4-5"
THOUGHT = "Deep thought, " * 12 + "done."
ANSWER = "After thought."


def signature(thinking: str) -> str:
    """The fake upstream's signature for `thinking` (fake_upstream._signature)."""
    raw = b"fake-signature:" + hashlib.sha256(thinking.encode()).digest()
    return base64.b64encode(raw).decode()


def anthropic_client(relay: Relay) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=relay.url, api_key="unused", max_retries=0)


def openai_client(relay: Relay) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key="unused", max_retries=0)


def sent(up: FakeUpstream, marker: str) -> dict[str, Any]:
    """The body claude sent upstream for the turn whose prompt holds `marker`."""
    [body] = [r.body for r in up.main_requests if marker in r.last_user_text]
    return body


async def test_thinking_blocks_are_returned_with_signatures(relay: Relay, up: FakeUpstream) -> None:
    up.on("ponder-json", Reply(text=ANSWER, thinking=THOUGHT, chunk_chars=7))
    async with anthropic_client(relay) as c:
        msg = await c.messages.create(
            model=MODEL,
            max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": 3000},
            messages=[{"role": "user", "content": "ponder-json"}],
        )
    assert [b.type for b in msg.content] == ["thinking", "text"]
    thinking = msg.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == THOUGHT
    assert thinking.signature == signature(THOUGHT)
    assert msg.content[1].type == "text" and msg.content[1].text == ANSWER
    body = sent(up, "ponder-json")
    # max_tokens 4000 → the 8192 bucket; budget 3000 → 2048 (rounded down to a power of two)
    assert body["max_tokens"] == 8192
    assert body["thinking"]["type"] == "enabled"
    assert body["thinking"]["budget_tokens"] == 2048


async def test_streamed_thinking_deltas_and_signature(relay: Relay, up: FakeUpstream) -> None:
    up.on("ponder-stream", Reply(text=ANSWER, thinking=THOUGHT, chunk_chars=5))
    async with (
        anthropic_client(relay) as c,
        c.messages.stream(
            model=MODEL,
            max_tokens=20000,
            thinking={"type": "enabled", "budget_tokens": 16384},
            messages=[{"role": "user", "content": "ponder-stream"}],
        ) as stream,
    ):
        kinds = [ev.delta.type async for ev in stream if ev.type == "content_block_delta"]
        final = await stream.get_final_message()
    assert kinds[:2] == ["thinking_delta", "signature_delta"]
    assert set(kinds[2:]) == {"text_delta"}
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == THOUGHT
    assert final.content[0].signature == signature(THOUGHT)
    assert final.content[1].type == "text" and final.content[1].text == ANSWER
    body = sent(up, "ponder-stream")
    assert body["max_tokens"] == 32768
    assert body["thinking"]["budget_tokens"] == 16384


async def test_no_thinking_unless_asked(relay: Relay, up: FakeUpstream) -> None:
    up.on("ponder-not", Reply(text=ANSWER, thinking=THOUGHT))
    async with anthropic_client(relay) as c:
        msg = await c.messages.create(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "ponder-not"}]
        )
    assert [b.type for b in msg.content] == ["text"]
    body = sent(up, "ponder-not")
    assert body["max_tokens"] == 8192
    assert body["thinking"] == {"type": "disabled"}  # claude started with thinking off


async def test_thinking_over_openai_is_reasoning_content(relay: Relay, up: FakeUpstream) -> None:
    up.on("ponder-openai", Reply(text=ANSWER, thinking=THOUGHT))
    up.on("ponder-ostream", Reply(text=ANSWER, thinking=THOUGHT, chunk_chars=4))
    async with openai_client(relay) as c:
        done = await c.chat.completions.create(
            model=MODEL,
            reasoning_effort="low",
            max_completion_tokens=2000,
            messages=[{"role": "user", "content": "ponder-openai"}],
        )
        message = done.choices[0].message
        assert message.content == ANSWER
        assert (message.model_extra or {})["reasoning_content"] == THOUGHT
        chunks = await c.chat.completions.create(
            model=MODEL,
            reasoning_effort="medium",
            stream=True,
            messages=[{"role": "user", "content": "ponder-ostream"}],
        )
        reasoning: list[str] = []
        content: list[str] = []
        async for chunk in chunks:
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if (delta.model_extra or {}).get("reasoning_content"):
                assert not content, "reasoning comes before the content"
                reasoning.append(delta.model_extra["reasoning_content"])  # type: ignore[index]
            if delta.content:
                content.append(delta.content)
    assert "".join(reasoning) == THOUGHT
    assert "".join(content) == ANSWER
    assert sent(up, "ponder-openai")["thinking"]["budget_tokens"] == 1024
    assert sent(up, "ponder-openai")["max_tokens"] == 8192
    # no max_tokens: the OpenAI default of 8192, and "medium" is a budget of 4096
    assert sent(up, "ponder-ostream")["thinking"]["budget_tokens"] == 4096
