"""PTY driver: one child process in a pseudo-terminal, read and written without blocking the loop.

This is the only module that imports ptyprocess. Bytes read from the master are handed to a
callback (the screen reader); writes are non-blocking with a small backlog drained by
`loop.add_writer`. Termination is polite → SIGTERM to the process group → SIGKILL, always reaped
through `isalive()` (waitpid WNOHANG), never through ptyprocess's sleeping close/terminate/wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import gc
import logging
import os
import signal
import struct
import sys
import termios
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from ptyprocess import PtyProcess

log = logging.getLogger(__name__)

# One read is bounded so a burst of output cannot monopolise the loop; the reader is called again
# for whatever is left.
READ_CHUNK = 64 * 1024
_PR_SET_PDEATHSIG = 1
_TIOCGPTN = 0x80045430  # Linux: the number N of a PTY master's terminal, /dev/pts/N
# Linux limits one argv/environment string to 32 pages (MAX_ARG_STRLEN) and all of them together
# to a quarter of the stack limit (8 MiB by default); stay well inside the latter.
MAX_ARG_STRLEN = 128 * 1024
MAX_EXEC_BYTES = 1024 * 1024

# Forks happen on one long-lived thread: PR_SET_PDEATHSIG fires when the *forking thread* exits,
# so that thread must live as long as the daemon, and spawning (which stats the binary and reads
# the exec-error pipe) must not run on the event loop. Executor workers never exit on their own.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pty-spawn")
# When the spawn now running on that thread began (monotonic), for health: a fork+exec takes
# milliseconds, so one that has not returned for long means every later spawn waits behind it.
_spawning_since: float | None = None
SPAWN_STUCK_AFTER = 30.0


def spawner_stuck() -> float | None:
    """Seconds the current spawn has been running, if over SPAWN_STUCK_AFTER; else None."""
    since = _spawning_since
    if since is None:
        return None
    running = time.monotonic() - since
    return running if running > SPAWN_STUCK_AFTER else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Runs in the child before exec: SIGKILL it if the daemon dies without cleaning up.

    Together with the SIGHUP a session leader receives when the PTY master closes, this makes
    sure no claude outlives a crashed (SIGKILLed) daemon.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The daemon may ignore signals (e.g. SIGINT during shutdown); the child must not inherit that.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)


class SpawnRefused(ValueError):
    """argv or environment that exec could never take; refused before anything is forked."""


def check_exec_args(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Refuse what would make exec fail in the forked child.

    An embedded NUL (or `=` in a variable name) makes `os.execvpe` raise ValueError, which
    ptyprocess does not catch: the forked copy of the daemon then never exits and the spawner
    thread waits on its error pipe for good. Over-long strings fail with E2BIG, which is reported
    cleanly, but there is no point forking for it.
    """
    if not argv:
        raise SpawnRefused("empty argv")
    for arg in argv:
        if "\0" in arg:
            raise SpawnRefused("an argument contains a NUL character")
        if len(arg.encode(errors="surrogateescape")) >= MAX_ARG_STRLEN:
            raise SpawnRefused(f"an argument is longer than {MAX_ARG_STRLEN - 1} bytes")
    total = sum(len(a.encode(errors="surrogateescape")) + 1 for a in argv)
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise SpawnRefused(f"environment variable {key[:40]!r} cannot be passed to exec")
        entry = len(key.encode(errors="surrogateescape")) + len(
            value.encode(errors="surrogateescape")
        )
        if entry + 1 >= MAX_ARG_STRLEN:
            raise SpawnRefused(f"environment variable {key[:40]!r} is too long")
        total += entry + 2
    if total > MAX_EXEC_BYTES:
        raise SpawnRefused(f"argv and environment take {total} bytes (limit {MAX_EXEC_BYTES})")


_EXEC_ERRNO = "exec failed, errno "


def _child_exec(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> Callable[[], None]:
    """The child's last steps, run as ptyprocess's `preexec_fn`: chdir and exec *here*.

    ptyprocess reports only OSError from its own chdir/exec; anything else (ValueError, …)
    would unwind a forked copy of the daemon that never exits. Inside preexec_fn every
    `Exception` is written to the error pipe and the child `_exit`s, so exec happens here and
    whatever it raises is turned into one.
    """

    def run() -> None:  # pragma: no cover - runs in the forked child
        try:
            _die_with_parent()
            os.chdir(cwd)
            os.execvpe(argv[0], list(argv), dict(env))
        except OSError as exc:
            # ptyprocess reports a preexec_fn failure's class and message, not its errno
            raise RuntimeError(f"{_EXEC_ERRNO}{exc.errno}:{exc.strerror}") from None
        except BaseException as exc:  # nothing may unwind past the fork
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None

    return run


class PtyDriver:
    """Owns one PtyProcess. Not thread-safe; use from the event loop thread only."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        rows: int,
        cols: int,
        on_output: Callable[[bytes], None],
        on_eof: Callable[[], None],
    ) -> None:
        self._argv = list(argv)
        self._env = dict(env)
        self._cwd = cwd
        self._rows = rows
        self._cols = cols
        self._on_output = on_output
        self._on_eof = on_eof
        self._proc: PtyProcess | None = None
        self._forking: asyncio.Future[PtyProcess] | None = None
        self._fd = -1
        self._out = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._eof = False
        self._drained = asyncio.Event()
        self._drained.set()
        self.exit_status: int | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)

    async def start(
        self, extra_env: Mapping[str, str] | None = None, argv: Sequence[str] | None = None
    ) -> None:
        """Fork and exec the child on the spawner thread (with `extra_env` added to its
        environment: values known only at start). Raises OSError for a bad binary, SpawnRefused
        (before forking) for argv or environment exec could not take."""
        self._env.update(extra_env or {})
        if argv is not None:  # known only at start (names files made for this child)
            self._argv = list(argv)
        check_exec_args(self._argv, self._env)
        self._loop = asyncio.get_running_loop()
        self._forking = self._loop.run_in_executor(_SPAWNER, self._spawn)
        # A cancelled caller cannot stop the fork in its thread; the child it makes is adopted
        # by terminate(), which the caller's clean-up runs.
        self._adopt(await asyncio.shield(self._forking))

    def _adopt(self, proc: PtyProcess) -> None:
        self._forking = None
        self._proc = proc
        self._fd = int(proc.fd)
        os.set_blocking(self._fd, False)
        assert self._loop is not None
        self._loop.add_reader(self._fd, self._readable)
        log.debug("spawned", extra={"pid": proc.pid})

    def _spawn(self) -> PtyProcess:
        global _spawning_since  # noqa: PLW0603 - one spawner thread, read by health
        _spawning_since = time.monotonic()
        try:
            return self._fork()
        finally:
            _spawning_since = None

    def _fork(self) -> PtyProcess:
        failure: Exception
        try:
            return PtyProcess.spawn(
                self._argv,
                env=self._env,
                echo=False,
                preexec_fn=_child_exec(self._argv, self._env, self._cwd),
                dimensions=(self._rows, self._cols),
            )
        except OSError as exc:
            exc.__traceback__ = None  # drop the frames that hold the half-made PtyProcess
            failure = exc
            if exc.errno and not exc.strerror:  # ptyprocess re-raises exec errors bare
                failure = OSError(exc.errno, f"{os.strerror(exc.errno)}: {self._argv[0]}")
        except Exception as exc:  # the child's preexec_fn failed (see _child_exec)
            code, _, message = str(exc).removeprefix(_EXEC_ERRNO).partition(":")
            if str(exc).startswith(_EXEC_ERRNO) and code.isdigit():
                failure = OSError(int(code), f"{message}: {self._argv[0]}")
            else:
                failure = OSError(errno.ENOEXEC, f"{exc}: {self._argv[0]}")
        # When exec fails after the fork, ptyprocess's half-made PtyProcess (kept alive by the
        # traceback) holds a zombie and the PTY fd; collecting it here runs its __del__, which
        # reaps the child and sleeps briefly — on this thread, not on the event loop.
        gc.collect()
        raise failure

    # --- reading -----------------------------------------------------------------------------
    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            # Linux reports EIO on the master once the child side is closed (the child exited).
            if exc.errno not in (errno.EIO, errno.EBADF):
                log.warning("pty read failed: %s", exc, extra={"pid": self.pid})
            data = b""
        if not data:
            self._set_eof()
            return
        self._on_output(data)

    def _set_eof(self) -> None:
        if self._eof:
            return
        self._eof = True
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._out.clear()
        self._drained.set()  # nothing will ever be written now; don't keep drain() waiting
        self._on_eof()

    # --- writing -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue bytes for the child; never blocks. Large pastes drain through add_writer."""
        if self._eof or self._fd < 0:
            raise BrokenPipeError("the claude process is gone")
        was_empty = not self._out
        self._out += data
        self._drained.clear()
        if was_empty:
            self._flush()

    def _flush(self) -> None:
        assert self._loop is not None
        while self._out:
            try:
                n = os.write(self._fd, self._out[:READ_CHUNK])
            except BlockingIOError:
                break
            except OSError:
                self._out.clear()
                self._loop.remove_writer(self._fd)
                self._drained.set()
                return
            del self._out[:n]
        if self._out:
            self._loop.add_writer(self._fd, self._flush)
        else:
            self._loop.remove_writer(self._fd)
            self._drained.set()

    async def drain(self) -> None:
        """Wait until every queued byte has been written to the PTY."""
        await self._drained.wait()

    @property
    def write_pending(self) -> int:
        return len(self._out)

    def unread_input(self) -> int | None:
        """Bytes sent to claude that it has not read yet: our own backlog plus what waits in its
        terminal's input queue (TIOCINQ on /dev/pts/N), or None where that cannot be asked
        (not Linux). A prompt still in there is not lost, only not taken yet (a loaded machine).

        The terminal is opened only for the question and closed at once: holding it open would
        keep the PTY alive after claude exits, and the reader would never see EOF.
        """
        if self._fd < 0 or self._eof or not sys.platform.startswith("linux"):
            return None
        try:
            raw = fcntl.ioctl(self._fd, _TIOCGPTN, struct.pack("I", 0))
            n = struct.unpack("I", raw)[0]
            fd = os.open(f"/dev/pts/{n}", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                queued = struct.unpack("i", fcntl.ioctl(fd, termios.TIOCINQ, b"\0" * 4))[0]
            finally:
                os.close(fd)
        except OSError:
            return None
        return len(self._out) + int(queued)

    def cpu_seconds(self) -> float | None:
        """CPU time claude has used so far (user + system, /proc/<pid>/stat), or None where that
        cannot be read (not Linux, gone). A claude whose CPU time grows is at work on what it
        was sent even while its screen stays still (digesting a long paste on a loaded machine).
        """
        stat = self._stat()
        return None if stat is None else stat[0]

    def asleep(self) -> bool | None:
        """Whether claude's main thread sleeps (state S: its event loop waits for input, nothing
        queued), or None where that cannot be read."""
        stat = self._stat()
        return None if stat is None else stat[1] == "S"

    def _stat(self) -> tuple[float, str] | None:
        pid = self.pid
        if pid is None or self._eof or not sys.platform.startswith("linux"):
            return None
        try:
            fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_NONBLOCK)
            try:
                raw = os.read(fd, 4096)
            finally:
                os.close(fd)
            # the fields after the command name, which may itself hold spaces and parentheses
            fields = raw[raw.rindex(b")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            return cpu, fields[0].decode()
        except (OSError, ValueError, IndexError):
            return None

    def resize(self, rows: int, cols: int) -> None:
        if self._proc is not None and not self._eof:
            self._proc.setwinsize(rows, cols)

    # --- lifetime ----------------------------------------------------------------------------
    def poll(self) -> bool:
        """True while the child is alive; reaps it (waitpid WNOHANG) once it has exited."""
        if self._proc is None:
            return False
        if self.exit_status is not None:
            return False
        try:
            alive = bool(self._proc.isalive())
        except Exception:  # ptyprocess raises if waitpid fails (already reaped elsewhere)
            alive = False
        if not alive:
            status = self._proc.exitstatus
            sig = self._proc.signalstatus
            self.exit_status = int(status) if status is not None else -int(sig or 0)
        return alive

    def _signal_group(self, sig: int) -> None:
        pid = self.pid
        if pid is None:
            return
        # The child called setsid() (ptyprocess does), so its pid is its process group id and
        # anything it spawned without a new session dies with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def terminate(self, *, polite: bytes | None = None, grace: float = 2.0) -> int | None:
        """Stop the child and reap it. Returns its exit status (negative: killed by signal)."""
        if self._proc is None and self._forking is not None:
            # start() was cancelled while the spawner thread forked: the child is ours to stop
            with contextlib.suppress(Exception):
                self._adopt(await asyncio.shield(self._forking))
        if self._proc is None or self._proc.closed:
            # never started, or already stopped: signalling its group again could hit a
            # process that has since been given the same id
            return self.exit_status
        if self.poll() and polite is not None and not self._eof:
            with contextlib.suppress(OSError):
                self.write(polite)
            await self._wait_dead(grace / 2)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if not self.poll():
                break
            self._signal_group(sig)
            await self._wait_dead(wait)
        if self.poll():  # pragma: no cover - SIGKILL did not work within 5 s
            log.error("child survived SIGKILL", extra={"pid": self.pid})
        # Grandchildren left in the group (they are not ours to wait for) still get the signal.
        self._signal_group(signal.SIGKILL)
        self._close_fd()
        return self.exit_status

    async def _wait_dead(self, within: float) -> None:
        deadline = asyncio.get_running_loop().time() + within
        delay = 0.005
        while self.poll() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(delay)  # waitpid has no awaitable form; back off politely
            delay = min(delay * 2, 0.05)

    def _close_fd(self) -> None:
        if self._proc is None:
            return
        if self._loop is not None and self._fd >= 0 and not self._eof:
            self._eof = True
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        if not self._proc.closed:
            with contextlib.suppress(OSError):
                self._proc.fileobj.close()
            # Mark closed ourselves: PtyProcess.close()/__del__ would sleep on the loop thread.
            self._proc.closed = True
        self._fd = -1
        self._out.clear()
        self._drained.set()
