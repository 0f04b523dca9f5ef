"""Run `claude-relay serve` as a subprocess against a fake upstream (e2e tests and benchmarks).

The daemon starts as a user starts it: the console script, a scratch HOME whose ~/.claude.json
approves the fake key, the daemon's own workspace under that HOME's state dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from claude_relay.daemon.fake_upstream import FakeUpstream
from tests.support.claude_env import child_env, claude_bin, make_home

RELAY_BIN = str(Path(sys.executable).with_name("claude-relay"))


def _term_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """SIGTERM the daemon when the test process dies without stopping it (a killed pytest): the
    daemon then shuts down as it does for a user, reaping its claudes, and no daemon is left."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> set[int]:
    """Direct children of `pid`, read from /proc (the claude processes of a daemon)."""
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Relay:
    url: str
    proc: asyncio.subprocess.Process
    home: Path
    workspace: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def attachments(self) -> Path:
        """Where this daemon writes turn directories of image files."""
        return Path(self.env["CLAUDE_RELAY_ATTACHMENTS_DIR"])

    async def health(self) -> dict[str, object]:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/v1/health") as r:
            data: dict[str, object] = await r.json()
            return data

    # 60 s: a first start that fails (seen once in CI on 2.1.197: no warm claude within 30 s)
    # is retried after the pool's backoff; the tests check what the claude does, not how soon
    async def wait_warm(self, n: int = 1, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    pool = (await self.health())["pool"]
                    assert isinstance(pool, dict)
                    if pool["warm"] >= n:
                        return
                await asyncio.sleep(0.05)  # polling a process over HTTP: no event to wait on

    async def wait_up(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    await self.health()
                    return
                await asyncio.sleep(0.05)  # polling a process over HTTP: no event to wait on

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(30):
            return await self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def start_relay(
    upstream: FakeUpstream,
    *args: str,
    home: Path | None = None,
    wait_warm: bool = True,
    unset: tuple[str, ...] = (),
    relay_bin: str = RELAY_BIN,
    **env: str,
) -> AsyncIterator[Relay]:
    """Start a daemon; with `home`, reuse that HOME (a restart) and leave it in place.

    `wait_warm=False` returns once health answers instead of once a claude is warm (for daemons
    whose claude cannot start); `unset` names environment variables the daemon must not get;
    `relay_bin` is the console script to run (another installation's, e.g. a wheel's).
    """
    tmp = Path(tempfile.mkdtemp(prefix="relay-e2e-"))
    if home is None:
        home = tmp / "home"
        try:
            await asyncio.to_thread(make_home, home)  # file writes: not on the test's event loop
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing else owns it yet
            raise
    port = free_port()
    e = child_env(home, upstream.url)
    e.update({f"CLAUDE_RELAY_{k.upper()}": v for k, v in env.items()})
    e["CLAUDE_RELAY_CLAUDE_BIN"] = shutil.which(claude_bin()) or claude_bin()
    # each daemon its own attachments dir, so a test can see that every turn cleaned up
    e.setdefault("CLAUDE_RELAY_ATTACHMENTS_DIR", str(home / "attachments"))
    if "PYTEST_CURRENT_TEST" in os.environ:
        # under pytest a blocking call on the daemon's loop raises (daemon/cli.py); benchmarks
        # run without the detector's per-call cost
        e.setdefault("CLAUDE_RELAY_DETECT_BLOCKING", "1")
    for name in unset:
        e.pop(name, None)
    log_path = tmp / "daemon.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            relay_bin,
            "serve",
            "--port",
            str(port),
            *args,
            env=e,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=_term_with_parent,
        )
    workspace = home / ".local" / "state" / "claude-relay" / "workspace"
    relay = Relay(f"http://127.0.0.1:{port}", proc, home, workspace, log_path, e)
    try:
        await (relay.wait_warm(1) if wait_warm else relay.wait_up())
        yield relay
    finally:
        try:
            kids = children_of(proc.pid)
            if proc.returncode is None:
                await relay.stop()
            # every claude the daemon started is gone once it has exited
            async with asyncio.timeout(10):
                while any(alive(p) for p in kids):
                    await asyncio.sleep(0.05)
        finally:
            keep = os.environ.get("CLAUDE_RELAY_E2E_LOGS")
            if keep:  # a missing directory must not cost a long run its report
                dest = Path(keep) / f"daemon-{port}.log"
                await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
                shutil.copy(log_path, dest)
            shutil.rmtree(tmp, ignore_errors=True)
