"""A PDF document's text layer, within limits: the one parsing entry point for PDFs.

claude v2.1.197 cannot pass a PDF on to the model (docs/attachments.md), so the relay sends its
text. Reading a PDF is the costliest thing a request can ask for: 2 KB of compressed content
stream can hold seconds of pypdf work, and 10 MB hours. Pure code cannot stop itself, so the
daemon never calls `read_text` in its own process: the decoders leave a `PendingPdf` (bytes and
where they were in the request), and `daemon.pdf_worker` runs `read_text` in a child process with
a hard time and memory limit, after the request has passed the relay's own checks. Library use
and tests call it inline (`protocols.attachments.pdf_text`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import NoReturn

import pypdf
import pypdf.errors

from claude_relay.protocols.errors import InvalidRequestError
from claude_relay.protocols.model import (
    ContentBlock,
    DocumentBlock,
    Message,
    ToolResultBlock,
    TurnRequest,
)

__all__ = ["PdfLimits", "PendingPdf", "pending_pdfs", "read_text", "with_pdf_texts"]


@dataclass(frozen=True, slots=True)
class PdfLimits:
    """How much of one PDF is read. A PDF over a limit is a 400, never a silently shorter text:
    the caller can split or trim it, and 1 000 000 characters is already more than a context
    window holds."""

    max_pages: int = 100  # what the API takes in one request
    max_chars: int = 1_000_000  # of extracted text
    timeout: float = 20.0  # seconds for all PDFs of a request; only the daemon can enforce it


@dataclass(frozen=True, slots=True)
class PendingPdf(DocumentBlock):
    """A PDF whose text is still to be read (`text` is None): `path` names its bytes in the
    request (`messages.0.content.1.document.source.data`), for the 400 if they cannot be read."""

    path: str = ""


def _fail(path: str, problem: str) -> NoReturn:
    raise InvalidRequestError(f"{path}: {problem}", param=path)


def read_text(data: bytes, path: str, limits: PdfLimits | None = None) -> str:
    """The text layer of a PDF, page by page (`[page N]` lines between pages of a longer PDF).

    A PDF without text (scanned pages), one that cannot be opened, or one over `limits` is a
    400, never an empty or cut document the model would answer about anyway. The caller has
    checked the header (`protocols.attachments.check_pdf`).
    """
    limits = limits if limits is not None else PdfLimits()
    pages: list[str] = []
    chars = 0
    try:
        # pypdf reports recoverable damage through `warnings` and its logger (which the daemon
        # quiets): the text is still the best reading available
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                _fail(path, "the PDF is encrypted with a password")
            count = len(reader.pages)
            if count > limits.max_pages:
                _fail(
                    path,
                    f"the PDF has {count} pages, more than claude-relay's limit of "
                    f"{limits.max_pages} pages for one PDF",
                )
            for page in reader.pages:
                # a lone surrogate (a broken ToUnicode map) could not be sent on as UTF-8
                text = page.extract_text().strip().encode(errors="replace").decode()
                chars += len(text)
                if chars > limits.max_chars:
                    _fail(
                        path,
                        f"the PDF's text is longer than claude-relay's limit of "
                        f"{limits.max_chars} characters for one PDF (reached on page "
                        f"{len(pages) + 1})",
                    )
                pages.append(text)
    except InvalidRequestError:
        raise
    except (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        _fail(path, f"the PDF could not be read: {exc}")
    except Exception as exc:  # pypdf on hostile input: any failure is the document's, not ours
        _fail(path, f"the PDF could not be read: {type(exc).__name__}")
    if not any(pages):
        _fail(
            path,
            "the PDF has no text layer (scanned pages?); claude-relay sends a PDF's text to the "
            "model, so send the pages as images instead",
        )
    if len(pages) == 1:
        return pages[0]
    return "\n\n".join(f"[page {n}]\n{text}" for n, text in enumerate(pages, 1))


# --- the PDFs of a request ---------------------------------------------------------------------


def _blocks(message: Message) -> list[ContentBlock]:
    out: list[ContentBlock] = []
    for block in message.content:
        out.append(block)
        if isinstance(block, ToolResultBlock):
            out.extend(block.content)
    return out


def pending_pdfs(req: TurnRequest) -> list[PendingPdf]:
    """The request's unread PDFs in request order, tool results' included."""
    return [b for m in req.messages for b in _blocks(m) if isinstance(b, PendingPdf)]


def with_pdf_texts(req: TurnRequest, texts: Mapping[int, str]) -> TurnRequest:
    """`req` with each `PendingPdf` (keyed by `id()`) replaced by a `DocumentBlock` holding its
    text from `texts`."""

    def read(block: PendingPdf) -> DocumentBlock:
        return DocumentBlock(
            block.media_type,
            data=block.data,
            text=texts[id(block)],
            title=block.title,
            context=block.context,
        )

    return replace(req, messages=tuple(_map_pdfs(m, read) for m in req.messages))


def _map_pdfs(message: Message, read: Callable[[PendingPdf], DocumentBlock]) -> Message:
    def one(block: ContentBlock) -> ContentBlock:
        if isinstance(block, PendingPdf):
            return read(block)
        if isinstance(block, ToolResultBlock) and any(
            isinstance(b, PendingPdf) for b in block.content
        ):
            content = tuple(read(b) if isinstance(b, PendingPdf) else b for b in block.content)
            return replace(block, content=content)
        return block

    if not any(isinstance(b, PendingPdf) for b in _blocks(message)):
        return message
    return replace(message, content=tuple(one(b) for b in message.content))
