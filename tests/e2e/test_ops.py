"""Operations end to end with the real claude CLI: license, version, metrics (scraped by a real
Prometheus when it is installed), API keys, a logged-out claude, and the doctor/status commands.

In these tests claude is logged in by ANTHROPIC_API_KEY (the fake upstream's key), which is what
`claude auth status --json` reports as `"authMethod": "api_key"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from prometheus_client.parser import text_string_to_metric_families

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply, Usage
from claude_relay.pty_pool import versions
from tests.support.claude_env import claude_bin
from tests.support.relay_proc import RELAY_BIN, Relay, free_port, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

BODY = {"model": "default", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
# the version of the claude under test (./dev.sh test runs the e2e tier on each tested one)
PINNED = (
    versions.parse_version(
        subprocess.run(
            [claude_bin(), "--version"], capture_output=True, text=True, check=False
        ).stdout
    )
    or "unknown"
)


async def get_json(url: str, **headers: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def checked_license(relay: Relay, **headers: str) -> dict[str, Any]:
    """/v1/license once the daemon's first background check has finished."""
    async with asyncio.timeout(30):
        while True:
            _, data = await get_json(relay.url + "/v1/license", **headers)
            if data["refreshedAt"] is not None:
                return data  # type: ignore[no-any-return]
            await asyncio.sleep(0.1)  # polling a process over HTTP: no event to wait on


async def test_license_version_and_availability(relay: Relay, up: FakeUpstream) -> None:
    lic = await checked_license(relay)
    assert lic["configured"] is True
    info = lic["license"]
    assert (info["valid"], info["method"], info["provider"]) == (True, "api_key", "firstParty")
    assert (info["apiKeySource"], info["billing"]) == ("ANTHROPIC_API_KEY", "api")
    assert any("ANTHROPIC_API_KEY" in w for w in info["warnings"])

    status, version = await get_json(relay.url + "/v1/version")
    assert status == 200
    assert version["claudeVersion"] == PINNED
    assert (version["claudeAvailable"], version["claudeMissing"]) == (True, False)
    assert version["platform"] == sys.platform

    assert await get_json(relay.url + "/v1/availability") == (200, {"ok": True, "missing": []})

    async with aiohttp.ClientSession() as s, s.post(relay.url + "/v1/license/refresh") as r:
        assert r.status == 200
        refreshed = await r.json()
    assert refreshed["refreshedAt"] >= lic["refreshedAt"]


async def test_metrics_count_a_real_turn(relay: Relay, up: FakeUpstream) -> None:
    up.push(Reply(text="Counted.", usage=Usage(input_tokens=100, output_tokens=9)))
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        msg = await sdk.messages.create(
            model="default", max_tokens=50, messages=[{"role": "user", "content": "count me"}]
        )
    assert msg.content[0].type == "text"
    async with aiohttp.ClientSession() as s, s.get(relay.url + "/metrics") as r:
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("claude_relay_turns_total", (("outcome", "ok"),))] >= 1
    assert samples[("claude_relay_tokens_total", (("type", "output"),))] >= 9
    assert samples[("claude_relay_turn_duration_seconds_count", ())] >= 1
    assert samples[("claude_relay_pool_sessions", (("state", "warm"),))] >= 0
    assert samples[("claude_relay_claude_logged_in", ())] == 1
    build = [k for k in samples if k[0] == "claude_relay_build_info"]
    assert ("claude_version", PINNED) in build[0][1]


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
async def test_prometheus_scrapes_the_relay(relay: Relay, up: FakeUpstream) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="relay-prom-"))
    target = relay.url.removeprefix("http://")
    (tmp / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: claude-relay\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/v1"
    log = (tmp / "prometheus.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        "prometheus",
        f"--config.file={tmp / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(45):
            while True:  # polling a process over HTTP: no event to wait on
                with contextlib.suppress(aiohttp.ClientError):
                    _, targets = await get_json(api + "/targets")
                    active = targets["data"]["activeTargets"]
                    if active and active[0]["health"] == "up":
                        _, result = await get_json(api + "/query?query=claude_relay_pool_max_busy")
                        if result["data"]["result"]:
                            break
                await asyncio.sleep(0.2)
        assert active[0]["lastError"] == ""
        assert result["data"]["result"][0]["value"][1] == "4"
    finally:
        proc.terminate()
        async with asyncio.timeout(30):
            await proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def test_api_keys_on_a_real_daemon(upstream: FakeUpstream, relay: Relay) -> None:
    upstream.clear()
    async with start_relay(upstream, api_keys="e2e-key") as keyed:
        assert (await get_json(keyed.url + "/v1/health"))[0] == 200

        async with aiohttp.ClientSession() as s:
            body = {
                "model": "default",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
            }
            async with s.post(keyed.url + "/v1/messages", json=body) as r:
                assert r.status == 401
                error = await r.json()
            assert error["type"] == "error"
            assert error["error"]["type"] == "authentication_error"
            chat = {"model": "default", "messages": [{"role": "user", "content": "x"}]}
            async with s.post(keyed.url + "/v1/chat/completions", json=chat) as r:
                assert r.status == 401
                error = await r.json()
            assert set(error) == {"error"}
            assert error["error"]["code"] == "invalid_api_key"

        upstream.push(Reply(text="Keyed."))
        async with anthropic.AsyncAnthropic(
            base_url=keyed.url, api_key="e2e-key", max_retries=0
        ) as sdk:
            msg = await sdk.messages.create(
                model="default", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert msg.content[0].type == "text"
        assert msg.content[0].text == "Keyed."
    upstream.clear()


async def test_a_logged_out_claude_gets_a_login_hint_not_a_hang(
    upstream: FakeUpstream, relay: Relay
) -> None:
    async with start_relay(
        upstream, wait_warm=False, unset=("ANTHROPIC_API_KEY",), warm="1"
    ) as out:
        lic = await checked_license(out)
        assert lic["configured"] is True
        assert lic["license"]["valid"] is False
        assert lic["license"]["method"] == "none"

        status, health = await get_json(out.url + "/v1/health")
        assert (status, health["status"]) == (200, "degraded")
        assert health["claude"]["error"] == "logged_out"

        async with (
            asyncio.timeout(10),
            aiohttp.ClientSession() as s,
            s.post(out.url + "/v1/messages", json=BODY) as r,
        ):
            assert r.status == 503
            error = await r.json()
        assert error["error"]["type"] == "api_error"
        assert "/login" in error["error"]["message"]
        assert await get_json(out.url + "/v1/availability") == (
            200,
            {"ok": False, "missing": ["login"]},
        )
        assert out.proc.returncode is None  # still serving, not crash-looping


async def run_command(relay: Relay, *argv: str, **env: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        RELAY_BIN,
        *argv,
        env={**relay.env, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(40):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_doctor_and_status_commands(relay: Relay, up: FakeUpstream) -> None:
    port = relay.url.rsplit(":", 1)[1]
    code, out = await run_command(relay, "doctor", "--json", CLAUDE_RELAY_PORT=port)
    assert code == 0, out
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["claude"]["status"] == "ok"
    assert PINNED in checks["claude"]["detail"]
    assert checks["login"]["detail"].startswith("api_key")
    assert checks["billing"]["status"] == "warn"
    assert checks["port"]["detail"].endswith("in use by a running claude-relay")

    await checked_license(relay)
    code, out = await run_command(relay, "status", CLAUDE_RELAY_PORT=port)
    assert code == 0, out
    assert f"relay     {relay.url}  ok" in out
    assert "logged in: api_key" in out
    assert f"claude    {PINNED}" in out
