"""Daemon memory over requests that each bring a system prompt of their own (issue 15).

Every request carries a system prompt no other request has (a counter and a timestamp, as an app
that puts the time in its system prompt would), so each needs a claude started for it: the
pool's maps, warm set and kept set see a new spawn-settings key every time. The daemon's RSS is
sampled every `--every` requests; growth is measured from the end of the warm-up (the first 10 %)
to the end, together with the pool's counts and the daemon's children. Exits 1 when the growth
is 10 % or more, an answer is wrong, or a claude outlives the daemon.

Run: `.venv/bin/python -m bench.distinct_system [--n 1000] [--concurrency 2] [--claude BIN|VERSION]
[--mode respawn|clear]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp

from bench import reliability as rel
from claude_relay.daemon.fake_upstream import FakeUpstream, echo

RSS_GROWTH_LIMIT = 0.10


async def run(n: int, concurrency: int, mode: str, every: int) -> tuple[bool, list[str]]:
    lines: list[str] = []
    watch = rel.ProcWatch()
    wrong = 0
    samples: list[tuple[int, int, int]] = []  # (done, RSS KiB, children)
    async with (
        FakeUpstream(default=echo()) as up,
        rel.daemon(up, watch, stateless_reset=mode, max_retries="1") as relay,
        aiohttp.ClientSession() as http,
    ):
        pid = relay.proc.pid
        todo = iter(range(n))
        done = 0
        t0 = time.monotonic()

        async def worker() -> None:
            nonlocal done, wrong
            for i in todo:
                body = {
                    "model": "default",
                    "max_tokens": 64,
                    "system": f"You are assistant number {i}. It is {time.time():.6f} now.",
                    "messages": [{"role": "user", "content": f"request {i}"}],
                }
                async with http.post(relay.url + "/v1/messages", json=body) as r:
                    data = await r.json()
                text = "".join(b.get("text", "") for b in data.get("content", []))
                if r.status != 200 or text != f"echo: request {i}":
                    wrong += 1
                done += 1
                if done % every == 0:
                    samples.append((done, rel.rss_kib(pid), len(rel.children(pid))))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
        pool = rel.pool_of(await rel.health(http, relay.url))
    orphans = await watch.wait_no_orphans()
    warm = next((s for s in samples if s[0] >= n // 10), samples[0])
    end = samples[-1]
    growth = (end[1] - warm[1]) / warm[1]
    lines.append(f"requests             {n} with distinct system prompts, {concurrency} at a time")
    lines.append(f"stateless_reset      {mode}")
    lines.append(f"elapsed              {elapsed:.0f} s ({n / elapsed:.2f} req/s)")
    lines.append(f"wrong answers        {wrong}")
    lines.append(
        "samples (requests: RSS MiB/children): "
        + ", ".join(f"{d}: {k / 1024:.1f}/{c}" for d, k, c in samples)
    )
    lines.append(f"RSS after warm-up    {warm[1] / 1024:.1f} MiB (at {warm[0]} requests)")
    lines.append(f"RSS at the end       {end[1] / 1024:.1f} MiB")
    lines.append(
        f"RSS growth           {growth * 100:+.1f} % (limit ±{RSS_GROWTH_LIMIT * 100:.0f} %)"
    )
    lines.append(
        "pool at the end      "
        + ", ".join(f"{k} {pool.get(k)}" for k in ("warm", "kept", "sessions", "spawned", "resets"))
    )
    lines.append(f"orphans              {len(orphans)}")
    ok = abs(growth) < RSS_GROWTH_LIMIT and not wrong and not orphans
    return ok, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--mode", choices=("respawn", "clear"), default="clear")
    ap.add_argument("--every", type=int, default=0, help="sample RSS every N requests (n/20)")
    ap.add_argument("--claude", help="claude binary or version (default: the pin)")
    args = ap.parse_args()
    _, cli = rel.use_claude(args.claude)
    with rel.run_facts() as facts:
        ok, lines = asyncio.run(
            run(args.n, args.concurrency, args.mode, args.every or max(1, args.n // 20))
        )
    facts.print(cli)
    print("\n".join(lines))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
