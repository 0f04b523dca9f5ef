"""Record the real claude CLI's PTY output for the golden tests of `pty_pool.tui`.

Usage: `./dev.sh record` (every tested CLI version), or
`.venv/bin/python -m tests.golden.record [--claude BIN] [NAME ...]` for one binary.
Each scenario runs one fresh claude, started exactly as the pool starts it (isolated config dir,
trust seeded), against the fake upstream and writes `tests/golden/<cli version>/<name>.jsonl`: a
header line (CLI version, terminal size, the model's exact text, what the scenario expects) and
one line per PTY read (`t` seconds since spawn, `b` base64 bytes), so a replay reproduces every
intermediate screen the relay saw.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply, ToolUse
from claude_relay.daemon.mcp import serving
from claude_relay.protocols.model import SpawnSpec, TextBlock, ToolResultBlock, ToolSpec
from claude_relay.pty_pool import isolation
from claude_relay.pty_pool.broker import Broker
from claude_relay.pty_pool.session import Prompt, Session
from claude_relay.pty_pool.settings import PoolSettings
from tests.support.claude_env import child_env, claude_bin, make_home
from tests.support.media import png

HERE = Path(__file__).parent

PROSE = (
    "The relay keeps a pool of warm claude processes so that a request does not pay for a cold "
    "start, and it reads their screens to stream text back while the model is still writing.\n\n"
    "Short second paragraph.\nA line right after a hard break.\n\n"
    + " ".join(f"word{i:02d}" for i in range(60))
    + "\n\nLast paragraph, which ends without a newline."
)
MARKDOWN = (
    "# Heading One\n\nSome **bold text**, *italic*, and `inline code` in a sentence.\n\n"
    "## Heading Two\n\n- bullet one\n- bullet **two**\n  - nested bullet\n\n"
    "1. first\n2. second\n\n"
    "```python\ndef double(x):\n    return x * 2\n```\n\n"
    '```json\n{"key": "value", "n": 1}\n```\n\n'
    "| Col A | Col B |\n|---|---|\n| a1 | b1 |\n| a2 long | b2 |\n\n"
    "> a quote\n\nDone with [a link](https://example.com/x)."
)
UNICODE = "中文字符测试 日本語のテキスト 한국어\nCafé é ñ — “quotes” 👍🏽 👨‍👩‍👧 ❤️ 🇫🇷 end."


@dataclass
class Scenario:
    name: str
    reply: Reply
    prompt: str = "Hello there"
    interrupt_after_delta: bool = False
    # tools: the reply calls them; the turn parks, is resumed with `tool_answer`, and `after`
    # is the model's final text
    tools: tuple[ToolSpec, ...] = ()
    tool_answer: str = ""
    after: Reply | None = None
    env: dict[str, str] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)
    # a PNG written to a private dir and pasted by path between `prompt` and `after_image`
    image: bytes | None = None
    after_image: str = ""
    # start claude in a workspace whose trust was never recorded: the recording is its dialog
    untrusted: bool = False


SCENARIOS = [
    Scenario("prose", Reply(text=PROSE, chunk_chars=12, delay=0.03), expect={"exact_stream": True}),
    Scenario("markdown", Reply(text=MARKDOWN, chunk_chars=10, delay=0.02)),
    Scenario("unicode", Reply(text=UNICODE, chunk_chars=4, delay=0.02)),
    Scenario("thinking", Reply(text="After thought.", thinking="Deep thought " * 20)),
    Scenario("error_500", Reply(status=500), expect={"error": "server_error"}),
    Scenario("error_401", Reply(status=401), expect={"error": "authentication_failed"}),
    Scenario(
        "interrupt",
        Reply(text=PROSE, chunk_chars=8, delay=0.1),
        interrupt_after_delta=True,
        expect={"interrupted": True},
    ),
    Scenario(
        "tools",
        Reply(
            text="Let me check the weather.",
            tool_uses=(
                ToolUse("mcp__api__get_weather", {"city": "Paris"}, "toolu_01A"),
                ToolUse("mcp__api__get_weather", {"city": "Rome"}, "toolu_01B"),
            ),
            chunk_chars=6,
            delay=0.02,
        ),
        tools=(
            ToolSpec(
                "get_weather",
                "Current weather for a city.",
                {"type": "object", "properties": {"city": {"type": "string"}}},
            ),
        ),
        tool_answer="Sunny",
        after=Reply(text="Both cities are sunny today.", chunk_chars=6, delay=0.02),
        expect={
            "before_tools": "Let me check the weather.",
            "after_tools": "Both cities are sunny today.",
        },
    ),
]


SCENARIOS.append(Scenario("trust_dialog", Reply(), untrusted=True))
SCENARIOS.append(
    Scenario(
        "image",
        Reply(text="A small red rectangle.", chunk_chars=6, delay=0.02),
        prompt="What is in ",
        image=png(),
        after_image=" this picture?",
        expect={"placeholder": "[Image #1]"},
    )
)


class Recorder(Session):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.t0 = time.monotonic()
        self.chunks: list[tuple[float, bytes]] = []

    def _on_output(self, data: bytes) -> None:
        self.chunks.append((time.monotonic() - self.t0, data))
        super()._on_output(data)


def cli_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.split()[0] if out.stdout else "unknown"


async def record(sc: Scenario, binary: str, version: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="golden-"))
    try:
        async with FakeUpstream() as up:
            make_home(tmp / "home")
            os.environ.update(child_env(tmp / "home", up.url))
            os.environ.update(sc.env)
            settings = PoolSettings(
                claude_bin=binary, workspace=tmp / "ws", max_retries=1, columns=100, rows=40
            )
            settings.workspace.mkdir()
            isolation.prepare(settings, dict(os.environ))
            if sc.untrusted:
                settings = PoolSettings(
                    claude_bin=binary,
                    workspace=tmp / "untrusted",
                    claude_config_dir=isolation.relay_config_dir(settings),
                    columns=100,
                    rows=40,
                )
                settings.workspace.mkdir()
            # errors are retried by claude (max_retries=1 here): script every attempt
            up.push(*([sc.reply] * (3 if sc.reply.status != 200 else 1)))
            if sc.after is not None:
                up.push(sc.after)
            broker = Broker()
            async with serving(broker):
                s = Recorder(SpawnSpec(), settings, binary, broker=broker, cli_version=version)
                try:
                    await s.start()
                except Exception as exc:
                    if not sc.untrusted:
                        raise
                    sc.expect["start_error"] = f"{type(exc).__name__}: {exc}"
                ready_at = len(s.chunks)
                outcome: dict[str, Any] = {}
                prompt: Prompt = sc.prompt
                if sc.image is not None:
                    (tmp / "att").mkdir(mode=0o700)
                    image = tmp / "att" / "image-1.png"
                    image.write_bytes(sc.image)
                    prompt = (sc.prompt, image, sc.after_image)
                try:
                    if sc.untrusted:
                        raise RuntimeError("not started")
                    async for _ev in s.run_turn(prompt, sc.tools):
                        outcome.setdefault("events", 0)
                        outcome["events"] += 1
                        if sc.interrupt_after_delta:
                            break
                    if s.parked_ids:
                        outcome["parked_at_chunk"] = len(s.chunks)
                        answers = tuple(
                            ToolResultBlock(i, (TextBlock(sc.tool_answer),)) for i in s.parked_ids
                        )
                        async for _ev in s.resume_turn(answers):
                            outcome["events"] += 1
                except Exception as exc:  # recorded, the golden test checks the screen
                    outcome["error"] = f"{type(exc).__name__}: {exc}"
                if sc.interrupt_after_delta:
                    await asyncio.sleep(0.5)
                await s.close()
            header = {
                "cli_version": version,
                "columns": settings.columns,
                "rows": settings.rows,
                "ready_chunk": ready_at,
                "text": sc.reply.text,
                "expect": sc.expect,
                "outcome": outcome,
            }
            out = HERE / version
            out.mkdir(exist_ok=True)
            with (out / f"{sc.name}.jsonl").open("w") as f:
                f.write(json.dumps(header, ensure_ascii=False) + "\n")
                for t, b in s.chunks:
                    f.write(json.dumps({"t": round(t, 4), "b": base64.b64encode(b).decode()}))
                    f.write("\n")
            print(sc.name, len(s.chunks), "chunks", outcome)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def main(args: list[str]) -> None:
    binary = claude_bin()
    if args[:1] == ["--claude"]:
        binary, args = args[1], args[2:]
    binary = shutil.which(binary) or binary
    version = cli_version(binary)
    for sc in SCENARIOS:
        if not args or sc.name in args:
            await record(sc, binary, version)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
