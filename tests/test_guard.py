"""The front door against web pages and careless input: Host, Origin, body type, the metrics
method label, and error messages that quote only an excerpt of what was sent.

Each refusal is checked in the envelope of the route asked (Anthropic by default, OpenAI on its
route), with the pool never reached.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from pytest_aiohttp import AiohttpClient

from claude_relay.daemon.app import make_app
from claude_relay.daemon.config import Config, load_config
from claude_relay.daemon.guard import host_name
from tests.test_app import Client, FakePool, assert_envelope, body, result

REBOUND = "rebind.evil.example:7421"
JSON = {"content-type": "application/json"}


def chat() -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


async def client_for(
    aiohttp_client: AiohttpClient, tmp_path: Path, *, pool: FakePool | None = None, **config: Any
) -> Client:
    pool = pool if pool is not None else FakePool([result("hi")])
    return await aiohttp_client(make_app(Config(workspace=tmp_path, **config), pool=pool))


async def openai_error(resp: ClientResponse, error_type: str) -> dict[str, Any]:
    payload = await resp.json()
    assert set(payload) == {"error"}
    assert payload["error"]["type"] == error_type
    assert resp.headers["request-id"].startswith("req_")
    return payload["error"]  # type: ignore[no-any-return]


# --- Host: DNS rebinding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/health"), ("GET", "/v1/models"), ("POST", "/v1/messages")],
)
async def test_a_rebound_host_is_refused_in_the_anthropic_envelope(
    aiohttp_client: AiohttpClient, tmp_path: Path, method: str, path: str
) -> None:
    pool = FakePool([result("hi")])
    client = await client_for(aiohttp_client, tmp_path, pool=pool)
    async with client.request(method, path, json=body(), headers={"Host": REBOUND}) as resp:
        assert resp.status == 403
        error = assert_envelope(await resp.json(), resp, "permission_error")
    assert "rebind.evil.example" in error["message"]
    assert "allowed_hosts" in error["message"]
    assert pool.requests == []


async def test_a_rebound_host_is_refused_in_the_openai_envelope(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    pool = FakePool([result("hi")])
    client = await client_for(aiohttp_client, tmp_path, pool=pool)
    headers = {"Host": REBOUND}
    async with client.post("/v1/chat/completions", json=chat(), headers=headers) as resp:
        assert resp.status == 403
        await openai_error(resp, "permission_error")
    assert pool.requests == []


@pytest.mark.parametrize(
    ("host", "config"),
    [
        ("127.0.0.1:7421", {}),
        ("127.0.0.1", {}),
        ("127.45.6.7:80", {}),
        ("localhost:7421", {}),
        ("LocalHost", {}),
        ("[::1]:7421", {}),
        ("[::1]", {}),
        ("relay.box:7421", {"host": "relay.box"}),  # the listen address
        ("relay.lan:8080", {"allowed_hosts": "other.example, relay.lan"}),
        ("RELAY.LAN", {"allowed_hosts": "relay.lan:7421"}),  # a port in the list is ignored
        ("anything.example:1", {"allowed_hosts": "*"}),
    ],
)
async def test_loopback_listen_and_allowed_hosts_pass(
    aiohttp_client: AiohttpClient, tmp_path: Path, host: str, config: dict[str, Any]
) -> None:
    client = await client_for(aiohttp_client, tmp_path, **config)
    async with client.get("/v1/health", headers={"Host": host}) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("host", "config"),
    [
        ("0.0.0.0:7421", {}),  # a browser's way to reach its own machine
        ("0.0.0.0:7421", {"host": "0.0.0.0", "api_keys": "k"}),  # a wildcard names no host
        ("127.0.0.1.evil.example", {}),
        ("localhost.evil.example:7421", {}),
        ("evil.example:7421", {"allowed_hosts": "relay.lan"}),
        ("[::1", {}),
        ("127.0.0.1:80:80", {}),
        ("127.0.0.1:http", {}),
        ("", {}),
    ],
)
async def test_other_hosts_are_refused(
    aiohttp_client: AiohttpClient, tmp_path: Path, host: str, config: dict[str, Any]
) -> None:
    client = await client_for(aiohttp_client, tmp_path, **config)
    async with client.get("/v1/health", headers={"Host": host}) as resp:
        assert resp.status == 403
        assert_envelope(await resp.json(), resp, "permission_error")


async def test_a_request_without_host_is_no_browser(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    async with client.get("/v1/health", skip_auto_headers={"Host"}) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("Example.COM:80", "example.com"),
        ("[::1]:7421", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("a:b", None),
        ("[::1]x", None),
        (":80", None),
    ],
)
def test_host_name(value: str, name: str | None) -> None:
    assert host_name(value) == name


# --- Origin and Sec-Fetch-Site: cross-origin pages ----------------------------------------------


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:3000"])
async def test_any_origin_is_refused(
    aiohttp_client: AiohttpClient, tmp_path: Path, origin: str
) -> None:
    pool = FakePool([result("hi")])
    client = await client_for(aiohttp_client, tmp_path, pool=pool)
    headers = {"Origin": origin}
    async with client.post("/v1/messages", json=body(), headers=headers) as resp:
        assert resp.status == 403
        error = assert_envelope(await resp.json(), resp, "permission_error")
    assert "allowed_origins" in error["message"]
    async with client.get("/v1/health", headers=headers) as resp:
        assert resp.status == 403
    async with client.post("/v1/chat/completions", json=chat(), headers=headers) as resp:
        assert resp.status == 403
        await openai_error(resp, "permission_error")
    assert pool.requests == []


async def test_an_allowed_origin_passes_exactly(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    client = await client_for(
        aiohttp_client, tmp_path, allowed_origins="https://app.example, http://localhost:3000"
    )
    for origin, status in [
        ("https://app.example", 200),
        ("http://localhost:3000", 200),
        ("https://app.example/", 403),
        ("https://app.example:443", 403),
        ("http://app.example", 403),
    ]:
        headers = {"Origin": origin, "Sec-Fetch-Site": "cross-site"}
        async with client.get("/v1/health", headers=headers) as resp:
            assert resp.status == status, origin


@pytest.mark.parametrize(("site", "status"), [("cross-site", 403), ("same-site", 403)])
async def test_a_foreign_fetch_without_origin_is_refused(
    aiohttp_client: AiohttpClient, tmp_path: Path, site: str, status: int
) -> None:
    # A no-cors GET (an <img>, a <script>) carries no Origin, but modern browsers say where it
    # came from.
    client = await client_for(aiohttp_client, tmp_path)
    async with client.get("/v1/sessions", headers={"Sec-Fetch-Site": site}) as resp:
        assert resp.status == status
        assert_envelope(await resp.json(), resp, "permission_error")


@pytest.mark.parametrize("site", ["none", "same-origin"])
async def test_a_typed_url_passes(aiohttp_client: AiohttpClient, tmp_path: Path, site: str) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    async with client.get("/v1/health", headers={"Sec-Fetch-Site": site}) as resp:
        assert resp.status == 200


# --- body type: no-cors POSTs and compressed bodies ---------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",  # what fetch(url, {mode: "no-cors", body: "..."}) sends
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/jsonp",
        None,  # a Blob body without a type
    ],
)
async def test_a_post_body_that_is_not_json_is_a_415(
    aiohttp_client: AiohttpClient, tmp_path: Path, content_type: str | None
) -> None:
    pool = FakePool([result("hi")])
    client = await client_for(aiohttp_client, tmp_path, pool=pool)
    raw = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    headers = {} if content_type is None else {"content-type": content_type}
    skip = {"Content-Type"} if content_type is None else set()
    async with client.post(
        "/v1/messages", data=raw, headers=headers, skip_auto_headers=skip
    ) as resp:
        assert resp.status == 415
        error = assert_envelope(await resp.json(), resp, "invalid_request_error")
    assert "application/json" in error["message"]
    async with client.post(
        "/v1/chat/completions", data=raw, headers=headers, skip_auto_headers=skip
    ) as resp:
        assert resp.status == 415
        await openai_error(resp, "invalid_request_error")
    assert pool.requests == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_bodies_pass(
    aiohttp_client: AiohttpClient, tmp_path: Path, content_type: str
) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    raw = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    async with client.post("/v1/messages", data=raw, headers={"content-type": content_type}) as r:
        assert r.status == 200


async def test_a_post_without_a_body_needs_no_content_type(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    async with client.post("/v1/license/refresh", skip_auto_headers={"Content-Type"}) as resp:
        assert resp.status != 415


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("gzip", lambda raw: raw),  # not gzip at all: was a 500 "internal error"
    ],
)
async def test_a_compressed_body_is_a_415(
    aiohttp_client: AiohttpClient,
    tmp_path: Path,
    encoding: str,
    compress: Any,
) -> None:
    pool = FakePool([result("hi")])
    client = await client_for(aiohttp_client, tmp_path, pool=pool)
    raw = compress(b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}')
    headers = {**JSON, "content-encoding": encoding}
    async with client.post("/v1/messages", data=raw, headers=headers) as resp:
        assert resp.status == 415
        error = assert_envelope(await resp.json(), resp, "invalid_request_error")
    assert "compressed" in error["message"]
    assert pool.requests == []


async def test_identity_encoding_passes(aiohttp_client: AiohttpClient, tmp_path: Path) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    headers = {"content-encoding": "identity"}
    async with client.post("/v1/messages", json=body(), headers=headers) as resp:
        assert resp.status == 200


# --- configuration ------------------------------------------------------------------------------


def test_front_door_settings_load_from_file_and_environment(tmp_path: Path) -> None:
    defaults = load_config(argv_overrides={}, env={}, config_file=None)
    assert (defaults.read_timeout, defaults.max_connections) == (10.0, 256)
    assert defaults.host_list() == () and defaults.origin_list() == ()
    path = tmp_path / "config.toml"
    path.write_text(
        'allowed_hosts = "Relay.LAN, box"\nallowed_origins = "https://a.example"\n'
        "read_timeout = 5\nmax_connections = 10\n"
    )
    config = load_config(
        argv_overrides={},
        env={"CLAUDE_RELAY_MAX_CONNECTIONS": "20", "CLAUDE_RELAY_ALLOWED_ORIGINS": ""},
        config_file=path,
    )
    assert config.host_list() == ("relay.lan", "box")
    assert config.origin_list() == ()  # the environment's "" unsets the file's list
    assert (config.read_timeout, config.max_connections) == (5.0, 20)


# --- metrics: the method label is bounded ------------------------------------------------------


async def test_unknown_methods_share_one_metrics_series(
    aiohttp_client: AiohttpClient, tmp_path: Path
) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    # Methods the HTTP parser accepts but no route serves; each was its own series before.
    for method in ("PROPFIND", "MKCOL", "SEARCH", "GET"):
        async with client.request(method, "/v1/health") as resp:
            assert resp.status in (200, 405)
    async with client.get("/metrics") as resp:
        text = await resp.text()
    series = [line for line in text.splitlines() if line.startswith("claude_relay_http_requests")]
    assert any('method="other"' in line and 'status="405"' in line for line in series)
    assert not any(m in text for m in ("PROPFIND", "MKCOL", "SEARCH"))
    other = next(line for line in series if 'method="other"' in line)
    assert other.endswith(" 3.0")


# --- error messages quote an excerpt, not the whole value ---------------------------------------

BIG = "x" * 150_000


@pytest.mark.parametrize(
    "payload",
    [
        {**chat(), "messages": [{"role": BIG, "content": "hi"}]},  # bad_value
        {**chat(), BIG: 1},  # an unknown key
        {**chat(), "tool_choice": {"type": BIG}},
        {
            **chat(),
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": BIG}},
        },
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": BIG, "type": "function", "function": {"name": "f"}},
                    ],
                },
                {"role": "user", "content": "hi"},
            ],
        },
    ],
    ids=["role", "key", "tool_choice-type", "tool_choice-name", "open-call-ids"],
)
async def test_openai_errors_quote_an_excerpt(
    aiohttp_client: AiohttpClient, tmp_path: Path, payload: dict[str, Any]
) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    async with client.post("/v1/chat/completions", json=payload) as resp:
        assert resp.status == 400
        raw = await resp.read()
        error = await openai_error(resp, "invalid_request_error")
    assert len(raw) < 1024, error
    # an excerpt of the value's repr, saying how long that was
    assert "x" * 50 + "… (150002 characters)" in raw.decode()


@pytest.mark.parametrize(
    "payload",
    [
        {**body(), BIG: 1},  # an unknown key
        {**body(), "tools": [{"type": BIG, "name": "t"}]},  # a server tool type
        {**body(), "messages": [{"role": "user", "content": [{"type": BIG, "text": "hi"}]}]},
    ],
    ids=["key", "tool-type", "block-type"],
)
async def test_anthropic_errors_quote_an_excerpt(
    aiohttp_client: AiohttpClient, tmp_path: Path, payload: dict[str, Any]
) -> None:
    client = await client_for(aiohttp_client, tmp_path)
    async with client.post("/v1/messages", json=payload) as resp:
        assert resp.status == 400
        raw = await resp.read()
        error = assert_envelope(await resp.json(), resp, "invalid_request_error")
    assert len(raw) < 1024, error
    # an excerpt of the value's repr, saying how long that was
    assert "x" * 50 + "… (150002 characters)" in raw.decode()
