"""The row screen (`screen_mode = "rows"`, claude's default TUI): still supported, so still run
end to end while the rest of the tier runs in the default ax mode.

Counts and order, never wall-clock: a paced reply arrives a finished screen row at a time,
prose concatenates to exactly what the model wrote, a non-streamed markdown reply is exact (it
comes from the transcript), and text before a tool call streams ahead of the call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest
import pytest_asyncio

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply, ToolUse
from tests.support.relay_proc import Relay, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

# three paragraphs of 40 words: several 100-column rows each
PROSE = "\n\n".join(" ".join(f"p{p}w{i}" for i in range(40)) for p in range(3)) + "\n\nThe end."
MARKDOWN = (
    "# Steps\n\n1. Read the **config**.\n2. Run `make`.\n\n"
    "```python\nprint('hi')\n```\n\nSee [the docs](https://example.com/docs).\n"
)
CHUNK, DELAY = 8, 0.02


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rows_relay(upstream: FakeUpstream) -> AsyncIterator[Relay]:
    async with start_relay(
        upstream, screen_mode="rows", columns="100", stall_timeout="20", max_retries="1"
    ) as r:
        yield r


@pytest_asyncio.fixture(loop_scope="session")
async def rup(upstream: FakeUpstream, rows_relay: Relay) -> AsyncIterator[FakeUpstream]:
    upstream.clear()
    await rows_relay.wait_warm(1)
    yield upstream
    upstream.clear()


def client(relay: Relay) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0)


async def test_paced_prose_streams_row_by_row_and_exact(
    rows_relay: Relay, rup: FakeUpstream
) -> None:
    rup.push(Reply(text=PROSE, chunk_chars=CHUNK, delay=DELAY))
    deltas: list[str] = []
    async with (
        client(rows_relay) as c,
        c.messages.stream(
            model="default", max_tokens=1000, messages=[{"role": "user", "content": "prose"}]
        ) as stream,
    ):
        async for t in stream.text_stream:
            deltas.append(t)
        final = await stream.get_final_message()
    assert "".join(deltas) == PROSE
    assert final.content[0].type == "text" and final.content[0].text == PROSE
    # about 4 rows per paragraph at 100 columns: more than one delta, far fewer than words
    assert 3 <= len(deltas) < 60, deltas


async def test_paced_prose_streams_to_openai_too(rows_relay: Relay, rup: FakeUpstream) -> None:
    rup.push(Reply(text=PROSE, chunk_chars=CHUNK, delay=DELAY))
    deltas: list[str] = []
    async with openai.AsyncOpenAI(base_url=rows_relay.url + "/v1", api_key="x", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="default", stream=True, messages=[{"role": "user", "content": "prose"}]
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
    assert "".join(deltas) == PROSE
    assert len(deltas) >= 3


async def test_non_streamed_markdown_is_exact(rows_relay: Relay, rup: FakeUpstream) -> None:
    rup.push(Reply(text=MARKDOWN, chunk_chars=CHUNK, delay=DELAY))
    async with client(rows_relay) as c:
        msg = await c.messages.create(
            model="default", max_tokens=1000, messages=[{"role": "user", "content": "md"}]
        )
    assert msg.content[0].type == "text" and msg.content[0].text == MARKDOWN


async def test_text_before_a_tool_call_streams_and_the_call_follows(
    rows_relay: Relay, rup: FakeUpstream
) -> None:
    text = "Let me look that up for you in the weather service first."
    rup.push(
        Reply(
            text=text,
            tool_uses=(ToolUse("mcp__api__get_weather", {"city": "Rome"}, "toolu_rows1"),),
        )
    )
    tool: anthropic.types.ToolParam = {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    deltas: list[str] = []
    async with (
        client(rows_relay) as c,
        c.messages.stream(
            model="default",
            max_tokens=200,
            tools=[tool],
            messages=[{"role": "user", "content": "Weather in Rome?"}],
        ) as stream,
    ):
        async for t in stream.text_stream:
            deltas.append(t)
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    assert "".join(deltas) == text
    use = first.content[-1]
    assert isinstance(use, anthropic.types.ToolUseBlock)
    assert (use.id, use.input) == ("toolu_rows1", {"city": "Rome"})
