"""Fuzz the HTTP edge: seeded, replayable malformed and hostile requests against a real daemon.

Run: `.venv/bin/python -m bench.fuzz [--n 10000] [--seed 1] [--concurrency 8] [--claude PATH]`;
rerun one case (and print its request) with `--seed S --case K`. Cases come from
bench.fuzz_cases and are sent as raw bytes (so headers and request lines can be malformed). Each
response is classified:

  2xx            answered (hostile text reaches claude; the fake upstream echoes at once)
  4xx            refused, in the protocol's error envelope
  5xx upstream   a 5xx in the envelope while the upstream saw an error (none is scripted here)
  5xx capacity   529/503 because the pool was full: load, not a bug
  5xx            any other 5xx: a bug
  non-envelope   an error (or a 2xx body) not in the protocol's shape: a bug
  hang           no complete answer within --timeout: a bug
  conn error     the connection closed without any answer: a bug

Every --check-every cases, and at the end, /v1/health must say ok and a normal request must be
answered. Exit status 1 on any bug class, a failed check, an orphan process or a leftover file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench import reliability as rel
from bench import wire
from bench.fuzz_cases import Case, make_case
from claude_relay.daemon.fake_upstream import FakeUpstream

BAD = ("5xx", "non-envelope", "hang", "conn error")
CLASSES = ("2xx", "4xx", "5xx upstream", "5xx capacity", *BAD)
READ_LIMIT = 64 * 1024 * 1024


@dataclass
class RawResponse:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None  # "timeout" or why the connection ended without an answer
    elapsed: float = 0.0


def parse(buf: bytes, head_only: bool = False) -> RawResponse | None:
    """A complete response in `buf`, or None if more bytes are needed; `head_only`: the
    answer to a HEAD request, which has no body whatever its headers say."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return RawResponse(error=f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    if status in (100, 101):  # 100 Continue: the real answer follows
        return parse(rest, head_only)
    if head_only or status in (204, 304):
        return RawResponse(status, headers)
    if "content-length" in headers:
        n = int(headers["content-length"])
        return RawResponse(status, headers, rest[:n]) if len(rest) >= n else None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, pos = b"", 0
        while True:
            line_end = rest.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(rest[pos:line_end].split(b";")[0] or b"0", 16)
            if size == 0:
                return RawResponse(status, headers, body)
            start = line_end + 2
            if len(rest) < start + size + 2:
                return None
            body += rest[start : start + size]
            pos = start + size + 2
    return None  # read to the end of the connection


async def send(
    host: str, port: int, payload: bytes, timeout: float, head_only: bool = False
) -> RawResponse:
    t0 = time.monotonic()
    buf = b""
    out: RawResponse | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(payload)
                await writer.drain()
            except (ConnectionError, OSError):
                pass  # the server may answer (413, 400) before reading it all
            while out is None and len(buf) < READ_LIMIT:
                try:
                    chunk = await reader.read(65536)
                except (ConnectionError, OSError):
                    chunk = b""
                if not chunk:
                    break
                buf += chunk
                out = parse(buf, head_only)
    except TimeoutError:
        out = RawResponse(error="timeout")
    except (ConnectionError, OSError) as exc:
        out = RawResponse(error=f"{type(exc).__name__}")
    finally:
        if writer is not None:
            writer.close()
    if out is None:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        parsed = parse(head + sep) if sep else None
        if parsed is not None and parsed.status is not None:
            parsed.body = rest  # ended by closing the connection
            out = parsed
        else:
            out = RawResponse(error=f"closed after {len(buf)} bytes: {buf[:60]!r}")
    out.elapsed = time.monotonic() - t0
    return out


def classify(case: Case, r: RawResponse, upstream_failed: bool) -> tuple[str, str]:
    """The response's class (see the module doc) and a short detail."""
    if r.error == "timeout":
        return "hang", "no answer"
    if r.status is None:
        return "conn error", r.error or ""
    api = case.api
    ctype = r.headers.get("content-type", "")
    if case.method == b"HEAD" and case.raw is None:  # no body, whatever the status
        return ("2xx", "") if r.status < 300 else (f"{r.status // 100}xx", str(r.status))
    if 200 <= r.status < 300:
        if ctype.startswith("text/event-stream"):
            out = wire.read_stream(api, r.status, r.body)
            if out.kind == "stream_error":
                kind = "5xx upstream" if upstream_failed else "5xx"
                return kind, f"stream error {out.etype}: {out.message[:80]}"
            if out.kind != "ok":
                return "non-envelope", f"stream {out.kind} {out.message}"
            return "2xx", ""
        if ctype.startswith("application/json") or not r.body:
            try:
                orjson.loads(r.body or b"null")
            except orjson.JSONDecodeError:
                return "non-envelope", "2xx body is not JSON"
        return "2xx", ""
    try:
        obj = orjson.loads(r.body)
    except orjson.JSONDecodeError:
        return "non-envelope", f"{r.status} {ctype!r} {r.body[:80]!r}"
    etype = wire.envelope_type(api, obj)
    if etype is None:
        return "non-envelope", f"{r.status} {r.body[:100]!r}"
    if r.status < 500:
        return "4xx", f"{r.status} {etype}"
    if r.status in (503, 529) and "capacity" in str(obj).lower():
        return "5xx capacity", f"{r.status} {etype}"
    if upstream_failed:
        return "5xx upstream", f"{r.status} {etype}"
    return "5xx", f"{r.status} {etype}: {obj['error']['message'][:100]}"


@dataclass
class Tally:
    by: Counter[tuple[str, str]] = field(default_factory=Counter)
    bugs: list[tuple[int, str, str, str]] = field(default_factory=list)  # case, category, class
    checks: list[tuple[int, bool, float, str]] = field(default_factory=list)
    claude_ok: int = 0
    claude_cases: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)  # hostile text not answered
    time: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # seconds
    slowest: dict[str, tuple[float, int]] = field(
        default_factory=lambda: defaultdict(lambda: (0.0, -1))
    )


async def check(http: aiohttp.ClientSession, url: str) -> tuple[bool, float, str]:
    """Health says ok, and a normal request is answered with its echo."""
    t0 = time.monotonic()
    h = await rel.health(http, url, timeout=10)
    body = wire.message_body("anthropic", [{"role": "user", "content": "fuzz check"}])
    out = await wire.call(http, url, "anthropic", body, timeout=30)
    took = time.monotonic() - t0
    good = h.get("status") == "ok" and out.kind == "ok" and out.text == "echo: fuzz check"
    return good, took, f"health {h.get('status')}, request {out.label}"


async def run_cases(
    up: FakeUpstream,
    url: str,
    http: aiohttp.ClientSession,
    cases: range,
    *,
    seed: int,
    concurrency: int,
    timeout: float,
    check_every: int,
    verbose: bool = False,
) -> Tally:
    tally = Tally()
    port = int(url.rsplit(":", 1)[1])
    pending = iter(cases)
    lock = asyncio.Lock()
    done = 0

    async def one(k: int) -> None:
        case = make_case(seed, k)
        failed_before = _upstream_failures(up)
        wire = case.wire(f"127.0.0.1:{port}")
        r = await send("127.0.0.1", port, wire, timeout, head_only=wire.startswith(b"HEAD "))
        tally.time[case.category] += r.elapsed
        tally.slowest[case.category] = max(tally.slowest[case.category], (r.elapsed, k))
        cls, detail = classify(case, r, _upstream_failures(up) > failed_before)
        tally.by[(case.category, cls)] += 1
        if case.category == "hostile text":
            tally.claude_cases += 1
            tally.claude_ok += cls == "2xx"
            if cls != "2xx":
                tally.refused.append((k, f"{cls} {detail}"[:160]))
        if cls in BAD:
            tally.bugs.append((k, case.category, cls, f"{detail} [{case.note}]"[:200]))
        if verbose:
            print(f"-> {cls} ({detail}) in {r.elapsed:.2f}s: status {r.status} {r.error or ''}")
            print(f"   headers {r.headers}")
            print(f"   body {r.body[:1500]!r}")

    async def worker() -> None:
        nonlocal done
        for k in pending:
            await one(k)
            async with lock:
                done += 1
                if check_every and done % check_every == 0:
                    good, took, what = await check(http, url)
                    tally.checks.append((done, good, took, what))
                    print(
                        f"  {done} cases; check {'ok' if good else 'FAILED'} ({took:.2f}s, {what})",
                        flush=True,
                    )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    good, took, what = await check(http, url)
    tally.checks.append((done, good, took, what))
    return tally


def _upstream_failures(up: FakeUpstream) -> int:
    return sum(1 for r in up.main_requests if r.outcome not in (None, "complete", "client_gone"))


async def run(
    n: int, *, seed: int, concurrency: int, timeout: float, check_every: int, first: int = 0
) -> dict[str, Any]:
    watch = rel.ProcWatch()
    result: dict[str, Any] = {}
    with rel.run_facts() as facts:
        async with (
            FakeUpstream() as up,
            aiohttp.ClientSession() as http,
            rel.daemon(up, watch, max_retries="1") as relay,
        ):
            await relay.wait_warm(2)
            result["baseline"] = rel.resources(relay)
            t0 = time.monotonic()
            result["tally"] = await run_cases(
                up,
                relay.url,
                http,
                range(first, first + n),
                seed=seed,
                concurrency=concurrency,
                timeout=timeout,
                check_every=check_every,
                verbose=n == 1,
            )
            result["elapsed"] = time.monotonic() - t0
            await rel.wait_healthy(http, relay.url, warm=2, idle=True, timeout=60)
            result["end"] = rel.resources(relay)
            result["alive"] = relay.proc.returncode is None
            await relay.stop()
            facts.leftovers += rel.state_entries(relay)
        result["orphans"] = await watch.wait_no_orphans()
    result["facts"] = facts
    return result


def report(result: dict[str, Any], seed: int, cli: str) -> bool:
    tally: Tally = result["tally"]
    categories = sorted({c for c, _ in tally.by})
    rows: list[list[object]] = []
    for c in categories:
        slow_s, slow_k = tally.slowest[c]
        timing = f"{tally.time[c]:.0f}s (K={slow_k}: {slow_s:.1f}s)"
        rows.append([c, *(tally.by.get((c, k), 0) for k in CLASSES), timing])
    totals = [sum(tally.by.get((c, k), 0) for c in categories) for k in CLASSES]
    rows.append(["total", *totals, f"{sum(tally.time.values()):.0f}s"])
    print(rel.table(["category", *CLASSES, "time (slowest)"], rows))
    print()
    cases = sum(totals)
    facts: rel.RunFacts = result["facts"]
    print(f"{cases} cases in {result['elapsed']:.0f}s (seed {seed})")
    print(f"valid hostile-text cases answered 2xx  {tally.claude_ok} of {tally.claude_cases}")
    for k, what in tally.refused[:10]:
        print(f"    K={k}: {what}")
    failed_checks = [c for c in tally.checks if not c[1]]
    slowest = max((c[2] for c in tally.checks), default=0.0)
    print(
        f"health + normal request checks        {len(tally.checks) - len(failed_checks)} of "
        f"{len(tally.checks)} ok (slowest {slowest:.2f}s)"
    )
    for done, _, took, what in failed_checks:
        print(f"    after {done} cases: {what} ({took:.2f}s)")
    print(f"daemon at baseline   {result['baseline'].line()}")
    print(f"daemon at end        {result['end'].line()}")
    print(f"orphan processes     {len(result['orphans'])} {result['orphans'] or ''}")
    facts.print(cli)
    if tally.bugs:
        print(
            f"\n{len(tally.bugs)} bug cases (replay: .venv/bin/python -m bench.fuzz "
            f"--seed {seed} --case K):"
        )
        for k, category, cls, detail in sorted(tally.bugs)[:60]:
            print(f"  K={k:<6} {cls:<13} {category:<16} {detail}")
    ok = (
        not tally.bugs
        and not failed_checks
        and result["alive"]
        and not result["orphans"]
        and not facts.leftovers
    )
    print(f"\nresult  {'PASS' if ok else 'FAIL'}")
    return ok


def show(case: Case) -> None:
    wire = case.wire("127.0.0.1:PORT")
    print(f"case {case.k}: {case.category} ({case.note}); {len(wire)} bytes on the wire")
    shown = wire if len(wire) <= 4000 else wire[:2000] + b"\n...\n" + wire[-1000:]
    print(repr(shown))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="cases (default 10000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--case", type=int, help="rerun only case K of --seed and show it")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=120.0, help="per-case seconds")
    ap.add_argument("--check-every", type=int, default=500)
    ap.add_argument("--claude", help="claude binary path or version (default: the pin)")
    args = ap.parse_args()
    _, cli = rel.use_claude(args.claude)
    if args.case is not None:
        show(make_case(args.seed, args.case))
        result = asyncio.run(
            run(
                1,
                seed=args.seed,
                concurrency=1,
                timeout=args.timeout,
                check_every=0,
                first=args.case,
            )
        )
    else:
        result = asyncio.run(
            run(
                args.n,
                seed=args.seed,
                concurrency=args.concurrency,
                timeout=args.timeout,
                check_every=args.check_every,
            )
        )
    return 0 if report(result, args.seed, cli) else 1


if __name__ == "__main__":
    sys.exit(main())
