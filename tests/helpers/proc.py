"""Waiting on conditions that have no event: process state in /proc, or another object's counters.

Polling is bounded and backs off; a test never sleeps for a fixed time and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

HELPERS = Path(__file__).resolve().parent


def helper(name: str) -> str:
    """Absolute path of a helper program in this directory."""
    return str(HELPERS / name)


async def until(cond: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Return as soon as `cond()` holds; fail the test with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.005
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def state(pid: int) -> str | None:
    """The one-letter state of `pid` from /proc (R, S, Z, ...), or None if there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # the command name is in parentheses and may contain spaces or parentheses itself
    return stat[stat.rindex(")") + 2]


def ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie is dead, only not yet reaped)."""
    return state(pid) not in (None, "Z", "X")


def reaped(pid: int) -> bool:
    """True if `pid` is not (or no longer) an unreaped child of this process."""
    try:
        got, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    # 0: still running; otherwise we just reaped a zombie someone else should have reaped
    assert got == 0, f"pid {pid} was a zombie: its owner never reaped it"
    return False


def with_cmdline(marker: str) -> list[int]:
    """Live processes (zombies have no cmdline) whose command line contains `marker`."""
    needle = marker.encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def zombie_children() -> list[int]:
    """Children of this process that exited and were never reaped."""
    return [pid for pid in children() if state(pid) == "Z"]


def children() -> list[int]:
    """Processes whose parent is this process, zombies included."""
    me = os.getpid()
    return [
        int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and ppid(int(e.name)) == me
    ]


def kill_and_reap(pid: int) -> None:
    """SIGKILL a leftover child and reap it (cleanup after a failed test)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
