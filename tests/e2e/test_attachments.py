"""Images and documents end to end: SDK → claude-relay → real claude → the fake upstream.

What the fake upstream records is what the model would see: an image must arrive as an `image`
block with the client's exact bytes, a document as its text at its place in the prompt.
"""

from __future__ import annotations

import asyncio
import base64
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import pytest_asyncio

from claude_relay.daemon.fake_upstream import Body, FakeUpstream, Reply, ToolUse
from tests.support import media
from tests.support.claude_env import make_home
from tests.support.relay_proc import Relay, start_relay

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODEL = "default"
RED = media.png(rgb=(255, 0, 0))
BLUE = media.png(5, 7, rgb=(0, 0, 255))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image(data: bytes, media_type: str = "image/png") -> dict[str, Any]:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": b64(data)},
    }


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def first_text(msg: anthropic.types.Message) -> str:
    block = msg.content[0]
    assert isinstance(block, anthropic.types.TextBlock)
    return block.text


def user(*content: dict[str, Any]) -> Any:
    """A user message (typed Any: the SDKs' TypedDict unions do not match dict literals)."""
    return {"role": "user", "content": list(content)}


def prompt_texts(body: Body) -> list[str]:
    """The text blocks of the upstream request's last user message, without claude's date
    reminder, its environment notes (2.1.332), its `[Image: source: …]` notes and, on a claude
    the relay reset, the `local-command` blocks that say `/clear` ran (docs/limits.md)."""
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return [content]
    return [
        b["text"]
        for b in content
        if b.get("type") == "text"
        and not b["text"].startswith(
            (
                "<system-reminder>",
                "[Image: source:",
                "[Image source:",
                "# Environment",
                "<local-command-",
                "<command-name>",
            )
        )
    ]


def _pngs_or_busy(root: Path) -> bool:
    """Whether images are left under `root`; True (look again) when a claude's dir vanished
    mid-walk: claudes closing in the background delete theirs."""
    try:
        return bool(list(root.rglob("*.png")))
    except FileNotFoundError:
        return True


def _private_or_gone(d: Path) -> bool:
    try:
        return stat.S_IMODE(d.stat().st_mode) == 0o700
    except FileNotFoundError:
        return True  # deleted with its claude meanwhile


def turn_dirs(relay: Relay) -> list[Path]:
    root = relay.attachments
    return sorted(root.glob("turn-*")) if root.exists() else []


@pytest_asyncio.fixture(loop_scope="session")
async def sdk(relay: Relay) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def oai(relay: Relay) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=relay.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


async def test_png_reaches_the_model_as_an_image_block_in_place(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream, relay: Relay
) -> None:
    up.on("", lambda body: Reply(text="two squares"))
    msg = await sdk.messages.create(
        model=MODEL,
        max_tokens=50,
        messages=[user(text("FIRST"), image(RED), text("MIDDLE"), image(BLUE), text("LAST"))],
    )
    assert first_text(msg) == "two squares"
    body = up.main_requests[-1].body
    # the exact bytes, in order, as image blocks of the prompt's user message
    assert up.main_requests[-1].images == [("image/png", RED), ("image/png", BLUE)]
    # the text keeps the order: claude's placeholder stands where each image was
    [prompt] = prompt_texts(body)
    assert re.split(r"\[Image #\d+\]", prompt) == ["FIRST\n\n", "\n\nMIDDLE\n\n", "\n\nLAST"]
    assert turn_dirs(relay) == []  # the turn's files are gone


async def test_jpeg_gif_webp_pass_byte_identical(
    oai: openai.AsyncOpenAI, up: FakeUpstream, relay: Relay
) -> None:
    """The other three formats (PNG: test_openai.py and above), as OpenAI data URLs; claude
    forwards small images without re-encoding them."""
    up.on("", lambda body: Reply(text="seen"))
    images = [
        ("image/jpeg", media.jpeg_header()),
        ("image/gif", media.GIF_1X1),
        ("image/webp", media.webp_vp8x()),
    ]
    parts: Any = [
        {"type": "image_url", "image_url": {"url": f"data:{kind};base64,{b64(data)}"}}
        for kind, data in images
    ]
    reply = await oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": parts}]
    )
    assert reply.choices[0].message.content == "seen"
    assert up.main_requests[-1].images == images
    assert turn_dirs(relay) == []


async def test_pdf_and_text_documents_reach_the_model_as_text_in_place(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream
) -> None:
    up.on("", lambda body: Reply(text="read"))
    pdf = media.pdf("Quarterly revenue was 42", "Costs were 17")
    report = {
        "type": "document",
        "title": "Q3 report",
        "source": {"type": "base64", "media_type": "application/pdf", "data": b64(pdf)},
    }
    note = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "a\nnote"},
    }
    await sdk.messages.create(
        model=MODEL,
        max_tokens=50,
        messages=[user(report, text("Summarise the report, then the note."), note)],
    )
    [prompt] = prompt_texts(up.main_requests[-1].body)
    assert prompt == (
        '<document title="Q3 report">\n[page 1]\nQuarterly revenue was 42\n\n[page 2]\n'
        "Costs were 17\n</document>\n\nSummarise the report, then the note.\n\n"
        "<document>\na\nnote\n</document>"
    )
    assert up.main_requests[-1].images == []


async def test_openai_pdf_file_part(oai: openai.AsyncOpenAI, up: FakeUpstream) -> None:
    up.on("", lambda body: Reply(text="ok"))
    pdf = media.pdf("Invoice total 99")
    await oai.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "file",
                        "file": {
                            "filename": "invoice.pdf",
                            "file_data": "data:application/pdf;base64," + b64(pdf),
                        },
                    },
                    {"type": "text", "text": "Total?"},
                ],
            }
        ],
    )
    [prompt] = prompt_texts(up.main_requests[-1].body)
    assert prompt == '<document title="invoice.pdf">\nInvoice total 99\n</document>\n\nTotal?'


@pytest.mark.parametrize(
    ("block", "words"),
    [
        (image(b"not an image"), "source.data"),
        (
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "%%"},
            },
            "invalid base64",
        ),
        (image(RED, "image/jpeg"), "the data is a PNG image"),
        ({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}, "URL"),
        (
            {
                "type": "document",
                "source": {
                    "type": "base64",
                    "media_type": "application/pdf",
                    "data": b64(b"%PDF-1.4\n"),
                },
            },
            "truncated",
        ),
    ],
)
async def test_bad_attachments_get_400_naming_the_block(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream, block: dict[str, Any], words: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=[user(text("look"), block)],
        )
    body: Any = info.value.body
    message = body["error"]["message"]
    assert message.startswith("messages.0.content.1.")
    assert words in message
    assert up.main_requests == []


async def test_openai_remote_url_and_bad_base64_get_400(
    oai: openai.AsyncOpenAI, up: FakeUpstream
) -> None:
    for url in ("https://example.com/cat.png", "data:image/png;base64,%%%%"):
        with pytest.raises(openai.BadRequestError) as info:
            await oai.chat.completions.create(
                model=MODEL,
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
                ],
            )
        assert info.value.param == "messages[0].content[0].image_url.url"
    assert up.main_requests == []


async def test_limits_get_413_and_crash_leftovers_are_swept(
    up: FakeUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    await asyncio.to_thread(make_home, home)
    # what a daemon killed mid-turn leaves: its pid is gone, its directory is not
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    leftover = home / "attachments" / f"turn-{dead.pid}-abc123"
    leftover.mkdir(parents=True)
    (leftover / "image-1.png").write_bytes(RED)
    async with (
        start_relay(up, home=home, max_attachment_bytes="64", wait_warm=False) as r,
        anthropic.AsyncAnthropic(base_url=r.url, api_key="x", max_retries=0) as c,
    ):
        async with asyncio.timeout(10):
            while leftover.exists():
                await asyncio.sleep(0.05)
        big = media.png(40, 40)
        assert len(big) > 64
        with pytest.raises(anthropic.APIStatusError) as info:
            await c.messages.create(
                model=MODEL,
                max_tokens=50,
                messages=[user(image(big))],
            )
        assert info.value.status_code == 413
        body: Any = info.value.body
        assert body["error"]["type"] == "request_too_large"


async def test_image_in_tool_result_reaches_the_model(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream
) -> None:
    shot: Any = {
        "name": "screenshot",
        "description": "Take one.",
        "input_schema": {"type": "object"},
    }

    def model(body: Body) -> Reply:
        last = body["messages"][-1]["content"]
        if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
            return Reply(text="got the screenshot")
        return Reply(text="", tool_uses=(ToolUse("mcp__api__screenshot", {}, "toolu_shot"),))

    up.on("", model)
    first = await sdk.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=[shot],
        messages=[user(text("screenshot please"))],
    )
    assert first.stop_reason == "tool_use"
    assistant: Any = {"role": "assistant", "content": [b.model_dump() for b in first.content]}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_shot",
        "content": [text("here it is"), image(BLUE)],
    }
    final = await sdk.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=[shot],
        messages=[
            user(text("screenshot please")),
            assistant,
            user(result),
        ],
    )
    assert first_text(final) == "got the screenshot"
    # the parked claude answered its MCP call with the image: a real image inside tool_result
    assert up.main_requests[-1].images == [("image/png", BLUE)]


async def test_sticky_conversation_with_images_across_turns(relay: Relay, up: FakeUpstream) -> None:
    up.on("", lambda body: Reply(text="noted"))
    history: list[Any] = []
    async with anthropic.AsyncAnthropic(
        base_url=relay.url,
        api_key="x",
        max_retries=0,
        default_headers={"X-IR-Session-ID": "att-sticky"},
    ) as c:
        for data in (RED, BLUE):
            history.append(user(image(data), text("and this?")))
            msg = await c.messages.create(model=MODEL, max_tokens=50, messages=history)
            history.append({"role": "assistant", "content": first_text(msg)})
            assert up.main_requests[-1].images == [("image/png", data)]
    # the second turn went to the same claude: its history holds the first image, as claude sent
    # it, not a re-rendered copy
    # the shared daemon keeps no sticky claude for later tests
    async with aiohttp.ClientSession() as s, s.delete(relay.url + "/v1/sessions/att-sticky") as r:
        assert r.status == 200
    messages = up.main_requests[-1].body["messages"]
    assert "conversation_history" not in str(messages)
    blocks = [b for m in messages if isinstance(m["content"], list) for b in m["content"]]
    assert sum(1 for b in blocks if b.get("type") == "image") == 2


@pytest.mark.timeout(60)
async def test_a_client_that_leaves_an_image_turn_leaves_no_copy_behind(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream, relay: Relay
) -> None:
    """A client that leaves mid-stream after sending an image: its claude is closed, not reset
    for the next caller, since it holds a copy of the image in its temp dir (2.1.332)."""
    up.on("leave with an image", lambda body: Reply(text="slow " * 40, chunk_chars=5, delay=0.05))
    async with sdk.messages.stream(
        model=MODEL, max_tokens=50, messages=[user(text("leave with an image"), image(RED))]
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                break  # the client leaves mid-stream
    claude_tmp = relay.attachments.parent / "claude-tmp"
    async with asyncio.timeout(20):
        while turn_dirs(relay) or _pngs_or_busy(claude_tmp):
            await asyncio.sleep(0.1)


@pytest.mark.timeout(150)  # 50 turns, most on freshly spawned claudes
async def test_fifty_attachment_turns_leave_no_file(
    sdk: anthropic.AsyncAnthropic, up: FakeUpstream, relay: Relay
) -> None:
    """Turns that finish and turns whose client leaves mid-stream: every turn directory goes,
    and while a turn runs its directory and files are private."""
    up.on("interrupt me", lambda body: Reply(text="slow " * 40, chunk_chars=5, delay=0.05))
    up.on("", lambda body: Reply(text="fine"))
    seen_modes: list[tuple[int, int]] = []

    async def one(n: int) -> None:
        interrupted = n % 5 == 0
        content = [text("interrupt me" if interrupted else f"turn {n}"), image(RED)]
        if not interrupted:
            msg = await sdk.messages.create(
                model=MODEL,
                max_tokens=50,
                messages=[user(*content)],
            )
            assert first_text(msg) == "fine"
            return
        async with sdk.messages.stream(
            model=MODEL,
            max_tokens=50,
            messages=[user(*content)],
        ) as stream:
            async for event in stream:
                if event.type == "content_block_delta":
                    for d in turn_dirs(relay):
                        files = list(d.iterdir())
                        if files:
                            seen_modes.append(
                                (
                                    stat.S_IMODE(d.stat().st_mode),
                                    stat.S_IMODE(files[0].stat().st_mode),
                                )
                            )
                    break  # the client leaves mid-stream

    for start in range(0, 50, 5):  # a few at a time: bounded load on the test machine
        await asyncio.gather(*(one(n) for n in range(start, start + 5)))
    assert (0o700, 0o600) in seen_modes
    assert set(seen_modes) == {(0o700, 0o600)}
    # the abandoned turns are finished by the pool in the background
    async with asyncio.timeout(20):
        while turn_dirs(relay):
            await asyncio.sleep(0.1)
    # claude's own temp dirs (CLAUDE_CODE_TMPDIR; 2.1.332 keeps a copy of each pasted image
    # there) go with their claude: no image survives the turns that sent it
    claude_tmp = relay.attachments.parent / "claude-tmp"
    async with asyncio.timeout(20):
        while _pngs_or_busy(claude_tmp):
            await asyncio.sleep(0.1)
    assert all(_private_or_gone(d) for d in claude_tmp.iterdir())
    assert stat.S_IMODE(relay.attachments.stat().st_mode) == 0o700
