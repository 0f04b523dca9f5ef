"""LangChain's ChatOpenAI and ChatAnthropic pointed at the relay: a call, a stream and a tool call.

These are the most common third-party clients of both APIs; they send fields and message shapes
of their own (stream_options, tool_calls echoed back, ToolMessages), so they catch what the
official SDKs alone would not.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply, ToolUse, Usage
from tests.support.relay_proc import Relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "default"
TOOL_PREFIX = "mcp__api__"  # how claude names the relay's MCP tools upstream


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


def openai_chat(relay: Relay, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=relay.url + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        model=MODEL,
        max_retries=0,
        **kw,
    )


def anthropic_chat(relay: Relay) -> ChatAnthropic:
    return ChatAnthropic(  # type: ignore[call-arg]
        base_url=relay.url,
        api_key="unused",  # type: ignore[arg-type]
        model=MODEL,
        max_retries=0,
        max_tokens=256,
    )


@pytest.mark.parametrize("make", [openai_chat, anthropic_chat], ids=["openai", "anthropic"])
async def test_call(relay: Relay, up: FakeUpstream, make: Any) -> None:
    up.push(Reply(text="Bonjour!", usage=Usage(input_tokens=20, output_tokens=3)))
    reply = await make(relay).ainvoke([HumanMessage("Say hello in French")])
    assert isinstance(reply, AIMessage)
    assert reply.content == "Bonjour!"
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["output_tokens"] == 3


@pytest.mark.parametrize("make", [openai_chat, anthropic_chat], ids=["openai", "anthropic"])
async def test_stream(relay: Relay, up: FakeUpstream, make: Any) -> None:
    text = " ".join(f"word{i}" for i in range(60)) + "."
    # Paced well beyond the ~100 ms screen poll so the text arrives in several pieces even on a
    # loaded machine (at 20 ms a chunk it once came through as one delta in CI).
    up.push(Reply(text=text, chunk_chars=30, delay=0.2))
    pieces: list[str] = []
    async for chunk in make(relay).astream("talk"):
        if isinstance(chunk.content, str):
            pieces.append(chunk.content)
        else:  # ChatAnthropic streams content blocks
            pieces.extend(b["text"] for b in chunk.content if b.get("type") == "text")
    assert "".join(pieces) == text
    assert sum(1 for p in pieces if p) >= 2


async def _tool_round_trip(llm: Any, up: FakeUpstream) -> None:
    up.push(
        Reply(text="", tool_uses=(ToolUse(TOOL_PREFIX + "get_weather", {"city": "Oslo"}),)),
        Reply(text="It is sunny in Oslo."),
    )
    bound = llm.bind_tools([get_weather])
    history: list[BaseMessage] = [HumanMessage("What is the weather in Oslo?")]
    first = await bound.ainvoke(history)
    assert isinstance(first, AIMessage)
    (call,) = first.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Oslo"})
    history += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = await bound.ainvoke(history)
    assert final.text == "It is sunny in Oslo."
    assert "sunny in Oslo" in up.main_requests[-1].user_text


async def test_openai_tool_call(relay: Relay, up: FakeUpstream) -> None:
    await _tool_round_trip(openai_chat(relay), up)


async def test_anthropic_tool_call(relay: Relay, up: FakeUpstream) -> None:
    await _tool_round_trip(anthropic_chat(relay), up)
