"""Soak: many mixed requests against one daemon, checking every answer and the daemon's memory.

Run: `.venv/bin/python -m bench.soak [--n 1000] [--concurrency 4] [--seed 1] [--claude PATH]`.
Both API shapes, JSON and streaming; stateless calls, sticky multi-turn conversations (each
deleted at its end), tool round trips (tool_use, then the tool_result), and about 5 % faults
(upstream 500/529, clients that leave mid-stream). The fake upstream answers each request with
text unique to it, so an answer that carries another request's text is crosstalk. RSS of the
daemon is sampled every --rss-every requests; growth is measured from the end of the warm-up
(the first 10 %) to the end, once the pool is idle again. Exit status 1 on any unexpected
answer, hang (no answer within --timeout), crosstalk, RSS growth of 15 % or more, orphan
process or leftover temp file.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench import reliability as rel
from bench import wire
from bench.wire import Api, Outcome
from claude_relay.daemon.fake_upstream import Body, FakeUpstream, Reply, ToolUse, user_text
from tests.support.relay_proc import Relay

TOOL_PREFIX = "mcp__api__"  # how claude names the relay's tools upstream
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]
RSS_GROWTH_LIMIT = 0.15


@dataclass
class Soak:
    up: FakeUpstream
    url: str
    http: aiohttp.ClientSession
    seed: int
    timeout: float
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    done: int = 0
    on_done: Callable[[], None] = lambda: None

    def record(self, category: str, verdict: str, detail: str = "") -> None:
        self.verdicts[(category, verdict)] += 1
        self.done += 1
        if verdict not in {"ok", "expected error", "left"} and len(self.examples) < 30:
            self.examples.append(f"{category}: {verdict}: {detail}"[:300])
        self.on_done()


def token(soak: Soak, rng: random.Random) -> str:
    return f"S{soak.seed}q{rng.randrange(16**8):08x}"


def reply_text(tok: str, rng: random.Random) -> str:
    return f"Reply {tok} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10)))


_TOKEN = re.compile(r"S\d+q[0-9a-f]{8}")


def verdict(
    out: Outcome, tok: str, expected_text: str, stream: bool, where: str = ""
) -> tuple[str, str]:
    """ok, crosstalk (another request's token in the answer), mismatch, hang or unexpected."""
    how = f"[{'stream' if stream else 'JSON'}{', ' + where if where else ''}] "
    if out.kind == "hang":
        return "hang", how + out.message
    if out.kind != "ok":
        return "unexpected", f"{how}{out.label} {out.message[:120]}"
    if out.text == expected_text:
        return "ok", ""
    others = set(_TOKEN.findall(out.text)) - {tok}
    if others:
        return "crosstalk", f"{how}{tok} got {sorted(others)}: {out.text[:120]!r}"
    return "mismatch", f"{how}{tok}: expected {expected_text!r}, got {out.text[:160]!r}"


def shaped(rng: random.Random, text: str) -> Reply:
    """The reply in one delta or in several small ones."""
    return Reply(text=text, chunk_chars=rng.choice([0, 0, 4, 16]), delay=0.01)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# --- jobs --------------------------------------------------------------------------------------


async def single(soak: Soak, rng: random.Random, api: Api) -> None:
    stream = rng.random() < 0.5
    tok = token(soak, rng)
    text = reply_text(tok, rng)
    rule = soak.up.on(tok, shaped(rng, text))
    try:
        body = wire.message_body(api, [user(f"Question {tok}?")], stream=stream)
        out = await wire.call(soak.http, soak.url, api, body, timeout=soak.timeout)
    finally:
        soak.up.rules.remove(rule)
    soak.record(f"stateless {api}", *verdict(out, tok, text, stream))


async def sticky(soak: Soak, rng: random.Random, api: Api) -> None:
    sid = f"soak-{token(soak, rng)}"
    headers = {wire.SESSION_HEADER: sid}
    history: list[dict[str, Any]] = []
    for _turn in range(3):
        tok = token(soak, rng)
        text = reply_text(tok, rng)
        rule = soak.up.on(tok, shaped(rng, text))
        history.append(user(f"Turn {tok}."))
        stream = rng.random() < 0.5
        body = wire.message_body(api, history, stream=stream)
        try:
            out = await wire.call(
                soak.http, soak.url, api, body, headers=headers, timeout=soak.timeout
            )
        finally:
            soak.up.rules.remove(rule)
        soak.record(f"sticky {api}", *verdict(out, tok, text, stream, f"{sid} turn {_turn}"))
        history.append({"role": "assistant", "content": out.text})
    async with soak.http.delete(f"{soak.url}/v1/sessions/{sid}") as r:
        if r.status != 200:
            soak.examples.append(f"DELETE session {sid}: {r.status}")


def tool_model(tok: str) -> Callable[[Body], Reply]:
    """Call `lookup` on the prompt; after the tool result, answer with text naming the token."""

    def respond(body: Body) -> Reply:
        if "value-of-" in user_text(body):
            return Reply(text=f"Result {tok} done")
        return Reply(text="", tool_uses=(ToolUse(TOOL_PREFIX + "lookup", {"key": tok}),))

    return respond


LOOKUP = {
    "name": "lookup",
    "description": "Look a key up.",
    "input_schema": {"type": "object", "properties": {"key": {"type": "string"}}},
}
LOOKUP_OPENAI = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": LOOKUP["description"],
        "parameters": LOOKUP["input_schema"],
    },
}


async def tool(soak: Soak, rng: random.Random, api: Api) -> None:
    tok = token(soak, rng)
    tools = [LOOKUP if api == "anthropic" else LOOKUP_OPENAI]
    rule = soak.up.on(tok, tool_model(tok))
    try:
        msgs: list[dict[str, Any]] = [user(f"Look up {tok}.")]
        body = wire.message_body(api, msgs, stream=rng.random() < 0.5, tools=tools)
        first = await wire.call(soak.http, soak.url, api, body, timeout=soak.timeout)
        calls = first.tool_uses
        if first.kind != "ok" or len(calls) != 1 or calls[0][1:] != ("lookup", {"key": tok}):
            bad = "hang" if first.kind == "hang" else "unexpected"
            soak.record(f"tool {api}", bad, f"tool call: {first.label} {calls} {first.text!r}")
            return
        soak.record(f"tool {api}", "ok")
        call_id, name, args = calls[0]
        result = f"value-of-{tok}"
        if api == "anthropic":
            msgs.append(
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": call_id, "name": name, "input": args}],
                }
            )
            msgs.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call_id, "content": result}],
                }
            )
        else:
            fn = {"name": name, "arguments": orjson.dumps(args).decode()}
            msgs.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": call_id, "type": "function", "function": fn}],
                }
            )
            msgs.append({"role": "tool", "tool_call_id": call_id, "content": result})
        stream = rng.random() < 0.5
        body = wire.message_body(api, msgs, stream=stream, tools=tools)
        out = await wire.call(soak.http, soak.url, api, body, timeout=soak.timeout)
    finally:
        soak.up.rules.remove(rule)
    soak.record(f"tool {api}", *verdict(out, tok, f"Result {tok} done", stream, "result turn"))


_ERRORS: dict[tuple[Api, int], tuple[int, str]] = {
    ("anthropic", 500): (500, "api_error"),
    ("anthropic", 529): (529, "overloaded_error"),
    ("openai", 500): (500, "server_error"),
    ("openai", 529): (529, "server_error"),
}


async def upstream_error(soak: Soak, rng: random.Random, api: Api) -> None:
    status = rng.choice([500, 529])
    stream = rng.random() < 0.5
    tok = token(soak, rng)
    rule = soak.up.on(tok, Reply(status=status))
    try:
        body = wire.message_body(api, [user(f"Fail {tok}")], stream=stream)
        out = await wire.call(soak.http, soak.url, api, body, timeout=soak.timeout)
    finally:
        soak.up.rules.remove(rule)
    want_status, want_type = _ERRORS[(api, status)]
    if stream:
        good = (out.kind, out.status, out.etype) == ("stream_error", 200, want_type)
    else:
        good = (out.kind, out.status, out.etype) == ("error", want_status, want_type)
    category = f"fault upstream {api}"
    if good:
        soak.record(category, "expected error")
    else:
        bad = "hang" if out.kind == "hang" else "unexpected"
        soak.record(category, bad, f"upstream {status}: got {out.label} {out.message[:100]}")


async def disconnect(soak: Soak, rng: random.Random, api: Api) -> None:
    """A streaming client that reads the first frame of a long answer and leaves."""
    tok = token(soak, rng)
    rule = soak.up.on(tok, Reply(text="long " * 150, chunk_chars=5, delay=0.02))
    body = wire.message_body(api, [user(f"Long {tok}")], stream=True)
    try:
        async with (
            asyncio.timeout(soak.timeout),
            soak.http.post(soak.url + wire.PATHS[api], json=body) as r,
        ):
            await r.content.readany()
            r.close()
        soak.record(f"fault disconnect {api}", "left")
    except TimeoutError:
        soak.record(f"fault disconnect {api}", "hang", "no first frame")
    except aiohttp.ClientError as exc:
        soak.record(f"fault disconnect {api}", "unexpected", repr(exc))
    finally:
        soak.up.rules.remove(rule)


Job = Callable[[Soak, random.Random, Api], Awaitable[None]]
# (job, weight, requests it makes): about 5 % of requests are faults
JOBS: list[tuple[Job, int, int]] = [
    (single, 46, 1),
    (sticky, 10, 3),
    (tool, 12, 2),
    (upstream_error, 3, 1),
    (disconnect, 3, 1),
]


def plan(n: int, seed: int, only: Sequence[str] = ()) -> list[tuple[Job, Api, int]]:
    rng = random.Random(seed)
    jobs = [j for j in JOBS if not only or j[0].__name__ in only]
    out: list[tuple[Job, Api, int]] = []
    total = 0
    while total < n:
        job, _, count = rng.choices(jobs, weights=[w for _, w, _ in jobs])[0]
        api: Api = rng.choice(["anthropic", "openai"])
        out.append((job, api, rng.randrange(2**32)))
        total += count
    return out


async def settle(http: aiohttp.ClientSession, relay: Relay, procs: int) -> float | None:
    """Seconds until the pool is idle with its baseline number of claudes (a disposed claude
    takes a moment to exit)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        idle = await rel.wait_healthy(http, relay.url, warm=2, idle=True, timeout=5)
        if idle is not None and len(rel.children(relay.proc.pid)) == procs:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    return None


@dataclass
class Sample:
    done: int
    rss_kib: int
    procs: int
    fds: int


async def run(
    n: int,
    *,
    concurrency: int,
    seed: int,
    timeout: float,
    every: int,
    only: Sequence[str] = (),
) -> dict[str, Any]:
    watch = rel.ProcWatch()
    samples: list[Sample] = []
    result: dict[str, Any] = {}
    with rel.run_facts() as facts:
        async with (
            FakeUpstream() as up,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
            # max_kept 0: the end check counts the daemon's claudes against the baseline (no
            # scenario here re-sends a stateless history, so keeping would only add claudes)
            rel.daemon(up, watch, max_retries="1", max_kept="0") as relay,
        ):
            await relay.wait_warm(2)
            pid = relay.proc.pid
            result["baseline"] = rel.resources(relay)
            soak = Soak(up, relay.url, http, seed, timeout)

            def sample() -> None:
                if soak.done % every == 0:
                    samples.append(
                        Sample(
                            soak.done, rel.rss_kib(pid), len(rel.children(pid)), rel.open_fds(pid)
                        )
                    )

            soak.on_done = sample
            queue: asyncio.Queue[tuple[Job, Api, int]] = asyncio.Queue()
            for item in plan(n, seed, only):
                queue.put_nowait(item)

            async def worker() -> None:
                while not queue.empty():
                    job, api, job_seed = queue.get_nowait()
                    await job(soak, random.Random(job_seed), api)

            t0 = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            result["elapsed"] = time.monotonic() - t0
            result["settle"] = await settle(http, relay, result["baseline"].procs)
            result["end"] = rel.resources(relay)
            result["soak"] = soak
            await relay.stop()
            facts.leftovers += rel.state_entries(relay)
        result["orphans"] = await watch.wait_no_orphans()
    result["facts"] = facts
    result["samples"] = samples
    return result


def report(result: dict[str, Any], n: int, cli: str) -> bool:
    soak: Soak = result["soak"]
    categories = sorted({c for c, _ in soak.verdicts})
    kinds = ["ok", "expected error", "left", "unexpected", "hang", "crosstalk", "mismatch"]
    rows = [[c, *(soak.verdicts.get((c, k), 0) for k in kinds)] for c in categories]
    totals = [sum(soak.verdicts.get((c, k), 0) for c in categories) for k in kinds]
    rows.append(["total", *totals])
    print(rel.table(["requests", *kinds], rows))
    for line in soak.examples:
        print(f"    {line}")
    samples: list[Sample] = result["samples"]
    warm_at = max(1, n // 10)
    warm = next((s for s in samples if s.done >= warm_at), samples[0] if samples else None)
    base: rel.Resources = result["baseline"]
    end: rel.Resources = result["end"]
    growth = (end.rss_kib - warm.rss_kib) / warm.rss_kib if warm else 0.0
    print()
    facts: rel.RunFacts = result["facts"]
    print(f"{soak.done} requests in {result['elapsed']:.0f}s")
    print(
        "samples (requests: RSS MiB/children/open fds): "
        + ", ".join(f"{s.done}: {s.rss_kib / 1024:.1f}/{s.procs}/{s.fds}" for s in samples)
    )
    print(f"daemon at baseline     {base.line()}")
    if warm:
        print(
            f"daemon after warm-up   RSS {warm.rss_kib / 1024:6.1f} MiB   (at {warm.done} requests)"
        )
    print(f"daemon at end          {end.line()}   (idle after {rel.secs(result['settle'])})")
    print(f"RSS growth after warm-up {growth * 100:+.1f} % (limit {RSS_GROWTH_LIMIT * 100:.0f} %)")
    print(f"orphan processes       {len(result['orphans'])} {result['orphans'] or ''}")
    facts.print(cli)
    bad = totals[3] + totals[4] + totals[5] + totals[6]
    reasons = [
        f"{bad} bad answers" if bad else "",
        "RSS growth" if growth >= RSS_GROWTH_LIMIT else "",
        "orphans" if result["orphans"] else "",
        "leftover temp files" if facts.leftovers else "",
        f"children {base.procs} -> {end.procs}" if end.procs != base.procs else "",
    ]
    reasons = [r for r in reasons if r]
    ok = not reasons
    print(f"result                 {'PASS' if ok else 'FAIL: ' + ', '.join(reasons)}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="requests (default 1000)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request seconds")
    ap.add_argument(
        "--rss-every", type=int, default=50, help="sample RSS every N requests (at most n/10)"
    )
    ap.add_argument("--claude", help="claude binary path or version (default: the pin)")
    ap.add_argument("--only", nargs="*", default=(), choices=[j[0].__name__ for j in JOBS])
    args = ap.parse_args()
    _, cli = rel.use_claude(args.claude)
    result = asyncio.run(
        run(
            args.n,
            concurrency=args.concurrency,
            seed=args.seed,
            timeout=args.timeout,
            every=min(args.rss_every, max(1, args.n // 10)),
            only=args.only,
        )
    )
    return 0 if report(result, args.n, cli) else 1


if __name__ == "__main__":
    sys.exit(main())
