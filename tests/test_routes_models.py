"""GET /v1/models(/{id}) and POST /v1/messages/count_tokens, read by both official SDKs: one
answer must parse as an Anthropic ModelInfo page and as an OpenAI Model list."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from anthropic.types import ModelInfo
from openai.types import Model as OpenAIModel
from pytest_aiohttp import AiohttpClient

from claude_relay.daemon.app import make_app
from claude_relay.daemon.config import Config
from claude_relay.daemon.routes_models import estimate_tokens
from claude_relay.protocols.model import (
    ImageBlock,
    Message,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    TurnRequest,
)
from tests.test_app import FakePool

Client = TestClient[web.Request, web.Application]
Clients = tuple[Client, anthropic.AsyncAnthropic, openai.AsyncOpenAI]
MakeClients = Callable[..., Awaitable[Clients]]


@pytest.fixture
async def make(aiohttp_client: AiohttpClient, tmp_path: Any) -> AsyncIterator[MakeClients]:
    opened: list[anthropic.AsyncAnthropic | openai.AsyncOpenAI] = []

    async def build(**config: Any) -> Clients:
        app = make_app(Config(workspace=tmp_path, **config), pool=FakePool())
        client: Client = await aiohttp_client(app)
        base = str(client.make_url(""))
        a = anthropic.AsyncAnthropic(base_url=base, api_key="unused", max_retries=0)
        o = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        opened.extend((a, o))
        return client, a, o

    yield build
    for sdk in opened:
        await sdk.close()


async def test_both_sdks_list_the_models(make: MakeClients) -> None:
    client, a, o = await make()
    anthropic_ids = [m.id async for m in a.models.list()]
    openai_ids = [m.id async for m in o.models.list()]
    assert anthropic_ids == openai_ids == ["default", "sonnet", "opus", "haiku"]
    async with client.get("/v1/models") as resp:
        page = await resp.json()
    for raw in page["data"]:
        ModelInfo.model_validate(raw)  # every field the SDK types require is there
        OpenAIModel.model_validate(raw)
    assert page["object"] == "list"
    assert (page["has_more"], page["first_id"], page["last_id"]) == (False, "default", "haiku")


async def test_configured_default_model_is_listed(make: MakeClients) -> None:
    _, a, _ = await make(default_model="claude-opus-4-1")
    models = [m async for m in a.models.list()]
    assert models[0].display_name == "Default (claude-opus-4-1, the relay's default_model)"
    assert models[-1].id == "claude-opus-4-1"


async def test_anthropic_pagination_walks_every_page(make: MakeClients) -> None:
    client, a, _ = await make()
    first = await a.models.list(limit=3)
    assert [m.id for m in first.data] == ["default", "sonnet", "opus"]
    assert first.has_more
    assert [m.id async for m in a.models.list(limit=1)] == ["default", "sonnet", "opus", "haiku"]
    before = await a.models.list(before_id="opus", limit=1)
    assert [m.id for m in before.data] == ["sonnet"]
    async with client.get("/v1/models?limit=0") as resp:
        assert resp.status == 400


async def test_retrieve(make: MakeClients) -> None:
    _, a, o = await make()
    assert (await a.models.retrieve("sonnet")).display_name.startswith("Claude Sonnet")
    assert (await o.models.retrieve("sonnet")).owned_by == "anthropic"
    full = await o.models.retrieve("claude-sonnet-4-5-20250929")
    assert full.id == "claude-sonnet-4-5-20250929"
    assert (await a.models.retrieve("claude-code")).id == "claude-code"  # a default alias
    with pytest.raises(anthropic.NotFoundError):
        await a.models.retrieve("gpt-4o")
    with pytest.raises(openai.NotFoundError):
        await o.models.retrieve("gpt-4o")


async def test_routes_answer_without_the_v1_prefix(make: MakeClients) -> None:
    client, _, _ = await make()
    for path in ("/models", "/models/opus", "/health"):
        async with client.get(path) as resp:
            assert resp.status == 200, path
    async with client.post(
        "/messages/count_tokens",
        json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
    ) as resp:
        assert resp.status == 200


# --- count_tokens ---------------------------------------------------------------------------------


async def test_count_tokens_with_the_sdk(make: MakeClients) -> None:
    _, a, _ = await make()
    count = await a.messages.count_tokens(
        model="default",
        system="You are terse.",  # 14 bytes: 4 tokens
        messages=[{"role": "user", "content": "hello world"}],  # 11 bytes: 3, +4 per message
    )
    assert count.input_tokens == 11
    with pytest.raises(anthropic.BadRequestError, match="at least one message"):
        await a.messages.count_tokens(model="default", messages=[])


async def test_count_tokens_validates_max_tokens_if_sent(make: MakeClients) -> None:
    client, _, _ = await make()
    body = {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}
    async with client.post("/v1/messages/count_tokens", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    headers = {"content-type": "application/json"}
    async with client.post("/v1/messages/count_tokens", data=b"{bad", headers=headers) as resp:
        assert resp.status == 400


def test_estimate_counts_every_kind_of_content() -> None:
    turn = TurnRequest(
        messages=(
            Message("user", (TextBlock("abcd" * 10), ImageBlock("image/png", b"x"))),
            Message("assistant", (ToolUseBlock("t1", "f", {"a": 1}),)),
            Message("user", (ToolResultBlock("t1", (TextBlock("12345678"),)),)),
        ),
        model="m",
        max_tokens=1,
        tools=(ToolSpec("f", "desc", {"type": "object"}),),
    )
    # 3 messages x 4 overhead; 10 text; 1600 image; 1 name + 2 input ({"a":1} is 7 bytes);
    # 2 result; tool: "fdesc" 2 + schema ({"type":"object"} is 17 bytes) 5
    assert estimate_tokens(turn) == 12 + 10 + 1600 + 3 + 2 + 7
