"""protocols.attachments: strict base64, type sniffing and header checks, data: URLs, Anthropic
image/document sources, and the size budget, with errors that name the offending field."""

from __future__ import annotations

import base64
import struct

import pytest

from claude_relay.protocols import attachments as att
from claude_relay.protocols.errors import InvalidRequestError, RequestTooLargeError
from claude_relay.protocols.model import DocumentBlock, ImageBlock
from tests.support import media

PNG = media.png()
PDF = media.pdf("first page", "second page")


def b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode()


def webp_vp8(width: int, height: int) -> bytes:
    payload = b"\x10\x02\x00\x9d\x01\x2a" + struct.pack("<HH", width, height) + b"\x00" * 10
    body = b"WEBP" + b"VP8 " + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def raises_400(path: str, *words: str) -> pytest.RaisesExc[InvalidRequestError]:
    """Expect a 400 whose message starts with `path: ` and whose param is `path`."""
    return pytest.raises(InvalidRequestError, check=lambda e: _named(e, path, words))


def _named(exc: InvalidRequestError, path: str, words: tuple[str, ...]) -> bool:
    assert exc.status == 400
    assert exc.param == path, exc.message
    assert exc.message.startswith(f"{path}: "), exc.message
    for word in words:
        assert word in exc.message, exc.message
    return True


# --- base64 ------------------------------------------------------------------------------------


def test_base64_round_trip_and_line_breaks() -> None:
    data = bytes(range(256)) * 3
    assert att.decode_base64(b64(data), "p") == data
    wrapped = base64.encodebytes(data).decode()  # MIME: a newline every 76 characters
    assert "\n" in wrapped
    assert att.decode_base64(wrapped, "p") == data
    assert att.decode_base64(" " + b64(data) + "\r\n", "p") == data


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (123, ("valid string",)),
        ("", ("empty",)),
        ("  \n", ("empty",)),
        ("ab-_", ("URL-safe",)),
        ("abc$", ("unexpected character '$'",)),
        ("abc=defg", ("padding",)),
        ("abcde", ("multiple of 4",)),
        ("YWJj", ()),  # valid: "abc"
    ],
)
def test_base64_is_strict(value: object, words: tuple[str, ...]) -> None:
    path = "messages.0.content.1.source.data"
    if not words:
        assert att.decode_base64(value, path) == b"abc"
        return
    with raises_400(path, *words):
        att.decode_base64(value, path)


def test_base64_size_is_refused_before_decoding() -> None:
    budget = att.Budget(att.AttachmentLimits(max_bytes=30))
    with pytest.raises(RequestTooLargeError) as info:
        # 48 characters would decode to 36 bytes; the alphabet is never looked at
        att.decode_base64("!" * 48, "x.data", budget)
    assert info.value.status == 413
    assert info.value.message.startswith("x.data: the attachment is 36 bytes")
    assert info.value.param == "x.data"


# --- sniffing and headers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "media_type", "size"),
    [
        (media.png(7, 5), "image/png", (7, 5)),
        (media.jpeg_header(640, 480), "image/jpeg", (640, 480)),
        (media.GIF_1X1, "image/gif", (1, 1)),
        (media.webp_vp8x(3000, 2000), "image/webp", (3000, 2000)),
        (media.webp_vp8l(16, 9), "image/webp", (16, 9)),
        (webp_vp8(33, 44), "image/webp", (33, 44)),
    ],
)
def test_sniff_and_size(data: bytes, media_type: str, size: tuple[int, int]) -> None:
    assert att.sniff(data) == media_type
    assert att.image_size(data, media_type) == size


def test_sniff_pdf_and_unknown() -> None:
    assert att.sniff(PDF) == "application/pdf"
    assert att.sniff(b"hello world") is None
    assert att.sniff(b"") is None


def test_jpeg_size_skips_segments_and_fill_bytes() -> None:
    header = media.jpeg_header(9, 8)
    # a comment segment and fill bytes before the frame header
    data = header[:2] + b"\xff\xfe\x00\x05abc" + b"\xff" + header[2:]
    assert att.image_size(data, "image/jpeg") == (9, 8)


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png"),  # no IHDR
        (PNG[:29] + b"\x00\x00\x00\x00" + PNG[33:], "image/png"),  # IHDR CRC wrong
        (media.png(0, 3), "image/png"),  # zero width
        (b"\xff\xd8\xff\xe0\x00\x02\xff\xda\x00\x02", "image/jpeg"),  # scan before any frame
        (b"\xff\xd8\xff\xe0\x00\x01" + b"\x00" * 10, "image/jpeg"),  # segment length < 2
        (b"\xff\xd8\x00\x00\x00\x00", "image/jpeg"),  # not a marker
        (b"GIF89a" + b"\x00" * 7, "image/gif"),  # 0×0
        (media.webp_vp8x()[:-4], "image/webp"),  # truncated
        (media.webp_vp8l()[:20] + b"\x00" + media.webp_vp8l()[21:], "image/webp"),  # no 0x2f
        (media.webp_vp8x()[:12] + b"ABCD" + media.webp_vp8x()[16:], "image/webp"),  # chunk
        (PNG, "image/gif"),  # the bytes are of another type
        (PNG, "image/bmp"),
    ],
)
def test_malformed_headers_have_no_size(data: bytes, media_type: str) -> None:
    assert att.image_size(data, media_type) is None


def test_check_image() -> None:
    assert att.check_image(PNG, "image/png", "s") == "image/png"
    assert att.check_image(media.GIF_1X1, None, "s") == "image/gif"
    with raises_400("s.media_type", "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"):
        att.check_image(PNG, "image/bmp", "s")
    with raises_400("s.media_type", "specified as image/jpeg", "PNG image (image/png)"):
        att.check_image(PNG, "image/jpeg", "s")
    with raises_400("s.data", "not a PNG, JPEG, GIF or WebP image"):
        att.check_image(b"hello", "image/png", "s")
    with raises_400("s.data", "a PDF"):
        att.check_image(PDF, "image/png", "s")
    with raises_400("s.data", "empty"):
        att.check_image(b"", None, "s")
    with raises_400("s.data", "PNG image is corrupt"):
        att.check_image(b"\x89PNG\r\n\x1a\n" + b"\x01" * 100, "image/png", "s")


def test_check_pdf() -> None:
    att.check_pdf(PDF, "d")
    att.check_pdf(b"junk before the header\n" + PDF, "d")
    with raises_400("d", "not a PDF"):
        att.check_pdf(b"hello", "d")
    with raises_400("d", "a PNG image"):
        att.check_pdf(PNG, "d")
    with raises_400("d", "truncated"):
        att.check_pdf(PDF[: len(PDF) // 2], "d")
    with raises_400("d", "empty"):
        att.check_pdf(b"", "d")


# --- data: URLs --------------------------------------------------------------------------------

URL_PATH = "messages.0.content.1.image_url.url"


def test_parse_data_url() -> None:
    assert att.parse_data_url("data:image/png;base64,QUJD", "u") == ("image/png", "QUJD")
    assert att.parse_data_url("DATA:Image/PNG;Base64,QUJD", "u") == ("image/png", "QUJD")
    assert att.parse_data_url("data:;base64,QUJD", "u") == (None, "QUJD")
    assert att.parse_data_url("data:base64,QUJD", "u") == (None, "QUJD")
    assert att.parse_data_url("data:image/png;name=a.png;base64,QUJD", "u") == (
        "image/png",
        "QUJD",
    )


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://example.com/cat.png", ("not fetched",)),
        ("HTTP://example.com/cat.png", ("not fetched",)),
        ("ftp://example.com/cat.png", ("expected a base64 data URL",)),
        ("cat.png", ("expected a base64 data URL",)),
        ("data:image/png,rawbytes", ("must be base64",)),
        ("data:image/png;base64", ("must be base64",)),
        (None, ("valid string",)),
    ],
)
def test_bad_data_urls(url: object, words: tuple[str, ...]) -> None:
    with raises_400(URL_PATH, *words):
        att.parse_data_url(url, URL_PATH)


def test_image_from_data_url() -> None:
    budget = att.Budget()
    block = att.image_from_data_url(f"data:image/png;base64,{b64(PNG)}", URL_PATH, budget)
    assert block == ImageBlock("image/png", PNG)
    assert (budget.count, budget.total) == (1, len(PNG))
    # no declared type: the bytes say what it is
    assert att.image_from_data_url(f"data:;base64,{b64(PNG)}", URL_PATH).media_type == "image/png"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"data:image/jpeg;base64,{b64(PNG)}", ("specified as image/jpeg", "PNG")),
        (f"data:image/svg+xml;base64,{b64(PNG)}", ("not 'image/svg+xml'",)),
        ("data:image/png;base64,not*base64", ("invalid base64",)),
        (f"data:image/png;base64,{b64(b'plain text')}", ("not a PNG, JPEG, GIF or WebP",)),
    ],
)
def test_bad_data_url_images(url: str, words: tuple[str, ...]) -> None:
    # a URL has no sub-fields: every problem is reported at the URL's own path
    with raises_400(URL_PATH, *words):
        att.image_from_data_url(url, URL_PATH)


# --- Anthropic sources -------------------------------------------------------------------------

SRC = "messages.0.content.1.source"


def image_source(data: bytes, media_type: str = "image/png") -> dict[str, object]:
    return {"type": "base64", "media_type": media_type, "data": b64(data)}


def test_image_from_source() -> None:
    for data, media_type in [
        (PNG, "image/png"),
        (media.jpeg_header(), "image/jpeg"),
        (media.GIF_1X1, "image/gif"),
        (media.webp_vp8l(), "image/webp"),
    ]:
        assert att.image_from_source(image_source(data, media_type), SRC) == ImageBlock(
            media_type, data
        )


@pytest.mark.parametrize(
    ("source", "path", "words"),
    [
        ("nope", SRC, ("valid dictionary",)),
        ({"media_type": "image/png", "data": "QUJD"}, f"{SRC}.type", ("Field required",)),
        ({"type": "url", "url": "https://x/y.png"}, f"{SRC}.type", ("not fetched",)),
        ({"type": "file", "file_id": "file_1"}, f"{SRC}.type", ("Files API",)),
        ({"type": "url", "uri": "x"}, f"{SRC}.uri", ("Extra inputs",)),
        ({"type": "text", "data": "x"}, f"{SRC}.type", ("'base64', 'url', 'file'",)),
        ({**image_source(PNG), "name": "a"}, f"{SRC}.name", ("Extra inputs",)),
        ({"type": "base64", "data": b64(PNG)}, f"{SRC}.media_type", ("Field required",)),
        ({"type": "base64", "media_type": "image/png"}, f"{SRC}.data", ("Field required",)),
        (image_source(PNG, "image/tiff"), f"{SRC}.media_type", ("'image/jpeg', 'image/png'",)),
        (image_source(PNG, "image/gif"), f"{SRC}.media_type", ("specified as image/gif",)),
        (
            {"type": "base64", "media_type": "image/png", "data": "QUJD!"},
            f"{SRC}.data",
            ("invalid base64",),
        ),
        (image_source(b"\x89PNG\r\n\x1a\n" + bytes(64)), f"{SRC}.data", ("corrupt",)),
    ],
)
def test_bad_image_sources(source: object, path: str, words: tuple[str, ...]) -> None:
    with raises_400(path, *words):
        att.image_from_source(source, SRC)


def test_document_sources() -> None:
    pdf = {"type": "base64", "media_type": "application/pdf", "data": b64(PDF)}
    assert att.document_from_source(pdf, SRC, title="Report") == (
        DocumentBlock(
            "application/pdf",
            data=PDF,
            text="[page 1]\nfirst page\n\n[page 2]\nsecond page",
            title="Report",
        ),
    )
    text = {"type": "text", "media_type": "text/plain", "data": "hello\nworld"}
    assert att.document_from_source(text, SRC) == (
        DocumentBlock("text/plain", text="hello\nworld"),
    )
    content = {"type": "content", "content": "just text"}
    assert att.document_from_source(content, SRC, title="T") == (
        DocumentBlock("text/plain", text="just text", title="T"),
    )


def test_pdf_text() -> None:
    assert att.pdf_text(media.pdf("only page"), "d") == "only page"
    with raises_400("d", "no text layer"):
        att.pdf_text(media.pdf(""), "d")
    with raises_400("d", "could not be read"):
        att.pdf_text(b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n", "d")
    with raises_400("d", "truncated"):
        att.pdf_text(PDF[:-20], "d")


def test_content_document_keeps_the_order_of_text_and_images() -> None:
    source = {
        "type": "content",
        "content": [
            {"type": "text", "text": "one"},
            {"type": "text", "text": "two", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": image_source(PNG)},
            {"type": "text", "text": ""},
            {"type": "text", "text": "three"},
        ],
    }
    budget = att.Budget()
    assert att.document_from_source(source, SRC, budget, title="Doc") == (
        DocumentBlock("text/plain", text="one\n\ntwo", title="Doc"),
        ImageBlock("image/png", PNG),
        DocumentBlock("text/plain", text="three"),
    )
    assert budget.count == 1  # only the image is an attachment


@pytest.mark.parametrize(
    ("source", "path", "words"),
    [
        (
            {"type": "base64", "media_type": "image/png", "data": b64(PNG)},
            f"{SRC}.media_type",
            ("'application/pdf'",),
        ),
        (
            {"type": "base64", "media_type": "application/pdf", "data": b64(PNG)},
            f"{SRC}.data",
            ("a PNG image",),
        ),
        (
            {"type": "base64", "media_type": "application/pdf", "data": "%%%"},
            f"{SRC}.data",
            ("invalid base64",),
        ),
        ({"type": "text", "media_type": "text/html", "data": "x"}, f"{SRC}.media_type", ()),
        ({"type": "text", "media_type": "text/plain", "data": 5}, f"{SRC}.data", ("string",)),
        ({"type": "url", "url": "https://x/doc.pdf"}, f"{SRC}.type", ("not fetched",)),
        ({"type": "content", "content": 5}, f"{SRC}.content", ("string or a list",)),
        ({"type": "content", "content": []}, f"{SRC}.content", ("no content",)),
        (
            {"type": "content", "content": [{"type": "document"}]},
            f"{SRC}.content.0.type",
            ("'text' or 'image'",),
        ),
        (
            {"type": "content", "content": [{"type": "text", "text": 1}]},
            f"{SRC}.content.0.text",
            ("string",),
        ),
        (
            {"type": "content", "content": [{"type": "image", "source": {"type": "url"}}]},
            f"{SRC}.content.0.source.type",
            ("not fetched",),
        ),
        ({"type": "content", "content": "x", "extra": 1}, f"{SRC}.extra", ("Extra",)),
    ],
)
def test_bad_document_sources(source: object, path: str, words: tuple[str, ...]) -> None:
    with raises_400(path, *words):
        att.document_from_source(source, SRC)


# --- the budget --------------------------------------------------------------------------------


def test_budget_limits_each_file_the_total_and_the_count() -> None:
    budget = att.Budget(att.AttachmentLimits(max_bytes=len(PNG), max_total_bytes=2 * len(PNG)))
    source = image_source(PNG)
    att.image_from_source(source, "a")
    att.image_from_source(source, "a", budget)
    att.image_from_source(source, "b", budget)
    with pytest.raises(RequestTooLargeError) as info:
        att.image_from_source(source, "c", budget)
    assert info.value.status == 413
    assert info.value.message.startswith("c.data: the request's attachments add up to more than")
    assert (budget.count, budget.total) == (2, 2 * len(PNG))

    small = att.Budget(att.AttachmentLimits(max_bytes=len(PNG) - 1))
    with pytest.raises(RequestTooLargeError, match=r"^x\.data: the attachment is \d+ bytes"):
        att.image_from_source(source, "x", small)

    few = att.Budget(att.AttachmentLimits(max_count=1))
    att.image_from_source(source, "a", few)
    with raises_400("b.data", "too many attachments", "at most 1"):
        att.image_from_source(source, "b", few)
