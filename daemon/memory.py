"""Handing freed memory back to the system (glibc only; elsewhere these do nothing).

The daemon's Python heap stays flat under load, but its RSS grew ~90 KiB per tool round trip
(`bench.soak --only tool`, docs/reliability.md): tracemalloc saw ~6 KiB of that per request in
Python objects, the rest was memory glibc kept after it was freed: per-thread malloc arenas (the
worker threads that read transcripts and spawn claudes each get one) and free pages between live
blocks. Two arenas are plenty for the daemon's few threads, and a periodic `malloc_trim` returns
free pages from every arena.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import AsyncIterator

from aiohttp import web

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENAS = 2
TRIM_INTERVAL = 60.0  # seconds between trims; one takes ~1 ms on the daemon's heap


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # musl and the BSD/macOS libcs have no malloc_trim/mallopt: nothing to do there
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def limit_arenas(n: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before threads start); True when it applied."""
    return _LIBC is not None and bool(_LIBC.mallopt(_M_ARENA_MAX, n))


def trim() -> bool:
    """Return free heap pages to the system; True when glibc released some."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


async def trim_lifetime(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: trim every TRIM_INTERVAL for the app's lifetime."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(TRIM_INTERVAL)  # a timer, not a wait for a condition
            await asyncio.to_thread(trim)  # holds malloc's lock: keep it off the event loop

    task = asyncio.create_task(loop(), name="malloc trim")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})
