"""Content bombs: request content that would hold the event loop or the machine.

Schemas: every regex of a request schema runs in RE2 (linear time), a pattern RE2 cannot run is a
400 when the request arrives, and one reply check has a time budget. PDFs: read in a child
process with page, character, time and memory limits, after the request is decoded; the child is
killed and reaped on timeout and on cancel. Tests that must not hang have no wall-clock
assertion: pytest-timeout fails them if a bomb goes off.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from blockbuster import blockbuster_ctx
from pytest_aiohttp import AiohttpClient

from claude_relay.daemon import pdf_worker
from claude_relay.daemon.app import make_app
from claude_relay.daemon.config import Config
from claude_relay.protocols import anthropic, openai
from claude_relay.protocols.attachments import AttachmentLimits, PdfLimits, PendingPdf
from claude_relay.protocols.errors import InvalidRequestError, OverloadedError, RelayError
from claude_relay.protocols.model import (
    DocumentBlock,
    Message,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    TurnRequest,
)
from claude_relay.protocols.response_format import (
    JsonFormat,
    check_reply,
    schema_error,
    schema_problem,
)
from tests.helpers.proc import state, until
from tests.support import media
from tests.test_app import Client, FakePool, MakeClient, result

# 50 000 `a`s and a `!`: Python's `re` tries every way to split the `a`s between the groups
# of `^(a+)+$` before it fails (2^50000 of them).
EVIL_PATTERN = "^(a+)+$"
EVIL_TEXT = "a" * 50_000 + "!"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- ReDoS: schema regexes run in RE2 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "value", "problem"),
    [
        ({"type": "string", "pattern": EVIL_PATTERN}, EVIL_TEXT, "does not match"),
        # every place jsonschema calls `re.search` with a schema's pattern
        (
            {"type": "object", "patternProperties": {EVIL_PATTERN: {"type": "integer"}}},
            {EVIL_TEXT: "x"},
            None,  # the name does not match, so the value is not checked
        ),
        (
            {
                "type": "object",
                "patternProperties": {EVIL_PATTERN: {}},
                "additionalProperties": False,
            },
            {EVIL_TEXT: 1},
            "not match any of the regexes",
        ),
        (
            {
                "type": "object",
                "patternProperties": {EVIL_PATTERN: {}},
                "unevaluatedProperties": False,
            },
            {EVIL_TEXT: 1},
            "Unevaluated properties are not allowed",
        ),
        (
            {"type": "object", "propertyNames": {"pattern": EVIL_PATTERN}},
            {EVIL_TEXT: 1},
            "does not match",
        ),
        # a subschema declaring an older draft is refused at decode time; were one checked,
        # that draft's own keyword code (jsonschema's `_legacy_keywords`) would use RE2 too
        (
            {
                "$defs": {
                    "old": {
                        "$schema": "https://json-schema.org/draft/2019-09/schema",
                        "patternProperties": {EVIL_PATTERN: {}},
                        "unevaluatedProperties": False,
                    }
                },
                "$ref": "#/$defs/old",
            },
            {EVIL_TEXT: 1},
            "Unevaluated properties are not allowed",
        ),
    ],
)
def test_catastrophic_patterns_finish(
    schema: dict[str, object], value: object, problem: str | None
) -> None:
    found = schema_problem(value, schema)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
        assert len(found) < 1000  # the 50 000 characters are not quoted back whole


def test_a_catastrophic_reply_is_an_invalid_output_not_a_hang() -> None:
    fmt = JsonFormat("json_schema", schema={"type": "string", "pattern": EVIL_PATTERN}, name="a")
    with pytest.raises(RelayError) as info:
        check_reply(fmt, result(orjson.dumps(EVIL_TEXT).decode()))
    assert info.value.status == 500
    assert info.value.openai_code == "invalid_json_output"
    assert check_reply(fmt, result('"aaaa"')).text == '"aaaa"'


def test_patterns_keep_ecmascript_anchors() -> None:
    """RE2's `$` is the end of the text, as in JavaScript; Python's also matches before a final
    newline."""
    schema: dict[str, object] = {"type": "string", "pattern": "^[a-z]+$"}
    assert schema_problem("abc", schema) is None
    assert schema_problem("abc\n", schema) is not None
    # ECMAScript's named groups, which Python's `re` does not know, compile
    assert schema_error({"type": "string", "pattern": "^(?<word>[a-z]+)$"}) is None
    # and so do deeply nested groups, which overflow the stack of Python's `re` compiler
    assert schema_error({"type": "string", "pattern": "(" * 5000 + "a" + ")" * 5000}) is None


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "string", "pattern": r"^(a)\1$"}, "$.pattern"),
        ({"type": "object", "patternProperties": {"(?=x)": {}}}, "$.patternProperties"),
        ({"type": "string", "pattern": "[a-z"}, "$.pattern"),
    ],
)
def test_a_pattern_re2_cannot_run_is_a_schema_error(schema: dict[str, object], where: str) -> None:
    problem = schema_error(schema)
    assert problem is not None
    assert problem.startswith(f"{where}: ")
    assert "RE2" in problem


def openai_body(**extra: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra})


def json_schema_format(schema: dict[str, object]) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


def test_backreference_in_response_format_is_a_400_at_decode() -> None:
    fmt = json_schema_format({"type": "string", "pattern": r"(a+)\1"})
    with pytest.raises(InvalidRequestError) as info:
        openai.decode_request(openai_body(response_format=fmt))
    err = info.value
    assert (err.status, err.openai_type) == (400, "invalid_request_error")
    assert err.param == "response_format.json_schema.schema"
    assert "backreferences" in err.message


def test_backreference_in_a_tool_schema_is_a_400_at_decode() -> None:
    tool = {
        "name": "t",
        "input_schema": {"type": "object", "properties": {"a": {"pattern": r"(.)\1"}}},
    }
    raw = orjson.dumps(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        | {"tools": [tool]}
    )
    with pytest.raises(InvalidRequestError) as info:
        anthropic.decode_request(raw)
    assert info.value.param == "tools.0.input_schema"
    assert "at properties.a.pattern" in info.value.message


def test_deep_or_mixed_schemas_are_400s_not_crashes() -> None:
    deep: dict[str, object] = {"type": "string"}
    for _ in range(400):  # Python's stack, not the body limit, is what runs out
        deep = {"type": "object", "properties": {"a": deep}}
    assert schema_error(deep) == "$: the schema is nested too deeply"
    nested: dict[str, object] = {
        "$defs": {"x": {"$schema": "http://json-schema.org/draft-07/schema#"}}
    }
    problem = schema_error(nested)
    assert problem is not None
    assert problem.startswith("$['$defs'].x: `$schema` is only allowed at the schema's root")
    # at the root it is fine (zod-to-json-schema writes one), and read as 2020-12
    assert schema_error({"$schema": "http://json-schema.org/draft-07/schema#"}) is None


def test_an_exponential_schema_check_is_cut_short() -> None:
    """Each `$defs` link is an `anyOf` of two `$ref`s to the next: 2^40 paths to a failing leaf."""
    links = 40
    defs: dict[str, object] = {
        f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(links)
    }
    defs[f"d{links}"] = {"type": "string"}
    schema: dict[str, object] = {"$defs": defs, "$ref": "#/$defs/d0"}
    assert schema_error(schema) is None
    problem = schema_problem(1, schema)
    assert problem is not None
    assert "too complex" in problem


# --- PDFs: limits, time, reaping ----------------------------------------------------------------


def pdf_with_content(content: bytes) -> bytes:
    """A one-page PDF whose page content stream is `content`, Flate-compressed."""
    body = zlib.compress(content, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(body) + body + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


# Two million one-glyph text operators: about 20 KB of PDF, a minute or more of pypdf.
BOMB = pdf_with_content(b"BT /F1 12 Tf " + b"(a) Tj " * 2_000_000 + b"ET")


def pending(data: bytes, path: str = "messages.0.content.0.document.source.data") -> PendingPdf:
    return PendingPdf("application/pdf", data=data, path=path)


def worker_pids() -> set[int]:
    """This process's children that run the PDF reader."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and (
                b"pdf_worker.py" in cmdline
            ):
                pids.add(int(entry.name))
    return pids


async def test_worker_reads_pdfs_in_order() -> None:
    texts = await pdf_worker.read_pdfs(
        [pending(media.pdf("one", "two")), pending(media.pdf("three"))], PdfLimits()
    )
    assert texts == ["[page 1]\none\n\n[page 2]\ntwo", "three"]
    assert worker_pids() == set()


async def test_too_many_pages_is_a_400_naming_the_pdf() -> None:
    pdfs = [pending(media.pdf("fine"), "a"), pending(media.pdf(*["p"] * 101), "b")]
    with pytest.raises(InvalidRequestError) as info:
        await pdf_worker.read_pdfs(pdfs, PdfLimits())
    assert info.value.param == "b"
    assert info.value.message == (
        "b: the PDF has 101 pages, more than claude-relay's limit of 100 pages for one PDF"
    )


async def test_too_much_text_is_a_400_not_a_cut() -> None:
    with pytest.raises(InvalidRequestError) as info:
        await pdf_worker.read_pdfs(
            [pending(media.pdf("x" * 30, "y" * 30))], PdfLimits(max_chars=50)
        )
    assert "longer than claude-relay's limit of 50 characters" in info.value.message
    assert "reached on page 2" in info.value.message


def test_inline_decoding_keeps_the_limits() -> None:
    """Library use (no daemon) reads the text while decoding, with the same page limit."""
    doc = {"type": "base64", "media_type": "application/pdf", "data": b64(media.pdf("a", "b"))}
    raw = orjson.dumps(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": "document", "source": doc}]}],
        }
    )
    with pytest.raises(InvalidRequestError) as info:
        anthropic.decode_request(raw, attachment_limits=AttachmentLimits(pdf=PdfLimits(1)))
    assert "more than claude-relay's limit of 1 pages" in info.value.message
    deferred = anthropic.decode_request(
        raw, attachment_limits=AttachmentLimits(defer_pdf_text=True)
    )
    [block] = deferred.messages[0].content
    assert isinstance(block, PendingPdf)
    assert block.text is None
    assert block.path == "messages.0.content.0.document.source.data"


async def test_a_pdf_bomb_ends_at_the_time_limit_without_blocking_the_loop() -> None:
    """The limit firing at all shows the loop was free: were pypdf running on it, the timeout
    could not fire until the minute of work was done, and pytest-timeout would fail the test."""
    with blockbuster_ctx(), pytest.raises(InvalidRequestError) as info:
        await pdf_worker.read_pdfs(
            [pending(media.pdf("fine"), "a"), pending(BOMB, "b")], PdfLimits(timeout=1)
        )
    assert info.value.param == "b"
    assert info.value.message == (
        "b: the PDF could not be read within 1 s, claude-relay's limit for reading a request's PDFs"
    )
    assert worker_pids() == set()


async def test_cancelling_the_request_kills_and_reaps_the_worker() -> None:
    task = asyncio.create_task(pdf_worker.read_pdfs([pending(BOMB)], PdfLimits(timeout=120)))
    await until(lambda: bool(worker_pids()), timeout=30, what="the PDF reader to start")
    [pid] = worker_pids()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # gone from /proc entirely: killed, and reaped (a zombie would still have an entry)
    assert state(pid) is None


def cpu_limit(pid: int) -> str | None:
    """The soft CPU time limit of `pid`, as /proc shows it ("unlimited", "121"), or None."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max cpu time"):
                return line.split()[3]
    return None


async def test_a_killed_worker_is_a_400_for_its_pdf() -> None:
    task = asyncio.create_task(pdf_worker.read_pdfs([pending(BOMB, "x")], PdfLimits(timeout=120)))
    await until(lambda: bool(worker_pids()), timeout=30, what="the PDF reader to start")
    [pid] = worker_pids()
    # the reader sets its CPU limit (timeout + 1 s) once it has the PDFs' sizes, then reads them
    await until(lambda: cpu_limit(pid) == "121", timeout=30, what="the reader to get the PDF")
    os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
    with pytest.raises(InvalidRequestError) as info:
        await task
    assert info.value.message == "x: the PDF could not be read: its reader was ended by SIGKILL"
    assert state(pid) is None


async def test_the_gate_bounds_readers_and_waiters() -> None:
    impatient = pdf_worker.PdfGate(readers=1, max_waiting=1, wait_timeout=0.05, retry_after=3.0)
    async with impatient.slot():
        with pytest.raises(OverloadedError) as info:  # a waiter gives up after wait_timeout
            async with impatient.slot():
                pass
        assert (info.value.status, info.value.retry_after) == (529, 3.0)
    async with impatient.slot():  # the slot was given back
        pass

    gate = pdf_worker.PdfGate(readers=1, max_waiting=1, wait_timeout=60, retry_after=3.0)
    entered = asyncio.Event()

    async def wait_for_a_slot() -> None:
        async with gate.slot():
            entered.set()

    async with gate.slot():
        waiter = asyncio.create_task(wait_for_a_slot())
        await until(lambda: gate._waiting == 1, timeout=5, what="a waiter")
        with pytest.raises(OverloadedError):  # a second waiter is refused at once
            async with gate.slot():
                pass
    await entered.wait()  # the first got the slot when it was freed
    await waiter


async def test_read_documents_fills_messages_and_tool_results() -> None:
    gate = pdf_worker.PdfGate(readers=1, max_waiting=0, wait_timeout=1, retry_after=1)
    req = TurnRequest(
        messages=(
            Message("user", (pending(media.pdf("first"), "p1"), TextBlock("Read."))),
            Message("assistant", (ToolUseBlock("toolu_1", "f", {}),)),
            Message("user", (ToolResultBlock("toolu_1", (pending(media.pdf("second"), "p2"),)),)),
        ),
        model="m",
        max_tokens=5,
    )
    read = await pdf_worker.read_documents(gate, req, PdfLimits())
    assert read.messages[0].content[0] == DocumentBlock(
        "application/pdf", data=media.pdf("first"), text="first"
    )
    result_block = read.messages[2].content[0]
    assert isinstance(result_block, ToolResultBlock)
    assert result_block.content == (
        DocumentBlock("application/pdf", data=media.pdf("second"), text="second"),
    )
    assert read.messages[1] is req.messages[1]
    plain = TurnRequest(messages=(Message("user", (TextBlock("hi"),)),), model="m", max_tokens=5)
    assert await pdf_worker.read_documents(gate, plain, PdfLimits()) is plain


# --- through the daemon --------------------------------------------------------------------------


@pytest.fixture
def make_client(aiohttp_client: AiohttpClient, tmp_path: Path) -> MakeClient:
    async def make(pool: FakePool, **config: Any) -> Client:
        return await aiohttp_client(make_app(Config(workspace=tmp_path, **config), pool=pool))

    return make


def document_body(data: bytes, *, max_tokens: bool = True) -> dict[str, Any]:
    source = {"type": "base64", "media_type": "application/pdf", "data": b64(data)}
    body: dict[str, Any] = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "document", "source": source}, {"type": "text", "text": "?"}],
            }
        ],
    }
    if max_tokens:
        body["max_tokens"] = 50
    return body


async def test_the_daemon_reads_pdfs_before_the_pool_and_refuses_a_bomb(
    make_client: MakeClient,
) -> None:
    pool = FakePool([result("ok")])
    client = await make_client(pool, pdf_timeout=1.0)
    async with client.post("/v1/messages", json=document_body(BOMB)) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(
        "messages.0.content.0.document.source.data: the PDF could not be read within 1 s"
    )
    assert pool.requests == []  # the turn never reached the pool
    async with client.post("/v1/messages", json=document_body(media.pdf("fine text"))) as resp:
        assert resp.status == 200
    [doc, _] = pool.requests[0].messages[0].content
    assert type(doc) is DocumentBlock
    assert doc.text == "fine text"
    assert worker_pids() == set()


async def test_count_tokens_reads_pdfs_within_the_limits(make_client: MakeClient) -> None:
    client = await make_client(FakePool(), pdf_max_pages=2)
    body = document_body(media.pdf("x" * 400), max_tokens=False)
    async with client.post("/v1/messages/count_tokens", json=body) as resp:
        assert resp.status == 200
        counted = (await resp.json())["input_tokens"]
    # 4 for the message, 400 characters of text / 4, 1 for the "?" (the PDF's ~1 KB / 4 is 246)
    assert counted == 4 + 100 + 1
    body = document_body(media.pdf("a", "b", "c"), max_tokens=False)
    async with client.post("/v1/messages/count_tokens", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert "more than claude-relay's limit of 2 pages" in error["message"]


async def test_the_openai_route_refuses_redos_formats_and_survives_redos_replies(
    make_client: MakeClient,
) -> None:
    pool = FakePool([result(orjson.dumps(EVIL_TEXT).decode())])
    client = await make_client(pool)
    bad = json_schema_format({"type": "string", "pattern": r"^(?!x)"})
    async with client.post(
        "/v1/chat/completions",
        data=openai_body(response_format=bad),
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["type"], error["param"]) == (
        "invalid_request_error",
        "response_format.json_schema.schema",
    )
    evil = json_schema_format({"type": "string", "pattern": EVIL_PATTERN})
    async with client.post(
        "/v1/chat/completions",
        data=openai_body(response_format=evil),
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
    assert error["code"] == "invalid_json_output"
    assert "does not match" in error["message"]
