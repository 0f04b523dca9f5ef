"""Word-level streaming benchmark (issue 14): the relay's session streaming paced replies with
each screen mode (`screen_mode` rows, ax guarded, ax eager), and the research driver (`proto`).

Run (after `./dev.sh claude` and `./dev.sh claude 2.1.197` installed the CLIs):
  .venv/bin/python -m bench.bench_stream --claude "$(./dev.sh claude)" [--rates 20,60] [--n 3]
      [--modes rows,ax,ax-eager,proto] [--json out.json]
  .venv/bin/python -m bench.bench_stream --claude "$(./dev.sh claude 2.1.197)" \
      --record tests/golden/ax    (re-records tests/test_ax.py's streams for that CLI version)

Per reply (fresh turns on one warm claude per mode, the relay's own flags, `isolation.prepare`d
config dir, the MCP endpoint served): deltas, first-delta latency after the upstream sent its
first text delta, the longest gap between deltas while tokens flow, whether the streamed text is
byte-exact (prose), difflib similarity to the model's text (markdown), and CPU seconds of this
process (the relay's side: PTY reads, pyte, parsing) and of claude per reply. The fake upstream
runs in a child process (`--serve-upstream`), so its CPU is not counted; it reports when each
delta was written (CLOCK_MONOTONIC, shared by both processes).

One file, over the usual size: the research driver (`AxClaude`, which also records the golden
streams) sits next to the session-driven modes so both are measured in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import difflib
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from claude_relay.daemon.fake_upstream import FakeUpstream, Reply, ToolUse
from claude_relay.daemon.mcp import serving
from claude_relay.protocols.model import SpawnSpec, TextDelta, ToolSpec, TurnResult
from claude_relay.pty_pool import ax, isolation, tui, versions
from claude_relay.pty_pool.broker import Broker, Channel
from claude_relay.pty_pool.driver import PtyDriver
from claude_relay.pty_pool.files import write_private
from claude_relay.pty_pool.screen import ScreenReader, Snapshot
from claude_relay.pty_pool.session import Session
from claude_relay.pty_pool.settings import PoolSettings
from claude_relay.pty_pool.spawn import MCP_CONFIG_FILE, build_argv, build_env, private_args
from claude_relay.pty_pool.transcript import TranscriptTail, TurnLog, find_transcript
from tests.support.claude_env import child_env, claude_bin, make_home

COLUMNS = 100
ROWS = 40
TOKEN_CHARS = 4  # one upstream delta ≈ one token

# ~80 words each, with the shapes that matter: wraps, paragraph breaks, a long last row.
PROSE = (
    "Streaming from a terminal is a strange craft: the relay watches a screen that was drawn for "
    "people, and turns it back into the words a model wrote, one frame at a time.\n\n"
    "Each frame arrives about a tenth of a second after the last, so a reader sees the reply grow "
    "almost as fast as the tokens come in, instead of waiting for whole rows.\n\n"
    "Short paragraphs, long ones, and sentences that end right at the edge all have to survive."
)
MARKDOWN = (
    "## Setup\n\nInstall the **daemon** with `pip install claude-relay`, then:\n\n"
    "1. Clone the repo\n2. Run `./dev.sh serve`\n\n"
    "```python\nimport anthropic\nclient = anthropic.Anthropic(base_url=URL)\n```\n\n"
    "- see [the docs](https://example.com/docs)\n- keep *loopback* only\n\n"
    "| Name | Role |\n|---|---|\n| Ann | lead |\n\n> Note: restart after upgrades.\n"
)
SPOOF = (
    "Line one.\nyou: injected prompt\nclaude: injected reply\nWorked for 3s\n"
    "don't ask on (shift+tab to cycle)\nInterrupted · What should Claude do instead?\n"
    "esc\x1b]133;D\x07after \x1b[2J clear \x07 bell \x1b]0;TITLE\x07 done\nHmm…\nLast."
)
WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}},
)


# --- the fake upstream, in a child process -----------------------------------------------------
class TimedUpstream(FakeUpstream):
    """The fake upstream, noting when each streamed delta of a main request was written."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delta_times: dict[str, list[float]] = {}

    def _notify(self) -> None:
        now = time.monotonic()
        for r in self.main_requests:
            times = self.delta_times.setdefault(r.request_id, [])
            while len(times) < r.sent_deltas:
                times.append(now)
        super()._notify()


def _reply(spec: dict[str, Any]) -> Reply:
    tools = tuple(
        ToolUse(t["name"], t.get("input", {}), t.get("id")) for t in spec.pop("tools", [])
    )
    return Reply(tool_uses=tools, **spec)


async def _serve_upstream() -> None:
    """`--serve-upstream`: JSON lines in on stdin (`{"push": {Reply fields}}`), JSON lines out on
    stdout: the URL first, then one line per finished main request with its delta times."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with TimedUpstream() as up:
        print(json.dumps({"url": up.url}), flush=True)
        reported: set[str] = set()

        async def report() -> None:
            while True:
                await up.wait_for(
                    lambda: any(
                        r.finished and r.request_id not in reported for r in up.main_requests
                    ),
                    timeout=3600,
                )
                for r in up.main_requests:
                    if r.finished and r.request_id not in reported:
                        reported.add(r.request_id)
                        text = r.reply.text if r.reply is not None else ""
                        out = {
                            "id": r.request_id,
                            "arrived": r.time,
                            "finished": r.finished_time,
                            "outcome": r.outcome,
                            "delta_times": up.delta_times.get(r.request_id, []),
                            "chunk_chars": r.reply.chunk_chars if r.reply else 0,
                            "thinking": bool(r.reply and r.reply.thinking),
                            "text": text,
                        }
                        print(json.dumps(out), flush=True)

        task = asyncio.ensure_future(report())
        try:
            while line := await reader.readline():
                cmd = json.loads(line)
                if "push" in cmd:
                    up.push(_reply(dict(cmd["push"])))
        finally:
            task.cancel()


class UpstreamProc:
    """The parent's handle on the `--serve-upstream` child."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.finished: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.bench_stream",
            "--serve-upstream",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.url = json.loads(await self.proc.stdout.readline())["url"]
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            await self.finished.put(json.loads(line))

    def push(self, **spec: Any) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"push": spec}) + "\n").encode())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of process `pid` so far, 0.0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- one claude in ax mode, driven like the session drives today's mode ------------------------
READY_QUIET = 0.25
# claude sends its terminal queries (XTVERSION `ESC[>0q`, DA1 `ESC[c`) once it has drawn its first
# screen; 2.1.197 took input pasted before them 0.4-1.8 s late or not at all (then Enter again)
TERMINAL_QUERY = b"\x1b[c"
POLL = 0.1
COALESCE = 0.008
RESUBMIT_AFTER = 1.5


@dataclass
class AxTurn:
    streams: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # per policy
    exact: str = ""
    paste_t: float = 0.0
    marks: list[tuple[float, str]] = field(default_factory=list)
    resubmits: int = 0


class AxClaude:
    """One claude with `--ax-screen-reader`: spawned with the relay's argv, environment and config
    dir, its screen read through `pty_pool.ax`; raw PTY chunks kept for recordings."""

    def __init__(self, binary: str, version: str, settings: PoolSettings, channel: Channel | None):
        self.binary = binary
        self.version = version
        self.settings = settings
        self.channel = channel
        self.session_id = "00000000-0000-4000-8000-000000000001"
        self.screen = ScreenReader(settings.columns, settings.rows)
        self.scanner = ax.MarkScanner()
        self.marks: list[tuple[float, str]] = []
        self.chunks: list[tuple[float, bytes]] = []
        self.t0 = time.monotonic()
        self.changed = asyncio.Event()
        self.eof = False
        self.driver: PtyDriver | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="ax-claude-"))

    def _on_output(self, data: bytes) -> None:
        now = time.monotonic()
        self.chunks.append((now - self.t0, data))
        self.screen.feed(data)
        for m in self.scanner.feed(data):
            self.marks.append((now, m.kind))
        self.changed.set()

    def _on_eof(self) -> None:
        self.eof = True
        self.changed.set()

    async def next_snapshot(self, seq: int, wait: float = POLL) -> Snapshot:
        if self.screen.seq == seq and not self.eof:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), wait)
            await asyncio.sleep(COALESCE)
        self.changed.clear()
        return self.screen.snapshot()

    async def start(self, env: dict[str, str], *, expect_dialog: bool = False) -> ax.AxState:
        private = self.tmp / "private"
        private.mkdir(mode=0o700)
        url = None
        if self.channel is not None and BROKER.url is not None:
            url = BROKER.endpoint(self.channel)
        named: dict[str, Path] = {}
        for name, data in private_args(SpawnSpec(), url).items():
            named[name] = private / name
            write_private(named[name], data)
        argv = build_argv(
            self.binary,
            SpawnSpec(),
            self.session_id,
            resume=False,
            settings=self.settings,
            mcp_config=named.get(MCP_CONFIG_FILE),
            cli_version=self.version,
        )
        full_env = build_env(env, self.settings)
        full_env.update(CLAUDE_CODE_TMPDIR=str(private), TMPDIR=str(private))
        self.driver = PtyDriver(
            argv,
            env=full_env,
            cwd=str(self.settings.workspace),
            rows=self.settings.rows,
            cols=self.settings.columns,
            on_output=self._on_output,
            on_eof=self._on_eof,
        )
        self.t0 = time.monotonic()
        await self.driver.start()
        deadline = time.monotonic() + 30
        quiet_since: float | None = None
        seq = -1
        while time.monotonic() < deadline:
            snap = await self.next_snapshot(seq)
            changed = snap.seq != seq
            seq = snap.seq
            st = ax.classify(snap)
            if st.dialog is not None and (expect_dialog or time.monotonic() > deadline - 25):
                return st
            queried = any(TERMINAL_QUERY in b for _, b in self.chunks)
            if st.ready and queried:
                quiet_since = quiet_since if quiet_since and not changed else time.monotonic()
                if time.monotonic() - quiet_since >= READY_QUIET:
                    return st
            else:
                quiet_since = None
            if self.eof:
                break
        raise RuntimeError("claude (ax mode) not ready:\n" + _screen_text(self.screen.snapshot()))

    def transcript(self) -> Path | None:
        return find_transcript(isolation.relay_config_dir(self.settings), self.session_id)

    async def turn(
        self,
        prompt: str,
        policies: tuple[ax.Policy, ...] = ("guarded", "eager"),
        *,
        esc_after: float | None = None,
        on_tools: Callable[[Channel], None] | None = None,
        timeout: float = 60.0,
    ) -> AxTurn:
        """Paste `prompt`, follow the reply to its end, return each policy's timed deltas."""
        assert self.driver is not None
        tail = TranscriptTail(self.transcript())
        await asyncio.to_thread(tail.read)
        self.screen.mark()
        echoes = ax.echo_count(self.screen.snapshot())
        streams = {p: ax.AxStream(ax.text_width(self.settings.columns), p) for p in policies}
        out = AxTurn(streams={p: [] for p in policies})
        marks_before = len(self.marks)
        text = tui.sanitize_prompt(prompt)
        keys = tui.paste_sequence(text, wraps=versions.at_least(self.version, versions.PASTE_WRAP))
        out.paste_t = time.monotonic()
        self.driver.write(keys)
        await self.driver.drain()
        await asyncio.sleep(tui.ENTER_DELAY)
        self.driver.write(tui.ENTER)
        pasted = time.monotonic()
        log = TurnLog()
        seq = -1
        done_at: float | None = None
        escaped = False
        while True:
            snap = await self.next_snapshot(seq, 0.01 if done_at else POLL)
            seq = snap.seq
            now = time.monotonic()
            new_marks = [k for _, k in self.marks[marks_before:]]
            if self.eof:
                raise RuntimeError("claude exited during the turn")
            r = ax.reply(snap, echoes)
            for p, st in streams.items():
                d = st.update(r)
                if d:
                    out.streams[p].append((now, d))
            if "A" not in new_marks and now - pasted > RESUBMIT_AFTER * (out.resubmits + 1):
                state = ax.classify(snap)
                if out.resubmits < 2 and state.input_text:
                    self.driver.write(tui.ENTER)  # 2.1.197 can swallow an early Enter
                elif out.resubmits < 2 and state.ready:
                    self.driver.write(keys)
                    await self.driver.drain()
                    await asyncio.sleep(tui.ENTER_DELAY)
                    self.driver.write(tui.ENTER)
                out.resubmits += 1
            if on_tools is not None and self.channel is not None and self.channel.parked:
                on_tools(self.channel)
            if esc_after is not None and not escaped and r.rows and now - pasted > esc_after:
                self.driver.write(tui.ESC)
                escaped = True
            if "D" in new_marks and done_at is None:
                done_at = now
            if done_at is not None:
                log.add(await asyncio.to_thread(tail.read))
                if tail.path is None:
                    tail.path = self.transcript()
                drawn = r.completed or r.interrupted or r.error_text is not None
                if (log.done and drawn) or now - done_at > 3.0:
                    break
            if now - pasted > timeout:
                raise RuntimeError("turn timed out:\n" + _screen_text(snap))
        out.exact = log.result().text if log.entries and log.error() is None else ""
        for p, st in streams.items():
            rest = st.finish(out.exact) if out.exact else ""
            if rest:
                out.streams[p].append((time.monotonic(), rest))
        out.marks = [(t - self.t0, k) for t, k in self.marks[marks_before:]]
        return out

    async def close(self) -> None:
        if self.driver is not None:
            await self.driver.terminate(grace=2.0)
        shutil.rmtree(self.tmp, ignore_errors=True)


BROKER = Broker()


def _screen_text(snap: Snapshot) -> str:
    return "\n".join(r.text for r in snap.all_rows).strip("\n")


# --- today's mode, through the real session ----------------------------------------------------
class TimedSession(Session):
    """The relay's session, unchanged, with its PTY chunks timestamped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunks: list[tuple[float, bytes]] = []

    def _on_output(self, data: bytes) -> None:
        self.chunks.append((time.monotonic(), data))
        super()._on_output(data)


async def today_turn(s: TimedSession, prompt: str) -> tuple[list[tuple[float, str]], str]:
    deltas: list[tuple[float, str]] = []
    exact = ""
    async for ev in s.run_turn(prompt):
        if isinstance(ev, TextDelta):
            deltas.append((time.monotonic(), ev.text))
        elif isinstance(ev, TurnResult):
            exact = ev.text
    return deltas, exact


# --- figures -----------------------------------------------------------------------------------
@dataclass
class Figures:
    mode: str
    kind: str
    rate: int
    deltas: int
    first: float | None  # seconds from the first upstream text delta to the first delta out
    max_gap: float | None  # longest wait between deltas while tokens flow
    exact: bool
    ratio: float
    live_share: float  # share of the reply the client had, exactly, when the last token was sent
    relay_cpu: float
    claude_cpu: float
    words_med: float | None  # word latency: upstream wrote its last character → client has it
    words_p90: float | None


def figures(
    mode: str,
    kind: str,
    rate: int,
    *,
    deltas: list[tuple[float, str]],
    up: dict[str, Any],
    source: str,
    cpu: tuple[float, float],
) -> Figures:
    times = [t for t, _ in deltas]
    sent: list[float] = up["delta_times"]
    text = "".join(d for _, d in deltas)
    last_token = sent[-1] if sent else 0.0
    gaps = [b - a for a, b in itertools.pairwise(times) if a < last_token]
    shown = _exact_prefix_times(deltas, source)
    lat = _word_latencies(shown, source, sent, up["chunk_chars"])
    live = max((n for t, n in shown if t <= last_token), default=0)
    return Figures(
        mode=mode,
        kind=kind,
        rate=rate,
        deltas=len(deltas),
        first=times[0] - sent[0] if times and sent else None,
        max_gap=max(gaps) if gaps else None,
        exact=text == source,
        ratio=difflib.SequenceMatcher(None, text, source, autojunk=False).ratio(),
        live_share=live / max(1, len(source)),
        relay_cpu=cpu[0],
        claude_cpu=cpu[1],
        words_med=statistics.median(lat) if lat else None,
        words_p90=_pct(lat, 90) if lat else None,
    )


def _exact_prefix_times(deltas: list[tuple[float, str]], source: str) -> list[tuple[float, int]]:
    """(time, characters of `source` the client had exactly) after each delta, while the
    deltas are a prefix of `source`."""
    out: list[tuple[float, int]] = []
    acc = ""
    for t, d in deltas:
        acc += d
        if not source.startswith(acc):
            break
        out.append((t, len(acc)))
    return out


def _word_latencies(
    shown: list[tuple[float, int]], source: str, sent: list[float], chunk: int
) -> list[float]:
    """For each word of `source` the client got exactly: when it had the whole word minus when
    the upstream wrote the delta holding the word's last character."""
    if not chunk or not sent:
        return []
    out: list[float] = []
    for m in re.finditer(r"\S+", source):
        at = next((t for t, n in shown if n >= m.end()), None)
        if at is not None:
            out.append(at - sent[min(len(sent) - 1, (m.end() - 1) // chunk)])
    return out


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))]


def _ms(v: float | None) -> str:
    return "    -" if v is None else f"{v * 1000:5.0f}"


def summarize(rows: list[Figures]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int], list[Figures]] = {}
    for f in rows:
        groups.setdefault((f.mode, f.kind, f.rate), []).append(f)
    out = []
    for (mode, kind, rate), fs in groups.items():
        firsts = [f.first for f in fs if f.first is not None]
        gaps = [f.max_gap for f in fs if f.max_gap is not None]
        words = [f.words_med for f in fs if f.words_med is not None]
        out.append(
            {
                "mode": mode,
                "kind": kind,
                "rate": rate,
                "n": len(fs),
                "deltas": statistics.median(f.deltas for f in fs),
                "first_med": statistics.median(firsts) if firsts else None,
                "first_p90": _pct(firsts, 90) if firsts else None,
                "max_gap": max(gaps) if gaps else None,
                "word_lat_med": statistics.median(words) if words else None,
                "exact": sum(f.exact for f in fs),
                "ratio_min": min(f.ratio for f in fs),
                "live_share": statistics.median(f.live_share for f in fs),
                "relay_cpu": statistics.median(f.relay_cpu for f in fs),
                "claude_cpu": statistics.median(f.claude_cpu for f in fs),
            }
        )
    return out


def print_table(version: str, summary: list[dict[str, Any]]) -> None:
    print(f"\nclaude {version}, {COLUMNS}x{ROWS}, {TOKEN_CHARS} characters per upstream delta")
    print(
        "mode         kind      tok/s  n  deltas  first ms med/p90  max gap ms  word ms"
        "  exact  ratio(min)  live  relay cpu s  claude cpu s"
    )
    for s in summary:
        print(
            f"{s['mode']:<12} {s['kind']:<9} {s['rate']:5d} {s['n']:2d} {s['deltas']:7.1f}"
            f"    {_ms(s['first_med'])} / {_ms(s['first_p90'])}       {_ms(s['max_gap'])}"
            f"    {_ms(s['word_lat_med'])}  {s['exact']:>2}/{s['n']:<2}  {s['ratio_min']:9.4f}"
            f"  {s['live_share']:4.0%}  {s['relay_cpu']:11.3f}  {s['claude_cpu']:12.3f}"
        )


# --- running -----------------------------------------------------------------------------------
def cli_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.split()[0] if out.stdout else "unknown"


@contextlib.asynccontextmanager
async def scratch(
    binary: str, upstream_url: str, *, ax_mode: bool
) -> AsyncIterator[tuple[PoolSettings, dict[str, str]]]:
    """A scratch HOME and the relay's claude config dir in it, prepared as the pool does."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        make_home(tmp / "home")
        env = child_env(tmp / "home", upstream_url)
        settings = PoolSettings(
            claude_bin=binary,
            workspace=tmp / "ws",
            columns=COLUMNS,
            rows=ROWS,
            max_retries=1,
            extra_args=(ax.FLAG,) if ax_mode else (),
        )
        settings.workspace.mkdir()
        await asyncio.to_thread(isolation.prepare, settings, env)
        yield settings, env
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


KINDS = (("prose", PROSE), ("markdown", MARKDOWN))


async def bench_ax(
    binary: str, version: str, up: UpstreamProc, rates: list[int], n: int
) -> list[Figures]:
    rows: list[Figures] = []
    async with scratch(binary, up.url, ax_mode=True) as (settings, env):
        c = AxClaude(binary, version, settings, BROKER.open())
        try:
            await c.start(env)
            for kind, source in KINDS:
                for rate in rates:
                    for i in range(n):
                        up.push(text=source, chunk_chars=TOKEN_CHARS, delay=1 / rate)
                        pid = c.driver.pid if c.driver else None
                        turn, done, cpu = await _timed(up, pid, c.turn(f"{kind} {rate} {i}"))
                        for policy, deltas in turn.streams.items():
                            rows.append(
                                figures(
                                    f"ax-{policy}",
                                    kind,
                                    rate,
                                    deltas=deltas,
                                    up=done,
                                    source=source,
                                    cpu=cpu,
                                )
                            )
                        await asyncio.sleep(0.3)
        finally:
            await c.close()
    return rows


T = TypeVar("T")


async def _timed(
    up: UpstreamProc, pid: int | None, turn: Awaitable[T]
) -> tuple[T, dict[str, Any], tuple[float, float]]:
    """Run one turn; its result, the upstream's report of the reply, and (relay, claude) CPU s."""
    cpu0 = (time.process_time(), _cpu(pid))
    out = await turn
    done = await asyncio.wait_for(up.finished.get(), 30)
    return out, done, (time.process_time() - cpu0[0], _cpu(pid) - cpu0[1])


async def bench_session(
    binary: str, version: str, up: UpstreamProc, rates: list[int], n: int, *, mode: str
) -> list[Figures]:
    """The relay's own session in `mode`: "rows" (the default screen), "ax" or "ax-eager"
    (`screen_mode = "ax"` with that stream policy)."""
    rows: list[Figures] = []
    async with scratch(binary, up.url, ax_mode=False) as (base, env):
        os.environ.update(env)  # the session builds claude's environment from the daemon's
        settings = base
        if mode != "rows":
            policy = "eager" if mode == "ax-eager" else "guarded"
            settings = replace(base, screen_mode="ax", stream_policy=policy)
        s = TimedSession(SpawnSpec(), settings, binary, broker=BROKER, cli_version=version)
        try:
            await s.start()
            for kind, source in KINDS:
                for rate in rates:
                    for i in range(n):
                        up.push(text=source, chunk_chars=TOKEN_CHARS, delay=1 / rate)
                        (deltas, _exact), done, cpu = await _timed(
                            up, s.pid, today_turn(s, f"{kind} {rate} {i}")
                        )
                        rows.append(
                            figures(
                                f"relay-{mode}",
                                kind,
                                rate,
                                deltas=deltas,
                                up=done,
                                source=source,
                                cpu=cpu,
                            )
                        )
                        await asyncio.sleep(0.3)
        finally:
            await s.close()
    return rows


async def bench(binary: str, rates: list[int], n: int, modes: list[str]) -> list[Figures]:
    version = cli_version(binary)
    up = UpstreamProc()
    await up.start()
    rows: list[Figures] = []
    try:
        async with serving(BROKER):
            if "proto" in modes:
                rows += await bench_ax(binary, version, up, rates, n)
            for mode in ("rows", "ax", "ax-eager"):
                if mode not in modes:
                    continue
                saved = dict(os.environ)
                try:
                    rows += await bench_session(binary, version, up, rates, n, mode=mode)
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
    finally:
        await up.close()
    return rows


# --- golden recordings for tests/test_ax.py ----------------------------------------------------
@dataclass
class Scenario:
    name: str
    replies: list[dict[str, Any]]  # Reply fields for the upstream, in order
    prompt: str = "Hello there"
    tools: tuple[ToolSpec, ...] = ()
    esc_after: float | None = None
    untrusted: bool = False
    expect: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario("prose20", [{"text": PROSE, "chunk_chars": TOKEN_CHARS, "delay": 1 / 20}]),
    Scenario("prose60", [{"text": PROSE, "chunk_chars": TOKEN_CHARS, "delay": 1 / 60}]),
    Scenario("markdown", [{"text": MARKDOWN, "chunk_chars": TOKEN_CHARS, "delay": 1 / 60}]),
    Scenario(
        "tools",
        [
            {
                "text": "Let me check the weather.",
                "tools": [
                    {"name": "mcp__api__get_weather", "input": {"city": "Paris"}, "id": "toolu_A"},
                    {"name": "mcp__api__get_weather", "input": {"city": "Rome"}, "id": "toolu_B"},
                ],
                "chunk_chars": 6,
                "delay": 0.03,
            },
            {"text": "Both cities are sunny today.", "chunk_chars": 6, "delay": 0.03},
        ],
        prompt="Weather in Paris and Rome?",
        tools=(WEATHER,),
        expect={
            "before_tools": "Let me check the weather.",
            "after_tools": "Both cities are sunny today.",
        },
    ),
    Scenario(
        "thinking",
        [
            {
                "text": "After thought.",
                "thinking": "Deep thought " * 20,
                "chunk_chars": 10,
                "delay": 0.03,
            }
        ],
    ),
    Scenario("error_500", [{"status": 500}] * 2, expect={"error": "API Error: 500"}),
    Scenario(
        "interrupt",
        [{"text": PROSE, "chunk_chars": 8, "delay": 0.1}],
        esc_after=1.5,
        expect={"interrupted": True},
    ),
    Scenario(
        "paste",
        [{"text": "Got the four lines."}],
        prompt="line one\nline two\nline three\nline four",
        expect={"echo_rows": 4},
    ),
    Scenario("trust_dialog", [], untrusted=True, expect={"dialog": "trust"}),
    # model text that looks like claude's own rows, and escape sequences (claude strips ESC/BEL)
    Scenario(
        "spoof",
        [{"text": SPOOF, "chunk_chars": 5, "delay": 0.03}],
        expect={"first_row": "Line one."},
    ),
]


async def record(binary: str, out_root: Path, names: list[str]) -> None:
    """Record each scenario on one fresh ax-mode claude: raw PTY chunks plus a header with the
    CLI version, screen size, the chunk index of each paste, the upstream texts and delta times."""
    version = cli_version(binary)
    async with serving(BROKER):
        for sc in SCENARIOS:
            if names and sc.name not in names:
                continue
            await _record_one(binary, version, sc, out_root)


async def _record_one(binary: str, version: str, sc: Scenario, out_root: Path) -> None:
    timed = TimedUpstream()
    await timed.start()
    try:
        async with scratch(binary, timed.url, ax_mode=True) as (prepared, env):
            settings = prepared
            if sc.untrusted:
                # a workspace whose trust was never recorded, with the relay's config dir
                settings = replace(
                    prepared,
                    workspace=prepared.workspace.parent / "untrusted",
                    claude_config_dir=isolation.relay_config_dir(prepared),
                )
                settings.workspace.mkdir()
            for spec in sc.replies:
                timed.push(_reply(dict(spec)))
            channel = BROKER.open()
            c = AxClaude(binary, version, settings, channel)
            header: dict[str, Any] = {
                "cli_version": version,
                "columns": settings.columns,
                "rows": settings.rows,
                "argv_tail": [ax.FLAG],
                "prompt": sc.prompt,
                "expect": sc.expect,
            }
            try:
                st = await c.start(env, expect_dialog=sc.untrusted)
                header["ready_chunk"] = len(c.chunks)
                if sc.untrusted:
                    header["dialog"] = st.dialog
                    await asyncio.sleep(0.5)
                else:
                    if sc.tools:
                        channel.set_tools(sc.tools)
                        await channel.wait_listed(5)
                        await asyncio.sleep(0.2)
                        header["ready_chunk"] = len(c.chunks)

                    def answer(ch: Channel) -> None:
                        for call in ch.parked:
                            ch.answer(
                                call.tool_use_id,
                                {"content": [{"type": "text", "text": "Sunny"}], "isError": False},
                            )

                    turn = await c.turn(sc.prompt, esc_after=sc.esc_after, on_tools=answer)
                    header["exact"] = turn.exact
                    header["paste_t"] = turn.paste_t - c.t0
                    header["marks"] = turn.marks
                    header["resubmits"] = turn.resubmits
                    await asyncio.sleep(0.3)
            finally:
                await c.close()
                BROKER.close(channel)
            header["requests"] = [
                {
                    "text": r.reply.text if r.reply else "",
                    "chunk_chars": r.reply.chunk_chars if r.reply else 0,
                    "arrived": r.time - c.t0,
                    "delta_times": [t - c.t0 for t in timed.delta_times.get(r.request_id, [])],
                    "outcome": r.outcome,
                }
                for r in timed.main_requests
            ]
            out = out_root / version
            out.mkdir(parents=True, exist_ok=True)
            with (out / f"{sc.name}.jsonl").open("w") as f:
                f.write(json.dumps(header, ensure_ascii=False) + "\n")
                for t, b in c.chunks:
                    f.write(json.dumps({"t": round(t, 4), "b": base64.b64encode(b).decode()}))
                    f.write("\n")
            print(sc.name, len(c.chunks), "chunks", {k: header.get(k) for k in ("exact", "dialog")})
    finally:
        await timed.close()


# --- command line ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--serve-upstream"]:
        asyncio.run(_serve_upstream())
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.bench_stream", description=__doc__)
    parser.add_argument("--claude", default=claude_bin(), help="the claude binary to drive")
    parser.add_argument("--rates", default="20,60", help="upstream tokens per second, a list")
    parser.add_argument("--n", type=int, default=3, help="replies per kind and rate")
    parser.add_argument(
        "--modes",
        default="rows,ax,ax-eager",
        help="the relay's session with screen_mode rows, ax (guarded) or ax-eager; proto: the "
        "research driver (bench_ax), both policies",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    parser.add_argument("--record", type=Path, default=None, help="record golden streams instead")
    parser.add_argument("names", nargs="*", help="with --record: only these scenarios")
    args = parser.parse_args(args_list)
    binary = shutil.which(args.claude) or args.claude
    if args.record is not None:
        asyncio.run(record(binary, args.record, args.names))
        return 0
    rates = [int(r) for r in args.rates.split(",")]
    rows = asyncio.run(bench(binary, rates, args.n, args.modes.split(",")))
    summary = summarize(rows)
    print_table(cli_version(binary), summary)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "claude": cli_version(binary),
                    "summary": summary,
                    "rows": [vars(r) for r in rows],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
