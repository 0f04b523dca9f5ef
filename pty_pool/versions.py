"""The Claude Code versions the relay is tested on, and how to tell which one a user has.

Claude Code ships about a release a day and each can change dialogs, input parsing and what it
loads from ~/.claude. The relay is qualified on a window of versions: the oldest it supports and
the pin (the newest tested release; `./dev.sh` installs both and CI runs the e2e tier on both).
Outside that window it still runs, but says so: a warning in the log and `supported: false` in
/v1/health. `claude-relay doctor --self-test` qualifies any other build in under a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import Mapping
from typing import Final

OLDEST: Final = "2.1.197"
PINNED: Final = "2.1.332"
TESTED: Final = (OLDEST, PINNED)
PROBE_TIMEOUT: Final = 15.0

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:$|[-+ ])")


def parse_version(output: str) -> str | None:
    """`2.1.197 (Claude Code)` → `2.1.197`; None when the text is not a claude version line."""
    words = output.strip().split()
    if not words or "Claude Code" not in output or not _VERSION.match(words[0]):
        return None
    return words[0]


def _key(version: str) -> tuple[int, int, int] | None:
    m = _VERSION.match(version)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


# First tested version that honours CLAUDE_CODE_DISABLE_FILE_MENTIONS (absent in 2.1.197). From it
# on, file mentions are off by that switch alone: a Read deny rule would also refuse the image
# paths the relay pastes (2.1.332 checks pasted paths against Read permissions; 2.1.197 does not).
FILE_MENTIONS_SWITCH: Final = "2.1.332"


# First tested version that makes no session-title request of its own. Below it (2.1.197) every
# new conversation cost a second upstream request, which a session started with `--name` does
# not make; from it on no name is given: 2.1.332 tells a session whose name another live
# session holds so on screen, and has nothing to save.
NO_TITLE_REQUEST: Final = "2.1.332"


# First tested version that wraps a multi-line paste following another paste of the same prompt
# in `<pasted_content id="…">` tags (`tui.paste_sequence`).
PASTE_WRAP: Final = "2.1.332"


def at_least(version: str | None, floor: str) -> bool:
    key, low = _key(version or ""), _key(floor)
    return key is not None and low is not None and key >= low


def supported(version: str | None) -> bool:
    """Within the tested window [OLDEST, PINNED]."""
    key = _key(version or "")
    lo, hi = _key(OLDEST), _key(PINNED)
    return key is not None and lo is not None and hi is not None and lo <= key <= hi


class ProbeError(Exception):
    """claude could not be asked (not found, timeout, crash), or did not say it is Claude Code."""


async def run_claude(
    binary: str, args: tuple[str, ...], env: Mapping[str, str], limit: float = PROBE_TIMEOUT
) -> tuple[int, bytes]:
    """Run `binary *args` without a terminal; return (exit code, stdout). Raise ProbeError.

    Gives up after `limit` seconds; a caller's own deadline or cancellation kills it the same way.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *args,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
    except OSError as exc:
        raise ProbeError(f"cannot run {binary}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except TimeoutError:
        raise ProbeError(f"`claude {' '.join(args)}` did not answer within {limit:g}s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()  # reaped even when the caller was cancelled: no zombie stays
    if proc.returncode not in (0, 1):
        detail = err.decode(errors="replace").strip()[:200]
        raise ProbeError(f"`claude {' '.join(args)}` exited with {proc.returncode}: {detail}")
    return proc.returncode, out


async def probe(binary: str, env: Mapping[str, str], limit: float = PROBE_TIMEOUT) -> str:
    """`binary --version`, checked to be a Claude Code version line."""
    code, out = await run_claude(binary, ("--version",), env, limit)
    text = out.decode(errors="replace")
    version = parse_version(text)
    if code != 0 or version is None:
        shown = text.strip().splitlines()[0][:120] if text.strip() else "nothing"
        raise ProbeError(
            f"`{binary} --version` printed {shown!r} (exit {code}): this is not the Claude Code CLI"
        )
    return version
