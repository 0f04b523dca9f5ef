"""The HTTP edge end to end against a scripted fake pool: JSON and SSE shapes, error envelopes,
admission errors, disconnects, health, and the official anthropic SDK as a client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import anthropic
import orjson
import pydantic
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from anthropic.types import Message as SDKMessage
from anthropic.types import RawMessageStreamEvent
from pytest_aiohttp import AiohttpClient

from claude_relay.daemon.app import make_app
from claude_relay.daemon.config import Config
from claude_relay.protocols.errors import OverloadedError, RelayError
from claude_relay.protocols.model import (
    TextBlock,
    TextDelta,
    TurnEvent,
    TurnRequest,
    TurnResult,
    Usage,
)

# --- the fake pool -----------------------------------------------------------------------------

Step = TextDelta | TurnResult | asyncio.Event | BaseException
"""A script step: yield an event, wait for a gate, or raise."""


def result(text: str, *, output_tokens: int = 5) -> TurnResult:
    return TurnResult(
        content=(TextBlock(text),),
        stop_reason="end_turn",
        usage=Usage(input_tokens=11, output_tokens=output_tokens),
        model="claude-sonnet-4-5",
    )


class FakeTurn:
    """Same surface as pty_pool.pool.Turn; plays its pool's script."""

    def __init__(self, pool: FakePool) -> None:
        self._pool = pool

    async def __aenter__(self) -> FakeTurn:
        if self._pool.admission_error is not None:
            raise self._pool.admission_error
        self._pool.entered.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.exited.set()

    def __aiter__(self) -> AsyncIterator[TurnEvent]:
        return self._play()

    async def _play(self) -> AsyncIterator[TurnEvent]:
        try:
            for step in self._pool.script:
                if isinstance(step, asyncio.Event):
                    await step.wait()
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
        except asyncio.CancelledError:
            self._pool.read_cancelled = True
            raise


class FakePool:
    """Same surface as pty_pool.pool.Pool, with a scripted turn and a record of its use."""

    def __init__(
        self,
        script: Sequence[Step] = (),
        *,
        admission_error: RelayError | None = None,
        claude_error: str | None = None,
    ) -> None:
        self.script = list(script)
        self.admission_error = admission_error
        self._claude_error = claude_error
        self.requests: list[TurnRequest] = []
        self.started = False
        self.close_calls: list[float] = []
        self.entered = asyncio.Event()
        self.exited = asyncio.Event()
        self.read_cancelled = False

    async def start(self) -> None:
        self.started = True

    async def close(self, grace: float = 10.0) -> None:
        self.close_calls.append(grace)

    def open_turn(self, request: TurnRequest) -> FakeTurn:
        self.requests.append(request)
        return FakeTurn(self)

    def recycle(self) -> None:
        pass

    def sessions(self, owner: str | None = None) -> list[dict[str, object]]:
        return []

    async def close_session(self, sid: str, owner: str | None = None) -> bool:
        return False

    def stats(self) -> dict[str, int]:
        return {
            "warm": 1,
            "busy": 0,
            "starting": 1,
            "queued": 0,
            "sessions": 2,
            "max_busy": 4,
            "max_queue": 8,
        }

    @property
    def claude_error(self) -> str | None:
        return self._claude_error

    @property
    def claude_problem(self) -> str | None:
        return None if self._claude_error is None else "claude_not_found"


# --- helpers -----------------------------------------------------------------------------------

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, tmp_path: Any) -> MakeClient:
    async def make(pool: FakePool, **config: Any) -> Client:
        return await aiohttp_client(make_app(Config(workspace=tmp_path, **config), pool=pool))

    return make


def body(*, stream: bool = False, text: str = "Say hello") -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    }


async def next_event(resp: ClientResponse) -> tuple[str, dict[str, Any]] | None:
    """Read one SSE event; None at the end of the stream."""
    event: str | None = None
    data: dict[str, Any] = {}
    while True:
        line = (await resp.content.readline()).decode()
        if not line:
            return None
        line = line.rstrip("\n")
        if not line:
            if event is not None:
                return event, data
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = orjson.loads(line.removeprefix("data: "))


async def all_events(resp: ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    out = []
    while (ev := await next_event(resp)) is not None:
        out.append(ev)
    return out


def assert_envelope(
    payload: dict[str, Any], resp: ClientResponse, error_type: str
) -> dict[str, Any]:
    assert payload["type"] == "error"
    assert payload["error"]["type"] == error_type
    assert isinstance(payload["error"]["message"], str)
    assert payload["request_id"] == resp.headers["request-id"]
    assert resp.headers["request-id"].startswith("req_")
    assert resp.content_type == "application/json"
    return payload["error"]  # type: ignore[no-any-return]


_STREAM_EVENT: pydantic.TypeAdapter[RawMessageStreamEvent] = pydantic.TypeAdapter(
    RawMessageStreamEvent
)


# --- non-streaming ------------------------------------------------------------------------------


async def test_message_json_matches_the_sdk_type(make_client: MakeClient) -> None:
    pool = FakePool([TextDelta("Hel"), TextDelta("lo"), result("Hello")])
    client = await make_client(pool)
    async with client.post(
        "/v1/messages", json=body(), headers={"X-IR-Session-ID": "sess-1"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["request-id"].startswith("req_")
        payload = await resp.json()
    message = SDKMessage.model_validate(payload)
    assert message.model == "claude-test"  # echoed as the client sent it
    assert message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "Hello"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 5)
    assert pool.requests[0].session_id == "sess-1"
    assert pool.exited.is_set()


async def test_beta_query_string_is_accepted(make_client: MakeClient) -> None:
    client = await make_client(FakePool([result("ok")]))
    async with client.post("/v1/messages?beta=true", json=body()) as resp:
        assert resp.status == 200
        assert (await resp.json())["content"][0]["text"] == "ok"


async def test_turn_without_result_is_an_api_error(make_client: MakeClient) -> None:
    client = await make_client(FakePool([TextDelta("partial")]))
    async with client.post("/v1/messages", json=body()) as resp:
        assert resp.status == 500
        error = assert_envelope(await resp.json(), resp, "api_error")
    assert "without a result" in error["message"]


async def test_unexpected_exception_is_a_500_without_details(make_client: MakeClient) -> None:
    client = await make_client(FakePool([RuntimeError("secret detail")]))
    async with client.post("/v1/messages", json=body()) as resp:
        assert resp.status == 500
        text = await resp.text()
    assert "secret" not in text
    assert "Traceback" not in text
    error = orjson.loads(text)["error"]
    assert error == {"type": "api_error", "message": "internal error"}


async def test_non_streaming_client_disconnect_releases_the_turn(make_client: MakeClient) -> None:
    never = asyncio.Event()
    pool = FakePool([never, result("too late")])
    client = await make_client(pool, ping_interval=0.01)
    request = asyncio.create_task(client.post("/v1/messages", json=body()))
    await asyncio.wait_for(pool.entered.wait(), 10)
    request.cancel()  # drops the connection while the turn is still running
    await asyncio.wait({request})
    await asyncio.wait_for(pool.exited.wait(), 10)
    assert pool.read_cancelled


# --- streaming ---------------------------------------------------------------------------------


async def test_stream_frames_in_order_with_pings_while_idle(make_client: MakeClient) -> None:
    gate = asyncio.Event()
    pool = FakePool(
        [gate, TextDelta("Hello"), TextDelta(" world"), result("Hello world!", output_tokens=3)]
    )
    client = await make_client(pool, ping_interval=0.01)
    async with client.post("/v1/messages", json=body(stream=True)) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        assert resp.headers["request-id"].startswith("req_")
        # message_start arrives before the pool has produced anything...
        first = await next_event(resp)
        assert first is not None
        assert first[0] == "message_start"
        # ...and while it stays silent, pings keep the connection alive.
        second = await next_event(resp)
        assert second == ("ping", {"type": "ping"})
        gate.set()
        rest = await all_events(resp)

    events = [first, *[ev for ev in rest if ev[0] != "ping"]]
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",  # the tail the transcript has beyond what the screen showed
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    for name, data in events:
        assert data["type"] == name
        _STREAM_EVENT.validate_python(data)
    deltas = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert deltas == "Hello world!"
    assert events[0][1]["message"]["model"] == "claude-test"
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] == 3


async def test_mid_stream_relay_error_becomes_an_error_event(make_client: MakeClient) -> None:
    pool = FakePool([TextDelta("part"), OverloadedError("claude is overloaded")])
    client = await make_client(pool)
    async with client.post("/v1/messages", json=body(stream=True)) as resp:
        assert resp.status == 200
        events = await all_events(resp)
        request_id = resp.headers["request-id"]
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "claude is overloaded"},
        "request_id": request_id,
    }


async def test_mid_stream_crash_is_an_api_error_event(make_client: MakeClient) -> None:
    client = await make_client(FakePool([TextDelta("x"), RuntimeError("secret detail")]))
    async with client.post("/v1/messages", json=body(stream=True)) as resp:
        raw = await resp.read()
    assert b"secret" not in raw
    *_, last = raw.decode().strip().split("\n\n")
    assert last.startswith("event: error\n")
    assert orjson.loads(last.split("data: ", 1)[1])["error"] == {
        "type": "api_error",
        "message": "internal error",
    }


async def test_stream_without_result_ends_with_an_error_event(make_client: MakeClient) -> None:
    client = await make_client(FakePool([TextDelta("x")]))
    async with client.post("/v1/messages", json=body(stream=True)) as resp:
        events = await all_events(resp)
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"


async def test_overload_before_streaming_is_a_json_529(make_client: MakeClient) -> None:
    pool = FakePool(admission_error=OverloadedError("queue is full", retry_after=1.2))
    client = await make_client(pool)
    async with client.post("/v1/messages", json=body(stream=True)) as resp:
        assert resp.status == 529
        assert resp.headers["retry-after"] == "2"  # whole seconds, rounded up
        error = assert_envelope(await resp.json(), resp, "overloaded_error")
    assert error["message"] == "queue is full"


async def test_stream_client_disconnect_releases_the_turn(make_client: MakeClient) -> None:
    never = asyncio.Event()
    pool = FakePool([TextDelta("a"), never, result("a b")])
    client = await make_client(pool, ping_interval=0.01)
    resp = await client.post("/v1/messages", json=body(stream=True))
    try:
        first = await next_event(resp)
        assert first is not None
        assert first[0] == "message_start"
    finally:
        resp.close()  # drop the connection mid-stream
    await asyncio.wait_for(pool.exited.wait(), 10)
    assert pool.read_cancelled


# --- errors at the edge --------------------------------------------------------------------------


async def test_claude_missing_is_503_naming_the_problem(make_client: MakeClient) -> None:
    pool = FakePool(claude_error="`claude` not found on PATH")
    client = await make_client(pool)
    async with client.post("/v1/messages", json=body()) as resp:
        assert resp.status == 503
        error = assert_envelope(await resp.json(), resp, "api_error")
    assert "`claude` not found on PATH" in error["message"]
    assert pool.requests == []


async def test_bad_json_is_a_400_envelope(make_client: MakeClient) -> None:
    client = await make_client(FakePool())
    headers = {"content-type": "application/json"}
    async with client.post("/v1/messages", data=b"{nope", headers=headers) as resp:
        assert resp.status == 400
        error = assert_envelope(await resp.json(), resp, "invalid_request_error")
    assert "not valid JSON" in error["message"]


async def test_invalid_request_is_a_400_envelope(make_client: MakeClient) -> None:
    client = await make_client(FakePool())
    payload = body()
    del payload["max_tokens"]
    async with client.post("/v1/messages", json=payload) as resp:
        assert resp.status == 400
        error = assert_envelope(await resp.json(), resp, "invalid_request_error")
    assert error["message"] == "max_tokens: Field required"


async def test_unknown_route_is_a_404_envelope(make_client: MakeClient) -> None:
    client = await make_client(FakePool())
    async with client.get("/v1/nothing-here") as resp:
        assert resp.status == 404
        assert_envelope(await resp.json(), resp, "not_found_error")


async def test_wrong_method_is_a_405_envelope(make_client: MakeClient) -> None:
    client = await make_client(FakePool())
    async with client.get("/v1/messages") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert_envelope(await resp.json(), resp, "invalid_request_error")


async def test_too_large_body_is_a_413_envelope(make_client: MakeClient) -> None:
    pool = FakePool([result("never")])
    client = await make_client(pool, max_body_bytes=1024)
    async with client.post("/v1/messages", json=body(text="x" * 4096)) as resp:
        assert resp.status == 413
        error = assert_envelope(await resp.json(), resp, "request_too_large")
    assert "1024" in error["message"]
    assert pool.requests == []


# --- health and lifetime -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/health", "/health"])
async def test_health_shape(make_client: MakeClient, path: str) -> None:
    pool = FakePool()
    client = await make_client(pool)
    async with client.get(path) as resp:
        assert resp.status == 200
        payload = await resp.json()
    assert payload["status"] == "ok"
    assert payload["port"] == client.port
    assert payload["sessions"] == 2
    assert isinstance(payload["uptime"], float)
    assert payload["uptime"] >= 0
    assert payload["pool"] == pool.stats()
    claude = payload["claude"]
    assert (claude["available"], claude["error"]) == (True, None)
    # the version comes from the license monitor's `claude --version`; unknown before a check
    assert claude["tested"] == ["2.1.197", "2.1.332"]
    assert claude["supported"] in (None, True, False)


async def test_health_is_degraded_without_claude(make_client: MakeClient) -> None:
    client = await make_client(FakePool(claude_error="not found"))
    async with client.get("/v1/health") as resp:
        assert resp.status == 200
        payload = await resp.json()
    assert payload["status"] == "degraded"
    # a category word only: health is unauthenticated, and messages can name home-dir paths
    assert (payload["claude"]["available"], payload["claude"]["error"]) == (
        False,
        "claude_not_found",
    )


async def test_app_owns_the_pool_lifetime(make_client: MakeClient) -> None:
    pool = FakePool()
    client = await make_client(pool, shutdown_grace=3.5)
    assert pool.started
    assert pool.close_calls == []
    await client.close()
    assert pool.close_calls
    assert set(pool.close_calls) == {3.5}


# --- the official SDK as the client ------------------------------------------------------------


def sdk(client: Client) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=str(client.make_url("")), api_key="unused", max_retries=0
    )


async def test_sdk_create(make_client: MakeClient) -> None:
    client = await make_client(FakePool([TextDelta("Hi"), result("Hi there")]))
    async with sdk(client) as api:
        message = await api.messages.create(
            model="claude-test",
            max_tokens=50,
            messages=[{"role": "user", "content": "hello"}],
        )
    assert message.content[0].text == "Hi there"  # type: ignore[union-attr]
    assert message.model == "claude-test"
    assert message._request_id is not None
    assert message._request_id.startswith("req_")


async def test_sdk_stream(make_client: MakeClient) -> None:
    client = await make_client(
        FakePool([TextDelta("Hi"), TextDelta(" there"), result("Hi there")]), ping_interval=0.01
    )
    async with (
        sdk(client) as api,
        api.messages.stream(
            model="claude-test",
            max_tokens=50,
            messages=[{"role": "user", "content": "hello"}],
        ) as stream,
    ):
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == "Hi there"
    assert final.content[0].text == "Hi there"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"


async def test_sdk_sees_overload_as_its_overloaded_error(make_client: MakeClient) -> None:
    pool = FakePool(admission_error=OverloadedError("queue is full", retry_after=3))
    client = await make_client(pool)
    async with sdk(client) as api:
        with pytest.raises(anthropic.OverloadedError) as info:
            await api.messages.create(
                model="claude-test",
                max_tokens=50,
                messages=[{"role": "user", "content": "hello"}],
            )
    assert info.value.status_code == 529
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.request_id is not None


async def test_a_stalled_stream_reader_is_dropped_after_the_write_timeout(
    aiohttp_client: AiohttpClient,
) -> None:
    """A client that stops reading makes the stream's write wait on a full socket; past
    `write_timeout` the writer reports the client gone (so the handler leaves the turn, which
    the pool interrupts) and aborts the connection."""
    from claude_relay.daemon import CONFIG_KEY
    from claude_relay.daemon.errors import make_error_middleware
    from claude_relay.daemon.sse import SSEWriter
    from claude_relay.protocols import anthropic as anthropic_protocol

    outcome: dict[str, object] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        sse = SSEWriter(request)
        assert await sse.open()

        async def full_socket(data: bytes) -> None:
            await asyncio.Event().wait()  # the reader never takes another byte

        setattr(sse.response, "write", full_socket)  # noqa: B010 - stand-in for a full buffer
        outcome["sent"] = await sse.send(b"data: x\n\n")
        outcome["gone"] = sse.disconnected
        outcome["aborted"] = request.transport is None or request.transport.is_closing()
        return sse.response

    app = web.Application(middlewares=[make_error_middleware(anthropic_protocol.error_body)])
    app[CONFIG_KEY] = Config(write_timeout=0.2)
    app.router.add_get("/s", handler)
    client = await aiohttp_client(app)
    with contextlib.suppress(Exception):
        async with client.get("/s") as resp:
            await resp.read()
    assert outcome == {"sent": False, "gone": True, "aborted": True}
