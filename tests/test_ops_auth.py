"""API keys: 401s in each API's own envelope, health left open, and no exposure without a key.

The clients are the official SDKs where they exist, so "the SDK sees an AuthenticationError" is
what is tested, not only a status code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from pytest_aiohttp import AiohttpClient

from claude_relay.daemon import cli
from claude_relay.daemon.app import make_app
from claude_relay.daemon.auth import exposure_error, is_loopback, key_matches
from claude_relay.daemon.config import Config
from tests.test_app import Client, FakePool, assert_envelope, body, result

KEYS = "key-one, key-two"


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path) -> Client:
    pool = FakePool([result("hi")])
    return await aiohttp_client(make_app(Config(workspace=tmp_path, api_keys=KEYS), pool=pool))


def chat() -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


# --- exposure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("relay.example", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_off_loopback_needs_a_key() -> None:
    assert exposure_error(Config()) is None
    error = exposure_error(Config(host="0.0.0.0"))
    assert error is not None
    assert "api_keys" in error
    assert exposure_error(Config(host="0.0.0.0", api_keys="k")) is None
    assert exposure_error(Config(host="0.0.0.0", api_keys=" , ")) is not None  # no real key


def test_serve_refuses_to_start_exposed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("CLAUDE_RELAY_CONFIG", raising=False)
    monkeypatch.delenv("CLAUDE_RELAY_API_KEYS", raising=False)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in capsys.readouterr().err


def test_keys_are_compared_whole() -> None:
    assert key_matches("key-two", ("key-one", "key-two"))
    assert not key_matches("key-tw", ("key-one", "key-two"))
    assert not key_matches("", ("key-one",))
    assert not key_matches("key-one", ())


def test_keys_stay_out_of_the_config_repr() -> None:
    assert "key-one" not in repr(Config(api_keys=KEYS))


# --- the middleware -------------------------------------------------------------------------------


async def test_no_key_is_401_in_the_anthropic_envelope(client: Client) -> None:
    async with client.post("/v1/messages", json=body()) as resp:
        assert resp.status == 401
        error = assert_envelope(await resp.json(), resp, "authentication_error")
    assert "missing API key" in error["message"]
    async with client.post("/v1/messages", json=body(), headers={"x-api-key": "nope"}) as resp:
        assert resp.status == 401
        assert assert_envelope(await resp.json(), resp, "authentication_error")["message"] == (
            "invalid API key"
        )


async def test_no_key_is_401_in_the_openai_envelope_on_openai_routes(client: Client) -> None:
    async with client.post("/v1/chat/completions", json=chat()) as resp:
        assert resp.status == 401
        data = await resp.json()
    assert data == {
        "error": {
            "message": "missing API key: send it in the x-api-key header or as "
            "Authorization: Bearer",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


async def test_either_header_carries_the_key(client: Client) -> None:
    async with client.post("/v1/messages", json=body(), headers={"x-api-key": "key-two"}) as resp:
        assert resp.status == 200
    bearer = {"Authorization": "Bearer key-one"}
    async with client.post("/v1/messages", json=body(), headers=bearer) as resp:
        assert resp.status == 200


async def test_health_stays_open_everything_else_is_closed(client: Client) -> None:
    for path in ("/v1/health", "/health"):
        async with client.get(path) as resp:
            assert resp.status == 200, path
    for path in ("/metrics", "/v1/license", "/v1/version", "/v1/sessions", "/v1/unknown"):
        async with client.get(path) as resp:
            assert resp.status == 401, path
    async with client.get("/metrics", headers={"x-api-key": "key-one"}) as resp:
        assert resp.status == 200
        text = await resp.text()
    # refusals are counted like any other answer
    refused = 'claude_relay_http_requests_total{method="GET",route="/metrics",status="401"} 1.0'
    assert refused in text


async def test_the_sdks_see_authentication_errors(client: Client) -> None:
    base = str(client.make_url(""))
    good = anthropic.AsyncAnthropic(base_url=base, api_key="key-one", max_retries=0)
    bad = anthropic.AsyncAnthropic(base_url=base, api_key="wrong", max_retries=0)
    oai = openai.AsyncOpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    try:
        msg = await good.messages.create(
            model="default", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.content[0].type == "text"
        with pytest.raises(anthropic.AuthenticationError):
            await bad.messages.create(
                model="default", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.AuthenticationError):
            await oai.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "hi"}]
            )
    finally:
        for sdk in (good, bad, oai):
            await sdk.close()
