"""The fault matrix: what a client sees when something breaks, and how fast the pool is whole again.

Run: `.venv/bin/python -m bench.faults [--claude PATH|VERSION] [--only NAME ...] [--target 2]`.
Each row injects one fault into a real daemon driving the real claude against the fake upstream
and checks the client's outcome (a success, or a clean error with the expected status in the
protocol's envelope), then times how long until /v1/health says ok with a warm claude again.
Rows that stop or break the daemon itself (SIGTERM, SIGKILL, no claude) start daemons of their
own. At the end: no process of any daemon may outlive it, and no temp file may be left.
Exit status 1 if any row fails. docs/reliability.md explains each row.

One module on purpose: each row is a small function, and ROWS keeps the matrix in one place.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import stat
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import reliability as rel
from bench import wire
from bench.wire import Api, Outcome
from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support.claude_env import make_home
from tests.support.relay_proc import Relay

# The matrix daemon: one warm claude (so the claude a stateless turn took is the one that was
# warm before it), a small pool and queue (so overload is cheap to reach), short stall detection
# and one upstream retry (so error rows take seconds, not minutes).
MATRIX_ARGS = ("--warm", "1", "--max-busy", "2", "--max-queue", "2")
MATRIX_ENV = {"stall_timeout": "4", "max_retries": "1"}
SHAPES: tuple[tuple[Api, bool], ...] = (("anthropic", False), ("openai", True))
SLOT_FREED_TARGET = 1.5  # seconds for busy to return to 0 after a client disconnect
DEFAULT_TARGET = 2.0  # seconds for the pool to be healthy again after a fault
_seq = itertools.count(1)


@dataclass
class Row:
    scenario: str
    expected: str
    actual: str = ""
    recover: float | None = None
    passed: bool = False
    note: str = ""


@dataclass
class Env:
    up: FakeUpstream
    relay: Relay
    http: aiohttp.ClientSession
    watch: rel.ProcWatch
    target: float  # seconds for the pool to be healthy again
    scratch: Path  # private temp dir (broken binaries go here)


RowFn = Callable[[Env], Awaitable[Row]]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    baseline: rel.Resources | None = None
    end: rel.Resources | None = None
    orphans: list[int] = field(default_factory=list)
    facts: rel.RunFacts | None = None

    @property
    def ok(self) -> bool:
        leftovers = self.facts is None or bool(self.facts.leftovers)
        return all(r.passed for r in self.rows) and not self.orphans and not leftovers


def token() -> str:
    return f"tok{os.getpid()}x{next(_seq)}"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def slow(seconds: float, prefix: str = "slow") -> Reply:
    """A reply that streams for about `seconds` (one 5-character delta every 0.1 s)."""
    n = max(2, int(seconds * 10))
    return Reply(text=(prefix + " words ") * (n // 2), chunk_chars=5, delay=0.1)


async def quiet(env: Env) -> None:
    """Wait until the matrix daemon is idle with exactly its one warm claude."""
    await rel.wait_healthy(env.http, env.relay.url, warm=1, idle=True, timeout=60)
    deadline = time.monotonic() + 10
    while len(rel.children(env.relay.proc.pid)) > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # a disposed claude takes a moment to exit
    env.up.clear()


async def arrived(up: FakeUpstream, tok: str, timeout: float = 30.0) -> None:
    await up.wait_for(
        lambda: any(tok in r.user_text for r in up.main_requests), timeout, f"request {tok}"
    )


def judge(row: Row, out: Outcome, kind: str, status: int, etype: str) -> bool:
    row.actual = out.label
    good = out.kind == kind and out.status == status and out.etype == etype
    if kind == "ok":
        good = out.kind == "ok" and out.status == status
    if not good and out.message:
        row.note = out.message[:100]
    return good


async def recovered(env: Env, row: Row, good: bool) -> Row:
    row.recover = await rel.wait_healthy(env.http, env.relay.url, warm=1, timeout=30)
    row.passed = good and row.recover is not None and row.recover <= env.target
    return row


# --- claude killed mid-turn ----------------------------------------------------------------------


async def _kill_mid_turn(env: Env, api: Api, stream: bool) -> tuple[Outcome, str]:
    await quiet(env)
    before = rel.children(env.relay.proc.pid)
    tok = token()
    env.up.on(tok, slow(8))
    task = asyncio.create_task(
        wire.call(env.http, env.relay.url, api, wire.message_body(api, user(tok), stream=stream))
    )
    await arrived(env.up, tok)
    await asyncio.sleep(0.5)  # a few deltas on the screen: mid-turn, not mid-prompt
    victims = before & rel.children(env.relay.proc.pid)
    env.watch.sample(env.relay.proc.pid)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return await task, f"killed {sorted(victims)}"


async def kill_json(env: Env) -> Row:
    row = Row("claude SIGKILL mid-turn · anthropic JSON", "500 api_error")
    out, note = await _kill_mid_turn(env, "anthropic", stream=False)
    good = judge(row, out, "error", 500, "api_error")
    row.note = row.note or note
    return await recovered(env, row, good)


async def kill_stream(env: Env) -> Row:
    row = Row("claude SIGKILL mid-turn · openai stream", "200+sse server_error")
    out, note = await _kill_mid_turn(env, "openai", stream=True)
    good = judge(row, out, "stream_error", 200, "server_error")
    row.note = row.note or note
    return await recovered(env, row, good)


async def kill_sticky(env: Env) -> Row:
    row = Row(
        "claude SIGKILL mid-turn · sticky, then next turn",
        "500 api_error; next turn 200 with history",
    )
    await quiet(env)
    sid = f"faults-{token()}"
    hdr = {wire.SESSION_HEADER: sid}
    url = env.relay.url
    first = await wire.call(
        env.http, url, "anthropic", wire.message_body("anthropic", user("one")), headers=hdr
    )
    history = [*user("one"), {"role": "assistant", "content": first.text}]
    tok = token()
    env.up.on(tok, slow(8))
    msgs = [*history, *user(tok)]
    task = asyncio.create_task(
        wire.call(env.http, url, "anthropic", wire.message_body("anthropic", msgs), headers=hdr)
    )
    await arrived(env.up, tok)
    await asyncio.sleep(0.5)
    async with env.http.get(url + "/v1/sessions") as r:
        sessions = (await r.json())["sessions"]
    pid = next((s["pid"] for s in sessions if s["id"] == sid), None)
    if pid:
        env.watch.sample(env.relay.proc.pid)
        os.kill(pid, signal.SIGKILL)
    out = await task
    good = judge(row, out, "error", 500, "api_error")
    after = [*history, *user("after the crash")]
    nxt = await wire.call(
        env.http, url, "anthropic", wire.message_body("anthropic", after), headers=hdr
    )
    resumed = nxt.kind == "ok" and nxt.text == "echo: after the crash"
    row.actual += f"; next {nxt.label}"
    if resumed:
        body = env.up.main_requests[-1].body
        resumed = "echo: one" in str(body.get("messages"))
        row.actual += "" if resumed else " (history lost)"
    with contextlib.suppress(aiohttp.ClientError):
        await env.http.delete(f"{url}/v1/sessions/{sid}")
    return await recovered(env, row, good and resumed and pid is not None)


# --- upstream failures ---------------------------------------------------------------------------


def upstream_row(
    name: str, reply: Reply, api: Api, *, stream: bool, expect: tuple[str, int, str]
) -> RowFn:
    kind, status, etype = expect

    async def run(env: Env) -> Row:
        shape = f"{api} {'stream' if stream else 'JSON'}"
        expected = f"{status}{'+sse' if kind == 'stream_error' else ''} {etype}"
        row = Row(f"upstream {name} · {shape}", expected)
        await quiet(env)
        tok = token()
        env.up.on(tok, reply)  # every attempt: claude's own retries fail too
        body = wire.message_body(api, user(tok), stream=stream)
        out = await wire.call(env.http, env.relay.url, api, body, timeout=90)
        good = judge(row, out, kind, status, etype)
        row.note = row.note or f"{out.elapsed:.1f}s to answer"
        return await recovered(env, row, good)

    return run


# --- client disconnects --------------------------------------------------------------------------


async def _disconnect(env: Env, api: Api, stream: bool) -> Row:
    shape = f"{api} {'stream' if stream else 'JSON'}"
    # A looser --target (the CI slice on a shared machine) loosens this one in proportion.
    slot_target = SLOT_FREED_TARGET * max(1.0, env.target / DEFAULT_TARGET)
    row = Row(f"client disconnect · {shape}", f"busy 0 within {slot_target:g}s")
    await quiet(env)
    tok = token()
    env.up.on(tok, slow(25))
    body = wire.message_body(api, user(tok), stream=stream)
    got_delta = asyncio.Event()

    async def client() -> None:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.post(env.relay.url + wire.PATHS[api], json=body) as r,
        ):
            async for _ in r.content.iter_any():
                got_delta.set()  # the first frame is enough: now walk away
        await asyncio.Event().wait()

    task = asyncio.create_task(client())
    await arrived(env.up, tok)
    if stream:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(got_delta.wait(), 10)
    await asyncio.sleep(0.5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
        await task
    left = time.monotonic()
    freed = await rel.wait_busy_zero(env.http, env.relay.url, timeout=15)
    rec = env.up.main_requests[-1] if env.up.main_requests else None
    if rec is not None:
        with contextlib.suppress(TimeoutError):
            await env.up.wait_finished(rec, timeout=10)
    row.actual = f"busy 0 after {rel.secs(freed)}"
    if rec is not None and rec.client_gone and rec.finished_time is not None:
        row.note = f"claude hung up on the upstream {rec.finished_time - left:.2f}s after"
    else:
        row.note = "the upstream reply ran to its end (claude not interrupted)"
    return await recovered(env, row, freed is not None and freed <= slot_target)


async def disconnect_json(env: Env) -> Row:
    return await _disconnect(env, "anthropic", stream=False)


async def disconnect_stream(env: Env) -> Row:
    return await _disconnect(env, "openai", stream=True)


# --- overload ------------------------------------------------------------------------------------


async def overload(env: Env) -> Row:
    """max_busy 2 + max_queue 2 on the matrix daemon: of 6 concurrent turns, 2 get 529."""
    row = Row("overload · 6 concurrent, busy 2 + queue 2", "4×200, 2×529 + retry-after")
    await quiet(env)
    tok = token()
    env.up.on(tok, slow(3))
    tasks = []
    for i in range(6):
        body = wire.message_body("anthropic", user(f"{tok} n{i}"))
        tasks.append(asyncio.create_task(wire.call(env.http, env.relay.url, "anthropic", body)))
        await asyncio.sleep(0.05)  # arrive in order: the last two find pool and queue full
    outs = await asyncio.gather(*tasks)
    oks = sum(o.kind == "ok" for o in outs)
    over = [o for o in outs if o.status == 529 and o.etype == "overloaded_error"]
    with_retry = [o for o in over if o.retry_after and int(o.retry_after) >= 1]
    row.actual = f"{oks}×200, {len(over)}×529 ({len(with_retry)} retry-after)"
    others = [o.label for o in outs if o.kind != "ok" and o.status != 529]
    row.note = ", ".join(others)
    good = oks == 4 and len(over) == 2 and len(with_retry) == 2
    return await recovered(env, row, good)


# --- the daemon itself stops ---------------------------------------------------------------------


def own_daemon(env: Env, *args: str, **kw: Any) -> contextlib.AbstractAsyncContextManager[Relay]:
    """A daemon of a row's own, its processes watched for orphans."""
    return rel.daemon(env.up, env.watch, *args, **kw)


async def _sigterm(env: Env, grace: float, turn_s: float) -> tuple[list[Outcome], int, float]:
    env.up.clear()
    async with own_daemon(env, "--warm", "2", shutdown_grace=f"{grace:g}", **MATRIX_ENV) as r:
        await r.wait_warm(2)
        tok = token()
        env.up.on(tok, slow(turn_s))
        tasks = [
            asyncio.create_task(
                wire.call(
                    env.http,
                    r.url,
                    api,
                    wire.message_body(api, user(f"{tok} {api}"), stream=s),
                    timeout=grace + 30,
                )
            )
            for api, s in SHAPES
        ]
        await env.up.wait_for(lambda: len(env.up.main_requests) >= 2, 30, "two turns")
        await asyncio.sleep(0.3)
        env.watch.sample(r.proc.pid)
        t0 = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        outs = list(await asyncio.gather(*tasks))
        code = await r.proc.wait()
        took = time.monotonic() - t0
    return outs, code, took


async def sigterm_inside_grace(env: Env) -> Row:
    row = Row("daemon SIGTERM, turns end inside grace (4s)", "both turns 200 complete; exit 0")
    outs, code, took = await _sigterm(env, grace=4, turn_s=1.5)
    row.actual = ", ".join(o.label for o in outs) + f"; exit {code} after {took:.1f}s"
    complete = all(o.kind == "ok" and o.text.startswith("slow words") for o in outs)
    orphans = await env.watch.wait_no_orphans()
    row.note = f"orphans {orphans}" if orphans else "no orphan"
    row.passed = complete and code == 0 and not orphans
    return row


async def sigterm_beyond_grace(env: Env) -> Row:
    """docs/how-it-works.md: after the grace every session is terminated; a turn still running
    fails with api_error "claude exited during the turn", a stream gets it as an error event."""
    row = Row(
        "daemon SIGTERM, turns outlast grace (2s)",
        "JSON 500 api_error, stream 200+sse server_error; exit 0 within grace+6s",
    )
    outs, code, took = await _sigterm(env, grace=2, turn_s=20)
    row.actual = ", ".join(o.label for o in outs) + f"; exit {code} after {took:.1f}s"
    json_ok = (outs[0].kind, outs[0].status, outs[0].etype) == ("error", 500, "api_error")
    stream_ok = (outs[1].kind, outs[1].etype) == ("stream_error", "server_error")
    orphans = await env.watch.wait_no_orphans()
    row.note = f"orphans {orphans}" if orphans else "no orphan"
    row.passed = json_ok and stream_ok and code == 0 and took < 2 + 6 and not orphans
    return row


async def sigkill_restart(env: Env) -> Row:
    row = Row(
        "daemon SIGKILL, restart on same state, sticky goes on", "200 with history; no orphan"
    )
    env.up.clear()
    home = env.scratch / f"home-{token()}"
    make_home(home)
    sid = "faults-restart"
    hdr = {wire.SESSION_HEADER: sid}
    async with own_daemon(env, home=home, **MATRIX_ENV) as r1:
        first = await wire.call(
            env.http,
            r1.url,
            "anthropic",
            wire.message_body("anthropic", user("remember 7")),
            headers=hdr,
        )
        env.watch.sample(r1.proc.pid)
        r1.proc.send_signal(signal.SIGKILL)
        await r1.proc.wait()
    orphans = await env.watch.wait_no_orphans()
    left_by_crash = len(rel.state_entries(r1))
    t0 = time.monotonic()
    history = [*user("remember 7"), {"role": "assistant", "content": first.text}, *user("which?")]
    async with own_daemon(env, home=home, **MATRIX_ENV) as r2:
        row.recover = time.monotonic() - t0
        out = await wire.call(
            env.http, r2.url, "anthropic", wire.message_body("anthropic", history), headers=hdr
        )
        body = env.up.main_requests[-1].body if env.up.main_requests else {}
        sent = str(body.get("messages"))
        resumed = "echo: remember 7" in sent and "conversation_history" not in sent
    left = rel.state_entries(r2)  # the restart sweeps what the crash left; its stop, its own
    shutil.rmtree(home, ignore_errors=True)
    row.actual = f"first {first.label}; after restart {out.label}"
    row.actual += "" if resumed else " (not resumed)"
    row.note = f"crash left {left_by_crash} temp dirs, {len(left)} after restart+stop"
    row.note += f"; orphans after SIGKILL {orphans}" if orphans else ""
    row.passed = (
        first.kind == out.kind == "ok"
        and out.text == "echo: which?"
        and resumed
        and not orphans
        and not left
    )
    return row


async def _no_claude(env: Env, row: Row, binary: str) -> Row:
    env.up.clear()
    async with own_daemon(env, "--claude-bin", binary, wait_warm=False) as r:
        await asyncio.sleep(1.5)  # give the pool its first (failing) attempt to start claude
        outs = [
            await wire.call(env.http, r.url, api, wire.message_body(api, user("hi")), timeout=30)
            for api, _ in SHAPES
        ]
        h = await rel.health(env.http, r.url)
        up = r.proc.returncode is None and bool(h)
    row.actual = ", ".join(o.label for o in outs) + f"; health {h.get('status')}"
    good = [o.kind == "error" and o.status == 503 for o in outs]
    row.note = "" if all(good) else outs[good.index(False)].message[:100]
    row.passed = all(good) and up and h.get("status") == "degraded"
    return row


async def missing_binary(env: Env) -> Row:
    row = Row("claude binary missing", "503 in both envelopes; health degraded; daemon up")
    return await _no_claude(env, row, str(env.scratch / "no-such-dir" / "claude"))


async def broken_binary(env: Env) -> Row:
    row = Row("claude binary exits 1", "503 in both envelopes; health degraded; daemon up")
    script = env.scratch / "broken-cli"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    try:
        return await _no_claude(env, row, str(script))
    finally:
        script.unlink()


_TOO_LONG = "prompt is too long: 300000 tokens > 200000 maximum"
_BREAK = Reply(text="cut " * 50, chunk_chars=5, break_after=2)
_STALL = Reply(text="stall " * 50, chunk_chars=5, stall_after=2)
ROWS: dict[str, RowFn] = {
    "kill-json": kill_json,
    "kill-stream": kill_stream,
    "kill-sticky": kill_sticky,
    "upstream-500": upstream_row(
        "500", Reply(status=500), "anthropic", stream=False, expect=("error", 500, "api_error")
    ),
    "upstream-500-openai": upstream_row(
        "500", Reply(status=500), "openai", stream=False, expect=("error", 500, "server_error")
    ),
    "upstream-529": upstream_row(
        "529",
        Reply(status=529),
        "anthropic",
        stream=False,
        expect=("error", 529, "overloaded_error"),
    ),
    "upstream-529-stream": upstream_row(
        "529",
        Reply(status=529),
        "anthropic",
        stream=True,
        expect=("stream_error", 200, "overloaded_error"),
    ),
    "upstream-429": upstream_row(
        "429",
        Reply(status=429, retry_after=1),
        "anthropic",
        stream=False,
        expect=("error", 429, "rate_limit_error"),
    ),
    "upstream-401": upstream_row(
        "401",
        Reply(status=401),
        "anthropic",
        stream=False,
        expect=("error", 401, "authentication_error"),
    ),
    "upstream-400": upstream_row(
        "400",
        Reply(status=400, error_message=_TOO_LONG),
        "anthropic",
        stream=False,
        expect=("error", 400, "invalid_request_error"),
    ),
    "dropped": upstream_row(
        "dropped stream", _BREAK, "anthropic", stream=False, expect=("error", 500, "api_error")
    ),
    "stalled": upstream_row(
        "stalled stream",
        _STALL,
        "anthropic",
        stream=False,
        expect=("error", 504, "timeout_error"),
    ),
    "disconnect-json": disconnect_json,
    "disconnect-stream": disconnect_stream,
    "overload": overload,
    "sigterm-grace": sigterm_inside_grace,
    "sigterm-beyond": sigterm_beyond_grace,
    "sigkill-restart": sigkill_restart,
    "missing-binary": missing_binary,
    "broken-binary": broken_binary,
}
# Rows that take seconds each: the CI slice (tests/e2e/test_reliability_slice.py) runs these.
QUICK = (
    "kill-json",
    "kill-stream",
    "kill-sticky",
    "upstream-500",
    "upstream-500-openai",
    "upstream-529-stream",
    "upstream-401",
    "upstream-400",
    "dropped",
    "stalled",
    "disconnect-json",
    "disconnect-stream",
    "overload",
    "missing-binary",
    "broken-binary",
)


async def run_matrix(names: Sequence[str], *, target: float = DEFAULT_TARGET) -> Report:
    """Run the named rows (in ROWS order) and the end-of-run checks."""
    report = Report()
    watch = rel.ProcWatch()
    with rel.run_facts() as report.facts:
        async with FakeUpstream() as up, aiohttp.ClientSession() as http:
            async with rel.daemon(up, watch, *MATRIX_ARGS, **MATRIX_ENV) as relay:
                env = Env(up, relay, http, watch, target, report.facts.scratch)
                await quiet(env)
                report.baseline = rel.resources(relay)
                for name, fn in ROWS.items():
                    if name in names:
                        report.rows.append(await _run_row(name, fn, env))
                await quiet(env)
                report.end = rel.resources(relay)
                await relay.stop()
                report.facts.leftovers += rel.state_entries(relay)
            report.orphans = await watch.wait_no_orphans()
    return report


async def _run_row(name: str, fn: RowFn, env: Env) -> Row:
    try:
        row = await fn(env)
    except Exception as exc:  # a row that cannot even run is a failed row
        traceback.print_exc()
        row = Row(name, "-", f"crashed: {type(exc).__name__}: {exc}"[:160])
    mark = "pass" if row.passed else "FAIL"
    print(f"  {mark}  {row.scenario}: {row.actual}", flush=True)
    return row


def print_report(report: Report, cli: str) -> None:
    print()
    print(
        rel.table(
            ["scenario", "expected", "actual", "healthy again", "result", "note"],
            [
                [
                    r.scenario,
                    r.expected,
                    r.actual,
                    rel.secs(r.recover),
                    "pass" if r.passed else "FAIL",
                    r.note,
                ]
                for r in report.rows
            ],
        )
    )
    print()
    if report.baseline and report.end:
        print(f"matrix daemon        at baseline {report.baseline.line()}")
        print(f"                     at end      {report.end.line()}")
    print(f"orphan processes     {len(report.orphans)} {report.orphans or ''}")
    if report.facts is not None:
        report.facts.print(cli)
    failed = [r.scenario for r in report.rows if not r.passed]
    verdict = "PASS" if report.ok else "FAIL"
    print(f"result               {verdict} ({len(failed)} of {len(report.rows)} rows failed)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--claude", help="claude binary path or version (default: the pin)")
    ap.add_argument("--only", nargs="*", choices=list(ROWS), help="run only these rows")
    ap.add_argument("--quick", action="store_true", help="only the CI slice's rows")
    ap.add_argument("--target", type=float, default=DEFAULT_TARGET, help="seconds to healthy again")
    args = ap.parse_args()
    _, cli = rel.use_claude(args.claude)
    names = args.only or (QUICK if args.quick else tuple(ROWS))
    report = asyncio.run(run_matrix(names, target=args.target))
    print_report(report, cli)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
