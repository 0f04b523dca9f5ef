"""Tool-calling benchmark: what a tool round trip costs through the relay.

Run: `.venv/bin/python -m bench.bench_tools [--n 20]` after `./dev.sh test` has installed the
pinned CLI. Against the fake upstream (instant answers), per round trip:
- call: the request that ends in `tool_use` (fresh warm claude, tool list changed: includes the
  list_changed re-list and the 100 ms settle);
- result: the follow-up carrying the `tool_result` (answered by the parked claude);
- plain: a request without tools on the same daemon, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import anthropic

from bench.bench_core import fmt
from claude_relay.daemon.fake_upstream import Body, FakeUpstream, Reply, ToolUse
from tests.support.relay_proc import start_relay

TOOL: Any = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def _model(body: Body) -> Reply:
    last = body["messages"][-1]["content"]
    if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
        return Reply(text="It is sunny.")
    if "plain" in str(last):
        return Reply(text="Plain answer.")
    return Reply(text="Checking.", tool_uses=(ToolUse("mcp__api__get_weather", {"city": "Oslo"}),))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()
    calls: list[float] = []
    results: list[float] = []
    plain: list[float] = []
    async with FakeUpstream() as up, start_relay(up, warm="2") as relay:
        up.on("", _model)
        async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as c:
            for i in range(args.n + 1):
                await relay.wait_warm(2)
                t0 = time.perf_counter()
                await c.messages.create(
                    model="default",
                    max_tokens=100,
                    messages=[{"role": "user", "content": f"plain {i}"}],
                )
                t1 = time.perf_counter()
                await relay.wait_warm(2)
                messages: list[Any] = [{"role": "user", "content": f"weather {i}?"}]
                t2 = time.perf_counter()
                first = await c.messages.create(
                    model="default", max_tokens=100, tools=[TOOL], messages=messages
                )
                t3 = time.perf_counter()
                use = next(b for b in first.content if b.type == "tool_use")
                messages += [
                    {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}
                        ],
                    },
                ]
                await c.messages.create(
                    model="default", max_tokens=100, tools=[TOOL], messages=messages
                )
                t4 = time.perf_counter()
                if i:  # the first round warms caches
                    plain.append(t1 - t0)
                    calls.append(t3 - t2)
                    results.append(t4 - t3)
    print("tool round trip through claude-relay (fake upstream, pinned CLI)")
    print(f"  plain request (no tools)      {fmt(plain)}")
    print(f"  request ending in tool_use    {fmt(calls)}")
    print(f"  follow-up with tool_result    {fmt(results)}")


if __name__ == "__main__":
    asyncio.run(main())
