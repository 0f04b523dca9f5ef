"""Core benchmark: the warm daemon against `claude -p`, streaming overhead, memory, fidelity.

Run: `.venv/bin/python -m bench.bench_core [--n 20] [--json out.json]` after `./dev.sh test` (or
`./dev.sh claude`) has installed the pinned CLI. Everything runs on this machine against the
fake upstream, which answers instantly unless a figure says otherwise; the same CLI binary is used
for the daemon and for the `claude -p` baseline in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support.claude_env import child_env, claude_bin, make_home
from tests.support.relay_proc import Relay, children_of, start_relay

MODEL = "default"

MARKDOWN_CORPUS = [
    "# Setup guide\n\nInstall the **daemon** with `pip install claude-relay`, then run it.\n\n"
    "## Steps\n\n1. Clone the repo\n2. Run `./dev.sh serve`\n3. Point your SDK at it\n\n"
    "> Note: the daemon binds to *loopback* only.\n",
    "Here is a function:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\n"
    "And its test:\n\n```python\nassert add(1, 2) == 3\n```\n\nThat is all.",
    "| Name | Role | Years |\n|---|---|---|\n| Ann | lead | 7 |\n| Bob | dev | 3 |\n\n"
    "The table above lists the *team*; **Ann** leads it.",
    "- first item with `code`\n- second item with **bold** words\n  - nested item\n"
    "- third item\n\nA closing paragraph that is long enough to wrap around the terminal width at "
    "least once so that the wrap-joining logic is exercised by the benchmark as well.",
    "### Summary\n\nThe relay *streams* text from the screen and **reconciles** it with the "
    "transcript at the end.\n\n---\n\nSee [the docs](https://example.com/docs) for more.",
]


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def fmt(values: list[float]) -> str:
    return (
        f"median {statistics.median(values) * 1000:7.0f} ms   p90 {pct(values, 90) * 1000:7.0f} ms"
        f"   (n={len(values)})"
    )


async def short_replies(c: anthropic.AsyncAnthropic, up: FakeUpstream, n: int) -> list[float]:
    times: list[float] = []
    for i in range(n):
        up.push(Reply(text="Short reply."))
        t0 = time.perf_counter()
        msg = await c.messages.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": f"q{i}"}]
        )
        times.append(time.perf_counter() - t0)
        assert msg.content[0].type == "text"
        assert msg.content[0].text == "Short reply."
        await asyncio.sleep(0.6)  # a client's think time: lets the pool re-warm between calls
    return times


async def sticky_followups(
    relay: Relay, up: FakeUpstream, n: int, *, sticky: bool = True
) -> list[float]:
    """Follow-up turns of one conversation re-sent with its whole history: on one
    X-IR-Session-ID (`sticky`), or with no id (the pool's kept conversations); either way the
    same claude, only the new turn pasted."""
    history: list[anthropic.types.MessageParam] = []
    times: list[float] = []
    headers = {"X-IR-Session-ID": f"bench-{time.time()}"} if sticky else {}
    async with anthropic.AsyncAnthropic(
        base_url=relay.url,
        api_key="unused",
        max_retries=0,
        default_headers=headers,
    ) as c:
        for i in range(n + 1):
            up.push(Reply(text="Short reply."))
            history.append({"role": "user", "content": f"q{i}"})
            t0 = time.perf_counter()
            msg = await c.messages.create(model=MODEL, max_tokens=50, messages=history)
            if i:  # the first call creates the session
                times.append(time.perf_counter() - t0)
            assert msg.content[0].type == "text"
            history.append({"role": "assistant", "content": msg.content[0].text})
    return times


async def cold_replies(c: anthropic.AsyncAnthropic, up: FakeUpstream, n: int) -> list[float]:
    """A new system prompt each time: no warm claude matches, so each call spawns one."""
    times: list[float] = []
    for i in range(n):
        up.push(Reply(text="Cold reply."))
        t0 = time.perf_counter()
        await c.messages.create(
            model=MODEL,
            max_tokens=50,
            system=f"Benchmark system prompt number {i} {time.time()}",
            messages=[{"role": "user", "content": "hi"}],
        )
        times.append(time.perf_counter() - t0)
    return times


async def claude_p(up: FakeUpstream, home: Path, n: int) -> list[float]:
    binary = shutil.which(claude_bin()) or claude_bin()
    env = child_env(home, up.url)
    work = home / "p-work"
    work.mkdir(exist_ok=True)
    times: list[float] = []
    for i in range(n):
        up.push(Reply(text="Short reply."))
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            binary,
            "-p",
            f"q{i}",
            "--tools",
            "",
            "--strict-mcp-config",
            env=env,
            cwd=work,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        out, err = await proc.communicate()
        times.append(time.perf_counter() - t0)
        if b"Short reply." not in out:
            raise RuntimeError(f"claude -p failed: {out[-300:]!r} {err[-300:]!r}")
    return times


async def first_delta(c: anthropic.AsyncAnthropic, up: FakeUpstream, n: int) -> list[float]:
    """Client's first text delta minus the moment the upstream sent its first text token."""
    out: list[float] = []
    for i in range(n):
        line = f"First line of reply {i}.\n"
        # the first delta is a whole line (claude draws completed rows); later ones come slowly
        up.push(Reply(text=line + "second line\nthird line\n", chunk_chars=len(line), delay=0.5))
        async with c.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": f"s{i}"}]
        ) as stream:
            async for ev in stream:
                if ev.type == "text":
                    got = time.monotonic()
                    break
            async for _ in stream:
                pass
        req = up.main_requests[-1]
        out.append(got - req.time)
        await asyncio.sleep(0.6)
    return out


async def fidelity(c: anthropic.AsyncAnthropic, up: FakeUpstream) -> tuple[float, float, float]:
    """Similarity (difflib ratio) of streamed and non-streamed text to the model's markdown."""
    stream_r: list[float] = []
    exact_r: list[float] = []
    prose_r: list[float] = []
    for doc in MARKDOWN_CORPUS:
        up.push(Reply(text=doc, chunk_chars=8, delay=0.01))
        async with c.messages.stream(
            model=MODEL, max_tokens=500, messages=[{"role": "user", "content": "md"}]
        ) as stream:
            streamed = "".join([t async for t in stream.text_stream])
        stream_r.append(difflib.SequenceMatcher(None, streamed, doc, autojunk=False).ratio())
        up.push(Reply(text=doc))
        msg = await c.messages.create(
            model=MODEL, max_tokens=500, messages=[{"role": "user", "content": "md"}]
        )
        text = msg.content[0].text if msg.content[0].type == "text" else ""
        exact_r.append(1.0 if text == doc else 0.0)
    prose = " ".join(f"word{i}" for i in range(300)) + "\n\nSecond paragraph.\nLine two."
    up.push(Reply(text=prose, chunk_chars=16, delay=0.01))
    async with c.messages.stream(
        model=MODEL, max_tokens=500, messages=[{"role": "user", "content": "prose"}]
    ) as stream:
        streamed = "".join([t async for t in stream.text_stream])
    prose_r.append(1.0 if streamed == prose else 0.0)
    return statistics.mean(stream_r), statistics.mean(exact_r), statistics.mean(prose_r)


def rss_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    n = args.n
    results: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "claude_cli": subprocess.run(  # noqa: ASYNC221 - once, before anything is measured
            [shutil.which(claude_bin()) or claude_bin(), "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
    }
    async with FakeUpstream() as up, start_relay(up) as relay:
        await relay.wait_warm(2)
        async with anthropic.AsyncAnthropic(
            base_url=relay.url, api_key="unused", max_retries=0
        ) as c:
            await short_replies(c, up, 2)  # warm-up, not counted
            warm = await short_replies(c, up, n)
            print(f"short reply, warm daemon      {fmt(warm)}")
            results["warm_short_reply_s"] = warm
            with tempfile.TemporaryDirectory(prefix="bench-p-") as d:
                make_home(Path(d))
                cli = await claude_p(up, Path(d), max(5, n // 2))
            print(f"short reply, claude -p        {fmt(cli)}")
            results["claude_p_short_reply_s"] = cli
            sticky = await sticky_followups(relay, up, n)
            print(f"short reply, sticky follow-up {fmt(sticky)}")
            results["sticky_followup_s"] = sticky
            kept = await sticky_followups(relay, up, n, sticky=False)
            print(f"short reply, follow-up, no id {fmt(kept)}")
            results["history_followup_no_id_s"] = kept
            speedup = statistics.median(cli) / statistics.median(warm)
            print(f"  speed-up (median)           {speedup:7.2f} x")
            results["speedup"] = speedup
            cold = await cold_replies(c, up, max(3, n // 4))
            print(f"short reply, cold spawn       {fmt(cold)}")
            results["cold_short_reply_s"] = cold
            await relay.wait_warm(2)
            fd = await first_delta(c, up, max(5, n // 2))
            print(f"first-delta overhead          {fmt(fd)}")
            results["first_delta_overhead_s"] = fd
            await relay.wait_warm(2)
            mem = [rss_kib(p) for p in children_of(relay.proc.pid)]
            rss = statistics.mean(m[0] for m in mem) / 1024
            pss = statistics.mean(m[1] for m in mem) / 1024
            print(
                f"memory per warm session       RSS {rss:6.0f} MiB   PSS {pss:6.0f} MiB"
                f"   ({len(mem)} sessions)"
            )
            results["rss_mib"] = rss
            results["pss_mib"] = pss
            await _wait_quiet(relay)
            s, e, p = await fidelity(c, up)
            print(f"markdown fidelity, streamed   {s * 100:6.1f} % similar (difflib ratio)")
            print(f"markdown fidelity, non-stream {e * 100:6.1f} % byte-exact")
            print(f"prose streamed byte-exact     {p * 100:6.1f} %")
            results.update(markdown_stream_similarity=s, markdown_exact=e, prose_stream_exact=p)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


async def _wait_quiet(relay: Relay) -> None:
    await relay.wait_warm(2)


if __name__ == "__main__":
    asyncio.run(main())
