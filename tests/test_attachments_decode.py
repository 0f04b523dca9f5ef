"""Images and documents through the request decoders (Anthropic and OpenAI)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from claude_relay.protocols import anthropic, openai
from claude_relay.protocols.attachments import AttachmentLimits
from claude_relay.protocols.errors import InvalidRequestError, RequestTooLargeError
from claude_relay.protocols.model import DocumentBlock, ImageBlock, TextBlock, ToolResultBlock
from tests.support import media

PNG = media.png()
PDF = media.pdf("hello pdf")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image(data: bytes = PNG, media_type: str = "image/png") -> dict[str, Any]:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": b64(data)},
    }


def body(*content: Any, role: str = "user", **extra: Any) -> bytes:
    return orjson.dumps(
        {"model": "m", "max_tokens": 5, "messages": [{"role": role, "content": list(content)}]}
        | extra
    )


def test_anthropic_image_and_documents_in_order() -> None:
    req = anthropic.decode_request(
        body(
            {"type": "text", "text": "a"},
            image(),
            {
                "type": "document",
                "title": "T",
                "context": "C",
                "cache_control": {"type": "ephemeral"},
                "source": {"type": "base64", "media_type": "application/pdf", "data": b64(PDF)},
            },
            {
                "type": "document",
                "source": {"type": "text", "media_type": "text/plain", "data": "x"},
            },
            {
                "type": "document",
                "source": {"type": "content", "content": [{"type": "text", "text": "y"}, image()]},
            },
        )
    )
    assert req.messages[0].content == (
        TextBlock("a"),
        ImageBlock("image/png", PNG),
        DocumentBlock("application/pdf", data=PDF, text="hello pdf", title="T", context="C"),
        DocumentBlock("text/plain", text="x"),
        DocumentBlock("text/plain", text="y"),
        ImageBlock("image/png", PNG),
    )


def test_anthropic_tool_result_with_image() -> None:
    raw = orjson.dumps(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "r"}, image()],
                        }
                    ],
                },
            ],
        }
    )
    result = anthropic.decode_request(raw).messages[2].content[0]
    assert result == ToolResultBlock("toolu_1", (TextBlock("r"), ImageBlock("image/png", PNG)))


@pytest.mark.parametrize(
    ("content", "role", "param", "words"),
    [
        (image(b"hello"), "user", "messages.0.content.0.image.source.data", "not a PNG"),
        (image(PNG, "image/gif"), "user", "messages.0.content.0.image.source.media_type", "PNG"),
        (image(), "assistant", "messages.0.content.0", "only allowed in user messages"),
        (
            {"type": "image", "source": {"type": "file", "file_id": "f"}},
            "user",
            "messages.0.content.0.image.source.type",
            "",
        ),
        ({"type": "image"}, "user", "messages.0.content.0.image.source", "Field required"),
        (
            {"type": "image", "source": {"type": "base64"}, "extra": 1},
            "user",
            "messages.0.content.0.image.extra",
            "Extra inputs",
        ),
        (
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": b64(PNG)},
            },
            "user",
            "messages.0.content.0.document.source.data",
            "PNG",
        ),
    ],
)
def test_anthropic_bad_attachments(content: Any, role: str, param: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        anthropic.decode_request(body(content, role=role))
    assert info.value.param == param
    assert words in info.value.message


def test_anthropic_limits_are_per_request() -> None:
    limits = AttachmentLimits(max_bytes=len(PNG), max_total_bytes=2 * len(PNG), max_count=5)
    anthropic.decode_request(body(image(), image()), attachment_limits=limits)
    with pytest.raises(RequestTooLargeError):
        anthropic.decode_request(body(image(), image(), image()), attachment_limits=limits)
    with pytest.raises(RequestTooLargeError):
        anthropic.decode_request(body(image(media.png(9, 9))), attachment_limits=limits)


def test_openai_file_part() -> None:
    raw = orjson.dumps(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "file",
                            "file": {
                                "filename": "a.pdf",
                                "file_data": "data:application/pdf;base64," + b64(PDF),
                            },
                        },
                        {
                            "type": "file",
                            "file": {"file_data": "data:text/plain;base64," + b64("é".encode())},
                        },
                    ],
                }
            ],
        }
    )
    content = openai.decode_request(raw).turn.messages[0].content
    assert content == (
        DocumentBlock("application/pdf", data=PDF, text="hello pdf", title="a.pdf"),
        DocumentBlock("text/plain", text="é"),
    )


@pytest.mark.parametrize(
    ("file", "param"),
    [
        ({"file_id": "file-1"}, "messages[0].content[0].file.file_id"),
        ({"file_data": "https://x/a.pdf"}, "messages[0].content[0].file.file_data"),
        (
            {"file_data": "data:image/png;base64," + b64(PNG)},
            "messages[0].content[0].file.file_data",
        ),
    ],
)
def test_openai_bad_file_parts(file: dict[str, str], param: str) -> None:
    raw = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "file", "file": file}]}]}
    )
    with pytest.raises(InvalidRequestError) as info:
        openai.decode_request(raw)
    assert info.value.param == param
