"""`claude-relay serve --demo` end to end: the real claude CLI against the built-in stand-in.

The daemon runs as a user would run it (the console script, no fake upstream of the test's own, a
HOME without any claude login), and is called with the official anthropic and openai SDKs. Every
reply is exact (docs/demo.md lists what the stand-in answers) and marked as a demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio

from tests.support.claude_env import claude_bin
from tests.support.relay_proc import RELAY_BIN, alive, children_of, free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

WEATHER: anthropic.types.ToolParam = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
    },
}


def said(text: str) -> str:
    return f"Demo reply (no model was called). You said: {text}"


class Demo:
    def __init__(self, url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/v1/health") as r:
            body: dict[str, Any] = await r.json()
            return body


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def demo() -> AsyncIterator[Demo]:
    tmp = Path(tempfile.mkdtemp(prefix="relay-demo-e2e-"))
    port = free_port()
    # A HOME with no claude login and no relay config: the demo needs neither.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "XDG_")) and k != "CLAUDECODE"
    }
    env.update(HOME=str(tmp), CLAUDE_RELAY_CLAUDE_BIN=shutil.which(claude_bin()) or claude_bin())
    env["CLAUDE_RELAY_WARM"] = "2"
    log = tmp / "daemon.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            RELAY_BIN,
            "serve",
            "--demo",
            "--port",
            str(port),
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
    d = Demo(f"http://127.0.0.1:{port}", proc, log)
    try:
        async with asyncio.timeout(40):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    if (await d.health())["pool"]["warm"] >= 1:
                        break
                await asyncio.sleep(0.05)  # polling a process over HTTP: no event to wait on
        yield d
    finally:
        kids = children_of(proc.pid)
        if proc.returncode is None:
            proc.terminate()
        async with asyncio.timeout(30):
            await proc.wait()
            while any(alive(p) for p in kids):
                await asyncio.sleep(0.05)
        shutil.rmtree(tmp, ignore_errors=True)


async def test_health_and_log_say_demo(demo: Demo) -> None:
    health = await demo.health()
    assert (health["demo"], health["model"], health["status"]) == (True, "demo", "ok")
    text = demo.log.read_text()
    assert re.search(r"WARNING .*DEMO MODE: replies come from claude-relay's built-in", text)


@pytest_asyncio.fixture(loop_scope="session")
async def claude_sdk(demo: Demo) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=demo.url, api_key="x", max_retries=0) as sdk:
        yield sdk


@pytest_asyncio.fixture(loop_scope="session")
async def openai_sdk(demo: Demo) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=demo.url + "/v1", api_key="x", max_retries=0) as sdk:
        yield sdk


async def test_anthropic_text(claude_sdk: anthropic.AsyncAnthropic) -> None:
    msg = await claude_sdk.messages.create(
        model="sonnet", max_tokens=100, messages=[{"role": "user", "content": "Hello demo"}]
    )
    assert msg.model == "demo"
    assert msg.content[0].text == said("Hello demo")  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn"


async def test_anthropic_stream(claude_sdk: anthropic.AsyncAnthropic) -> None:
    async with claude_sdk.messages.stream(
        model="default", max_tokens=100, messages=[{"role": "user", "content": "Stream it"}]
    ) as stream:
        pieces = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert final.model == "demo"
    assert "".join(pieces) == said("Stream it") == final.content[0].text  # type: ignore[union-attr]


async def test_anthropic_tool_round_trip(claude_sdk: anthropic.AsyncAnthropic) -> None:
    first = await claude_sdk.messages.create(
        model="default",
        max_tokens=100,
        tools=[WEATHER],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert (first.model, first.stop_reason) == ("demo", "tool_use")
    assert first.content[0].text == "Demo: calling get_weather."  # type: ignore[union-attr]
    use = first.content[1]
    assert isinstance(use, anthropic.types.ToolUseBlock)
    assert (use.name, use.input) == ("get_weather", {"city": "demo", "unit": "C"})
    # (the SDK's MessageParam union is too strict for mypy to match these literals)
    history: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [b.model_dump() for b in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}],
        },
    ]
    final = await claude_sdk.messages.create(
        model="default", max_tokens=100, tools=[WEATHER], messages=history
    )
    assert final.model == "demo"
    assert final.content[0].text == f"Demo reply: the tool returned {use.id}=18C"  # type: ignore[union-attr]


async def test_openai_text(openai_sdk: openai.AsyncOpenAI) -> None:
    reply = await openai_sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hi from openai"}]
    )
    assert reply.model == "demo"
    assert reply.choices[0].message.content == said("Hi from openai")


async def test_openai_stream(openai_sdk: openai.AsyncOpenAI) -> None:
    chunks = [
        c
        async for c in await openai_sdk.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "Stream openai"}], stream=True
        )
    ]
    assert {c.model for c in chunks} == {"demo"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == said("Stream openai")


async def test_openai_tool_round_trip(openai_sdk: openai.AsyncOpenAI) -> None:
    tool: Any = {
        "type": "function",
        "function": {
            "name": WEATHER["name"],
            "description": WEATHER["description"],
            "parameters": WEATHER["input_schema"],
        },
    }
    asked: Any = {"role": "user", "content": "Weather in Oslo?"}
    first = await openai_sdk.chat.completions.create(
        model="default", messages=[asked], tools=[tool]
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    assert (first.model, first.choices[0].finish_reason) == ("demo", "tool_calls")
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city":"demo","unit":"C"}'  # type: ignore[union-attr]
    answer: Any = {"role": "tool", "tool_call_id": call.id, "content": "-3C"}
    final = await openai_sdk.chat.completions.create(
        model="default",
        messages=[asked, cast(Any, first.choices[0].message.model_dump()), answer],
        tools=[tool],
    )
    assert final.model == "demo"
    assert final.choices[0].message.content == f"Demo reply: the tool returned {call.id}=-3C"
