"""Sticky sessions that hold the conversation: a client sends only its new user turn.

On a live (or, after a restart, resumable) sticky id, a call whose `messages` is one user message
continues the conversation claude holds; full-history calls keep working as before, and both
styles mix. `DELETE /v1/sessions/{id}` (or a new id) starts over.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream
from tests.support.claude_env import make_home
from tests.support.relay_proc import Relay, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")


def client(relay: Relay, sid: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=relay.url,
        api_key="unused",
        max_retries=0,
        default_headers={"X-IR-Session-ID": sid},
    )


async def say(c: anthropic.AsyncAnthropic, text: str) -> str:
    """One call that sends only the new user turn."""
    msg = await c.messages.create(
        model="default", max_tokens=50, messages=[{"role": "user", "content": text}]
    )
    assert msg.content[0].type == "text"
    return msg.content[0].text


def conversation(up: FakeUpstream) -> list[tuple[str, str]]:
    """(role, text) of the messages claude sent upstream last (its own system notes left out)."""
    out: list[tuple[str, str]] = []
    for m in up.main_requests[-1].body["messages"]:
        if m["role"] == "system":
            continue  # claude's own environment notes (2.1.332), not conversation turns
        content = m["content"]
        if isinstance(content, str):
            out.append((m["role"], content))
            continue
        texts = [b.get("text", "") for b in content if b.get("type") == "text"]
        if texts:
            out.append((m["role"], texts[-1]))
    return out


async def test_only_the_new_message_continues_the_conversation(
    relay: Relay, up: FakeUpstream
) -> None:
    async with client(relay, "cont-a") as c:
        assert await say(c, "remember 41") == "echo: remember 41"
        assert await say(c, "which number?") == "echo: which number?"
        assert conversation(up)[-3:] == [
            ("user", "remember 41"),
            ("assistant", "echo: remember 41"),
            ("user", "which number?"),
        ]
        # the styles mix: a full history of what claude holds extends it too
        history: list[anthropic.types.MessageParam] = [
            {"role": "user", "content": "remember 41"},
            {"role": "assistant", "content": "echo: remember 41"},
            {"role": "user", "content": "which number?"},
            {"role": "assistant", "content": "echo: which number?"},
            {"role": "user", "content": "and again?"},
        ]
        await c.messages.create(model="default", max_tokens=50, messages=history)
        assert conversation(up)[-5:] == [(m["role"], m["content"]) for m in history]
        assert "conversation_history" not in json.dumps(up.main_requests[-1].body)
        # DELETE starts over: the next single message is a new conversation
        async with (
            aiohttp.ClientSession() as s,
            s.delete(relay.url + "/v1/sessions/cont-a") as r,
        ):
            assert r.status == 200
        assert await say(c, "fresh start") == "echo: fresh start"
        assert conversation(up) == [("user", "fresh start")]


async def test_continuation_over_openai(relay: Relay, up: FakeUpstream) -> None:
    async with openai.AsyncOpenAI(
        base_url=relay.url + "/v1",
        api_key="unused",
        max_retries=0,
        default_headers={"X-IR-Session-ID": "cont-openai"},
    ) as c:
        for text in ("remember 42", "which number?"):
            done = await c.chat.completions.create(
                model="default", messages=[{"role": "user", "content": text}]
            )
            assert done.choices[0].message.content == f"echo: {text}"
    assert conversation(up)[-3:] == [
        ("user", "remember 42"),
        ("assistant", "echo: remember 42"),
        ("user", "which number?"),
    ]


@pytest.mark.timeout(120)  # two daemon starts and four turns
async def test_continuation_across_a_daemon_sigkill(upstream: FakeUpstream) -> None:
    """After a SIGKILL the next single message continues the conversation claude resumes. When
    claude's transcript is gone, the call gets a 404 instead (rebuilding from one message would
    drop the earlier turns unnoticed), and the id starts afresh on the next call."""
    upstream.clear()
    home = Path(tempfile.mkdtemp(prefix="relay-e2e-home-"))
    try:
        await asyncio.to_thread(make_home, home)
        async with start_relay(upstream, home=home) as r1:
            for sid, text in (("cont-kill", "remember 43"), ("cont-lost", "remember 44")):
                async with client(r1, sid) as c:
                    await say(c, text)
            r1.proc.send_signal(signal.SIGKILL)
            await r1.proc.wait()
        projects = home / ".local/state/claude-relay/claude-config/projects"
        for path in projects.glob("*/*.jsonl"):
            if "remember 44" in path.read_text():
                path.unlink()
        async with start_relay(upstream, home=home) as r2:
            async with client(r2, "cont-kill") as c:
                assert await say(c, "which number?") == "echo: which number?"
            assert conversation(upstream)[-3:] == [
                ("user", "remember 43"),
                ("assistant", "echo: remember 43"),
                ("user", "which number?"),
            ]
            async with client(r2, "cont-lost") as c:
                with pytest.raises(anthropic.NotFoundError) as info:
                    await say(c, "which number?")
                assert "could not restore the conversation" in info.value.message
                assert await say(c, "start over") == "echo: start over"
            assert conversation(upstream) == [("user", "start over")]
    finally:
        shutil.rmtree(home, ignore_errors=True)
        upstream.clear()
