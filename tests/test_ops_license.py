"""The license: parsing `claude auth status`, the background monitor, and the gate on turns.

A tiny fake `claude` (written per test) answers `--version` and `auth status --json` from a file
the test edits, so a login or logout is one write. Outputs are the shapes claude 2.1.197 printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from claude_relay.daemon import claude_probe
from claude_relay.daemon.app import make_app
from claude_relay.daemon.claude_probe import ProbeError, auth_status, parse_auth_status
from claude_relay.daemon.config import Config
from claude_relay.daemon.license import (
    LICENSE_KEY,
    FixedLicense,
    LicensedPool,
    LicenseMonitor,
    LicenseSource,
    LicenseState,
)
from claude_relay.protocols.errors import ServiceUnavailableError
from claude_relay.protocols.model import Message, TextBlock, TurnRequest
from tests.test_app import Client, FakePool, assert_envelope, body, result

# Observed with claude 2.1.197 (see docs/operations.md).
LOGGED_OUT = {"loggedIn": False, "authMethod": "none", "apiProvider": "firstParty"}
API_KEY = {
    "loggedIn": True,
    "authMethod": "api_key",
    "apiProvider": "firstParty",
    "apiKeySource": "ANTHROPIC_API_KEY",
}
# The fields claude adds for a claude.ai login (from its source: email, orgId, orgName,
# subscriptionType).
SUBSCRIPTION = {
    "loggedIn": True,
    "authMethod": "claude.ai",
    "apiProvider": "firstParty",
    "email": "ada@example.com",
    "orgId": "0f0e",
    "orgName": "Ada's Org",
    "subscriptionType": "max",
}

FAKE = """\
import json, os, pathlib, sys, time
state = pathlib.Path(__file__).with_name("auth.json")
if sys.argv[1:] == ["--version"]:
    print("2.1.197 (Claude Code)")
    sys.exit(0)
if sys.argv[1:] == ["auth", "status", "--json"]:
    text = state.read_text()
    if text == "hang":
        pathlib.Path(__file__).with_name("pid").write_text(str(os.getpid()))
        time.sleep(600)
    print(text)
    sys.exit(0 if json.loads(text)["loggedIn"] else 1)
sys.exit(2)
"""


class FakeClaude:
    def __init__(self, root: Path) -> None:
        self.path = root / "claude"
        self.path.write_text(f"#!{sys.executable}\n{FAKE}")
        self.path.chmod(0o755)
        self.state = root / "auth.json"
        self.pid_file = root / "pid"

    def set(self, status: dict[str, Any] | str) -> None:
        self.state.write_text(status if isinstance(status, str) else json.dumps(status))


@pytest.fixture
def fake_claude(tmp_path: Path) -> FakeClaude:
    fake = FakeClaude(tmp_path)
    fake.set(API_KEY)
    return fake


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, tmp_path: Path) -> MakeClient:
    """An app around a test pool, with the given license source and config fields."""

    async def make(
        pool: FakePool, *, license_source: LicenseSource | None = None, **config: Any
    ) -> Client:
        app = make_app(
            Config(workspace=tmp_path / "ws", **config), pool=pool, license_source=license_source
        )
        return await aiohttp_client(app)

    return make


def monitor(fake: FakeClaude, interval: float = 300.0) -> LicenseMonitor:
    return LicenseMonitor(str(fake.path), {"PATH": os.environ.get("PATH", "")}, interval)


# --- parsing -----------------------------------------------------------------------------------


def test_parse_subscription_login() -> None:
    auth = parse_auth_status(json.dumps(SUBSCRIPTION).encode())
    assert auth.logged_in
    assert (auth.method, auth.billing, auth.subscription_type) == (
        "subscription",
        "subscription",
        "max",
    )
    assert (auth.email, auth.organization, auth.provider) == (
        "ada@example.com",
        "Ada's Org",
        "firstParty",
    )
    assert auth.warnings == ()


def test_parse_api_key_login_warns_about_billing() -> None:
    auth = parse_auth_status(json.dumps(API_KEY).encode())
    assert (auth.method, auth.billing, auth.api_key_source) == (
        "api_key",
        "api",
        "ANTHROPIC_API_KEY",
    )
    assert "bill" in auth.warnings[0]


def test_subscription_with_api_key_in_env_bills_the_api() -> None:
    auth = parse_auth_status(
        json.dumps({**SUBSCRIPTION, "apiKeySource": "ANTHROPIC_API_KEY"}).encode()
    )
    assert auth.method == "subscription"
    assert auth.billing == "api"
    assert auth.warnings


def test_parse_logged_out_and_garbage() -> None:
    auth = parse_auth_status(json.dumps(LOGGED_OUT).encode())
    assert (auth.logged_in, auth.method) == (False, "none")
    with pytest.raises(ProbeError):
        parse_auth_status(b"Not logged in")
    with pytest.raises(ProbeError):
        parse_auth_status(b'{"authMethod": "none"}')


def test_license_body_shapes() -> None:
    unknown = LicenseState("claude").body()
    assert unknown == {
        "configured": False,
        "license": {
            "valid": False,
            "method": "unknown",
            "provider": None,
            "account": None,
            "organization": None,
            "subscriptionType": None,
            "apiKeySource": None,
            "billing": "unknown",
            "warnings": [],
            "message": "not checked yet",
        },
        "refreshedAt": None,
    }
    auth = parse_auth_status(json.dumps(SUBSCRIPTION).encode())
    known = LicenseState("claude", binary="/x/claude", auth=auth, refreshed_at=0.0).body()
    assert known["configured"] is True
    assert known["refreshedAt"] == "1970-01-01T00:00:00+00:00"
    lic = known["license"]
    assert isinstance(lic, dict)
    assert (lic["valid"], lic["method"], lic["account"], lic["message"]) == (
        True,
        "subscription",
        "ada@example.com",
        None,
    )


# --- probing the binary -------------------------------------------------------------------------


async def test_check_reads_version_and_login(fake_claude: FakeClaude) -> None:
    state = await monitor(fake_claude).refresh()
    assert state.binary == str(fake_claude.path)
    assert state.version == "2.1.197"
    assert state.auth is not None
    assert state.auth.method == "api_key"
    assert state.error is None
    assert not state.logged_out


async def test_missing_binary_is_reported_not_raised(tmp_path: Path) -> None:
    m = LicenseMonitor(str(tmp_path / "nope"), {}, 300.0)
    state = await m.refresh()
    assert state.missing
    assert state.binary is None
    assert state.error is not None
    assert "not found" in state.error


async def test_hung_probe_is_killed_at_its_deadline(
    fake_claude: FakeClaude, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claude_probe, "PROBE_TIMEOUT", 0.5)
    fake_claude.set("hang")
    with pytest.raises(ProbeError, match="did not answer"):
        await auth_status(str(fake_claude.path), {"PATH": os.environ.get("PATH", "")})
    pid = int(fake_claude.pid_file.read_text())
    # killed and reaped: no process, not even a zombie, is left
    assert not await asyncio.to_thread(Path(f"/proc/{pid}").exists)


async def test_concurrent_refreshes_share_one_check(fake_claude: FakeClaude) -> None:
    m = monitor(fake_claude)
    a, b = await asyncio.gather(m.refresh(), m.refresh())
    assert a is b


# --- the gate in the app -------------------------------------------------------------------------


async def test_logged_out_claude_gets_a_503_that_says_how_to_log_in(
    make_client: MakeClient, fake_claude: FakeClaude
) -> None:
    fake_claude.set(LOGGED_OUT)
    m = monitor(fake_claude)
    pool = FakePool([result("hi")])
    client = await make_client(pool, license_source=m)
    await m.refresh()  # the app's monitor has started; wait for its first answer

    async with client.post("/v1/messages", json=body()) as resp:
        assert resp.status == 503
        error = assert_envelope(await resp.json(), resp, "api_error")
    assert "not logged in" in error["message"]
    assert "/login" in error["message"]
    assert pool.requests == []  # refused before the pool saw it

    async with client.get("/v1/health") as resp:
        health = await resp.json()
    assert health["status"] == "degraded"
    assert health["claude"]["error"] == "logged_out"

    async with client.get("/v1/license") as resp:
        lic = await resp.json()
    assert lic["configured"] is True
    assert lic["license"]["valid"] is False
    assert lic["license"]["method"] == "none"
    assert "/login" in lic["license"]["message"]

    async with client.get("/v1/availability") as resp:
        assert await resp.json() == {"ok": False, "missing": ["login"]}

    # The user logs in; a refresh makes it count at once.
    fake_claude.set(SUBSCRIPTION)
    async with client.post("/v1/license/refresh") as resp:
        assert resp.status == 200
        lic = await resp.json()
    assert lic["license"]["valid"] is True
    assert lic["license"]["method"] == "subscription"
    assert lic["license"]["subscriptionType"] == "max"
    async with client.post("/v1/messages", json=body()) as resp:
        assert resp.status == 200
        assert (await resp.json())["content"][0]["text"] == "hi"


async def test_a_running_check_never_holds_up_a_request(
    make_client: MakeClient, fake_claude: FakeClaude, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(claude_probe, "PROBE_TIMEOUT", 30.0)
    fake_claude.set("hang")
    m = monitor(fake_claude)
    client = await make_client(FakePool([result("hi")]), license_source=m)
    # the app's first check is now stuck in `auth status`; requests go on regardless
    async with asyncio.timeout(5), client.post("/v1/messages", json=body()) as resp:
        assert resp.status == 200
    async with client.get("/v1/license") as resp:
        assert (await resp.json())["configured"] is False


async def test_version_reports_the_checked_claude(
    make_client: MakeClient, fake_claude: FakeClaude
) -> None:
    m = monitor(fake_claude)
    client = await make_client(FakePool(), license_source=m)
    await m.refresh()
    async with client.get("/v1/version") as resp:
        data = await resp.json()
    assert data["claudeVersion"] == "2.1.197"
    assert data["claudeAvailable"] is True
    assert data["claudeMissing"] is False
    assert data["platform"] == sys.platform
    assert isinstance(data["relay"], str)
    assert isinstance(data["arch"], str)
    async with client.get("/v1/availability") as resp:
        assert await resp.json() == {"ok": True, "missing": []}


async def test_login_change_recycles_idle_sessions(fake_claude: FakeClaude) -> None:
    m = monitor(fake_claude)
    changes: list[LicenseState] = []
    m.on_change = changes.append
    await m.refresh()
    assert changes == []  # the first answer is no change
    await m.refresh()
    assert changes == []
    fake_claude.set(SUBSCRIPTION)
    await m.refresh()
    assert [c.auth.method for c in changes if c.auth is not None] == ["subscription"]


async def test_missing_claude_is_reported_by_availability_and_version(
    make_client: MakeClient, tmp_path: Path
) -> None:
    m = LicenseMonitor(str(tmp_path / "nope"), {}, 300.0)
    client = await make_client(FakePool(claude_error="claude binary not found"), license_source=m)
    await m.refresh()
    async with client.get("/v1/availability") as resp:
        assert await resp.json() == {"ok": False, "missing": ["claude"]}
    async with client.get("/v1/version") as resp:
        data = await resp.json()
    assert (data["claudeAvailable"], data["claudeMissing"], data["claudeVersion"]) == (
        False,
        True,
        None,
    )


def test_app_with_a_test_pool_never_runs_claude(tmp_path: Path) -> None:
    app = make_app(Config(workspace=tmp_path), pool=FakePool())
    assert not isinstance(app[LICENSE_KEY], LicenseMonitor)


async def test_the_gate_also_refuses_at_admission() -> None:
    # Routes check claude_error first; the handle refuses too, for any route that does not.
    logged_out = parse_auth_status(json.dumps(LOGGED_OUT).encode())
    state = LicenseState("claude", binary="/x/claude", auth=logged_out, refreshed_at=0.0)
    inner = FakePool([result("never")])
    pool = LicensedPool(inner, FixedLicense(state))
    with pytest.raises(ServiceUnavailableError, match="not logged in"):
        async with pool.open_turn(inner_request()):
            pass
    assert inner.requests == []


def inner_request() -> TurnRequest:
    return TurnRequest(messages=(Message("user", (TextBlock("hi"),)),), model="m", max_tokens=5)
