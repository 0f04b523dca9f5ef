"""The hostile run (security issue 12): a web page, a greedy client and a slow one vs the daemon.

Run: `.venv/bin/python -m bench.hostile [--claude PATH] [--only NAME ...] [--max-procs 32]`.
Each row asserts the DEFENDED outcome: refused (403/415), capped (529/429/413/400), or timed out
by the daemon; a row whose defence is missing fails and says what happened instead. Afterwards
the daemon must be healthy, answer a normal request within 2 s, and be back to its baseline
process count and RSS (within the printed tolerance). Exit status 1 if any row or the
afterwards check fails. docs/reliability.md explains each row.

The daemon runs with tool_result_timeout=20 (default 600) so that the parked tool calls of the
`parked` row expire within the run; everything else is at its default.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench import attacks, wire
from bench import reliability as rel
from claude_relay.daemon.fake_upstream import FakeUpstream, Reply, ToolUse
from tests.support.relay_proc import Relay

TOOL_RESULT_TIMEOUT = 20.0
RSS_TOLERANCE_KIB = 64 * 1024  # RSS may stay this much above baseline (allocator high water)
NORMAL_TARGET = 2.0  # seconds for a normal request afterwards
_seq = itertools.count(1)


@dataclass
class Options:
    # parked row: stop (and fail) past this many claudes: max_parked 16 + warm 2 + max_busy 4,
    # and room for claudes being replaced
    max_procs: int = 32
    parked: int = 1000
    redos_len: int = 28  # "a" characters before the "!": 2**(n/2) steps for backtracking regex
    pdf_pages: int = 20000
    pdf_megabytes: int = 2
    slowloris_sockets: int = 200
    slowloris_seconds: float = 30.0
    stalled_seconds: float = 60.0
    stalled_kib: int = 8192  # more than the socket buffers hold (tcp_wmem max is 4 MiB)


@dataclass
class Row:
    name: str
    attack: str
    defended: str
    actual: str = ""
    passed: bool = False
    note: str = ""


@dataclass
class Ctx:
    up: FakeUpstream
    relay: Relay
    http: aiohttp.ClientSession
    opts: Options

    @property
    def port(self) -> int:
        return int(self.relay.url.rsplit(":", 1)[1])


def token() -> str:
    return f"H{os.getpid()}x{next(_seq)}"


def ask(text: str, api: wire.Api = "anthropic", **extra: Any) -> dict[str, Any]:
    return wire.message_body(api, [{"role": "user", "content": text}], **extra)


async def raw(
    ctx: Ctx, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str]
) -> tuple[int | None, str]:
    """One request with exactly these headers; (status, error type in the envelope or body)."""
    try:
        async with (
            asyncio.timeout(60),
            ctx.http.request(method, ctx.relay.url + path, data=data, headers=headers) as r,
        ):
            body = await r.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        return None, type(exc).__name__
    try:
        etype = wire.envelope_type(wire.api_of_path(path), orjson.loads(body))
    except orjson.JSONDecodeError:
        etype = None
    return r.status, etype or body[:60].decode(errors="replace")


# --- browsers ------------------------------------------------------------------------------------


def csrf(path: str, ctype: str) -> Callable[[Ctx], Awaitable[Row]]:
    async def run(ctx: Ctx) -> Row:
        row = Row(
            f"csrf {path} {ctype.split('/')[1]}",
            f"no-cors POST {ctype}, Origin: https://evil.example",
            "403/415 and no turn",
        )
        tok = token()
        api = wire.api_of_path(path)
        data = orjson.dumps(ask(tok, api))
        hdrs = {"Content-Type": ctype, "Origin": "https://evil.example"}
        before = len(ctx.up.main_requests)
        status, what = await raw(ctx, "POST", path, data=data, headers=hdrs)
        await asyncio.sleep(0.5)
        turned = any(tok in r.user_text for r in ctx.up.main_requests[before:])
        row.actual = f"{status} {what}" + ("; a turn ran" if turned else "")
        row.passed = status in (403, 415) and not turned
        return row

    return run


def rebind(method: str, path: str) -> Callable[[Ctx], Awaitable[Row]]:
    async def run(ctx: Ctx) -> Row:
        row = Row(
            f"rebind {method} {path}",
            f"Host: rebind.evil.example:{ctx.port}",
            "403",
        )
        data = orjson.dumps(ask(token())) if method == "POST" else None
        hdrs = {"Host": f"rebind.evil.example:{ctx.port}", "Content-Type": "application/json"}
        status, what = await raw(ctx, method, path, data=data, headers=hdrs)
        row.actual = f"{status} {what}"
        row.passed = status == 403
        return row

    return run


# --- greedy clients ------------------------------------------------------------------------------

LOOKUP = {
    "name": "lookup",
    "description": "Look a key up.",
    "input_schema": {"type": "object", "properties": {"key": {"type": "string"}}},
}


async def parked(ctx: Ctx) -> Row:
    """Tool calls nobody answers each keep a claude; the defence is a cap (the daemon lets the
    oldest parked claude go, or refuses with 529/429), so claudes stay bounded."""
    n, limit = ctx.opts.parked, ctx.opts.max_procs
    row = Row(
        "parked",
        f"{n} tool calls never answered",
        f"capped: ≤ {limit} claudes, every call answered (tool_use or 529/429)",
    )
    tok = token()
    ctx.up.on(tok, Reply(text="", tool_uses=(ToolUse("mcp__api__lookup", {"key": "k"}),)))
    outcomes: list[str] = []
    most = 0
    stop = asyncio.Event()
    sent = itertools.count()

    async def worker() -> None:
        nonlocal most
        while not stop.is_set() and next(sent) < n:
            most = max(most, len(rel.children(ctx.relay.proc.pid)))
            if most > limit:
                stop.set()  # safety: this machine is shared
                return
            body = ask(f"{tok} {len(outcomes)}", tools=[LOOKUP])
            out = await wire.call(ctx.http, ctx.relay.url, "anthropic", body)
            outcomes.append(out.label)
            if len(outcomes) % 100 == 0:
                print(f"    parked: {len(outcomes)} calls, up to {most} claudes", flush=True)

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(8)))
    most = max(most, len(rel.children(ctx.relay.proc.pid)))
    took = time.monotonic() - t0
    counts = sorted(((outcomes.count(x), x) for x in set(outcomes)), reverse=True)
    row.actual = ", ".join(f"{c}× {x}" for c, x in counts) + f"; up to {most} claudes"
    if stop.is_set():
        row.actual += f"; STOPPED after {len(outcomes)} calls (over {limit} claudes)"
    clean = all(x == "200 ok tool_use" or x.startswith(("529 ", "429 ")) for x in outcomes)
    row.passed = not stop.is_set() and len(outcomes) == n and clean and most <= limit
    row.note = f"{took:.0f}s"
    return row


def _redos_reply(length: int) -> Reply:
    return Reply(text='"' + "a" * length + '!"')


async def redos_openai(ctx: Ctx) -> Row:
    row = Row(
        "redos openai",
        'json_schema pattern ^(a+)+$, reply "aaa…a!"',
        "500 invalid_json_output fast; health < 1s",
    )
    tok = token()
    ctx.up.on(tok, _redos_reply(ctx.opts.redos_len))
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"type": "string", "pattern": "^(a+)+$"}},
    }
    async with attacks.monitor(ctx.relay.url, ctx.relay.proc.pid) as watch:
        out = await wire.call(
            ctx.http, ctx.relay.url, "openai", ask(tok, "openai", response_format=fmt), timeout=180
        )
    row.actual = f"{out.label} in {out.elapsed:.1f}s; worst health {watch.worst_health:.1f}s"
    row.passed = out.kind == "error" and out.elapsed < 15 and watch.worst_health < 1.0
    row.note = out.message[:80]
    return row


async def redos_anthropic(ctx: Ctx) -> Row:
    row = Row(
        "redos anthropic",
        "output_config.format, same schema and reply",
        "400 or checked fast; health < 1s",
    )
    tok = token()
    ctx.up.on(tok, _redos_reply(ctx.opts.redos_len))
    schema = {"type": "string", "pattern": "^(a+)+$"}
    config = {"format": {"type": "json_schema", "schema": schema}}
    async with attacks.monitor(ctx.relay.url, ctx.relay.proc.pid) as watch:
        out = await wire.call(
            ctx.http, ctx.relay.url, "anthropic", ask(tok, output_config=config), timeout=180
        )
    row.actual = f"{out.label} in {out.elapsed:.1f}s; worst health {watch.worst_health:.1f}s"
    row.passed = out.kind in ("error", "ok") and out.elapsed < 15 and watch.worst_health < 1.0
    row.note = out.message[:80]
    return row


def pdf_row(
    name: str, what: str, make: Callable[[Options], bytes]
) -> Callable[[Ctx], Awaitable[Row]]:
    async def run(ctx: Ctx) -> Row:
        data = make(ctx.opts)
        row = Row(name, f"{what} ({len(data) // 1024} KiB)", "400/413 within 5s; health < 1s")
        doc = {
            "type": "document",
            "source": {
                "type": "base64",
                "media_type": "application/pdf",
                "data": base64.b64encode(data).decode(),
            },
        }
        body = wire.message_body(
            "anthropic", [{"role": "user", "content": [doc, {"type": "text", "text": "sum up"}]}]
        )
        rss0 = rel.rss_kib(ctx.relay.proc.pid)
        async with attacks.monitor(ctx.relay.url, ctx.relay.proc.pid) as watch:
            out = await wire.call(ctx.http, ctx.relay.url, "anthropic", body, timeout=60)
        grew = (watch.rss_peak_kib - rss0) / 1024
        row.actual = (
            f"{out.label} in {out.elapsed:.1f}s; worst health {watch.worst_health:.1f}s; "
            f"RSS {grew:+.0f} MiB at peak"
        )
        row.passed = out.status in (400, 413) and out.elapsed < 5 and watch.worst_health < 1.0
        row.note = out.message[:100]
        return row

    return run


# --- slow clients --------------------------------------------------------------------------------


async def slowloris(ctx: Ctx) -> Row:
    n, secs = ctx.opts.slowloris_sockets, ctx.opts.slowloris_seconds
    row = Row(
        "slowloris",
        f"{n} sockets sending headers a byte a second",
        f"all closed by the daemon within {secs:g}s; normal requests still served",
    )
    attack = asyncio.create_task(attacks.slowloris(ctx.port, n, secs))
    await asyncio.sleep(min(5.0, secs / 3))
    probe = await wire.call(
        ctx.http, ctx.relay.url, "anthropic", ask("during slowloris"), timeout=30
    )
    result = await attack
    row.actual = (
        f"{result.closed_by_server}/{result.opened} closed by daemon"
        + (f" (last at {result.last_close:.0f}s)" if result.closed_by_server else "")
        + f"; request during it {probe.label} in {probe.elapsed:.1f}s"
    )
    row.passed = (
        result.opened == n
        and result.closed_by_server == n
        and probe.kind == "ok"
        and probe.elapsed < NORMAL_TARGET
    )
    return row


async def stalled_reader(ctx: Ctx) -> Row:
    secs = ctx.opts.stalled_seconds
    row = Row(
        "stalled SSE reader",
        f"stream whose client stops reading ({ctx.opts.stalled_kib // 1024} MiB reply)",
        f"daemon gives up: slot freed within {secs:g}s",
    )
    tok = token()
    line = "stalled reader words " * 5 + "\n"
    size = ctx.opts.stalled_kib * 1024
    ctx.up.on(tok, Reply(text=line * (size // len(line)), chunk_chars=4000))
    body = orjson.dumps(ask(tok, stream=True))
    t0 = time.monotonic()
    async with attacks.stalled_reader(ctx.port, wire.PATHS["anthropic"], body):
        await ctx.up.wait_for(
            lambda: any(tok in r.user_text and r.finished for r in ctx.up.main_requests),
            timeout=60,
            what="the long reply",
        )
        freed = await rel.wait_busy_zero(ctx.http, ctx.relay.url, timeout=secs)
        held = time.monotonic() - t0
    after_close = await rel.wait_busy_zero(ctx.http, ctx.relay.url, timeout=15)
    row.actual = (
        f"slot freed after {held:.0f}s" if freed is not None else f"slot held for {held:.0f}s"
    )
    row.actual += f"; after the client closed: busy 0 in {rel.secs(after_close)}"
    row.passed = freed is not None
    return row


ROWS: dict[str, Callable[[Ctx], Awaitable[Row]]] = {
    "csrf-messages": csrf("/v1/messages", "text/plain"),
    "csrf-openai": csrf("/v1/chat/completions", "text/plain"),
    "csrf-form": csrf("/v1/messages", "application/x-www-form-urlencoded"),
    "rebind-messages": rebind("POST", "/v1/messages"),
    "rebind-license": rebind("GET", "/v1/license"),
    "rebind-sessions": rebind("GET", "/v1/sessions"),
    "rebind-health": rebind("GET", "/v1/health"),
    "pdf-pages": pdf_row(
        "pdf pages", "PDF with many pages", lambda o: attacks.many_pages(o.pdf_pages)
    ),
    "pdf-stream": pdf_row(
        "pdf stream",
        "PDF with a huge content stream",
        lambda o: attacks.huge_stream(o.pdf_megabytes),
    ),
    "slowloris": slowloris,
    "stalled-reader": stalled_reader,
    "redos-anthropic": redos_anthropic,
    "redos-openai": redos_openai,
    "parked": parked,
}


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    baseline: rel.Resources | None = None
    end: rel.Resources | None = None
    settled: float | None = None
    first: wire.Outcome | None = None
    normal: wire.Outcome | None = None
    orphans: list[int] = field(default_factory=list)
    facts: rel.RunFacts | None = None

    @property
    def after_ok(self) -> bool:
        if self.baseline is None or self.end is None or self.normal is None:
            return False
        return (
            self.normal.kind == "ok"
            and self.normal.elapsed <= NORMAL_TARGET
            and self.end.procs == self.baseline.procs
            and self.end.rss_kib <= self.baseline.rss_kib + RSS_TOLERANCE_KIB
        )

    @property
    def ok(self) -> bool:
        rows_ok = all(r.passed for r in self.rows)
        leftovers = self.facts is None or bool(self.facts.leftovers)
        return rows_ok and self.after_ok and not self.orphans and not leftovers


async def run(names: Sequence[str], opts: Options) -> Report:
    report = Report()
    watch = rel.ProcWatch()
    settle = TOOL_RESULT_TIMEOUT + 60
    with rel.run_facts() as report.facts:
        async with (
            FakeUpstream() as up,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
            # max_kept 0: the afterwards check counts the daemon's claudes against the baseline,
            # and the normal requests' claudes would otherwise be kept for a follow-up
            rel.daemon(
                up,
                watch,
                max_retries="1",
                tool_result_timeout=f"{TOOL_RESULT_TIMEOUT:g}",
                max_kept="0",
            ) as relay,
        ):
            ctx = Ctx(up, relay, http, opts)
            await rel.wait_healthy(http, relay.url, warm=2, idle=True, timeout=60)
            report.baseline = rel.resources(relay)
            for name, fn in ROWS.items():
                if name not in names:
                    continue
                try:
                    row = await fn(ctx)
                except Exception as exc:  # a row that cannot run is a failed row
                    row = Row(name, "-", "-", f"crashed: {type(exc).__name__}: {exc}"[:160])
                report.rows.append(row)
                print(f"  {'pass' if row.passed else 'FAIL'}  {row.name}: {row.actual}", flush=True)
                up.clear()
            report.settled = await _settle(ctx, report.baseline.procs, settle)
            # The pool warms the spawn settings used last (an attack's response_format is one):
            # the first normal request may find no warm claude for its settings and start one.
            report.first = await wire.call(http, relay.url, "anthropic", ask("afterwards 1"))
            await _settle(ctx, report.baseline.procs, settle)
            report.normal = await wire.call(http, relay.url, "anthropic", ask("afterwards 2"))
            await _settle(ctx, report.baseline.procs, settle)
            report.end = rel.resources(relay)
            await relay.stop()
            report.facts.leftovers += rel.state_entries(relay)
        report.orphans = await watch.wait_no_orphans()
    return report


async def _settle(ctx: Ctx, procs: int, timeout: float) -> float | None:
    """Seconds until the daemon is idle with its baseline number of claudes again."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        idle = await rel.wait_healthy(ctx.http, ctx.relay.url, warm=2, idle=True, timeout=5)
        if idle is not None and len(rel.children(ctx.relay.proc.pid)) == procs:
            return time.monotonic() - t0
        await asyncio.sleep(0.5)
    return None


def print_report(report: Report, cli: str) -> None:
    print()
    print(
        rel.table(
            ["row", "attack", "defended outcome", "actual", "result", "note"],
            [
                [r.name, r.attack, r.defended, r.actual, "pass" if r.passed else "FAIL", r.note]
                for r in report.rows
            ],
        )
    )
    print()
    assert report.baseline is not None
    assert report.end is not None
    print(f"daemon at baseline   {report.baseline.line()}")
    print(f"daemon afterwards    {report.end.line()}   (settled after {rel.secs(report.settled)})")
    print(f"tolerance            children equal, RSS ≤ baseline + {RSS_TOLERANCE_KIB // 1024} MiB")
    if report.first is not None and report.normal is not None:
        print(
            f"normal requests      first {report.first.label} in {report.first.elapsed:.2f}s "
            f"(informational: may have to start a claude), then {report.normal.label} in "
            f"{report.normal.elapsed:.2f}s (target ≤ {NORMAL_TARGET:g}s)"
        )
    print(f"afterwards check     {'pass' if report.after_ok else 'FAIL'}")
    print(f"orphan processes     {len(report.orphans)} {report.orphans or ''}")
    if report.facts is not None:
        report.facts.print(cli)
    failed = [r.name for r in report.rows if not r.passed]
    print(
        f"result               {'PASS' if report.ok else 'FAIL'}"
        + (f" (failing rows: {', '.join(failed)})" if failed else "")
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--claude", help="claude binary path or version (default: the pin)")
    ap.add_argument("--only", nargs="*", choices=list(ROWS), help="run only these rows")
    defaults = Options()
    for name, value in vars(defaults).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = ap.parse_args()
    _, cli = rel.use_claude(args.claude)
    opts = Options(**{k: getattr(args, k) for k in vars(defaults)})
    report = asyncio.run(run(args.only or list(ROWS), opts))
    print_report(report, cli)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
