"""Reading a request's PDFs in a child process: a hard limit on the one job a request can make
arbitrarily expensive (a few KB of compressed content stream can hold hours of pypdf work).

The decoders leave each PDF as a `protocols.pdf.PendingPdf`; `read_documents` runs them through
one child per request, at most `PdfGate.readers` children at a time. The child is this file run
as a script (`python -I <this file>`; `-m daemon.pdf_worker` would import the daemon package
and aiohttp first, half a second per request). It caps its own address space and CPU time, says
it is ready, reads the PDFs from stdin and answers one JSON line per PDF: its text, or the 400
`read_text` raised. `PdfLimits.timeout` counts from "ready", so a busy machine's slow interpreter
start is not charged to the caller's PDFs. The parent kills the child's process group when a
limit passes, when the request is cancelled (client gone) or on any error, and always reaps it.
The event loop only waits on pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import resource
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Sequence
from typing import Final

import orjson

from claude_relay.protocols.errors import ApiError, InvalidRequestError, OverloadedError, RelayError
from claude_relay.protocols.model import TurnRequest
from claude_relay.protocols.pdf import (
    PdfLimits,
    PendingPdf,
    pending_pdfs,
    read_text,
    with_pdf_texts,
)

log = logging.getLogger(__name__)

__all__ = ["PdfGate", "read_documents", "read_pdfs"]

# The child's address space: Python with pypdf takes ~100 MB, a request's PDFs at most 24 MiB
# (twice, while they are split); a decompression bomb gets a MemoryError instead of the host.
CHILD_MEMORY_BYTES: Final = 1024 * 1024 * 1024
# Python and pypdf start in a fraction of a second; a machine that needs longer is in trouble.
STARTUP_TIMEOUT: Final = 30.0
_SCRIPT: Final = os.path.abspath(__file__)


class PdfGate:
    """At most `readers` PDF readers at once, and at most `max_waiting` requests waiting for
    one (longer than `wait_timeout`): beyond that a 529, like the pool's own queue. Turns and
    count_tokens share it, so no kind of request can start PDF readers without bound."""

    def __init__(
        self, readers: int, max_waiting: int, wait_timeout: float, retry_after: float
    ) -> None:
        self.readers = readers
        self._slots = asyncio.Semaphore(readers)
        self._max_waiting = max_waiting
        self._waiting = 0
        self._wait_timeout = wait_timeout
        self._retry_after = retry_after

    def _busy(self) -> OverloadedError:
        return OverloadedError(
            f"claude-relay is reading as many PDFs as it can ({self.readers} at once, "
            f"{self._waiting} requests waiting); retry later",
            retry_after=self._retry_after,
        )

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self._max_waiting:
            raise self._busy()
        self._waiting += 1
        try:
            async with asyncio.timeout(self._wait_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise self._busy() from None
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


async def read_documents(gate: PdfGate, req: TurnRequest, limits: PdfLimits) -> TurnRequest:
    """`req` with the text of each of its PDFs read (`read_pdfs`); `req` itself without any."""
    pdfs = pending_pdfs(req)
    if not pdfs:
        return req
    async with gate.slot():
        texts = await read_pdfs(pdfs, limits)
    return with_pdf_texts(req, {id(pdf): text for pdf, text in zip(pdfs, texts, strict=True)})


async def read_pdfs(pdfs: Sequence[PendingPdf], limits: PdfLimits) -> list[str]:
    """The text of each PDF, read by one child process within `limits.timeout` seconds in all.

    Raises the 400 of the first PDF that cannot be read, that is over a limit, or at which the
    time ran out; the child is gone (killed if need be, and reaped) when this returns or raises.
    """
    head = {
        "max_pages": limits.max_pages,
        "max_chars": limits.max_chars,
        "cpu_seconds": math.ceil(limits.timeout) + 1,
        "sizes": [len(pdf.data) for pdf in pdfs],
        "paths": [pdf.path for pdf in pdfs],
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",  # no PYTHON* variables, no user site, not this file's directory on sys.path
            _SCRIPT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,  # the child reports everything on stdout
            start_new_session=True,  # its own process group, killed as one
            # one answer line holds a PDF's text: max_chars characters of up to 6 JSON bytes
            limit=6 * limits.max_chars + 4096,
        )
    except OSError as exc:  # out of processes or memory: the relay's trouble, not the PDF's
        log.error("cannot start the PDF reader: %s", exc)
        raise ApiError("claude-relay cannot start its PDF reader; see the relay's log") from exc
    assert proc.stdout is not None
    try:
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                ready = await proc.stdout.readline()
        except TimeoutError:
            log.error("the PDF reader did not start within %g s", STARTUP_TIMEOUT)
            raise ApiError("the PDF reader did not start; see the relay's log") from None
        if ready != b"ready\n":
            await proc.wait()
            raise _broken(ready, proc.returncode)
        return await _exchange(proc, head, pdfs, limits)
    finally:
        await _stop(proc)


async def _exchange(
    proc: asyncio.subprocess.Process,
    head: dict[str, object],
    pdfs: Sequence[PendingPdf],
    limits: PdfLimits,
) -> list[str]:
    """Send the PDFs to the ready child and read its answers, within `limits.timeout`."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    texts: list[str] = []
    try:
        async with asyncio.timeout(limits.timeout):
            proc.stdin.write(orjson.dumps(head) + b"\n")
            for pdf in pdfs:
                proc.stdin.write(pdf.data)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await proc.stdin.drain()  # a child that died early is told by its answer
                proc.stdin.close()
            for pdf in pdfs:
                line = await proc.stdout.readline()
                if not line:
                    await proc.wait()
                    raise _ended(pdf, proc.returncode, limits)
                texts.append(_answer(pdf, line))
    except TimeoutError:
        raise _out_of_time(pdfs[len(texts)], limits) from None
    return texts


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    # Reaped even when the request was cancelled; were this wait cancelled too, asyncio's child
    # watcher still reaps the killed child.
    await proc.wait()


def _unreadable(pdf: PendingPdf, message: str) -> InvalidRequestError:
    err = InvalidRequestError(message, param=pdf.path)
    err.openai_code = "invalid_value"  # as the decoder's own PDF errors have on the OpenAI route
    return err


def _out_of_time(pdf: PendingPdf, limits: PdfLimits) -> InvalidRequestError:
    return _unreadable(
        pdf,
        f"{pdf.path}: the PDF could not be read within {limits.timeout:g} s, claude-relay's "
        "limit for reading a request's PDFs",
    )


def _answer(pdf: PendingPdf, line: bytes) -> str:
    try:
        answer = orjson.loads(line)
    except orjson.JSONDecodeError:
        answer = None
    if isinstance(answer, dict):
        if isinstance(answer.get("text"), str):
            return str(answer["text"])
        if isinstance(answer.get("error"), str):
            raise _unreadable(pdf, answer["error"])
    raise _broken(line, None)


def _broken(line: bytes, code: int | None) -> ApiError:
    """The relay's error for a child that failed in itself (not on a PDF): it said `line`."""
    crash = line.startswith(b'{"crash":') and orjson.loads(line).get("crash")
    if crash:
        log.error("the PDF reader failed:\n%s", crash)
    else:
        log.error("the PDF reader said %r and exited with %s", line[:200], code)
    return ApiError("the PDF reader failed; see the relay's log")


def _ended(pdf: PendingPdf, code: int | None, limits: PdfLimits) -> RelayError:
    """Why the child ended before answering for `pdf` (exit `code`)."""
    if code == -signal.SIGXCPU:  # its CPU limit: the time limit, as CPU time
        return _out_of_time(pdf, limits)
    if code is not None and code < 0:  # killed (the kernel's OOM killer, say): the document's
        return _unreadable(
            pdf,
            f"{pdf.path}: the PDF could not be read: its reader was ended by "
            f"{signal.Signals(-code).name}",
        )
    return _broken(b"", code)


# --- the child ---------------------------------------------------------------------------------


def _limit_self(cpu_seconds: int) -> None:
    limits = (
        (resource.RLIMIT_CORE, 0),  # SIGXCPU would otherwise dump core
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_AS, CHILD_MEMORY_BYTES),
    )
    for which, value in limits:
        _, hard = resource.getrlimit(which)
        soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
        # macOS refuses some address-space limits; the parent's timeout and kill still hold
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (soft, hard))


def _child() -> int:
    out = sys.stdout.buffer

    def say(answer: dict[str, str]) -> None:
        out.write(orjson.dumps(answer) + b"\n")
        out.flush()

    try:
        logging.disable(logging.CRITICAL)  # pypdf logs each flaw of a hostile PDF
        out.write(b"ready\n")  # imports done: the parent's clock starts now
        out.flush()
        head = orjson.loads(sys.stdin.buffer.readline())
        _limit_self(int(head["cpu_seconds"]))
        body = sys.stdin.buffer.read()
        limits = PdfLimits(max_pages=int(head["max_pages"]), max_chars=int(head["max_chars"]))
        start = 0
        for size, path in zip(head["sizes"], head["paths"], strict=True):
            data = body[start : start + size]
            start += size
            try:
                say({"text": read_text(data, path, limits)})
            except InvalidRequestError as err:
                say({"error": err.message})
                return 0
    except BaseException:
        say({"crash": traceback.format_exc()})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child())
