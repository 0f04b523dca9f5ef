"""Shared pieces of the reliability suite (bench.faults, bench.soak, bench.fuzz, bench.hostile).

Each script drives a real `claude-relay serve` (tests.support.relay_proc) against the fake
upstream and judges what a client sees (bench.wire makes and judges one call). This module
holds the rest of what they share: choosing the claude binary, starting a watched daemon,
health polling, and the facts every script reports — daemon RSS, its processes, orphans,
leftover temp files, the code and the machine's load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from claude_relay.daemon.fake_upstream import FakeUpstream
from tests.support.relay_proc import Relay, start_relay

ROOT = Path(__file__).resolve().parent.parent


# --- the claude binary ---------------------------------------------------------------------------


def use_claude(arg: str | None) -> tuple[str, str]:
    """Point tests.support at the claude to drive; returns (path, `claude --version`).

    `arg` wins, then $CLAUDE_RELAY_TEST_CLAUDE_BIN, then the pin (`./dev.sh claude`, which
    installs it once); an arg that is a bare version (2.1.197) installs that version.
    """
    binary = arg or os.environ.get("CLAUDE_RELAY_TEST_CLAUDE_BIN")
    if binary is None or re.fullmatch(r"\d+\.\d+\.\d+", binary):
        cmd = [str(ROOT / "dev.sh"), "claude", *([binary] if binary else [])]
        binary = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    binary = shutil.which(binary) or binary
    os.environ["CLAUDE_RELAY_TEST_CLAUDE_BIN"] = binary
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return binary, out.stdout.strip() or out.stderr.strip()


def code_version() -> str:
    """The commit under test, and how many tracked files differ from it (others edit the tree
    while runs go on: a figure belongs to the code it was measured on)."""

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(ROOT), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout

    n = len(git("status", "--porcelain", "-uno").splitlines())
    return git("rev-parse", "--short", "HEAD").strip() + (f" + {n} modified files" if n else "")


# --- temp files --------------------------------------------------------------------------------

_TMP_WORDS = re.compile(r"relay|claude", re.IGNORECASE)


@contextlib.contextmanager
def private_tmp() -> Iterator[Path]:
    """Run with TMPDIR (and tempfile's cached dir) set to a fresh private directory.

    Everything this process and its daemons create through the temp dir lands there, so leftovers
    are this run's own, even while other people's tests churn /tmp. The directory is removed
    afterwards; `tmp_leftovers` says what it still held.
    """
    root = Path(tempfile.mkdtemp(prefix="relbench-"))
    saved_env, saved_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(root)
    tempfile.tempdir = str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(root, ignore_errors=True)


def tmp_names() -> set[str]:
    """Entries of /tmp whose name contains "relay" or "claude"."""
    try:
        return {p.name for p in Path("/tmp").iterdir() if _TMP_WORDS.search(p.name)}
    except OSError:
        return set()


def _ours(name: str) -> bool:
    # what claude (/tmp/claude-<uid>/...) or the daemon (/tmp/claude-relay-<uid>) would create
    return name.lower().startswith("claude")


def tmp_leftovers(private: Path, before: set[str]) -> list[str]:
    """What this run left: anything in its private temp dir, and new /tmp entries named the way
    claude's or the daemon's own temp dirs are (`claude...`). Other new entries with "relay" or
    "claude" in the name come from other people's runs on a shared machine (this run's harness
    dirs go to the private dir): see `foreign_tmp`."""
    out = [str(p) for p in private.rglob("*")]
    out += [f"/tmp/{n}" for n in sorted(tmp_names() - before) if _ours(n)]
    return out


def foreign_tmp(before: set[str]) -> list[str]:
    """New /tmp entries named for relay/claude that are not counted, printed for the record."""
    return [f"/tmp/{n}" for n in sorted(tmp_names() - before) if not _ours(n)]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


@dataclass
class RunFacts:
    """What every script prints about its run besides its own table."""

    scratch: Path  # the private temp dir
    code: str = field(default_factory=code_version)
    load_start: str = field(default_factory=load)
    load_end: str = ""
    leftovers: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def print(self, cli: str) -> None:
        print(f"claude CLI           {cli}")
        print(f"code                 {self.code}")
        print(f"machine              at start {self.load_start}; at end {self.load_end}")
        print(f"leftover temp files  {len(self.leftovers)}")
        for path in self.leftovers[:20]:
            print(f"    {path}")
        if self.foreign:
            shown = ", ".join(self.foreign[:5])
            print(f"    (not counted: {len(self.foreign)} new /tmp entries of other runs: {shown})")


@contextlib.contextmanager
def run_facts() -> Iterator[RunFacts]:
    """A private temp dir for the run; afterwards, leftovers in it and in /tmp, and the load."""
    before = tmp_names()
    with private_tmp() as scratch:
        facts = RunFacts(scratch)
        yield facts
        facts.leftovers += tmp_leftovers(scratch, before)
        facts.foreign = foreign_tmp(before)
        facts.load_end = load()


def state_entries(relay: Relay) -> list[str]:
    """Per-turn attachment dirs and per-claude temp dirs of one daemon (state/temp roots)."""
    out: list[str] = []
    for root in (relay.attachments, relay.home / "claude-tmp"):
        with contextlib.suppress(OSError):
            out += [str(p) for p in root.iterdir()]
    return out


# --- processes ---------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _ppids() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None:
                out[int(entry.name)] = int(fields[1])
    return out


def descendants(pid: int) -> set[int]:
    ppids = _ppids()
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in ppids.items() if pp in frontier} - out
        out |= frontier
    return out


def children(pid: int) -> set[int]:
    """Live (non-zombie) direct children: the daemon's claude processes."""
    return {
        p for p, pp in _ppids().items() if pp == pid and (stat_fields(p) or ["Z"])[0] not in "ZX"
    }


@dataclass
class ProcWatch:
    """Every process ever seen below the watched daemons, by (pid, start time): whatever of
    them is still alive once its daemon has exited is an orphan."""

    seen: dict[tuple[int, str], int] = field(default_factory=dict)  # → the daemon's pid

    def sample(self, daemon: int) -> None:
        for pid in descendants(daemon):
            fields = stat_fields(pid)
            if fields is not None:
                self.seen[(pid, fields[19])] = daemon

    def orphans(self) -> list[int]:
        out = []
        for (pid, start), daemon in self.seen.items():
            daemon_gone = (stat_fields(daemon) or ["Z"])[0] in "ZX"
            fields = stat_fields(pid)
            alive = fields is not None and fields[19] == start and fields[0] not in "ZX"
            if alive and daemon_gone:
                out.append(pid)
        return sorted(out)

    async def wait_no_orphans(self, timeout: float = 5.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while (left := self.orphans()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # polling /proc: no event to wait on
        return left

    @contextlib.asynccontextmanager
    async def sampling(self, daemon: int, interval: float = 0.25) -> AsyncIterator[None]:
        """Sample `daemon`'s descendants in the background while the block runs."""

        async def loop() -> None:
            while True:
                self.sample(daemon)
                await asyncio.sleep(interval)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.sample(daemon)


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass(frozen=True)
class Resources:
    rss_kib: int
    procs: int  # the daemon's live children
    state_entries: int  # dirs under its attachment and claude temp roots
    fds: int = 0  # the daemon's open file descriptors (sockets, PTYs, files)

    def line(self) -> str:
        return (
            f"RSS {self.rss_kib / 1024:6.1f} MiB   children {self.procs:3d}   "
            f"open fds {self.fds:4d}   state/temp entries {self.state_entries}"
        )


def resources(relay: Relay) -> Resources:
    pid = relay.proc.pid
    return Resources(rss_kib(pid), len(children(pid)), len(state_entries(relay)), open_fds(pid))


@contextlib.asynccontextmanager
async def daemon(up: FakeUpstream, watch: ProcWatch, *args: str, **kw: Any) -> AsyncIterator[Relay]:
    """`start_relay` whose processes `watch` samples. When start_relay's cleanup times out
    waiting for the daemon's claudes to die, that is not raised: `watch.orphans()` reports it."""
    cm = start_relay(up, *args, **kw)
    relay = await cm.__aenter__()
    try:
        async with watch.sampling(relay.proc.pid):
            yield relay
    except BaseException as exc:
        with contextlib.suppress(TimeoutError):
            await cm.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    with contextlib.suppress(TimeoutError):
        await cm.__aexit__(None, None, None)


# --- health --------------------------------------------------------------------------------------


async def health(http: aiohttp.ClientSession, url: str, timeout: float = 2.0) -> dict[str, Any]:
    """The health body ({} when it did not answer within `timeout`)."""
    try:
        async with asyncio.timeout(timeout), http.get(url + "/v1/health") as r:
            data = await r.json()
            return data if isinstance(data, dict) else {}
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return {}


def pool_of(h: Mapping[str, Any]) -> dict[str, int]:
    pool = h.get("pool")
    return pool if isinstance(pool, dict) else {}


async def wait_healthy(
    http: aiohttp.ClientSession,
    url: str,
    *,
    warm: int = 1,
    idle: bool = False,
    timeout: float = 30.0,
) -> float | None:
    """Seconds until health says ok with `warm` ready claudes (and, with `idle`, nothing busy,
    starting or queued); None if that did not happen within `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        h = await health(http, url)
        pool = pool_of(h)
        busy = pool.get("busy") or pool.get("starting") or pool.get("queued")
        if h.get("status") == "ok" and pool.get("warm", 0) >= warm and not (idle and busy):
            return time.monotonic() - t0
        await asyncio.sleep(0.05)  # polling a process over HTTP: no event to wait on
    return None


async def wait_busy_zero(http: aiohttp.ClientSession, url: str, timeout: float) -> float | None:
    """Seconds until /v1/health shows no busy turn; None if not within `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pool_of(await health(http, url)).get("busy", 1) == 0:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return None


# --- output --------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"
