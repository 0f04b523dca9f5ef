"""The dashboard's HTTP side against a scripted fake pool: the page shell, the event stream, the
browser and key rules it shares with the API, and the recent-turns list (per key)."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from pytest_aiohttp import AiohttpClient

from claude_relay.daemon import cli
from claude_relay.daemon.app import make_app
from claude_relay.daemon.config import Config
from claude_relay.protocols.errors import OverloadedError
from tests.test_app import Client, FakePool, result

KEYS = "key-one, key-two"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path) -> Client:
    pool = FakePool([result("hi")])
    return await aiohttp_client(make_app(Config(workspace=tmp_path, api_keys=KEYS), pool=pool))


async def next_event(resp: ClientResponse) -> tuple[str, Any]:
    frame = (await resp.content.readuntil(b"\n\n")).decode()
    lines = dict(line.split(": ", 1) for line in frame.strip().split("\n"))
    return lines["event"], orjson.loads(lines["data"])


async def state_for(client: Client, key: str) -> dict[str, Any]:
    async with client.get("/dashboard/events", headers={"x-api-key": key}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        event, data = await next_event(resp)
    assert event == "state"
    assert isinstance(data, dict)
    return data


async def test_the_page_needs_no_key_and_is_not_frameable(client: Client) -> None:
    for path, kind in (
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == kind
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    page = await (await client.get("/dashboard")).text()
    assert '<script src="/dashboard/dashboard.js"' in page
    assert "http" not in page.replace("http-equiv", "")  # nothing loaded from elsewhere


async def test_the_data_needs_the_key(client: Client) -> None:
    resp = await client.get("/dashboard/events")
    assert resp.status == 401
    assert (await resp.json())["error"]["type"] == "authentication_error"
    resp = await client.get("/dashboard/events", headers={"x-api-key": "wrong"})
    assert resp.status == 401
    data = await state_for(client, "key-two")
    assert data["pool"]["max_busy"] == 4
    assert data["relay"] == {"demo": False, "keys": True, "uptime": data["relay"]["uptime"]}
    assert data["live"] == []  # a test pool has no claude screens


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/events"])
@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example"},
        {"Host": "evil.example"},  # a DNS-rebound page
    ],
)
async def test_other_sites_are_refused(client: Client, path: str, headers: dict[str, str]) -> None:
    resp = await client.get(path, headers={**headers, "x-api-key": "key-one"})
    assert resp.status == 403
    assert (await resp.json())["error"]["type"] == "permission_error"


async def test_same_origin_fetches_pass(client: Client) -> None:
    headers = {"Sec-Fetch-Site": "same-origin", "x-api-key": "key-one"}
    assert (await client.get("/dashboard", headers={"Sec-Fetch-Site": "none"})).status == 200
    assert (await client.get("/dashboard/events", headers=headers)).status == 200


async def test_recent_turns_are_listed_per_key(client: Client) -> None:
    body = {"model": "sonnet", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    resp = await client.post("/v1/messages", json=body, headers={"x-api-key": "key-one"})
    assert resp.status == 200
    mine = (await state_for(client, "key-one"))["turns"]
    assert len(mine) == 1
    turn = mine[0]
    assert (turn["model"], turn["status"], turn["outcome"], turn["output_tokens"]) == (
        "sonnet",
        200,
        "ok",
        5,
    )
    assert turn["duration_ms"] >= 0
    assert (await state_for(client, "key-two"))["turns"] == []


async def test_a_full_pool_shows_as_a_529(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    pool = FakePool(admission_error=OverloadedError("claude-relay is at capacity", retry_after=2))
    client = await aiohttp_client(make_app(Config(workspace=tmp_path), pool=pool))
    body = {"model": "default", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    assert (await client.post("/v1/messages", json=body)).status == 529
    async with client.get("/dashboard/events") as resp:
        _, data = await next_event(resp)
    [turn] = data["turns"]
    assert (turn["status"], turn["outcome"], turn["error_type"]) == (
        529,
        "rejected",
        "overloaded_error",
    )
    assert data["relay"]["keys"] is False


def test_the_command_prints_and_opens_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in (
        "CLAUDE_RELAY_CONFIG",
        "CLAUDE_RELAY_PORT",
        "CLAUDE_RELAY_HOST",
        "XDG_CONFIG_HOME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no config file: the default address
    opened: list[str] = []

    def browser(url: str) -> bool:
        opened.append(url)
        return True

    monkeypatch.setattr(webbrowser, "open", browser)
    assert cli.main(["dashboard", "--no-open"]) == 0
    assert capsys.readouterr().out == "http://127.0.0.1:7421/dashboard\n"
    assert opened == []
    assert cli.main(["dashboard", "--url", "http://127.0.0.1:9999/"]) == 0
    assert opened == ["http://127.0.0.1:9999/dashboard"]
