"""Word-level streaming (`screen_mode = "ax"`): paced replies through a daemon that runs claude
with `--ax-screen-reader`, both SDKs as clients.

The contract asserted here is the one issue 14 sets, as counts and order, never wall-clock:
a paced reply arrives in many deltas (one per claude frame, not one per screen row), the first
while the model is still writing, and the deltas concatenate to exactly what the model wrote —
prose and markdown alike (markdown is held from its first marker and sent exactly at turn end).
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

# three paragraphs of 40 words, the last row of each well short of the 500-column screen
PROSE = "\n\n".join(" ".join(f"p{p}w{i}" for i in range(40)) for p in range(3)) + "\n\nThe end."
MARKDOWN = (
    "Here is the plan, in short, before any markdown: a sentence or two of plain prose that "
    "streams word by word while the model writes it.\n\n"
    "# Steps\n\n1. Read the **config**.\n2. Run `make`.\n\n"
    "```python\nprint('hi')\n```\n\nSee [the docs](https://example.com/docs).\n"
)
# 4 characters per upstream delta, 20 deltas a second: about a word every 0.25 s
CHUNK, DELAY = 4, 0.05


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ax_relay(upstream: FakeUpstream) -> AsyncIterator[Relay]:
    async with start_relay(upstream, screen_mode="ax", stall_timeout="20", max_retries="1") as r:
        yield r


@pytest_asyncio.fixture(loop_scope="session")
async def axup(upstream: FakeUpstream, ax_relay: Relay) -> AsyncIterator[FakeUpstream]:
    upstream.clear()
    await ax_relay.wait_warm(1)
    yield upstream
    upstream.clear()


def anthropic_client(relay: Relay) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0)


async def stream_deltas(
    relay: Relay, up: FakeUpstream, prompt: str
) -> tuple[list[str], int, anthropic.types.Message]:
    """A streamed Messages call: its text deltas, how many came before the upstream finished,
    and the SDK's final message."""
    deltas: list[str] = []
    before_end = 0
    async with (
        anthropic_client(relay) as c,
        c.messages.stream(
            model="default", max_tokens=1000, messages=[{"role": "user", "content": prompt}]
        ) as stream,
    ):
        async for t in stream.text_stream:
            deltas.append(t)
            if up.main_requests[-1].finished_time is None:
                before_end += 1
        final = await stream.get_final_message()
    return deltas, before_end, final


async def test_paced_prose_streams_word_by_word_and_exact(
    ax_relay: Relay, axup: FakeUpstream
) -> None:
    axup.push(Reply(text=PROSE, chunk_chars=CHUNK, delay=DELAY))
    deltas, before_end, final = await stream_deltas(ax_relay, axup, "prose")
    assert "".join(deltas) == PROSE  # byte-exact, paragraph breaks included
    assert final.content[0].type == "text" and final.content[0].text == PROSE
    # 122 words paced over ~9 s: the default screen gives one delta per 120-column row (~7);
    # word level gives one per claude frame
    assert len(deltas) >= 12, deltas
    assert before_end >= 10  # most of them while the model was still writing


async def test_paced_prose_streams_to_openai_too(ax_relay: Relay, axup: FakeUpstream) -> None:
    axup.push(Reply(text=PROSE, chunk_chars=CHUNK, delay=DELAY))
    deltas: list[str] = []
    async with openai.AsyncOpenAI(base_url=ax_relay.url + "/v1", api_key="x", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="default", stream=True, messages=[{"role": "user", "content": "prose"}]
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
    assert "".join(deltas) == PROSE
    assert len(deltas) >= 12


async def test_paced_markdown_ends_exactly_as_written(ax_relay: Relay, axup: FakeUpstream) -> None:
    axup.push(Reply(text=MARKDOWN, chunk_chars=CHUNK, delay=DELAY))
    deltas, _, _ = await stream_deltas(ax_relay, axup, "md")
    # fences, heading, bold, code and link as the model wrote them: nothing the screen lost
    # was ever sent, the rest came from the transcript
    assert "".join(deltas) == MARKDOWN
    assert len(deltas) >= 2  # the prose before the first marker streamed, the rest at the end


async def test_text_before_a_tool_call_streams_and_the_call_follows(
    ax_relay: Relay, axup: FakeUpstream
) -> None:
    text = (
        "Let me look that up for you in the weather service first, since the forecast for "
        "Rome changes quickly this time of year and an old answer would not help you much."
    )
    axup.push(
        Reply(
            text=text,
            tool_uses=(ToolUse("mcp__api__get_weather", {"city": "Rome"}, "toolu_ax1"),),
            chunk_chars=CHUNK,
            delay=DELAY,
        ),
        Reply(text="It is sunny in Rome today."),
    )
    tool: anthropic.types.ToolParam = {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    deltas: list[str] = []
    async with anthropic_client(ax_relay) as c:
        async with c.messages.stream(
            model="default",
            max_tokens=200,
            tools=[tool],
            messages=[{"role": "user", "content": "Weather in Rome?"}],
        ) as stream:
            async for t in stream.text_stream:
                deltas.append(t)
            first = await stream.get_final_message()
        assert first.stop_reason == "tool_use"
        assert "".join(deltas) == text
        assert len(deltas) >= 3  # ~2 s of text: several claude frames even on a loaded machine
        use = first.content[-1]
        assert isinstance(use, anthropic.types.ToolUseBlock)
        assert (use.id, use.input) == ("toolu_ax1", {"city": "Rome"})
        final = await c.messages.create(
            model="default",
            max_tokens=200,
            tools=[tool],
            messages=[
                {"role": "user", "content": "Weather in Rome?"},
                {"role": "assistant", "content": first.content},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_ax1", "content": "Sunny"}
                    ],
                },
            ],
        )
    assert final.content[0].type == "text"
    assert final.content[0].text == "It is sunny in Rome today."
