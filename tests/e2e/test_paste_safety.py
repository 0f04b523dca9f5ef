"""Prompt text that claude's paste handling would turn into actions never does (CLI 2.1.197)."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support import media
from tests.support.relay_proc import Relay

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_image_path_in_prompt_is_not_read(
    relay: Relay, up: FakeUpstream, tmp_path: Path
) -> None:
    """claude reads a pasted absolute image path and uploads the file; the relay's sanitiser
    keeps such text as text, so a request cannot exfiltrate the daemon host's images."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(media.png())
    up.push(Reply(text="ok"))
    prompt = f"what is wrong with {secret}\n{secret}\n'{secret}'"
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as sdk:
        reply = await sdk.messages.create(
            model="default", max_tokens=50, messages=[{"role": "user", "content": prompt}]
        )
    assert reply.content[0].text == "ok"  # type: ignore[union-attr]
    (request,) = up.main_requests
    assert request.images == []
    assert "[Image" not in request.last_user_text
    assert request.last_user_text.replace("\u200b", "") == prompt
