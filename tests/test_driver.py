"""PtyDriver against tiny real programs (tests/helpers/): output, EOF, exit status, large writes,
termination of process groups, reaping, death with the parent, and no blocking call on the loop.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from blockbuster import BlockingError, blockbuster_ctx

from claude_relay.pty_pool.driver import _SPAWNER, PtyDriver, SpawnRefused
from tests.helpers.proc import children, helper, reaped, running, state, until

pytestmark = pytest.mark.timeout(20)

ROOT = Path(__file__).resolve().parent.parent  # for `import pty_pool` in a helper


class Child:
    """A PtyDriver running a helper program, with what the driver delivered to its callbacks."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.out = bytearray()
        self.eof = asyncio.Event()
        self.eof_calls = 0
        self._changed = asyncio.Event()
        self.driver = PtyDriver(
            argv,
            env=dict(os.environ),
            cwd=str(cwd),
            rows=24,
            cols=80,
            on_output=self._on_output,
            on_eof=self._on_eof,
        )

    def _on_output(self, data: bytes) -> None:
        self.out += data
        self._changed.set()

    def _on_eof(self) -> None:
        self.eof_calls += 1
        self.eof.set()
        self._changed.set()

    @property
    def pid(self) -> int:
        pid = self.driver.pid
        assert pid is not None
        return pid

    async def expect(self, needle: bytes, timeout: float = 5.0) -> None:
        """Wait until `needle` has been delivered to on_output."""
        async with asyncio.timeout(timeout):
            while needle not in self.out:
                assert not self.eof.is_set(), f"EOF before {needle!r}; got {bytes(self.out)!r}"
                self._changed.clear()
                await self._changed.wait()

    async def exited(self, timeout: float = 5.0) -> int:
        """Wait for EOF and for the child to be reaped; its exit status."""
        await asyncio.wait_for(self.eof.wait(), timeout)
        await until(lambda: not self.driver.poll(), timeout=timeout, what="the child to exit")
        assert self.driver.exit_status is not None
        return self.driver.exit_status


Spawn = Callable[..., Awaitable[Child]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start helper programs in PTYs; whatever a test leaves running is terminated afterwards."""
    started: list[Child] = []

    async def start(name: str, *args: str) -> Child:
        child = Child([sys.executable, helper(name), *args], tmp_path)
        await child.driver.start()
        started.append(child)
        return child

    yield start
    for child in started:
        await child.driver.terminate(grace=0)


# --- output, EOF, exit status -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("how", "status"),
    [("0", 0), ("3", 3), ("SIGUSR1", -signal.SIGUSR1), ("SIGKILL", -signal.SIGKILL)],
)
async def test_output_eof_and_exit_status(spawn: Spawn, how: str, status: int) -> None:
    child = await spawn("exit_with.py", how, "hello from the child")
    assert child.driver.exit_status is None
    assert await child.exited() == status
    assert b"hello from the child" in child.out
    assert child.eof_calls == 1
    assert not child.driver.poll()
    assert reaped(child.pid)
    with pytest.raises(BrokenPipeError):
        child.driver.write(b"too late")
    # terminate after a natural exit changes nothing and reports the same status
    assert await child.driver.terminate() == status


async def test_unstarted_driver(tmp_path: Path) -> None:
    child = Child([sys.executable, helper("sleeper.py")], tmp_path)
    assert child.driver.pid is None
    assert not child.driver.poll()
    assert await child.driver.terminate() is None


async def test_missing_binary_raises_on_start(tmp_path: Path) -> None:
    child = Child([str(tmp_path / "no-such-program")], tmp_path)
    with pytest.raises(FileNotFoundError):
        await child.driver.start()
    assert child.driver.pid is None


async def test_exec_failure_leaves_no_zombie(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-program"
    bad.write_bytes(b"\x00\x01 no shebang, no ELF header")
    bad.chmod(0o755)
    before = set(children())
    child = Child([str(bad)], tmp_path)
    with pytest.raises(OSError, match="Exec format error") as failed:
        await child.driver.start()
    try:
        assert failed.value.errno == errno.ENOEXEC
        assert child.driver.pid is None
        # the failed fork is reaped on the spawner thread before start() raises
        forked = set(children()) - before
        await until(
            lambda: all(not running(p) for p in forked), timeout=5.0, what="the fork to exit"
        )
        assert [p for p in forked if state(p) == "Z"] == []
    finally:
        _clean_up_failed_spawn(failed.value)


# --- writing ------------------------------------------------------------------------------------
MIB = 1 << 20
PAYLOAD = bytes(range(256)) * (MIB // 256)  # every byte value, control bytes included


async def test_large_write_drains_without_blocking(spawn: Spawn) -> None:
    child = await spawn("count_stdin.py", str(len(PAYLOAD)))
    await child.expect(b"ready")  # the tty is raw from here on
    child.driver.write(PAYLOAD)
    # write() returned although the PTY cannot hold 1 MiB: the rest waits in the driver
    assert child.driver.write_pending > 0
    await asyncio.sleep(0)  # and the loop runs while it drains
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    await child.expect(f"got {len(PAYLOAD)} {digest}".encode(), timeout=15.0)
    assert child.driver.write_pending == 0
    assert await child.exited() == 0


async def test_writes_queue_in_order(spawn: Spawn) -> None:
    """Writes made while a backlog drains are appended to it, never interleaved."""
    child = await spawn("count_stdin.py", str(len(PAYLOAD)))
    await child.expect(b"ready")
    quarter = len(PAYLOAD) // 4
    for i in range(4):
        child.driver.write(PAYLOAD[i * quarter : (i + 1) * quarter])
    assert child.driver.write_pending > 0
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    await child.expect(f"got {len(PAYLOAD)} {digest}".encode(), timeout=15.0)
    assert child.driver.write_pending == 0


async def test_drain_waits_for_the_backlog(spawn: Spawn) -> None:
    child = await spawn("count_stdin.py", str(len(PAYLOAD)))
    await child.expect(b"ready")
    await asyncio.wait_for(child.driver.drain(), 1.0)  # nothing queued: returns at once
    child.driver.write(PAYLOAD)
    assert child.driver.write_pending > 0
    await asyncio.wait_for(child.driver.drain(), 15.0)
    assert child.driver.write_pending == 0


async def test_drain_ends_when_the_child_dies(spawn: Spawn) -> None:
    child = await spawn("raw_idle.py")  # reads nothing: the PTY fills up
    await child.expect(b"ready")
    child.driver.write(PAYLOAD)
    assert child.driver.write_pending > 0
    os.kill(child.pid, signal.SIGKILL)  # claude crashes in the middle of a paste
    await asyncio.wait_for(child.eof.wait(), 5.0)
    await asyncio.wait_for(child.driver.drain(), 2.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TIOCGPTN is Linux's")
async def test_unread_input_tells_a_slow_reader_from_a_lost_write(spawn: Spawn) -> None:
    """A prompt still queued in claude's terminal was not lost (the session must not paste it
    again); once read, nothing is pending. Holding no terminal open, EOF still arrives."""
    idle = await spawn("raw_idle.py")  # never reads
    await idle.expect(b"ready")
    assert idle.driver.unread_input() == 0
    idle.driver.write(b"hello")
    await until(lambda: idle.driver.unread_input() == 5, timeout=5, what="5 bytes queued")
    reader = await spawn("count_stdin.py", "5")
    await reader.expect(b"ready")
    reader.driver.write(b"hello")
    await reader.expect(b"got 5 ")
    assert reader.driver.unread_input() in (0, None)  # None: gone already (EOF)
    assert await reader.exited() == 0
    assert reader.driver.unread_input() is None


async def test_cpu_seconds_tell_a_busy_child_from_an_idle_one(spawn: Spawn) -> None:
    """A claude that draws nothing may be at work on a long paste: its CPU time says so."""
    idle = await spawn("raw_idle.py")
    await idle.expect(b"ready")
    busy = await spawn("busy.py")
    await busy.expect(b"ready")
    start = (idle.driver.cpu_seconds(), busy.driver.cpu_seconds())
    assert None not in start
    await until(
        lambda: (busy.driver.cpu_seconds() or 0) - (start[1] or 0) >= 0.2,
        timeout=10,
        what="the busy child's CPU time to grow",
    )
    assert (idle.driver.cpu_seconds() or 0) - (start[0] or 0) < 0.1
    assert idle.driver.asleep() is True  # its event loop waits for input
    assert busy.driver.asleep() is False
    await busy.driver.terminate(grace=1.0)
    assert busy.driver.cpu_seconds() is None  # gone


# --- terminate ----------------------------------------------------------------------------------
async def test_terminate_sends_sigterm_and_reaps(spawn: Spawn) -> None:
    child = await spawn("sleeper.py")
    await child.expect(b"ready")
    assert child.driver.poll()
    assert await child.driver.terminate(grace=5.0) == -signal.SIGTERM
    assert child.driver.exit_status == -signal.SIGTERM
    assert reaped(child.pid)
    assert state(child.pid) is None  # no zombie left behind


async def test_terminate_polite_input_first(spawn: Spawn) -> None:
    child = await spawn("sleeper.py", "SIGTERM")
    await child.expect(b"ready")
    assert await child.driver.terminate(polite=b"quit\r", grace=10.0) == 7
    assert reaped(child.pid)


async def test_sigterm_ignored_gets_sigkill_after_grace(spawn: Spawn) -> None:
    child = await spawn("sleeper.py", "SIGTERM", "SIGHUP")
    await child.expect(b"ready")  # the handler is in place
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await child.driver.terminate(grace=0.3) == -signal.SIGKILL
    assert loop.time() - t0 >= 0.25  # it did wait for SIGTERM to work first
    assert reaped(child.pid)
    assert state(child.pid) is None


async def test_terminate_kills_the_process_group(spawn: Spawn) -> None:
    """A grandchild ignoring SIGTERM and SIGHUP still dies: the group gets SIGKILL at the end."""
    child = await spawn("spawn_grandchild.py")
    await child.expect(b"\n")
    grandchild = int(bytes(child.out).split()[1])
    assert running(grandchild)
    assert os.getpgid(grandchild) == child.pid
    assert await child.driver.terminate(grace=1.0) == -signal.SIGTERM
    assert reaped(child.pid)
    # not our child to reap: dead (gone, or a zombie of whoever inherited it) is what counts
    await until(lambda: not running(grandchild), timeout=5.0, what="the grandchild to die")


async def test_terminate_is_idempotent(spawn: Spawn) -> None:
    child = await spawn("sleeper.py")
    await child.expect(b"ready")
    first, second = await asyncio.gather(child.driver.terminate(), child.driver.terminate())
    assert first == second == -signal.SIGTERM
    assert await child.driver.terminate() == -signal.SIGTERM
    assert await child.driver.terminate(polite=b"quit\r") == -signal.SIGTERM
    assert not child.driver.poll()
    assert reaped(child.pid)
    with pytest.raises(BrokenPipeError):
        child.driver.write(b"x")
    child.driver.resize(30, 100)  # a no-op once the child is gone


async def test_a_start_cancelled_while_forking_leaves_its_child_to_terminate(
    tmp_path: Path,
) -> None:
    """The fork runs on the spawner thread, which a cancelled caller cannot stop: the child it
    makes after the cancel is still stopped and reaped by terminate() (seen in CI: a claude
    outlived its pool)."""
    child = Child([sys.executable, helper("sleeper.py")], tmp_path)
    release = threading.Event()
    # hold the one spawner thread so the fork happens only after the cancel
    hold = asyncio.get_running_loop().run_in_executor(_SPAWNER, release.wait, 5.0)
    start = asyncio.ensure_future(child.driver.start())
    await asyncio.sleep(0)  # let start() queue its fork
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    release.set()
    await hold
    status = await child.driver.terminate(grace=0)
    assert status is not None
    assert reaped(child.pid)


# --- dying with the parent ----------------------------------------------------------------------
async def test_child_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL a process that spawned a sleeper through PtyDriver: PR_SET_PDEATHSIG kills the
    sleeper. The sleeper ignores SIGHUP, so the hangup of the closing PTY master cannot be it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    parent = await asyncio.create_subprocess_exec(
        sys.executable,
        helper("driver_parent.py"),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert parent.stdout is not None
    try:
        line = await asyncio.wait_for(parent.stdout.readline(), 10.0)
        sleeper = int(line)
        assert running(sleeper)
    finally:
        parent.kill()
        await parent.wait()
    try:
        await until(lambda: not running(sleeper), timeout=5.0, what="the orphan to die")
    finally:
        if running(sleeper):  # do not leave it behind if the assertion failed
            os.kill(sleeper, signal.SIGKILL)


# --- never block the loop -----------------------------------------------------------------------
async def test_io_and_terminate_do_not_block_the_loop(spawn: Spawn) -> None:
    child = await spawn("count_stdin.py", str(len(PAYLOAD)))
    await child.expect(b"ready")
    digest = hashlib.sha256(PAYLOAD).hexdigest().encode()
    with blockbuster_ctx():
        child.driver.write(PAYLOAD)
        await child.expect(digest, timeout=15.0)
        assert child.driver.write_pending == 0
        await asyncio.wait_for(child.eof.wait(), 5.0)
        assert await child.driver.terminate() == 0
    assert reaped(child.pid)


async def test_terminate_of_a_stubborn_child_does_not_block_the_loop(spawn: Spawn) -> None:
    child = await spawn("sleeper.py", "SIGTERM", "SIGHUP")
    await child.expect(b"ready")
    with blockbuster_ctx():
        assert await child.driver.terminate(polite=b"ignored\r", grace=0.2) == -signal.SIGKILL


@pytest.mark.blocking  # it allows each blocking call it finds, to name them all
async def test_start_does_not_block_the_loop(tmp_path: Path) -> None:
    blocked: list[str] = []
    with blockbuster_ctx() as bb:
        for _ in range(10):
            child = Child([sys.executable, helper("sleeper.py")], tmp_path)
            try:
                await child.driver.start()
                break
            except BlockingError as exc:
                _clean_up_failed_spawn(exc)
                # note the call, allow it, and look for the next one
                name = str(exc).removeprefix("Blocking call to ")
                blocked.append(name)
                bb.functions[name].deactivate()
    await child.driver.terminate(grace=0)
    assert blocked == []


def _clean_up_failed_spawn(exc: BaseException) -> None:
    """If ptyprocess.spawn raised after forking, kill and reap its child and close the PTY, so
    nothing outlives the test and PtyProcess.__del__ (which sleeps) has nothing left to do."""
    tb = exc.__traceback__
    while tb is not None:
        proc = tb.tb_frame.f_locals.get("inst")
        if proc is not None and hasattr(proc, "fileobj"):
            os.kill(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
            proc.terminated = True
            proc.fileobj.close()
            proc.closed = True
            return
        tb = tb.tb_next


# --- argv exec could never take ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "env", "why"),
    [
        (["/bin/true", "x\0y"], {}, "NUL"),
        (["/bin/true"], {"A": "b\0c"}, "cannot be passed"),
        (["/bin/true"], {"A=B": "c"}, "cannot be passed"),
        (["/bin/true", "x" * (128 * 1024)], {}, "longer than"),
        (["/bin/true"], {"BIG": "x" * (200 * 1024)}, "too long"),
        (["/bin/true"] + ["x" * 100_000] * 12, {}, "limit"),
    ],
)
async def test_unexecutable_argv_is_refused_before_forking(
    tmp_path: Path, argv: list[str], env: dict[str, str], why: str
) -> None:
    before = set(children())
    driver = PtyDriver(
        argv, env=env, cwd=str(tmp_path), rows=24, cols=80, on_output=print, on_eof=print
    )
    with pytest.raises(SpawnRefused, match=why):
        await driver.start()
    assert driver.pid is None
    assert set(children()) == before


async def test_a_child_that_cannot_exec_never_outlives_the_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the pre-fork check, a NUL in argv made os.execvpe raise ValueError in the forked
    child, which ptyprocess does not catch: a copy of the daemon that never exited, and a spawner
    thread blocked on its error pipe for good (every later spawn hung). The child now execs in
    its own preexec step, where any failure is reported and ends the fork."""
    monkeypatch.setattr("claude_relay.pty_pool.driver.check_exec_args", lambda argv, env: None)
    before = set(children())
    child = Child(["/bin/true", "x\0y"], tmp_path)
    with pytest.raises(OSError, match="ValueError") as failed:
        await asyncio.wait_for(child.driver.start(), 10.0)
    try:
        forked = set(children()) - before
        await until(
            lambda: all(not running(p) for p in forked), timeout=5.0, what="the fork to exit"
        )
        # and the spawner thread is free: the next spawn works
        ok = Child([sys.executable, "-c", "print('next')"], tmp_path)
        await asyncio.wait_for(ok.driver.start(), 10.0)
        await ok.expect(b"next")
        assert await ok.exited() == 0
    finally:
        _clean_up_failed_spawn(failed.value)
