"""Peers benchmark: claude-relay against `claude -p` per request and claudegate, in one run.

Run (after `./dev.sh claude` installed the pinned CLI; claudegate is installed on first use into
.cache/peers/claudegate-venv from PyPI):
  .venv/bin/python -m bench.peers --claude "$(./dev.sh claude)" [--n 10] [--json out.json]
      [--only relay,relay-rows,relay-respawn,claude-p,claudegate]
      [--scenarios single,b2b,c4,chat,big] [--b2b 20] [--clients 4] [--each 8] [--turns 10]
      [--big-kb 200]

Every contender drives the same claude binary against the same in-process fake upstream, which
answers every main request with "OK" at once, so the figures are each contender's own overhead:
spawning or resetting claude, moving the prompt in and the reply out. Contenders run one after
the other (never side by side) so none competes with another for the machine's cores. The
scenarios are the same prompts for all; CPU, upstream requests and claude spawns per turn are
counted over the b2b scenario, up to the moment the contender is idle again, because respawning
or resetting the claude a stateless turn used happens after its reply. A table per scenario has
the contenders as columns; a summary checks the issue-15 targets for `relay`. It reports; it never
gates (exit 0 unless the bench itself breaks).

One file, over the usual size: each contender's start-up and teardown (claudegate's install and
its orphan-proof stop included) sits next to the scenarios they all run, so one run is one file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from bench import reliability as rel
from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from tests.support.claude_env import child_env, make_home
from tests.support.relay_proc import free_port, start_relay

# relay: the daemon as configured by default (word-level screen, stateless claudes reset with
# /clear and reused); relay-rows: `screen_mode = "rows"` (claude's default screen);
# relay-respawn: `stateless_reset = "respawn"`, a new claude for every stateless turn
CONTENDERS = ("relay", "relay-rows", "relay-respawn", "claude-p", "claudegate")
SCENARIOS = ("single", "b2b", "c4", "chat", "big")
RELAY_MODEL = "default"
CLAUDEGATE_MODEL = "sonnet"  # its default alias; it passes the name to `claude --model`
CLAUDEGATE_PKG = "claude-code-openai==0.1.1"
CLAUDEGATE_VENV = rel.ROOT / ".cache" / "peers" / "claudegate-venv"
SESSION_HEADER = "X-IR-Session-ID"
REQUEST_TIMEOUT = 300.0  # a 200 KB prompt on a loaded 2-core machine is slow, not broken
REPLY = "OK"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

History = list[tuple[str, str]]  # (role, text); the OpenAI shape is built per contender


class Unavailable(Exception):
    """A contender that cannot run here (install, knob or start-up failed): reported, skipped."""


# --- helpers ---------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def fmt_s(v: float) -> str:
    return f"{v:.3f} s" if v < 0.1 else f"{v:.2f} s"


def med_p90(values: list[float]) -> str:
    return f"{fmt_s(statistics.median(values))} / {fmt_s(pct(values, 90))}"


def one_line(exc: BaseException, n: int = 300) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:n]


def tail(path: Path, n: int = 400) -> str:
    with contextlib.suppress(OSError):
        return " ".join(path.read_text(errors="replace")[-n:].split())
    return ""


# --- process trees (/proc) -------------------------------------------------------------------


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and its descendants, the reaped ones included.

    A process's cutime/cstime hold the children it has waited for, so over a window the sum
    stays right when a child ends inside it: its time moves from its own entry into its parent's.
    """
    ticks = 0
    for pid in {root} | rel.descendants(root):
        f = rel.stat_fields(pid)
        if f is not None:
            ticks += sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    return ticks / CLK_TCK


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the `claude -p` runs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass(frozen=True)
class Footprint:
    procs: int  # live processes of the contender's tree
    claudes: int  # of which run the claude binary
    rss_mib: float

    def cell(self) -> str:
        return f"{self.claudes} claudes, {self.procs} procs, {self.rss_mib / 1024:.2f} GiB RSS"


def footprint(root: int | None, binary: str) -> Footprint:
    if root is None:
        return Footprint(0, 0, 0.0)
    procs = claudes = pages = 0
    real = os.path.realpath(binary)
    for pid in {root} | rel.descendants(root):
        f = rel.stat_fields(pid)
        if f is None or f[0] in "ZX":
            continue
        procs += 1
        pages += int(f[21])
        with contextlib.suppress(OSError):
            claudes += os.readlink(f"/proc/{pid}/exe") == real
    return Footprint(procs, claudes, pages * PAGE / 2**20)


def _term_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """SIGTERM claudegate if this bench dies without stopping it; it then closes its claudes."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PDEATHSIG


# --- contenders --------------------------------------------------------------------------------


@dataclass
class Contender:
    """One way of answering a chat request with claude, and how to measure what it costs."""

    name: str
    binary: str
    ask: Callable[[History, str | None], Awaitable[str]]  # (history, sticky id) -> reply text
    cpu: Callable[[], float]
    root: int | None = None  # the long-lived process whose tree is the contender
    spawns: Callable[[], Awaitable[int | None]] | None = None  # claudes started so far
    sticky: bool = False  # takes X-IR-Session-ID

    async def settle(self, quiet: float = 0.1, limit: float = 20.0) -> None:
        """Wait until the tree uses under `quiet` of a core: a respawn or reset is done."""
        deadline = time.monotonic() + limit
        before = self.cpu()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # sampling /proc: there is no event for "idle"
            now = self.cpu()
            if now - before < quiet * 0.5:
                return
            before = now


def openai_ask(client: AsyncOpenAI, model: str) -> Callable[[History, str | None], Awaitable[str]]:
    async def ask(history: History, session: str | None) -> str:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": text}
            if role == "user"
            else {"role": "assistant", "content": text}
            for role, text in history
        ]
        r = await client.chat.completions.create(
            model=model,
            messages=messages,
            extra_headers={SESSION_HEADER: session} if session else None,
        )
        return r.choices[0].message.content or ""

    return ask


@contextlib.asynccontextmanager
async def open_relay(
    name: str, up: FakeUpstream, binary: str, knobs: dict[str, Any]
) -> AsyncIterator[Contender]:
    """The daemon with `knobs` (config keys, as CLAUDE_RELAY_<KEY> strings), on its OpenAI route."""
    started = False
    try:
        async with (
            start_relay(up, **knobs) as relay,
            AsyncOpenAI(
                base_url=relay.url + "/v1",
                api_key="unused",
                max_retries=0,
                timeout=REQUEST_TIMEOUT,
            ) as client,
        ):
            started = True

            async def spawns() -> int | None:
                pool = (await relay.health()).get("pool")
                return int(pool["spawned"]) if isinstance(pool, dict) else None

            pid = relay.proc.pid
            yield Contender(
                name,
                binary,
                openai_ask(client, RELAY_MODEL),
                lambda: tree_cpu(pid),
                root=pid,
                spawns=spawns,
                sticky=True,
            )
    except Exception as exc:
        if started:
            raise
        raise Unavailable(f"daemon did not start ({knobs or 'defaults'}): {one_line(exc)}") from exc


def render(history: History) -> str:
    """One prompt for `claude -p`, which holds no conversation: earlier turns as a transcript."""
    if len(history) == 1:
        return history[0][1]
    lines = ["The conversation so far:"]
    lines += [f"{role}: {text}" for role, text in history[:-1]]
    return "\n".join([*lines, "", history[-1][1]])


@contextlib.asynccontextmanager
async def open_claude_p(up: FakeUpstream, binary: str) -> AsyncIterator[Contender]:
    with tempfile.TemporaryDirectory(prefix="peers-p-") as d:
        home = Path(d)
        await asyncio.to_thread(make_home, home)
        env = child_env(home, up.url)
        work = home / "p-work"
        work.mkdir()

        async def ask(history: History, session: str | None) -> str:
            # the prompt goes in on stdin: one argv string is capped at 128 KiB on Linux
            proc = await asyncio.create_subprocess_exec(
                binary,
                "-p",
                "--tools",
                "",
                "--strict-mcp-config",
                env=env,
                cwd=work,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    out, err = await proc.communicate(render(history).encode())
            finally:
                if proc.returncode is None:  # timed out or cancelled: ours to end and reap
                    proc.kill()
                    await proc.wait()
            if proc.returncode:
                raise RuntimeError(f"claude -p exited {proc.returncode}: {err[-300:]!r}")
            return out.decode(errors="replace")

        yield Contender("claude-p", binary, ask, children_cpu)


async def ensure_claudegate() -> Path:
    """claudegate's console script, installed into its own venv the first time."""
    exe = CLAUDEGATE_VENV / "bin" / "claudegate"
    stamp = CLAUDEGATE_VENV / f".installed-{CLAUDEGATE_PKG}"
    if exe.exists() and stamp.exists():
        return exe

    async def run(*cmd: str | Path) -> None:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(900):
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.returncode:
            last = " ".join(out.decode(errors="replace").strip().splitlines()[-3:])
            raise Unavailable(f"{' '.join(map(str, cmd[:4]))} failed: {last}")

    print(f"installing {CLAUDEGATE_PKG} into {CLAUDEGATE_VENV} ...", flush=True)
    python = shutil.which("python3") or sys.executable
    if not (CLAUDEGATE_VENV / "bin" / "python").exists():
        CLAUDEGATE_VENV.parent.mkdir(parents=True, exist_ok=True)
        await run(python, "-m", "venv", CLAUDEGATE_VENV)
    pip = CLAUDEGATE_VENV / "bin" / "python"
    await run(pip, "-m", "pip", "install", "-q", "--disable-pip-version-check", CLAUDEGATE_PKG)
    if not exe.exists():
        raise Unavailable(f"{CLAUDEGATE_PKG} installed no {exe}")
    stamp.touch()
    return exe


async def _stop_tree(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM `proc`, then SIGKILL it and whatever it started that it left alive.

    Descendants are remembered by (pid, start time) before the signal so that a pid the system
    has since given to another process is never signalled.
    """
    kids = {(p, f[19]) for p in rel.descendants(proc.pid) if (f := rel.stat_fields(p)) is not None}
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [
            p
            for p, start in kids
            if (f := rel.stat_fields(p)) is not None and f[19] == start and f[0] != "Z"
        ]
        if not left:
            return
        if time.monotonic() > deadline - 5:  # orphans that ignored their parent's shutdown
            for p in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        await asyncio.sleep(0.1)  # polling /proc: orphans are init's to reap, not ours to wait


@contextlib.asynccontextmanager
async def open_claudegate(
    up: FakeUpstream, binary: str, max_sessions: int | None
) -> AsyncIterator[Contender]:
    exe = await ensure_claudegate()
    tmp = Path(tempfile.mkdtemp(prefix="peers-claudegate-"))
    proc: asyncio.subprocess.Process | None = None
    try:
        home = tmp / "home"
        await asyncio.to_thread(make_home, home)
        (tmp / "cwd").mkdir()  # it reads a .env from its working directory: an empty one here
        env = {k: v for k, v in child_env(home, up.url).items() if not k.startswith("CLAUDEGATE_")}
        env.update(
            # the SDK under claudegate ships a claude of its own; every contender runs ours
            CLAUDEGATE_CLI_PATH=binary,
            CLAUDEGATE_WORKSPACE=str(tmp / "workspace"),
            CLAUDEGATE_LOG_LEVEL="WARNING",
            CLAUDEGATE_REQUEST_LOG="false",
            # our binary is the one under test, whatever the SDK thinks of its version
            CLAUDE_AGENT_SDK_SKIP_VERSION_CHECK="1",
        )
        if os.geteuid() == 0:
            # claude takes bypassPermissions (claudegate's mode) from root only with IS_SANDBOX
            # exactly "1" (2.1.332); claudegate sets it only when the variable is unset, so an
            # inherited IS_SANDBOX=yes made every spawn exit 1
            env["IS_SANDBOX"] = "1"
        if max_sessions is not None:
            env["CLAUDEGATE_MAX_SESSIONS"] = str(max_sessions)
        port = free_port()
        log_path = tmp / "claudegate.log"
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                exe,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--grace",
                "5",
                env=env,
                cwd=tmp / "cwd",
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=_term_with_parent,
            )
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:
                if proc.returncode is not None:
                    raise Unavailable(f"claudegate exited {proc.returncode}: {tail(log_path)}")
                if time.monotonic() > deadline:
                    raise Unavailable(f"claudegate not up within 60 s: {tail(log_path)}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/health") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)  # polling a process over HTTP: no event to wait on

            async def spawns() -> int | None:
                async with http.get(url + "/metrics") as r:
                    m = re.search(r"^claudegate_sessions_created (\d+)", await r.text(), re.M)
                    return int(m.group(1)) if m else None

            async with AsyncOpenAI(
                base_url=url + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT
            ) as client:
                pid = proc.pid
                ask = openai_ask(client, CLAUDEGATE_MODEL)
                try:  # its health answers before any claude ran: one turn proves it can spawn
                    await ask([("user", f"start-up probe: reply {REPLY}")], None)
                except Exception as exc:
                    raise Unavailable(f"its first turn failed: {one_line(exc)}") from exc
                yield Contender(
                    "claudegate",
                    binary,
                    ask,
                    lambda: tree_cpu(pid),
                    root=pid,
                    spawns=spawns,
                )
    finally:
        try:
            if proc is not None:
                await _stop_tree(proc, grace=30)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def open_contender(
    name: str, up: FakeUpstream, binary: str, args: argparse.Namespace
) -> contextlib.AbstractAsyncContextManager[Contender]:
    if name == "relay":
        return open_relay(name, up, binary, {})
    if name == "relay-rows":
        return open_relay(name, up, binary, {"screen_mode": "rows"})
    if name == "relay-respawn":
        return open_relay(name, up, binary, {"stateless_reset": "respawn"})
    if name == "claude-p":
        return open_claude_p(up, binary)
    return open_claudegate(up, binary, args.claudegate_max_sessions)


# --- scenarios ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One contender's figures (seconds, req/s, per-turn counts), as the JSON holds them."""

    note: str = ""
    unavailable: str | None = None
    latency: dict[str, list[float]] = field(default_factory=dict)
    rate: dict[str, float] = field(default_factory=dict)
    per_turn: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


async def timed(c: Contender, history: History, session: str | None = None) -> float:
    t0 = time.perf_counter()
    text = await c.ask(history, session)
    dt = time.perf_counter() - t0
    if REPLY not in text:
        raise RuntimeError(f"unexpected reply {text[:120]!r}")
    return dt


def prompt(tag: str, i: int) -> History:
    # unique per request: no contender may answer one request from another's conversation
    return [("user", f"peers {tag} {i} {uuid.uuid4().hex[:8]}: reply {REPLY}")]


async def single(c: Contender, n: int) -> list[float]:
    await timed(c, prompt("warmup", 0))  # not counted: first-use costs (page cache, imports)
    out: list[float] = []
    for i in range(n):
        await asyncio.sleep(2.0)  # the scenario: a client that calls every 2 s
        out.append(await timed(c, prompt("single", i)))
    return out


async def back_to_back(c: Contender, n: int, tag: str) -> tuple[list[float], float]:
    t0 = time.perf_counter()
    out = [await timed(c, prompt(tag, i)) for i in range(n)]
    return out, n / (time.perf_counter() - t0)


async def clients(c: Contender, k: int, each: int) -> tuple[list[float], float]:
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(back_to_back(c, each, f"c{k}-{j}") for j in range(k)))
    wall = time.perf_counter() - t0
    return [t for lat, _ in runs for t in lat], k * each / wall


async def chat(c: Contender, turns: int, session: str | None) -> list[float]:
    """A conversation re-sent whole each turn; turn 1 (which starts it) is not counted."""
    history: History = []
    out: list[float] = []
    tag = uuid.uuid4().hex[:8]
    for i in range(turns):
        history.append(("user", f"chat {tag} turn {i + 1}: reply {REPLY}"))
        t0 = time.perf_counter()
        text = await c.ask(history, session)
        if REPLY not in text:
            raise RuntimeError(f"unexpected reply {text[:120]!r}")
        if i:
            out.append(time.perf_counter() - t0)
        history.append(("assistant", text.strip()))
    return out


def big_prompt(kib: int) -> History:
    line = "Line {:06d}: the quick brown fox jumps over the lazy dog, again and again.\n"
    n = kib * 1024 // len(line.format(0)) + 1
    body = "".join(line.format(i) for i in range(n))
    return [("user", f"{body}\nThat was filler text; ignore it and reply {REPLY}.")]


async def resources_over_b2b(
    c: Contender, up: FakeUpstream, n: int, out: Outcome
) -> tuple[list[float], float]:
    await c.settle()
    cpu0 = c.cpu()
    counts0 = _counts(up)
    spawned0 = await c.spawns() if c.spawns else None
    lat, rate = await back_to_back(c, n, "b2b")
    await c.settle()  # the respawn or reset each turn set off is part of its cost
    cpu1 = c.cpu()
    counts1 = _counts(up)
    out.per_turn["cpu_s"] = (cpu1 - cpu0) / n
    for k, v in counts1.items():
        out.per_turn[f"upstream_{k}"] = (v - counts0[k]) / n
    if c.spawns is None:  # one `claude -p` process per request, by construction
        out.per_turn["spawns"] = 1.0
    elif spawned0 is not None and (spawned1 := await c.spawns()) is not None:
        out.per_turn["spawns"] = (spawned1 - spawned0) / n
    return lat, rate


def _counts(up: FakeUpstream) -> dict[str, int]:
    return {
        "all": len(up.all_requests),
        "main": len(up.main_requests),
        "title": len(up.title_requests),
        "other": len(up.count_tokens_requests) + len(up.other_requests),
    }


async def run_scenarios(c: Contender, up: FakeUpstream, args: argparse.Namespace) -> Outcome:
    out = Outcome()

    async def step(name: str, job: Callable[[], Awaitable[list[float] | None]]) -> None:
        if name.split("-", maxsplit=1)[0] not in args.scenarios:
            return
        print(f"  {c.name}: {name} ...", end=" ", flush=True)
        try:
            lat = await job()
        except Exception as exc:  # one broken scenario must not cost the others their figures
            out.errors[name] = one_line(exc)
            print(f"error: {out.errors[name]}", flush=True)
            return
        if not lat:
            print("not applicable", flush=True)
            return
        out.latency[name] = lat
        rate = f", {out.rate[name]:.2f} req/s" if name in out.rate else ""
        print(f"median {fmt_s(statistics.median(lat))}{rate}", flush=True)

    async def b2b() -> list[float]:
        lat, out.rate["b2b"] = await resources_over_b2b(c, up, args.b2b, out)
        return lat

    async def c4() -> list[float]:
        await c.settle()
        lat, out.rate["c4"] = await clients(c, args.clients, args.each)
        return lat

    async def chat_sticky() -> list[float] | None:
        return await chat(c, args.turns, f"peers-{uuid.uuid4()}") if c.sticky else None

    async def big() -> list[float]:
        await c.settle()
        return [await timed(c, big_prompt(args.big_kb))]

    await step("single", lambda: single(c, args.n))
    await step("b2b", b2b)
    await step("c4", c4)
    await step("chat", lambda: chat(c, args.turns, None))
    await step("chat-sticky", chat_sticky)
    await step("big", big)
    await c.settle()
    fp = footprint(c.root, c.binary)
    out.after = {"procs": fp.procs, "claudes": fp.claudes, "rss_mib": fp.rss_mib}
    return out


# --- report ------------------------------------------------------------------------------------


def report(results: dict[str, Outcome], args: argparse.Namespace) -> list[dict[str, Any]]:
    names = list(results)

    def row(label: str, cell: Callable[[Outcome], str | None]) -> list[str]:
        cells = []
        for o in results.values():
            if o.unavailable is not None:
                cells.append("n/a")
                continue
            try:
                cells.append(cell(o) or "–")
            except KeyError:
                cells.append("–")
        return [label, *cells]

    def lat(name: str, stat: str = "mp") -> Callable[[Outcome], str | None]:
        def cell(o: Outcome) -> str | None:
            if name in o.errors:
                return "error"
            v = o.latency[name]
            return med_p90(v) if stat == "mp" else fmt_s(statistics.median(v))

        return cell

    def rate(name: str) -> Callable[[Outcome], str | None]:
        return lambda o: "error" if name in o.errors else f"{o.rate[name]:.2f} req/s"

    def per(key: str, digits: int = 2) -> Callable[[Outcome], str | None]:
        return lambda o: f"{o.per_turn[key]:.{digits}f}"

    def after(o: Outcome) -> str | None:
        if not o.after["procs"]:
            return "nothing left running"
        return Footprint(int(o.after["procs"]), int(o.after["claudes"]), o.after["rss_mib"]).cell()

    m = args.clients * args.each
    tables: list[tuple[str, str, list[list[str]]]] = [
        (
            "single",
            f"single: one request every 2 s (n={args.n}), median / p90",
            [row("latency", lat("single"))],
        ),
        (
            "b2b",
            f"b2b: {args.b2b} back-to-back stateless requests, one client",
            [row("latency median / p90", lat("b2b")), row("throughput", rate("b2b"))],
        ),
        (
            "c4",
            f"c4: {args.clients} clients x {args.each} back-to-back requests ({m} in all)",
            [row("latency median / p90", lat("c4")), row("throughput", rate("c4"))],
        ),
        (
            "chat",
            f"chat: {args.turns}-turn conversation re-sending its history, turns 2..{args.turns}",
            [
                row("no session id, median / p90", lat("chat")),
                row(f"with {SESSION_HEADER}, median / p90", lat("chat-sticky")),
            ],
        ),
        (
            "big",
            f"big: one request with a {args.big_kb} KB prompt",
            [row("latency", lat("big", "m"))],
        ),
        (
            "b2b",
            "cost per stateless turn, over b2b until the contender is idle again",
            [
                row("CPU seconds per turn (contender's process tree)", per("cpu_s")),
                row("upstream requests per turn", per("upstream_all")),
                row("  main / title / other", _breakdown),
                row("claude spawns per turn", per("spawns")),
            ],
        ),
    ]
    for scenario, title, rows in tables:
        if scenario in args.scenarios:
            print(f"\n{title}")
            print(rel.table(["", *names], rows))
    print("\nleft running after the run")
    print(rel.table(["", *names], [row("contender's process tree", after)]))
    for name, o in results.items():
        if o.unavailable is not None:
            print(f"\n{name}: not available: {o.unavailable}")
        for scen, err in o.errors.items():
            print(f"\n{name} {scen}: {err}")
        if o.note:
            print(f"\n{name}: {o.note}")
    return targets(results, args.target)


def _breakdown(o: Outcome) -> str:
    return " / ".join(f"{o.per_turn[f'upstream_{k}']:.2f}" for k in ("main", "title", "other"))


def targets(results: dict[str, Outcome], target: str) -> list[dict[str, Any]]:
    """The issue-15 goals, judged on this run's figures."""
    t, p = results.get(target), results.get("claude-p")

    def lat(o: Outcome | None, name: str, stat: str) -> float:
        v = o.latency[name] if o is not None else []
        if not v:
            raise KeyError(name)
        return statistics.median(v) if stat == "median" else pct(v, 90)

    checks: list[tuple[str, Callable[[], float], Callable[[float], bool], str]] = [
        ("b2b median", lambda: lat(t, "b2b", "median"), lambda v: v <= 0.30, "≤ 0.30 s"),
        ("b2b p90", lambda: lat(t, "b2b", "p90"), lambda v: v <= 0.45, "≤ 0.45 s"),
        ("c4 median", lambda: lat(t, "c4", "median"), lambda v: v <= 0.30, "≤ 0.30 s"),
        ("c4 p90", lambda: lat(t, "c4", "p90"), lambda v: v <= 0.45, "≤ 0.45 s"),
        (
            "speed-up over claude-p, b2b median",
            lambda: lat(p, "b2b", "median") / lat(t, "b2b", "median"),
            lambda v: v >= 2.5,
            "≥ 2.5x",
        ),
        (
            "speed-up over claude-p, c4 median",
            lambda: lat(p, "c4", "median") / lat(t, "c4", "median"),
            lambda v: v >= 2.5,
            "≥ 2.5x",
        ),
        (
            "c4 throughput / claude-p's",
            lambda: _get(t).rate["c4"] / _get(p).rate["c4"],
            lambda v: v >= 2.0,
            "≥ 2x",
        ),
        (
            "CPU per turn / claude-p's",
            lambda: _get(t).per_turn["cpu_s"] / _get(p).per_turn["cpu_s"],
            lambda v: v <= 1.0,
            "≤ 1.00",
        ),
        (
            "upstream requests per turn",
            lambda: _get(t).per_turn["upstream_all"],
            lambda v: round(v, 2) == 1.0,
            "= 1.00",
        ),
    ]
    print(f"\ntargets for {target}")
    out: list[dict[str, Any]] = []
    for label, value, ok, goal in checks:
        try:
            v = value()
        except (KeyError, ZeroDivisionError):
            print(f"  {label:<38} {goal:<9} n/a (not measured)")
            out.append({"target": label, "goal": goal, "value": None, "met": None})
            continue
        verdict = "met" if ok(v) else "MISSED"
        print(f"  {label:<38} {goal:<9} {v:8.2f}   {verdict}")
        out.append({"target": label, "goal": goal, "value": v, "met": ok(v)})
    return out


def _get(o: Outcome | None) -> Outcome:
    if o is None or o.unavailable is not None:
        raise KeyError("contender")
    return o


# --- main --------------------------------------------------------------------------------------


def _names(text: str, allowed: Sequence[str]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {','.join(allowed)}")
    return names


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--claude", help="claude binary path or version (default: the pin)")
    ap.add_argument(
        "--only",
        type=lambda s: _names(s, CONTENDERS),
        default=list(CONTENDERS),
        help=f"contenders, comma-separated (default: {','.join(CONTENDERS)})",
    )
    ap.add_argument(
        "--scenarios",
        type=lambda s: _names(s, SCENARIOS),
        default=list(SCENARIOS),
        help=f"scenarios, comma-separated (default: {','.join(SCENARIOS)})",
    )
    ap.add_argument("--n", type=int, default=10, help="single: requests, 2 s apart (10)")
    ap.add_argument("--b2b", type=int, default=20, help="b2b: back-to-back requests (20)")
    ap.add_argument("--clients", type=int, default=4, help="c4: concurrent clients (4)")
    ap.add_argument("--each", type=int, default=8, help="c4: requests per client (8)")
    ap.add_argument("--turns", type=int, default=10, help="chat: turns (10)")
    ap.add_argument("--big-kb", type=int, default=200, help="big: prompt size in KB (200)")
    ap.add_argument(
        "--claudegate-max-sessions",
        type=int,
        help="CLAUDEGATE_MAX_SESSIONS (default: claudegate's own, 64 live claudes)",
    )
    ap.add_argument("--target", default="relay", choices=CONTENDERS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    binary, cli = rel.use_claude(args.claude)
    results: dict[str, Outcome] = {}
    with rel.run_facts() as facts:
        # the default reply answers every main request (FIFO scripts would race under c4)
        async with FakeUpstream(default=Reply(text=REPLY)) as up:
            for name in args.only:
                print(f"{name}:", flush=True)
                try:
                    async with open_contender(name, up, binary, args) as c:
                        results[name] = await run_scenarios(c, up, args)
                except Unavailable as exc:
                    results[name] = Outcome(unavailable=str(exc)[:600])
                    print(f"  not available: {results[name].unavailable}", flush=True)
                except Exception as exc:  # one contender breaking must not cost the others
                    broke = f"broke: {one_line(exc, 600)}"
                    print(f"  {broke}", flush=True)
                    if name in results:  # it ran; its shutdown failed
                        results[name].note = broke
                    else:
                        results[name] = Outcome(unavailable=broke)
    print(f"\nclaude CLI  {cli} ({binary})")
    print(f"code        {facts.code}")
    print(f"machine     at start {facts.load_start}; at end {facts.load_end}")
    judged = report(results, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "claude_cli": cli,
                    "code": facts.code,
                    "machine": f"{os.cpu_count()} cores; {facts.load_start}; {facts.load_end}",
                    "args": {k: v for k, v in vars(args).items() if k != "json"},
                    "contenders": {k: dataclasses.asdict(v) for k, v in results.items()},
                    "targets": judged,
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
