"""`claude-relay doctor --self-test` qualifies the claude under test (each tested version in
./dev.sh test) and refuses a binary that is not claude, one line per check."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.support.claude_env import claude_bin
from tests.support.relay_proc import RELAY_BIN

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def self_test(binary: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        RELAY_BIN,
        "doctor",
        "--self-test",
        "--claude",
        binary,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.timeout(120)
async def test_self_test_passes_on_the_claude_under_test() -> None:
    code, out = await self_test(shutil.which(claude_bin()) or claude_bin())
    checks = [line.split()[:2] for line in out.splitlines() if line.startswith(("ok", "FAIL"))]
    assert [c[1] for c in checks] == [
        "version",
        "start",
        "turn",
        "stream",
        "paste",
        "injection",
        "isolation",
    ], out
    assert all(c[0] == "ok" for c in checks), out
    assert "self-test passed" in out and code == 0


async def test_self_test_refuses_a_binary_that_is_not_claude() -> None:
    code, out = await self_test(shutil.which("echo") or "/bin/echo")
    assert code == 1
    assert out.splitlines()[0].startswith("FAIL version")
    assert "not the Claude Code CLI" in out
