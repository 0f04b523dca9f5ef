"""A stand-in daemon: spawn a sleeper through PtyDriver, print the sleeper's pid, wait forever.

The test SIGKILLs this process and expects the sleeper to die with it (PR_SET_PDEATHSIG). The
sleeper ignores SIGHUP and SIGTERM, so the hangup from the closing PTY master cannot be what
kills it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from claude_relay.pty_pool.driver import PtyDriver

SLEEPER = str(Path(__file__).resolve().parent / "sleeper.py")


async def main() -> None:
    out = bytearray()
    ready = asyncio.Event()

    def on_output(data: bytes) -> None:
        out.extend(data)
        if b"ready" in out:
            ready.set()

    driver = PtyDriver(
        [sys.executable, SLEEPER, "SIGTERM", "SIGHUP"],
        env=dict(os.environ),
        cwd=os.getcwd(),
        rows=24,
        cols=80,
        on_output=on_output,
        on_eof=ready.set,
    )
    await driver.start()
    await asyncio.wait_for(ready.wait(), 10.0)
    print(driver.pid, flush=True)
    await asyncio.Event().wait()  # until SIGKILLed


if __name__ == "__main__":
    asyncio.run(main())
