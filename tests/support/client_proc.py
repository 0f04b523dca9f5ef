"""Running a client program (curl, a Node SDK script) against the relay in a test.

The program gets no stdin, is killed if it outlives `timeout` (and reaped either way), and must
exit 0; its stdout comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping


async def run_client(
    *argv: str, env: Mapping[str, str] | None = None, timeout: float = 45
) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    return out
