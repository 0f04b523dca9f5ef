"""An API turn sees what its caller sent, nothing of the user's own Claude Code setup.

The daemon's HOME (tests/support/claude_env.make_home) is a real user's: hooks that touch marker
files, an output style, a status line, `env` and permissive `permissions` in settings.json,
CLAUDE.md files in ~/.claude and in ~ (a parent of the relay's workspace), a user MCP server and
a history.jsonl of its own. Runs on every tested claude version (./dev.sh test).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import anthropic
import openai
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support.claude_env import leaks, make_home
from tests.support.relay_proc import Relay, children_of, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_user_setup_never_reaches_a_turn(relay: Relay, up: FakeUpstream) -> None:
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        up.push(Reply(text="one"))
        await sdk.messages.create(
            model="default", max_tokens=50, messages=[{"role": "user", "content": "hello"}]
        )
        up.push(Reply(text="two"))
        async with sdk.messages.stream(
            model="default", max_tokens=50, messages=[{"role": "user", "content": "stream"}]
        ) as s:
            await s.get_final_message()
        for turn in ("sticky one", "sticky two"):
            up.push(Reply(text="ok"))
            await sdk.messages.create(
                model="default",
                max_tokens=50,
                system="be brief",
                messages=[{"role": "user", "content": turn}],
                extra_headers={"X-IR-Session-ID": "isolation-test"},
            )
    async with openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key="x", max_retries=0) as oai:
        up.push(Reply(text="three"))
        await oai.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "openai"}]
        )
    assert len(up.main_requests) == 5
    # one upstream request per user turn: a named session gets no generated title (2.1.197 asked
    # for one per new conversation, spending the user's quota)
    assert up.title_requests == []
    bodies = [r.raw_body for r in up.all_requests]
    assert await asyncio.to_thread(leaks, relay.home, bodies) == []
    for r in up.main_requests:
        # the relay's settings, not the user's: no output style, no memory section
        assert "claudeMd" not in r.system_text
        assert "# claudeMd" not in r.user_text


async def test_claude_fetches_no_plugin_marketplace(relay: Relay, up: FakeUpstream) -> None:
    """Left alone, claude downloads the official plugin marketplace on start (then tries a `git
    clone` from GitHub) into its config dir. The relay's switch turns that off, and claude says
    so in its own state file."""
    up.push(Reply(text="ok"))
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        await sdk.messages.create(
            model="default", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    config = relay.home / ".local" / "state" / "claude-relay" / "claude-config"

    def reason() -> object:
        try:
            state = json.loads((config / ".claude.json").read_text())
        except (OSError, ValueError):
            return None
        return state.get("officialMarketplaceAutoInstallFailReason")

    deadline = time.monotonic() + 20
    while await asyncio.to_thread(reason) != "policy_blocked" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # claude writes its state file when it gets to it
    assert await asyncio.to_thread(reason) == "policy_blocked"
    assert not (config / "plugins" / "marketplaces").exists()


async def test_claude_registers_no_link_handler_in_the_users_home(
    relay: Relay, up: FakeUpstream
) -> None:
    """Left alone, claude registers itself as the claude-cli:// URL handler in the user's
    desktop files shortly after its first turn (~0.1 s after its API request, once per HOME).
    Two turns later no such file may be there."""
    up.on("", lambda body: Reply(text="ok"))
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        for _ in range(2):
            await sdk.messages.create(
                model="default", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
    apps = relay.home / ".local" / "share" / "applications"
    assert await asyncio.to_thread(lambda: list(apps.glob("claude*"))) == []


# What the relay owns in a HOME: its state dir (workspace, claude's config dir, sticky state) and,
# in these tests, the attachments and claude temp dirs (by default in the runtime dir)
RELAY_OWNED = (".local/state/claude-relay", "attachments", "claude-tmp")


def _home_files(home: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory of `home` outside what the relay owns (and the directories that
    lead there, which a first start creates): mode, size and mtime of files, mode of directories
    (a file added or removed shows as itself)."""
    out = {}
    for p in sorted(home.rglob("*")):
        rel = p.relative_to(home).as_posix()
        if rel.startswith(RELAY_OWNED) or any(o.startswith(rel + "/") for o in RELAY_OWNED):
            continue
        st = p.lstat()
        out[rel] = (st.st_mode, 0, 0) if p.is_dir() else (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


async def test_the_users_home_is_left_as_it_was(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Stateless, sticky and streamed turns change no file or directory of the user's home
    outside the relay's own state: not ~/.claude, not ~/.claude.json, not desktop files."""
    home = tmp_path / "home"
    await asyncio.to_thread(make_home, home)
    before = await asyncio.to_thread(_home_files, home)
    upstream.on("", lambda body: Reply(text="ok"))
    async with (
        start_relay(upstream, home=home) as relay,
        anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as c,
    ):
        for n in range(2):
            await c.messages.create(
                model="default", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
            await c.messages.create(
                model="default",
                max_tokens=50,
                messages=[{"role": "user", "content": f"sticky {n}"}],
                extra_headers={"X-IR-Session-ID": "home-check"},
            )
        async with c.messages.stream(
            model="default", max_tokens=50, messages=[{"role": "user", "content": "stream"}]
        ) as stream:
            await stream.get_final_message()
    upstream.clear()
    after = await asyncio.to_thread(_home_files, home)
    changed = sorted(k for k, v in after.items() if before.get(k) != v)
    assert not changed, "\n".join(changed)
    assert sorted(before.keys() - after.keys()) == []  # nothing of the user's deleted


def _listening_sockets(pid: int) -> list[str]:
    """The sockets `pid` accepts connections on: Unix (by path) and TCP, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(m.group(1))
    out = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if f[6] in inodes and int(f[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            out.append(f"unix:{f[7] if len(f) > 7 else '(unnamed)'}")
    for proto in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes and f[3] == "0A":  # TCP_LISTEN
                out.append(f"{proto}:{f[1]}")
    return out


async def test_claude_accepts_no_messages_from_other_sessions(
    relay: Relay, up: FakeUpstream
) -> None:
    """2.1.332 opens a cross-session inbox: each claude listens on a Unix socket and publishes a
    key for it in its config dir, so other sessions (the relay's other claudes among them) can
    message it. The relay turns that off: its claudes listen on nothing, publish no key."""
    up.push(Reply(text="ok"))
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        await sdk.messages.create(
            model="default", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    await relay.wait_warm()
    claudes = await asyncio.to_thread(children_of, relay.proc.pid)
    assert claudes
    for pid in claudes:
        assert await asyncio.to_thread(_listening_sockets, pid) == []
    config = relay.home / ".local" / "state" / "claude-relay" / "claude-config"
    assert await asyncio.to_thread(lambda: list(config.glob("sessions/*.key"))) == []


async def test_user_login_is_used_and_left_as_it_was(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """A subscription login lives in ~/.claude/.credentials.json; the relay's claudes have a
    config dir of their own, yet send that login's token and leave the file untouched."""
    home = tmp_path / "home"
    await asyncio.to_thread(make_home, home)
    creds = home / ".claude" / ".credentials.json"
    token = "sk-ant-oat01-relay-test-access-token"
    creds.write_text(
        json.dumps(
            {
                "claudeAiOauth": {
                    "accessToken": token,
                    "refreshToken": "sk-ant-ort01-relay-test-refresh-token",
                    "expiresAt": int((time.time() + 86400) * 1000),
                    "scopes": ["user:inference", "user:profile"],
                    "subscriptionType": "max",
                }
            }
        )
    )
    creds.chmod(0o600)
    before = creds.read_bytes()
    upstream.clear()
    async with start_relay(upstream, home=home, unset=("ANTHROPIC_API_KEY",)) as relay:
        upstream.push(Reply(text="subscription reply"))
        async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as c:
            reply = await c.messages.create(
                model="default", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        assert reply.content[0].text == "subscription reply"  # type: ignore[union-attr]
        assert upstream.main_requests[-1].api_key == token
    upstream.clear()
    assert creds.read_bytes() == before
    assert await asyncio.to_thread(leaks, home, []) == []
