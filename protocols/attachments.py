"""Attachments inside requests: base64 and `data:` URL decoding, type sniffing, size limits.

Decoders (protocols.anthropic, protocols.openai_messages) turn a client's `image` and `document`
blocks and `image_url` parts into `ImageBlock`/`DocumentBlock` values with these helpers. Nothing
is fetched and nothing touches the disk here: the bytes are written to a per-turn directory later,
by pty_pool.attachments. Every problem raises a 400 `InvalidRequestError`, every size problem a
413 `RequestTooLargeError`, with a message that starts with the offending field's path
(`messages.0.content.1.source.data: …`) and that path in `param`.

Why the bytes are checked here and not left to claude: claude v2.1.197 turns an unreadable image
into plain text (its path) without an error, and the model would then answer about a file name.
A header check rejects corrupt and mislabelled data with a message the client can act on.

A PDF's text is read by `protocols.pdf.read_text`, within `AttachmentLimits.pdf`: here, inline,
or, with `defer_pdf_text` (the daemon), later and elsewhere, from the `PendingPdf` left in its
place (docs/security.md, content bombs).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

from claude_relay.protocols.errors import InvalidRequestError, RequestTooLargeError, excerpt
from claude_relay.protocols.model import DocumentBlock, ImageBlock
from claude_relay.protocols.pdf import PdfLimits, PendingPdf, read_text

__all__ = [
    "IMAGE_MEDIA_TYPES",
    "PDF_MEDIA_TYPE",
    "TEXT_MEDIA_TYPE",
    "AttachmentLimits",
    "Budget",
    "PdfLimits",
    "PendingPdf",
    "check_image",
    "check_pdf",
    "decode_base64",
    "document_from_data_url",
    "document_from_source",
    "image_from_data_url",
    "image_from_source",
    "image_size",
    "parse_data_url",
    "pdf_text",
    "sniff",
]

# The API's order in its own validation messages.
IMAGE_MEDIA_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")
PDF_MEDIA_TYPE: Final = "application/pdf"
TEXT_MEDIA_TYPE: Final = "text/plain"

_MIB: Final = 1024 * 1024
_KIND: Final = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WebP",
    PDF_MEDIA_TYPE: "PDF",
}
_IMAGE_TYPES_TEXT: Final = "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    """Limits on decoded attachment bytes (base64 is 4/3 of that on the wire)."""

    max_bytes: int = 10 * _MIB  # one image or document
    max_total_bytes: int = 24 * _MIB  # all attachments of one request
    max_count: int = 100  # attachments in one request (the API allows 100 images)
    pdf: PdfLimits = field(default_factory=PdfLimits)
    # False: a PDF's text is read while decoding. True: the decoder leaves a `PendingPdf` for
    # the caller to read (the daemon does, in a child process with a time limit)
    defer_pdf_text: bool = False


class Budget:
    """One request's running attachment total, checked against its `AttachmentLimits`.

    Only binary attachments (images, PDFs) count; text documents are prompt text like any other,
    bounded by the request body limit.
    """

    def __init__(self, limits: AttachmentLimits | None = None) -> None:
        self.limits = limits if limits is not None else AttachmentLimits()
        self.count = 0
        self.total = 0

    def check_encoded(self, encoded: str, path: str) -> None:
        """Refuse an oversized base64 payload (no whitespace) before decoding it."""
        self._check_one(len(encoded) * 3 // 4 - encoded[-2:].count("="), path)

    def add(self, size: int, path: str) -> None:
        """Count one decoded attachment of `size` bytes."""
        self._check_one(size, path)
        limits = self.limits
        if self.count + 1 > limits.max_count:
            _fail(path, f"too many attachments in one request (at most {limits.max_count})")
        if self.total + size > limits.max_total_bytes:
            raise RequestTooLargeError(
                f"{path}: the request's attachments add up to more than "
                f"{limits.max_total_bytes} bytes, the limit for one request",
                param=path,
            )
        self.count += 1
        self.total += size

    def _check_one(self, size: int, path: str) -> None:
        if size > self.limits.max_bytes:
            raise RequestTooLargeError(
                f"{path}: the attachment is {size} bytes, more than the limit of "
                f"{self.limits.max_bytes} bytes for one attachment",
                param=path,
            )


def _fail(path: str, problem: str) -> NoReturn:
    raise InvalidRequestError(f"{path}: {problem}", param=path)


# --- base64 ------------------------------------------------------------------------------------

_B64_CHARS: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64_BAD: Final = re.compile(r"[^A-Za-z0-9+/=]")
# Line breaks inside long base64 (MIME style, 76 columns) are harmless; nothing else is allowed.
_B64_SPACE: Final = str.maketrans("", "", " \t\r\n")


def decode_base64(value: object, path: str, budget: Budget | None = None) -> bytes:
    """Strictly decode standard base64 (line breaks allowed, `=` padding required)."""
    if not isinstance(value, str):
        _fail(path, "Input should be a valid string")
    compact = value.translate(_B64_SPACE)
    if not compact:
        _fail(path, "the data is empty")
    if budget is not None:
        budget.check_encoded(compact, path)
    if not _B64_CHARS.fullmatch(compact):
        bad = _B64_BAD.search(compact)
        if bad is not None and bad.group() in "-_":
            _fail(
                path,
                "invalid base64: URL-safe characters ('-', '_') are not accepted; "
                "use the standard alphabet (A-Z a-z 0-9 + /)",
            )
        if bad is not None:
            _fail(path, f"invalid base64: unexpected character {bad.group()!r}")
        _fail(path, "invalid base64: '=' padding may only appear at the end")
    if len(compact) % 4:
        _fail(path, "invalid base64: the length is not a multiple of 4 (is '=' padding missing?)")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the checks above cover it
        _fail(path, f"invalid base64: {exc}")


# --- sniffing and header checks ----------------------------------------------------------------


def sniff(data: bytes) -> str | None:
    """The media type the bytes' signature shows: one of IMAGE_MEDIA_TYPES, PDF, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"%PDF-"):
        return PDF_MEDIA_TYPE
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # signature, then the IHDR chunk: length 13, type, width, height, 5 more bytes, CRC
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    if struct.unpack(">I", data[29:33])[0] != zlib.crc32(data[12:29]):
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF: Final = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if length < 7 or i + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 13:  # header + logical screen descriptor
        return None
    width, height = struct.unpack("<HH", data[6:10])
    return width, height


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    (riff_size,) = struct.unpack("<I", data[4:8])
    if riff_size + 8 > len(data) + 1:  # truncated (+1: a chunk may lack its odd padding byte)
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


_SIZERS: Final = {
    "image/png": _png_size,
    "image/jpeg": _jpeg_size,
    "image/gif": _gif_size,
    "image/webp": _webp_size,
}


def image_size(data: bytes, media_type: str) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None when the header is malformed."""
    sizer = _SIZERS.get(media_type)
    if sizer is None or sniff(data) != media_type:
        return None
    size = sizer(data)
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


class _Problem(Exception):
    """A problem with an attachment's bytes: `field` ("media_type" or "data") and a sentence."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem


def _image_type(data: bytes, declared: str | None) -> str:
    if declared is not None and declared not in IMAGE_MEDIA_TYPES:
        raise _Problem("media_type", f"Input should be {_IMAGE_TYPES_TEXT}")
    if not data:
        raise _Problem("data", "the image is empty")
    actual = sniff(data)
    if actual not in IMAGE_MEDIA_TYPES:
        what = "a PDF" if actual == PDF_MEDIA_TYPE else "not a PNG, JPEG, GIF or WebP image"
        raise _Problem("data", f"the data is {what}")
    if declared is not None and actual != declared:
        raise _Problem(
            "media_type",
            f"the image was specified as {declared}, but the data is a {_KIND[actual]} "
            f"image ({actual})",
        )
    if image_size(data, actual) is None:
        raise _Problem("data", f"the {_KIND[actual]} image is corrupt: its header cannot be read")
    return actual


def check_image(data: bytes, declared: str | None, path: str) -> str:
    """The image's media type, after checking it against `declared` and reading its header.

    `path` names the source object: problems with the type go to `<path>.media_type`, problems
    with the bytes to `<path>.data`.
    """
    try:
        return _image_type(data, declared)
    except _Problem as exc:
        _fail(f"{path}.{exc.field}", exc.problem)


def check_pdf(data: bytes, path: str) -> None:
    """A PDF has `%PDF-` within its first 1024 bytes and `%%EOF` near its end."""
    if not data:
        _fail(path, "the document is empty")
    if b"%PDF-" not in data[:1024]:
        what = sniff(data)
        kind = f"a {_KIND[what]} image" if what in IMAGE_MEDIA_TYPES else "not a PDF"
        _fail(path, f"the data is {kind}")
    if b"%%EOF" not in data[-2048:]:
        _fail(path, "the PDF is truncated: it has no %%EOF marker at its end")


def pdf_text(data: bytes, path: str, limits: PdfLimits | None = None) -> str:
    """The text layer of a PDF (`protocols.pdf.read_text`), after `check_pdf`."""
    check_pdf(data, path)
    return read_text(data, path, limits)


def _pdf_document(
    data: bytes, path: str, budget: Budget | None, title: str | None
) -> DocumentBlock:
    """A PDF's DocumentBlock: with its text, or a `PendingPdf` when the limits defer reading."""
    limits = budget.limits if budget is not None else AttachmentLimits()
    if limits.defer_pdf_text:
        check_pdf(data, path)  # cheap, and a wrong file is better told before any waiting
        return PendingPdf(PDF_MEDIA_TYPE, data=data, title=title, path=path)
    return DocumentBlock(
        PDF_MEDIA_TYPE, data=data, text=pdf_text(data, path, limits.pdf), title=title
    )


# --- data: URLs --------------------------------------------------------------------------------


def parse_data_url(url: object, path: str) -> tuple[str | None, str]:
    """(declared media type or None, base64 payload) of a `data:…;base64,…` URL.

    Remote URLs are refused: claude-relay fetches nothing on a caller's behalf.
    """
    if not isinstance(url, str):
        _fail(path, "Input should be a valid string")
    scheme = url[: url.find(":") + 1].lower() if ":" in url[:12] else ""
    if scheme in ("http:", "https:"):
        _fail(
            path,
            "remote URLs are not fetched by claude-relay; send the data inline "
            "as a base64 data URL (data:image/png;base64,...)",
        )
    if scheme != "data:":
        _fail(path, "expected a base64 data URL (data:image/png;base64,...)")
    header, comma, payload = url[5:].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not comma or params[-1] != "base64":
        _fail(path, "the data URL must be base64-encoded (data:<media type>;base64,<data>)")
    media_type = params[0] if len(params) > 1 and params[0] else None
    return media_type, payload


def image_from_data_url(url: object, path: str, budget: Budget | None = None) -> ImageBlock:
    """An `ImageBlock` from a base64 image data URL (an OpenAI `image_url.url`).

    A URL has no sub-fields, so every problem is reported at `path` itself.
    """
    declared, payload = parse_data_url(url, path)
    if declared is not None and declared not in IMAGE_MEDIA_TYPES:
        _fail(
            path,
            f"the data URL's media type should be {_IMAGE_TYPES_TEXT}, not {excerpt(declared)}",
        )
    data = decode_base64(payload, path, budget)
    try:
        media_type = _image_type(data, declared)
    except _Problem as exc:
        _fail(path, exc.problem)
    if budget is not None:
        budget.add(len(data), path)
    return ImageBlock(media_type=media_type, data=data)


def document_from_data_url(
    url: object, path: str, budget: Budget | None = None, *, title: str | None = None
) -> DocumentBlock:
    """A `DocumentBlock` from a base64 `data:` URL of a PDF or a plain-text file (an OpenAI
    `file.file_data`); a PDF's text is extracted (`pdf_text`) or deferred (`PendingPdf`)."""
    declared, payload = parse_data_url(url, path)
    data = decode_base64(payload, path, budget)
    if declared == TEXT_MEDIA_TYPE:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            _fail(path, "the text file is not valid UTF-8")
        return DocumentBlock(TEXT_MEDIA_TYPE, text=text, title=title)
    if declared not in (None, PDF_MEDIA_TYPE):
        _fail(path, f"the file's media type should be '{PDF_MEDIA_TYPE}' or '{TEXT_MEDIA_TYPE}'")
    if budget is not None:
        budget.add(len(data), path)
    return _pdf_document(data, path, budget, title)


# --- Anthropic `source` objects ----------------------------------------------------------------

_BASE64_KEYS: Final = frozenset({"type", "media_type", "data"})
_URL_KEYS: Final = frozenset({"type", "url"})
_FILE_KEYS: Final = frozenset({"type", "file_id"})
_CONTENT_KEYS: Final = frozenset({"type", "content"})


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, "Input should be a valid dictionary or object to extract fields from")
    return value


def _no_extras(obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            _fail(f"{path}.{key}", "Extra inputs are not permitted")


def _required(obj: dict[str, Any], key: str, path: str) -> object:
    if key not in obj:
        _fail(f"{path}.{key}", "Field required")
    return obj[key]


def _source_type(source: dict[str, Any], path: str, allowed: tuple[str, ...]) -> str:
    kind = _required(source, "type", path)
    if kind == "url":
        _no_extras(source, _URL_KEYS, path)
        _fail(
            f"{path}.type",
            "URL sources are not fetched by claude-relay; send the data inline "
            "(source type 'base64')",
        )
    if kind == "file":
        _no_extras(source, _FILE_KEYS, path)
        _fail(
            f"{path}.type",
            "files from the Files API are not supported by claude-relay; send the data inline "
            "(source type 'base64')",
        )
    if kind not in allowed:
        expected = ", ".join(f"'{t}'" for t in (*allowed, "url", "file"))
        _fail(f"{path}.type", f"Input should be {expected}")
    return str(kind)


def image_from_source(source: object, path: str, budget: Budget | None = None) -> ImageBlock:
    """An `ImageBlock` from an Anthropic image block's `source`; `path` names the source."""
    obj = _object(source, path)
    _source_type(obj, path, ("base64",))
    _no_extras(obj, _BASE64_KEYS, path)
    declared = _required(obj, "media_type", path)
    if declared not in IMAGE_MEDIA_TYPES:
        _fail(f"{path}.media_type", f"Input should be {_IMAGE_TYPES_TEXT}")
    data = decode_base64(_required(obj, "data", path), f"{path}.data", budget)
    media_type = check_image(data, str(declared), path)
    if budget is not None:
        budget.add(len(data), f"{path}.data")
    return ImageBlock(media_type=media_type, data=data)


def document_from_source(
    source: object, path: str, budget: Budget | None = None, *, title: str | None = None
) -> tuple[DocumentBlock | ImageBlock, ...]:
    """The blocks of an Anthropic document block's `source`, in order; `path` names the source.

    - `base64` (application/pdf): one DocumentBlock with the PDF bytes in `data` and their
      extracted text in `text` (`pdf_text`), or a `PendingPdf` when reading is deferred;
    - `text` (text/plain): one DocumentBlock with `text`;
    - `content` (a string or text and image blocks): a DocumentBlock for each run of text blocks
      (joined with a blank line) and an ImageBlock for each image, in their order.
    `title` goes on the first DocumentBlock.
    """
    obj = _object(source, path)
    kind = _source_type(obj, path, ("base64", "text", "content"))
    if kind == "base64":
        _no_extras(obj, _BASE64_KEYS, path)
        if _required(obj, "media_type", path) != PDF_MEDIA_TYPE:
            _fail(f"{path}.media_type", f"Input should be '{PDF_MEDIA_TYPE}'")
        data = decode_base64(_required(obj, "data", path), f"{path}.data", budget)
        if budget is not None:
            budget.add(len(data), f"{path}.data")
        return (_pdf_document(data, f"{path}.data", budget, title),)
    if kind == "text":
        _no_extras(obj, _BASE64_KEYS, path)
        if _required(obj, "media_type", path) != TEXT_MEDIA_TYPE:
            _fail(f"{path}.media_type", f"Input should be '{TEXT_MEDIA_TYPE}'")
        text = _required(obj, "data", path)
        if not isinstance(text, str):
            _fail(f"{path}.data", "Input should be a valid string")
        return (DocumentBlock(TEXT_MEDIA_TYPE, text=text, title=title),)
    _no_extras(obj, _CONTENT_KEYS, path)
    return _content_source(_required(obj, "content", path), f"{path}.content", budget, title)


_CONTENT_TEXT_KEYS: Final = frozenset({"type", "text", "cache_control", "citations"})
_CONTENT_IMAGE_KEYS: Final = frozenset({"type", "source", "cache_control"})


def _content_source(
    content: object, path: str, budget: Budget | None, title: str | None
) -> tuple[DocumentBlock | ImageBlock, ...]:
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        _fail(path, "Input should be a valid string or a list of content blocks")
    out: list[DocumentBlock | ImageBlock] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            first = not any(isinstance(b, DocumentBlock) for b in out)
            text = "\n\n".join(texts)
            out.append(DocumentBlock(TEXT_MEDIA_TYPE, text=text, title=title if first else None))
            texts.clear()

    for j, raw in enumerate(content):
        where = f"{path}.{j}"
        block = _object(raw, where)
        kind = _required(block, "type", where)
        if kind == "text":
            _no_extras(block, _CONTENT_TEXT_KEYS, where)
            text = _required(block, "text", where)
            if not isinstance(text, str):
                _fail(f"{where}.text", "Input should be a valid string")
            if text:
                texts.append(text)
        elif kind == "image":
            _no_extras(block, _CONTENT_IMAGE_KEYS, where)
            flush()
            out.append(
                image_from_source(_required(block, "source", where), f"{where}.source", budget)
            )
        else:
            _fail(f"{where}.type", "Input should be 'text' or 'image'")
    flush()
    if not out:
        _fail(path, "the document has no content")
    return tuple(out)
