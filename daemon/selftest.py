"""`claude-relay doctor --self-test`: qualify a claude binary for the relay in under a minute.

Claude Code ships about a release a day. This drives the given claude exactly as the pool does
(isolated config dir, the relay's flags, bracketed paste, screen and transcript) in a scratch HOME
that looks like a real user's (hooks, CLAUDE.md files, an MCP server), against the built-in fake
upstream on loopback, and prints one line per check: version, start-up without a dialog, a
streamed turn whose text is exact, a long multi-line prompt that arrives exactly, the injection
corpus (nothing read, run or swallowed), and
isolation from the user's setup. Nothing of the user's own home is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from claude_relay.daemon.demo import claude_env, swapped_environ
from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from claude_relay.daemon.scratch_home import leaks, make_home
from claude_relay.protocols import errors
from claude_relay.protocols.model import SpawnSpec, TextDelta, TurnResult
from claude_relay.pty_pool import versions
from claude_relay.pty_pool.attachments import JS_SPACES
from claude_relay.pty_pool.isolation import prepare
from claude_relay.pty_pool.session import Session
from claude_relay.pty_pool.settings import PoolSettings

SECRET = "TOP-SECRET-CONTENT-5512"
# A prompt claude would collapse into `[Pasted text #N]` if pasted whole (lines, a long line,
# an astral character): it must still reach the model as the exact text, untagged.
LONG_PROMPT = "line one\nline two\n\n  indented four\n" + "y" * 1200 + "\n😀 end"
PROSE = (
    "The relay reads claude's screen while the model writes.\n\n"
    + " ".join(f"word{i:02d}" for i in range(40))
    + "\n\nLast line, without a newline."
)


def injection_corpus(secret: Path, marker: Path) -> list[tuple[str, str]]:
    """(name, prompt) pairs claude's input handling would turn into an action if pasted as is:
    file mentions after every character claude's mention pattern breaks words at (JavaScript's
    `\\s` and 。、？！, read in its bundled code), bash mode, slash commands, shortcuts, the
    paste-end sequence, C0/C1 controls."""
    s, m = str(secret), str(marker)
    cases = [
        ("at-start", f"@{s}"),
        ("at-middle", f"quote this file: @{s} please"),
        ("at-end", f"quote @{s}"),
        ("at-quoted", f'read @"{s}" now'),
        ("at-home", "read @~/secret.txt now"),
        ("at-relative", f"read @..{s} and @./secret.txt"),
        ("at-fullwidth", f"read \uff20{s} now"),
        ("at-zwsp", f"read @\u200b{s} now"),
        ("at-after-cr", f"a\r@{s}"),
        ("at-after-crlf", f"a\r\n@{s}"),
        ("at-long-line", "x" * 5000 + f" @{s}"),
        ("at-line-range", f"see @{s}#L1-2"),
        ("at-mcp-resource", "see @relay:file:///etc/hostname"),
        ("bang", f"!touch {m}"),
        ("bang-after-newline", f"\n!touch {m}"),
        ("bang-after-cr", f"\r!touch {m}"),
        ("bang-after-space", f" !touch {m}"),
        ("bang-after-controls", f"\x00\x1b\x07!touch {m}"),
        ("slash-exit", "/exit"),
        ("slash-model", "/model haiku"),
        ("slash-clear", "/clear"),
        ("slash-after-crlf", "\r\n/exit"),
        ("hash", "# remember that x=1"),
        ("ampersand", f"& touch {m}"),
        ("question", "?"),
        ("paste-end", "x\x1b[201~/exit\r\x1b[201~"),
        ("paste-end-bang", f"x\x1b[201~!touch {m}\r"),
        ("nested-paste", f"\x1b[200~\x1b[200~inner\x1b[201~\r!touch {m}\r\x1b[201~"),
        ("c1-csi", f"x\x9b201~/exit\r!touch {m}"),
        ("ctrl-c-d-u", "a\x03b\x04c\x15d\x7fe"),
        ("tab-completion", f"\t@{s}\t"),
    ]
    breaks = [*JS_SPACES, "\u3002", "\u3001", "\uff1f", "\uff01"]
    cases += [(f"at-after-U+{ord(b):04X}", f"x{b}@{s} y") for b in breaks]
    return cases


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    ok: bool
    detail: str


async def _turn(session: Session, prompt: str) -> tuple[str, int, TurnResult]:
    streamed: list[str] = []
    result: TurnResult | None = None
    async for ev in session.run_turn(prompt):
        if isinstance(ev, TextDelta):
            streamed.append(ev.text)
        elif isinstance(ev, TurnResult):
            result = ev
    assert result is not None
    return "".join(streamed), len(streamed), result


async def run(binary: str, out: Callable[[Line], None]) -> bool:
    """Qualify `binary`; report each check through `out`; True when all passed."""
    t0 = time.monotonic()
    ok = True

    def report(name: str, passed: bool, detail: str) -> None:
        nonlocal ok
        ok = ok and passed
        out(Line(name, passed, f"{detail} [{time.monotonic() - t0:.1f}s]"))

    path = shutil.which(binary)
    if path is None:
        report("binary", False, f"{binary!r} not found")
        return False
    try:
        version = await versions.probe(path, dict(os.environ))
    except versions.ProbeError as exc:
        report("version", False, str(exc))
        return False
    window = f"tested window {versions.OLDEST} to {versions.PINNED}"
    inside = versions.supported(version)
    report("version", True, f"{version} ({'inside' if inside else 'outside'} the {window})")
    async with _scratch(path) as (settings, up, home, workdir):
        session = Session(SpawnSpec(), settings, path, ephemeral=False, cli_version=version)
        try:
            await session.start()
        except errors.RelayError as exc:
            report("start", False, exc.message)
            return False
        try:
            report("start", True, "ready at the prompt, no dialog (trust settled by config)")
            up.push(Reply(text=PROSE, chunk_chars=12, delay=0.02))
            streamed, deltas, result = await _turn(session, "Say something")
            exact = result.text == PROSE
            report("turn", exact, "transcript text exact" if exact else "reply text differs")
            good = deltas >= 2 and PROSE.startswith(streamed)
            report("stream", good, f"{deltas} deltas, streamed text a prefix of the reply")
            up.push(Reply(text="ok"))
            await _turn(session, LONG_PROMPT)
            sent = up.main_requests[-1].last_user_text
            report(
                "paste",
                sent == LONG_PROMPT,
                "a 5-line prompt with a 1200-character line arrived exactly"
                if sent == LONG_PROMPT
                else f"prompt arrived altered: {sent[:60]!r}",
            )
            ok = await _injection(session, up, workdir, report) and ok
            found = leaks(home, [r.raw_body for r in up.all_requests])
            report("isolation", not found, "; ".join(found) or "no hook, memory, MCP, history")
        finally:
            await session.close()
    return ok


async def _injection(
    session: Session, up: FakeUpstream, workdir: Path, report: Callable[[str, bool, str], None]
) -> bool:
    secret, marker = workdir / "secret.txt", workdir / "marker"
    secret.write_text(SECRET + "\n")
    cases = injection_corpus(secret, marker)
    failed: list[str] = []
    for name, prompt in cases:
        before = len(up.main_requests)
        up.push(Reply(text=f"answer {name}"))
        try:
            _, _, result = await _turn(session, prompt)
        except errors.RelayError as exc:
            failed.append(f"{name}: {exc.message[:80]}")
            continue
        new = up.main_requests[before:]
        if result.text != f"answer {name}" or len(new) != 1:
            failed.append(f"{name}: prompt swallowed or not answered")
        elif any(SECRET.encode() in r.raw_body for r in up.all_requests):
            failed.append(f"{name}: file content sent upstream")
        elif marker.exists():
            failed.append(f"{name}: a command ran")
    detail = f"{len(cases) - len(failed)}/{len(cases)} prompts stayed text"
    report("injection", not failed, detail + ("; " + "; ".join(failed[:3]) if failed else ""))
    return not failed


@contextlib.asynccontextmanager
async def _scratch(
    binary: str,
) -> AsyncIterator[tuple[PoolSettings, FakeUpstream, Path, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="claude-relay-selftest-"))
    try:
        home = tmp / "home"
        make_home(home)
        async with FakeUpstream() as up:
            env = claude_env(os.environ, home, up.url)
            settings = PoolSettings(
                claude_bin=binary,
                workspace=home / ".local" / "state" / "claude-relay" / "workspace",
                max_retries=0,
                ready_timeout=20.0,
                turn_timeout=30.0,
                columns=100,
                rows=40,
            )
            with swapped_environ(env):
                await asyncio.to_thread(prepare, settings, env)
                yield settings, up, home, tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(binary: str, stream: TextIO) -> int:
    def out(line: Line) -> None:
        mark = "ok  " if line.ok else "FAIL"
        print(f"{mark} {line.name:<10} {line.detail}", file=stream, flush=True)

    # the session's own warnings would interleave with the check lines; failures are reported
    logging.getLogger("claude_relay.pty_pool").setLevel(logging.ERROR)
    passed = asyncio.run(run(binary, out))
    print("self-test " + ("passed" if passed else "FAILED"), file=stream)
    return 0 if passed else 1
