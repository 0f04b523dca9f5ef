"""Sticky sessions end to end: X-IR-Session-ID keeps one claude conversation per id."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anthropic
import pytest
import pytest_asyncio

from claude_relay.daemon.fake_upstream import FakeUpstream
from tests.support.claude_env import make_home
from tests.support.relay_proc import Relay, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "default"


def client(relay: Relay, sid: str | None = None) -> anthropic.AsyncAnthropic:
    headers = {"X-IR-Session-ID": sid} if sid else None
    return anthropic.AsyncAnthropic(
        base_url=relay.url, api_key="unused", max_retries=0, default_headers=headers
    )


@pytest_asyncio.fixture(loop_scope="session")
async def sdk(relay: Relay) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with client(relay) as c:
        yield c


def roles_and_texts(body: dict[str, object]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    messages = body["messages"]
    assert isinstance(messages, list)
    for m in messages:
        if m["role"] == "system":
            continue  # claude's own environment notes (2.1.332), not conversation turns
        content = m["content"]
        if isinstance(content, str):
            out.append((m["role"], content))
        else:
            texts = [b.get("text", "") for b in content if isinstance(b, dict)]
            out.append((m["role"], texts[-1] if texts else ""))
    return out


async def chat(
    c: anthropic.AsyncAnthropic, history: list[anthropic.types.MessageParam], text: str
) -> str:
    history.append({"role": "user", "content": text})
    msg = await c.messages.create(model=MODEL, max_tokens=50, messages=history)
    assert msg.content[0].type == "text"
    reply = msg.content[0].text
    history.append({"role": "assistant", "content": reply})
    return reply


async def test_sticky_calls_share_one_real_conversation(
    sdk: anthropic.AsyncAnthropic, relay: Relay, up: FakeUpstream
) -> None:
    history: list[anthropic.types.MessageParam] = []
    async with client(relay, "conv-a") as c:
        assert await chat(c, history, "first question") == "echo: first question"
        # a stateless call in between sees nothing of it
        await sdk.messages.create(
            model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "unrelated"}]
        )
        assert "first question" not in json.dumps(up.main_requests[-1].body)
        assert await chat(c, history, "second question") == "echo: second question"
    convo = roles_and_texts(up.main_requests[-1].body)
    # the upstream sees the first exchange as real messages, and only the new turn was pasted
    assert convo[-3:] == [
        ("user", "first question"),
        ("assistant", "echo: first question"),
        ("user", "second question"),
    ]
    assert "conversation_history" not in json.dumps(up.main_requests[-1].body)


async def test_edited_history_starts_a_fresh_claude(relay: Relay, up: FakeUpstream) -> None:
    history: list[anthropic.types.MessageParam] = []
    async with client(relay, "conv-edit") as c:
        await chat(c, history, "original")
        history[0] = {"role": "user", "content": "edited"}
        await chat(c, history, "follow-up")
    body = up.main_requests[-1].body
    # a fresh claude: one user message, the edited history rendered into it
    assert [role for role, _ in roles_and_texts(body)] == ["user"]
    assert "conversation_history" in json.dumps(body)
    assert "edited" in json.dumps(body)
    assert ("user", "original") not in roles_and_texts(body)


async def test_concurrent_calls_on_one_id_run_in_order(relay: Relay, up: FakeUpstream) -> None:
    async with client(relay, "conv-conc") as c:
        a = asyncio.create_task(
            c.messages.create(
                model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "alpha"}]
            )
        )
        await up.wait_for_requests(1, timeout=20)
        b = asyncio.create_task(
            c.messages.create(
                model=MODEL,
                max_tokens=20,
                messages=[
                    {"role": "user", "content": "alpha"},
                    {"role": "assistant", "content": "echo: alpha"},
                    {"role": "user", "content": "beta"},
                ],
            )
        )
        ra, rb = await asyncio.gather(a, b)
    assert ra.content[0].type == "text"
    assert ra.content[0].text == "echo: alpha"
    assert rb.content[0].type == "text"
    assert rb.content[0].text == "echo: beta"
    assert roles_and_texts(up.main_requests[-1].body)[-3:] == [
        ("user", "alpha"),
        ("assistant", "echo: alpha"),
        ("user", "beta"),
    ]


async def test_list_and_delete_sessions(relay: Relay, up: FakeUpstream) -> None:
    async with client(relay, "conv-list") as c:
        await chat(c, [], "hello")
    async with aiohttp.ClientSession() as s:
        async with s.get(relay.url + "/v1/sessions") as r:
            body = await r.json()
        assert set(body["pool"]) >= {"warm", "busy", "sticky", "max", "queued"}
        entry = next(x for x in body["sessions"] if x["id"] == "conv-list")
        assert entry["turns"] == 1
        assert entry["state"] == "ready"
        assert isinstance(entry["pid"], int)
        assert len(entry["claude_session_id"]) == 36
        async with s.delete(relay.url + "/v1/sessions/conv-list") as r:
            assert r.status == 200
        async with s.delete(relay.url + "/v1/sessions/conv-list") as r:
            assert r.status == 404
            err = await r.json()
        assert err["type"] == "error"
        assert err["error"]["type"] == "not_found_error"


def _write_prompt_after_reply(home: Path, prompt: str) -> None:
    """Give the transcript the order claude v2.1.197 sometimes leaves after a SIGKILL: the
    prompt's `user` entry after the reply, and no `last-prompt` pointer (golden:
    tests/golden/transcripts/user-after-reply.jsonl)."""
    [path] = [
        p
        for p in (home / ".local/state/claude-relay/claude-config/projects").glob("*/*.jsonl")
        if prompt in p.read_text()
    ]
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    user = [e for e in entries if e.get("type") == "user" and e["message"]["content"] == prompt]
    rest = [e for e in entries if e not in user and e.get("type") != "last-prompt"]
    path.write_text("".join(json.dumps(e) + "\n" for e in rest + user))


@pytest.mark.parametrize("prompt_after_reply", [False, True], ids=["as-written", "reordered"])
async def test_conversation_survives_daemon_sigkill(
    upstream: FakeUpstream, prompt_after_reply: bool
) -> None:
    """After a SIGKILL the next call resumes the same claude conversation. `reordered`: the
    transcript order claude sometimes leaves (see `_write_prompt_after_reply`); claude's resume
    takes the last message in file order as the end of the conversation, so the relay puts each
    entry after its parent first and the reply is not replaced by "No response requested."."""
    upstream.clear()
    home = Path(tempfile.mkdtemp(prefix="relay-e2e-home-"))
    try:
        await asyncio.to_thread(make_home, home)
        history: list[anthropic.types.MessageParam] = []
        async with start_relay(upstream, home=home) as r1:
            async with client(r1, "conv-kill") as c:
                await chat(c, history, "remember the number 7")
            r1.proc.send_signal(signal.SIGKILL)
            await r1.proc.wait()
        if prompt_after_reply:
            _write_prompt_after_reply(home, "remember the number 7")
        async with start_relay(upstream, home=home) as r2, client(r2, "conv-kill") as c:
            assert await chat(c, history, "which number?") == "echo: which number?"
        convo = roles_and_texts(upstream.main_requests[-1].body)
        assert convo[-3:] == [
            ("user", "remember the number 7"),
            ("assistant", "echo: remember the number 7"),
            ("user", "which number?"),
        ]
        assert "conversation_history" not in json.dumps(upstream.main_requests[-1].body)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        upstream.clear()


async def test_idle_reaper_and_sticky_cap(upstream: FakeUpstream) -> None:
    upstream.clear()
    async with start_relay(upstream, sticky_idle_timeout="2", max_sticky="1") as r:
        async with client(r, "only-one") as c:
            await chat(c, [], "hi")
        async with client(r, "second") as c2:
            with pytest.raises(anthropic.APIStatusError) as info:
                await chat(c2, [], "no room")
        assert info.value.status_code == 529
        assert info.value.response.headers["retry-after"]
        async with asyncio.timeout(20), aiohttp.ClientSession() as s:
            while True:  # the reaper closes the idle session after ~2 s
                async with s.get(r.url + "/v1/sessions") as resp:
                    if not (await resp.json())["sessions"]:
                        break
                await asyncio.sleep(0.2)
        async with client(r, "second") as c2:
            assert await chat(c2, [], "room now") == "echo: room now"
    upstream.clear()


async def test_dead_sticky_claude_is_resumed(relay: Relay, up: FakeUpstream) -> None:
    history: list[anthropic.types.MessageParam] = []
    async with client(relay, "conv-crash") as c:
        await chat(c, history, "before the crash")
        async with aiohttp.ClientSession() as s, s.get(relay.url + "/v1/sessions") as r:
            entry = next(x for x in (await r.json())["sessions"] if x["id"] == "conv-crash")
        os.kill(entry["pid"], signal.SIGKILL)
        assert await chat(c, history, "after the crash") == "echo: after the crash"
    convo = roles_and_texts(up.main_requests[-1].body)
    assert ("user", "before the crash") in convo
    assert "conversation_history" not in json.dumps(up.main_requests[-1].body)


async def test_session_id_body_field_works_like_the_header(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream
) -> None:
    history: list[anthropic.types.MessageParam] = []
    for text in ("body one", "body two"):
        history.append({"role": "user", "content": text})
        msg = await sdk.messages.create(
            model=MODEL, max_tokens=20, messages=history, extra_body={"session_id": "conv-body"}
        )
        assert msg.content[0].type == "text"
        history.append({"role": "assistant", "content": msg.content[0].text})
    assert roles_and_texts(up.main_requests[-1].body)[-3:] == [
        ("user", "body one"),
        ("assistant", "echo: body one"),
        ("user", "body two"),
    ]
