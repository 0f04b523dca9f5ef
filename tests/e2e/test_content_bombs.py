"""Content bombs end to end: SDK → claude-relay → real claude → the fake upstream.

A PDF that takes pypdf minutes and a `response_format` pattern that takes Python's `re` forever
against the model's reply are sent to a running daemon. Both must end in errors the SDKs
understand, /v1/health must keep answering meanwhile (the event loop is free), and the daemon
must serve the next request, PDF included, as if nothing happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support import media
from tests.support.relay_proc import Relay, children_of, start_relay
from tests.test_content_bombs import BOMB, EVIL_PATTERN

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "default"
# Enough `a`s that Python's `re` would never finish `^(a+)+$` (2^2000 ways to fail), few
# enough that claude draws the reply quickly.
EVIL_REPLY = orjson.dumps("a" * 2000 + "!").decode()


def document(data: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": encoded},
    }


def user(*content: dict[str, Any]) -> Any:
    return {"role": "user", "content": list(content)}


def pattern_format(pattern: str) -> Any:
    return {
        "type": "json_schema",
        "json_schema": {"name": "word", "schema": {"type": "string", "pattern": pattern}},
    }


def pdf_readers(relay: Relay) -> list[int]:
    out = []
    for pid in children_of(relay.proc.pid):
        with contextlib.suppress(OSError):
            if b"pdf_worker.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


async def test_bombs_end_in_errors_while_health_answers_and_the_relay_serves_on(
    upstream: FakeUpstream,
) -> None:
    upstream.clear()
    upstream.on("REDOS", lambda body: Reply(text=EVIL_REPLY))
    upstream.on("AFTER", lambda body: Reply(text="still here"))
    async with (
        start_relay(upstream, pdf_timeout="3") as relay,
        anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk,
        openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key="x", max_retries=0) as oai,
        aiohttp.ClientSession() as http,
    ):
        bomb = asyncio.create_task(
            sdk.messages.create(
                model=MODEL,
                max_tokens=50,
                messages=[user(document(BOMB), {"type": "text", "text": "BOMB"})],
            )
        )
        redos = asyncio.create_task(
            oai.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "REDOS"}],
                response_format=pattern_format(EVIL_PATTERN),
            )
        )
        answered_during_bomb = 0
        while not (bomb.done() and redos.done()):
            async with asyncio.timeout(10), http.get(relay.url + "/v1/health") as resp:
                assert resp.status == 200
            answered_during_bomb += not bomb.done()
            await asyncio.sleep(0.1)  # polling the daemon over HTTP: no event to wait on
        assert answered_during_bomb > 0

        with pytest.raises(anthropic.BadRequestError) as bomb_error:
            await bomb
        body: Any = bomb_error.value.body
        assert body["error"]["message"] == (
            "messages.0.content.0.document.source.data: the PDF could not be read within 3 s, "
            "claude-relay's limit for reading a request's PDFs"
        )
        with pytest.raises(openai.InternalServerError) as redos_error:
            await redos
        assert redos_error.value.code == "invalid_json_output"
        assert "does not match" in redos_error.value.message
        assert pdf_readers(relay) == []

        # a pattern RE2 cannot run is refused before any claude is asked
        asked = len(upstream.main_requests)
        with pytest.raises(openai.BadRequestError) as refused:
            await oai.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "REDOS"}],
                response_format=pattern_format(r"^(a+)\1$"),
            )
        assert refused.value.param == "response_format.json_schema.schema"
        assert len(upstream.main_requests) == asked

        after = await sdk.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=[
                user(document(media.pdf("Revenue was 42")), {"type": "text", "text": "AFTER"})
            ],
        )
        assert [b.text for b in after.content if isinstance(b, anthropic.types.TextBlock)] == [
            "still here"
        ]
        assert "Revenue was 42" in upstream.main_requests[-1].user_text
        assert pdf_readers(relay) == []
    upstream.clear()
