"""One claude process and its state machine: starting → ready ⇄ busy → dead.

A session owns its PTY driver, its virtual screen and the tail of its transcript. `run_turn`
pastes one prompt and yields text deltas (from screen snapshots, polled on PTY output and at least
every 100 ms) and then the exact `TurnResult` (from the transcript). All TUI knowledge comes from
`tui` (the default rendering) or `ax` (`--ax-screen-reader`, `screen_mode = "ax"`); this module
only sequences it in time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from claude_relay.protocols import errors
from claude_relay.protocols.model import (
    SpawnSpec,
    TextBlock,
    TextDelta,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    TurnEvent,
    TurnResult,
)

from . import attachments, ax, tui, versions
from .broker import Broker, Channel, ParkedCall, mcp_result
from .driver import PtyDriver, SpawnRefused
from .files import write_private
from .isolation import claude_tmp_root, private_dir_env, relay_config_dir
from .screen import ScreenReader, Snapshot
from .settings import PoolSettings
from .spawn import MCP_CONFIG_FILE, SYSTEM_PROMPT_FILE, build_argv, build_env, private_args
from .transcript import (
    TranscriptTail,
    TurnLog,
    find_transcript,
    records_clear,
    repair_order,
    transcript_ids,
)

log = logging.getLogger(__name__)


class ClaudeExited(errors.ApiError):
    """The claude process is gone. `answered` tells whether it had started on the prompt."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class ImageNotTaken(ClaudeExited):
    """claude left a pasted image path as text; a second claude refusing it means a bad image."""

    def as_request_error(self) -> errors.InvalidRequestError:
        return errors.InvalidRequestError(self.message)


State = Literal["starting", "ready", "busy", "parked", "dead"]
POLL_INTERVAL = 0.1  # the screen is read at least this often while waiting
MIN_POLL_GAP = 0.008  # and at most this often: a frame written in several chunks coalesces
TRANSCRIPT_POLL = 0.01  # transcript poll interval once the screen shows the turn ended
TRANSCRIPT_GRACE = 3.0  # idle screen but no turn_duration yet: give the file this long
# claude draws its prompt a moment before its input handler listens (seen right after the trust
# dialog on v2.1.197: a paste sent then vanished); ready means ready *and* quiet this long.
READY_QUIET = 0.25
# ax mode: ready also waits for claude's terminal query (`ax.TERMINAL_QUERY`), or this long at
# an idle prompt for a claude that never sends one
AX_READY_WITHOUT_QUERY = 2.0
RESUBMIT_AFTER = 1.5  # no echo, not busy, empty input this long after a paste: it was lost
PROMPT_LOST_AFTER = 10.0  # after the resubmits, a screen still this long: claude did not take it
# A claude that draws nothing after a paste may still be digesting it: a 300-line prompt is ~150
# pastes, which 2.1.332 on a loaded machine took over 10 s to take in before drawing anything,
# and a second copy pasted meanwhile doubled the prompt and wedged the turn. CPU time it spends
# (sampled every CPU_SAMPLE s; an idle claude uses ~3 % of a core) counts as a screen change,
# for at most PROMPT_BUSY_MAX s after the paste.
CPU_SAMPLE = 1.0
BUSY_CPU = 0.05
PROMPT_BUSY_MAX = 60.0
# A turn still running this long is logged once with what it waits on (the screen, the parked
# calls, the transcript's state): a slow turn's cause is otherwise invisible in the log.
SLOW_TURN_LOG = 30.0
# claude writes a message's tool_use blocks to its transcript before it calls the tools, but
# once in ~500 parked calls (2.1.332, a loaded machine) it had not after 40 s: a call parked
# this long without its transcript entry is answered from the MCP call itself.
PARKED_TRANSCRIPT_GRACE = 3.0
TOOLS_LISTED_TIMEOUT = 5.0  # claude re-lists tools at once on list_changed (~10 ms measured)
TOOLS_LIST_TRIES = 2
# ...but applies the new list a moment later: a prompt sent right after the re-list still went out
# without the tools in 1 of 8 tries (v2.1.197); 50 ms sufficed in 12 of 12 on an idle machine,
# and under load even 100 ms did not always (a model call of a tool claude did not have yet).
# claude shows nothing when it is done, so the wait is for its event loop to fall idle: its main
# thread asleep and no CPU spent over one TOOLS_IDLE_STEP, at least TOOLS_SETTLE, at most
# TOOLS_SETTLE_MAX (or TOOLS_SETTLE alone where /proc cannot tell).
TOOLS_SETTLE = 0.05
TOOLS_IDLE_STEP = 0.03
TOOLS_SETTLE_MAX = 1.0
# the same wait before the Enter of a prompt pasted in several pieces (at most this long), idle
# for two steps from the end of the paste (60 ms for a claude that took it in at once): one step
# after 50 ms sufficed in 8 of 8 replays of the failing fuzz cases at load 13-14
PASTE_SETTLE_MAX = 10.0
PASTE_IDLE_STEPS = 2
# a pasted image path shows as `[Image #N]` 20–110 ms later (0.2–0.4 s for a 6.7 MB PNG that
# claude resizes); beyond this claude did not take it
IMAGE_ATTACH_TIMEOUT = 10.0
IMAGE_AS_TEXT_SETTLE = 1.0  # a pasted image path left as text this long: claude refused it
IMAGE_PASTE_QUIET = 0.1  # screen unchanged this long before an image path is pasted
# `/clear` (stateless_reset = "clear"): measured 0.34 s to an idle prompt on both CLIs
RESET_TIMEOUT = 10.0
RESET_QUIET = 0.1  # an empty prompt drawn this long after the new transcript appeared
PAST_IDS_KEPT = 8  # earlier conversation ids a reset claude keeps known (see Session.past_ids)
RESET_LIST_EVERY = 0.02  # the transcript directory is listed this often while /clear runs

# What a turn pastes: text, and image files (a Path) where the client put images.
Prompt = str | Sequence[str | Path]


class Session:
    def __init__(
        self,
        spec: SpawnSpec,
        settings: PoolSettings,
        binary: str,
        *,
        session_id: str | None = None,
        resume: bool = False,
        ephemeral: bool = True,
        broker: Broker | None = None,
        cli_version: str | None = None,
    ) -> None:
        self.spec = spec
        self.cli_version = cli_version  # named in start-up errors: dialogs differ per version
        self._wraps = versions.at_least(cli_version, versions.PASTE_WRAP)
        self.settings = settings
        self.id = session_id or str(uuid.uuid4())
        # the id claude was started with: 2.1.197 keeps writing that conversation's title to its
        # file after every `/clear`, re-creating it (see past_ids)
        self.spawn_id = self.id
        self.ephemeral = ephemeral  # stateless: its transcript is deleted when it closes
        self.state: State = "starting"
        self.created = time.time()
        self.last_used = self.created
        self.turns = 0
        self.resets = 0  # new conversations started in this claude (stateless_reset = "clear")
        # ids of the last conversations this claude held before its resets: claude may still
        # write to (and so re-create) an old transcript shortly after `/clear`, and another
        # reset must never take such a file for its own new conversation
        self.past_ids: collections.deque[str] = collections.deque(maxlen=PAST_IDS_KEPT)
        self._closed: asyncio.Future[None] | None = None  # close(), once started
        self.parked_ids: tuple[str, ...] = ()  # tool calls claude waits in while `parked`
        self._binary = binary
        self._resume = resume
        self.on_death: Callable[[], None] | None = None  # the pool's wake-up when claude exits
        self._ax = settings.screen_mode == "ax"
        self._columns = ax.columns(settings.columns) if self._ax else settings.columns
        self._screen = ScreenReader(self._columns, settings.rows)
        self._marks = ax.MarkScanner()
        self._ends = 0  # OSC 133 D marks seen (ax mode): claude finished a turn
        self._queried = False  # ax mode: claude's terminal query seen
        self._turn_echo = 0  # ax mode: echoes before this turn's prompt (its reply follows)
        self._changed = asyncio.Event()
        self._eof = False
        self._cfg = relay_config_dir(settings)
        self._tail = TranscriptTail()
        self._tmp: attachments.TurnFiles | None = None  # claude's own temp dir, made at start
        env = build_env(os.environ, settings, spec)
        self._broker = broker
        # claude's own MCP connection: the caller's tools, and the calls it parks there
        self.channel: Channel | None = None
        if broker is not None and broker.url is not None:
            self.channel = broker.open()
        self._mcp_url = broker.endpoint(self.channel) if broker and self.channel else None
        self._driver = PtyDriver(
            [binary],  # the argv names this claude's private files, made in start()
            env=env,
            cwd=str(settings.workspace),
            rows=settings.rows,
            cols=self._columns,
            on_output=self._on_output,
            on_eof=self._on_eof,
        )

    # --- plumbing ------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._driver.pid

    def _on_output(self, data: bytes) -> None:
        self._screen.feed(data)
        if self._ax:
            self._ends += sum(1 for m in self._marks.feed(data) if m.kind == "D")
            self._queried = self._queried or ax.TERMINAL_QUERY in data
        self._changed.set()

    def _state(self, snap: Snapshot) -> tui.ScreenState:
        return ax.screen_state(snap) if self._ax else tui.classify(snap)

    def _echo_count(self, snap: Snapshot) -> int:
        return ax.echo_count(snap) if self._ax else tui.echo_count(snap)

    def _width(self) -> int:
        cols = self._columns
        return ax.text_width(cols) if self._ax else tui.text_width(cols)

    def _on_eof(self) -> None:
        self._eof = True
        self._changed.set()
        if self.on_death is not None:
            self.on_death()

    @property
    def alive(self) -> bool:
        return not self._eof and self._driver.poll()

    async def _next_snapshot(self, last_seq: int, wait: float = POLL_INTERVAL) -> Snapshot:
        """Wait for new PTY output (or `wait` seconds), then read the screen."""
        if self._screen.seq == last_seq and not self._eof:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
            # coalesce bursts: Ink writes one frame in several chunks
            await asyncio.sleep(MIN_POLL_GAP)
        self._changed.clear()
        return self._screen.snapshot()

    def screen(self) -> Snapshot:
        """claude's screen as last drawn (read-only: the dashboard's mirror). The render the turn
        watcher made of it is reused while no bytes arrived."""
        return self._screen.snapshot()

    def _named(self) -> str:
        return f"claude {self.cli_version}" if self.cli_version else "claude"

    def _log_extra(self) -> dict[str, object]:
        return {"session_id": self.id, "pid": self.pid}

    # --- start ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn claude and wait until its prompt is ready. Raises RelayError with the screen."""
        if self._resume:
            await asyncio.to_thread(lambda: repair_order(self._transcript_path()))
        try:
            self._tmp = await asyncio.to_thread(
                attachments.TurnFiles.create, claude_tmp_root(self.settings)
            )
            await self._driver.start(
                private_dir_env(self._tmp.path),
                await asyncio.to_thread(self._argv, self._tmp.path),
            )
        except (OSError, SpawnRefused) as exc:
            await self._drop_tmp()
            self.state = "dead"
            raise errors.ServiceUnavailableError(
                f"cannot start claude ({self._binary}): {exc}", category="spawn_failed"
            ) from exc
        deadline = time.monotonic() + self.settings.ready_timeout
        quiet_since: float | None = None
        seq = -1
        while True:
            snap = await self._next_snapshot(seq)
            seq = snap.seq
            st = self._state(snap)
            if self._eof:
                await self._die()
                log.warning("claude exited during startup; screen:\n%s", _screen_text(snap))
                raise errors.ServiceUnavailableError(
                    f"{self._named()} exited during startup: {_last_line(snap)}",
                    category="exited_at_start",
                )
            if st.dialog is not None:
                # Trust and onboarding are settled in claude's own state before it starts
                # (`isolation.prepare`): any dialog now is one the relay does not know how to
                # settle, and waiting would only turn it into a timeout.
                await self._die()
                raise _dialog_error(st, self.cli_version)
            if st.ready:
                quiet_since = quiet_since or time.monotonic()
                quiet = time.monotonic() - quiet_since
                if quiet >= READY_QUIET and (
                    not self._ax or self._queried or quiet >= AX_READY_WITHOUT_QUERY
                ):
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), READY_QUIET)
                if self._changed.is_set():
                    quiet_since = None
                continue
            quiet_since = None
            if time.monotonic() > deadline:
                await self._die()
                log.warning("claude not ready; screen:\n%s", _screen_text(snap))
                raise errors.ServiceUnavailableError(
                    f"{self._named()} was not ready after {self.settings.ready_timeout:.0f}s "
                    "(its screen is in the daemon's log)",
                    category="not_ready",
                )
        self._tail.path = await asyncio.to_thread(self._transcript_path)
        if self._tail.path is not None:  # resumed: skip what earlier turns wrote
            await asyncio.to_thread(self._tail.read)
        self.state = "ready"
        log.info("session ready", extra=self._log_extra())

    def _argv(self, private: Path) -> list[str]:
        """claude's argv, with the system prompt and MCP config written (0600) into `private`,
        the dir that is deleted with this claude. Blocking: call from a thread."""
        named = {}
        for name, data in private_args(self.spec, self._mcp_url).items():
            named[name] = private / name
            write_private(named[name], data)
        return build_argv(
            self._binary,
            self.spec,
            self.id,
            resume=self._resume,
            settings=self.settings,
            mcp_config=named.get(MCP_CONFIG_FILE),
            system_file=named.get(SYSTEM_PROMPT_FILE),
            cli_version=self.cli_version,
        )

    def _project_dir(self) -> Path:
        """Where claude keeps the transcripts of conversations run in the workspace."""
        return self._cfg / "projects" / re.sub(r"[^A-Za-z0-9]", "-", str(self.settings.workspace))

    def _transcript_path(self) -> Path | None:
        """Where claude writes this conversation, once it exists. Blocking (a stat, or a scan of
        the projects directory): call through a thread."""
        guess = self._project_dir() / f"{self.id}.jsonl"
        if guess.exists():
            return guess
        return find_transcript(self._cfg, self.id)

    # --- turns ---------------------------------------------------------------------------------
    async def run_turn(
        self,
        prompt: Prompt,
        tools: tuple[ToolSpec, ...] = (),
        tool_choice: ToolChoice | None = None,
    ) -> AsyncGenerator[TurnEvent, None]:
        """Paste `prompt`, stream deltas, end with the exact TurnResult or raise a RelayError.

        A `Path` in `prompt` is an image file claude attaches where it stands (`[Image #N]`);
        claude holds its bytes once the placeholder shows, so the file may go after the turn.

        `tools` are served to claude for this turn. When the model calls them, the turn ends with
        a `tool_use` result and the session is left `parked` (claude waits inside the call) until
        `resume_turn` brings the results. If the consumer stops early (client gone), the
        `finally` interrupts claude so the session is usable again (or marks it dead).
        """
        if self.state != "ready" or not self.alive:
            raise ClaudeExited(f"session {self.id} is {self.state}, not ready", answered=False)
        self.state = "busy"
        self.turns += 1
        self.last_used = time.time()
        finished = False
        try:
            await self._offer_tools(tools, tool_choice or ToolChoice())
            async for ev in self._turn(prompt):
                # the result is the end: a consumer that stops once it has it abandons nothing
                finished = isinstance(ev, TurnResult)
                yield ev
        finally:
            await self._end_turn(finished)

    async def resume_turn(
        self, results: tuple[ToolResultBlock, ...]
    ) -> AsyncGenerator[TurnEvent, None]:
        """Answer the parked tool calls with `results`; yield the rest of the turn like run_turn."""
        if self.state != "parked" or not self.alive or self.channel is None:
            raise ClaudeExited(f"session {self.id} is {self.state}, not parked", answered=False)
        self.state = "busy"
        self.last_used = time.time()
        self.parked_ids = ()
        finished = False
        try:
            for block in results:
                self.channel.answer(block.tool_use_id, mcp_result(block))
            async for ev in self._watch(time.monotonic(), None, after_tools=True):
                finished = isinstance(ev, TurnResult)
                yield ev
        finally:
            await self._end_turn(finished)

    async def _end_turn(self, finished: bool) -> None:
        if not finished and self.state in ("busy", "parked"):
            await self.interrupt()
        if self.state == "busy":
            self.state = "ready"
        self.last_used = time.time()

    async def _offer_tools(self, tools: tuple[ToolSpec, ...], choice: ToolChoice) -> None:
        channel = self.channel
        if channel is None:
            if tools:
                raise errors.ServiceUnavailableError(
                    "tools: this claude-relay runs without its MCP endpoint, so tools are off"
                )
            return
        channel.refuse = (
            "Tool use is disabled for this request (tool_choice is none). "
            "Answer without calling tools."
            if choice.type == "none"
            else None
        )
        if channel.set_tools(tools):
            for _ in range(TOOLS_LIST_TRIES):
                if await channel.wait_listed(TOOLS_LISTED_TIMEOUT):
                    break
                # Under load (3 of ~430 tool turns) claude let a list_changed pass; asking
                # again is harmless: it only makes claude fetch tools/list once more.
                log.warning(
                    "claude did not re-list its tools; notifying again", extra=self._log_extra()
                )
                channel.nudge()
            else:
                # This claude's MCP link is not working: it must not run the turn without the
                # caller's tools. Ending it lets the pool retry on another claude (the prompt
                # was not sent), or resume a sticky conversation in a new one.
                await self._die()
                raise ClaudeExited(
                    "claude did not reload its tool list "
                    f"within {TOOLS_LISTED_TIMEOUT * TOOLS_LIST_TRIES:.0f}s",
                    answered=False,
                )
            await self._settle()

    async def _settle(
        self, within: float = TOOLS_SETTLE_MAX, steps: int = 1, first: float = TOOLS_SETTLE
    ) -> None:
        """Wait until claude has taken in what it was just sent (see TOOLS_SETTLE): `first`
        seconds, then until idle for `steps` TOOLS_IDLE_STEPs in a row, within `within`."""
        await asyncio.sleep(first)
        deadline = time.monotonic() + within - first
        before = self._driver.cpu_seconds()
        idle = 0
        while before is not None and time.monotonic() < deadline:
            await asyncio.sleep(TOOLS_IDLE_STEP)
            now = self._driver.cpu_seconds()
            if now is None:
                return
            idle = idle + 1 if now == before and self._driver.asleep() else 0
            if idle >= steps:
                return
            before = now

    async def _turn(self, prompt: Prompt) -> AsyncIterator[TurnEvent]:
        if self._tail.path is not None:
            await asyncio.to_thread(self._tail.read)  # catch up: only this turn's lines count
        self._screen.mark()
        # the previous turn's prompt and reply are still on screen: rows count as this turn's
        # only once claude has echoed this prompt (an identical prompt looks alike otherwise)
        echoes = self._echo_count(self._screen.snapshot())
        self._turn_echo = echoes
        parts = (prompt,) if isinstance(prompt, str) else tuple(prompt)
        t0 = time.monotonic()
        await self._submit(parts)
        async for ev in self._watch(t0, parts, after_tools=False, echoes=echoes):
            yield ev

    async def _watch(
        self,
        t0: float,
        keys: tuple[str | Path, ...] | None,
        *,
        after_tools: bool,
        echoes: int = -1,
    ) -> AsyncIterator[TurnEvent]:
        """Follow claude from a submitted prompt (`keys`) or answered tool calls to the turn's end
        (the transcript's turn_duration) or to tool calls it parked with the broker."""
        settings = self.settings
        resubmitted = 0
        # pasting images takes a while (1.7 s for a 6.8 MB PNG): a lost prompt is judged from
        # the end of the paste, not from its start
        pasted = time.monotonic()
        timings: dict[str, float] = {}
        turn_log = TurnLog()
        width = self._width()
        stream: ax.AxStream | tui.StreamAssembler = (
            ax.AxStream(width, "eager" if settings.stream_policy == "eager" else "guarded")
            if self._ax
            else tui.StreamAssembler(width)
        )
        ends = self._ends  # ax mode: a D mark after this is the end of this turn
        started = keys is None  # resumed: claude is already at work
        echoed = False
        progress = ""
        # entering a long paste is not a stall: progress is counted from the end of the paste
        progress_t = pasted
        drawn: tuple[str, ...] = ()
        drawn_t = pasted
        cpu_t, cpu_last = pasted, self._driver.cpu_seconds()
        idle_since: float | None = None
        seq = -1
        last_read = 0.0
        looks_done = False
        slow_logged = False
        parked_t: float | None = None
        from_calls: tuple[ParkedCall, ...] = ()  # parked calls the transcript never showed
        channel = self.channel
        while True:
            # once the screen says the turn is over, only the transcript is awaited: poll it
            # often (claude writes it ~130 ms after the reply ends) instead of waiting for output
            parked = channel is not None and bool(channel.parked)
            wait = TRANSCRIPT_POLL if looks_done or parked else POLL_INTERVAL
            snap = await self._next_snapshot(seq, wait)
            seq = snap.seq
            now = time.monotonic()
            if self._eof or not self._driver.poll():
                await self._die()
                raise ClaudeExited(
                    "claude exited during the turn; the request was not answered",
                    answered=started,
                )
            st = self._state(snap)
            # a refused call (tool_choice none) is answered inside the turn: the reply follows it
            refused = channel is not None and channel.refuse is not None
            reply = ax.NO_REPLY
            if self._ax:
                # the reply follows this turn's own echo, never a `you:` row the model drew
                reply = ax.reply(snap, self._turn_echo, after_tools=after_tools or refused)
                resp = reply.response()
                if echoes >= 0 and reply is not ax.NO_REPLY:
                    echoes = -1
                    echoed = True
            else:
                resp = tui.response(snap, after_tools=after_tools or refused)
                if echoes >= 0 and tui.echo_count(snap) <= echoes:
                    resp = tui.NO_RESPONSE  # still the previous turn's rows
                elif echoes >= 0:
                    echoes = -1  # echoed: no need to count again
                    echoed = True
            if not started:
                # claude still drawing what was pasted (a long prompt under load) is not a
                # lost prompt: the give-up clock below runs from the screen's last change
                rows = tuple(r.text for r in snap.rows)
                if rows != drawn:
                    drawn, drawn_t = rows, now
            if st.dialog is not None:
                self._driver.write(tui.ESC)
                raise _dialog_error(st, self.cli_version)
            if st.busy or resp.rows:
                if not started:
                    timings["busy"] = now - t0
                started = True
            if resp.rows and not resp.error_text:
                if isinstance(stream, ax.AxStream):
                    delta = stream.update(reply)
                else:
                    delta = stream.update(resp.rows)
                if delta:
                    timings.setdefault("first_delta", now - t0)
                    yield TextDelta(delta)
            if resp.progress != progress:
                progress, progress_t = resp.progress, now
            # the transcript settles the turn; read it when claude looks done, else now and then
            looks_done = bool(started and not st.busy and (resp.completed or resp.error_text))
            # ax mode: claude's OSC 133 D mark (model text cannot write one: claude strips ESC
            # and BEL from it) comes 20-340 ms before the last frame; the transcript follows
            looks_done = looks_done or (started and self._ends > ends)
            if looks_done:
                timings.setdefault("screen_done", now - t0)
            if looks_done or parked or now - last_read > 0.25 or resp.interrupted:
                last_read = now
                if self._tail.path is None:
                    self._tail.path = await asyncio.to_thread(self._transcript_path)
                turn_log.add(await asyncio.to_thread(self._tail.read))
                if turn_log.prompt_seen:
                    started = True
            if parked and channel is not None:
                waiting = {c.tool_use_id for c in channel.parked}
                # the whole assistant message is in the transcript: every tool_use of it is known
                if waiting and waiting <= turn_log.tool_use_ids:
                    break
                parked_t = parked_t or now
                if waiting and now - parked_t > PARKED_TRANSCRIPT_GRACE:
                    from_calls = channel.parked
                    log.warning(
                        "claude's transcript does not show its tool calls %s after %.0fs; "
                        "answering from the MCP calls",
                        sorted(waiting - turn_log.tool_use_ids),
                        now - parked_t,
                        extra=self._log_extra(),
                    )
                    break
                progress_t = now  # a parked call is progress, not a stall
            if turn_log.done:
                break
            if started and not st.busy and st.input_box:
                idle_since = idle_since or now
                if now - idle_since > TRANSCRIPT_GRACE:
                    log.warning("turn ended without turn_duration", extra=self._log_extra())
                    break
            else:
                idle_since = None
            if keys is not None and not started and not st.busy:
                if now - cpu_t >= CPU_SAMPLE and now - pasted < PROMPT_BUSY_MAX:
                    cpu = self._driver.cpu_seconds()
                    if cpu is not None and cpu_last is not None and cpu - cpu_last >= BUSY_CPU:
                        drawn_t = now  # at work on what was pasted: not lost, not stuck
                    cpu_t, cpu_last = now, cpu
                quiet = now - max(pasted, drawn_t)
                if (
                    quiet > RESUBMIT_AFTER * (resubmitted + 1)
                    and not echoed
                    and not self._driver.unread_input()
                ):
                    # A prompt claude took but has not shown at work yet (a loaded machine)
                    # must not go in twice: the second copy is answered too, and its reply is
                    # joined to this turn's or becomes the next turn's (or both copies land in
                    # the input box as one doubled prompt). Bytes still unread in claude's
                    # terminal were not lost; the transcript may hold the prompt before the
                    # screen shows it. (Unread bytes skip only the re-paste: a claude that
                    # never reads them still meets the give-up below.)
                    if self._tail.path is None:
                        self._tail.path = await asyncio.to_thread(self._transcript_path)
                    turn_log.add(await asyncio.to_thread(self._tail.read))
                    if turn_log.prompt_seen:
                        started = True
                        continue
                    if st.ready and resubmitted < 2:
                        log.warning(
                            "prompt was not accepted; pasting again", extra=self._log_extra()
                        )
                        await self._submit(keys)
                        resubmitted += 1
                        continue
                    if st.input_box and st.input_text and resubmitted < 2:
                        self._driver.write(tui.ENTER)  # pasted but Enter was swallowed
                        resubmitted += 1
                        continue
                if now - max(pasted, drawn_t) > PROMPT_LOST_AFTER:
                    log.warning(
                        "claude did not accept the prompt; screen:\n%s",
                        _screen_text(snap),
                        extra=self._log_extra(),
                    )
                    raise errors.ApiError(
                        "claude did not accept the prompt (its screen is in the daemon's log)"
                    )
            if started and st.busy and now - progress_t > settings.stall_timeout:
                await self.interrupt()
                raise errors.TimeoutError_(
                    f"upstream stalled: no progress for {settings.stall_timeout:.0f}s; "
                    "the turn was interrupted"
                )
            if not slow_logged and now - t0 > SLOW_TURN_LOG:
                slow_logged = True
                log.warning(
                    "turn running for %.0fs: started=%s busy=%s parked=%s transcript=%s "
                    "(%d entries, tool_use ids %s, done=%s, prompt seen=%s); screen:\n%s",
                    now - t0,
                    started,
                    st.busy,
                    [c.tool_use_id for c in channel.parked] if channel is not None else None,
                    self._tail.path,
                    len(turn_log.entries),
                    sorted(turn_log.tool_use_ids),
                    turn_log.done,
                    turn_log.prompt_seen,
                    _screen_text(snap),
                    extra=self._log_extra(),
                )
            if now - t0 > settings.turn_timeout:
                await self.interrupt()
                raise errors.TimeoutError_(
                    f"the turn took longer than {settings.turn_timeout:.0f}s and was interrupted"
                )
        timings["done"] = time.monotonic() - t0
        err = turn_log.error()
        if err is not None:
            raise err
        result = turn_log.result()
        if from_calls:
            result = _with_calls(result, from_calls)
        elif not turn_log.entries:
            # no transcript: fall back to what the screen showed (should not happen)
            last = self._screen.snapshot()
            if self._ax:
                text = ax.reply(last, self._turn_echo, after_tools=after_tools).text(width)
            else:
                text = tui.rows_text(tui.response(last, after_tools=after_tools).rows, width)
            blocks = (TextBlock(text),) if text else ()
            result = TurnResult(blocks, "end_turn", result.usage)
        rest = stream.finish(result.text)
        if rest:
            yield TextDelta(rest)
        if result.tool_uses:
            # claude waits inside the MCP call until resume_turn answers it
            self.state = "parked"
            self.parked_ids = tuple(t.id for t in result.tool_uses)
            result = TurnResult(
                result.content,
                "tool_use",
                result.usage,
                model=result.model,
                upstream_message_id=result.upstream_message_id,
            )
        yield TurnResult(
            result.content,
            result.stop_reason,
            result.usage,
            model=result.model,
            stop_sequence=result.stop_sequence,
            upstream_message_id=result.upstream_message_id,
            timings=timings,
        )

    async def _submit(self, parts: tuple[str | Path, ...]) -> None:
        """Paste the prompt's parts in order, each image path alone (claude moves text that
        shares a paste with an image path), then Enter."""
        try:
            pastes = 0
            for i, part in enumerate(parts):
                if isinstance(part, Path):
                    await self._attach_image(part)
                    continue
                # only the prompt's very start can make a slash command or bash mode
                text = tui.sanitize_prompt(part, at_start=i == 0)
                keys = tui.paste_sequence(text, wraps=self._wraps)
                pastes += keys.count(tui.PASTE_START)
                self._driver.write(keys)
                await self._driver.drain()
            if pastes > 1:
                # An Enter that reached 2.1.332 while it was still taking in a long prompt's
                # pastes (a loaded machine) was lost: the prompt stayed in the input box.
                await self._settle(PASTE_SETTLE_MAX, steps=PASTE_IDLE_STEPS, first=0.0)
            await asyncio.sleep(tui.ENTER_DELAY)
            self._driver.write(tui.ENTER)
        except OSError as exc:  # BrokenPipeError: it died between turns
            await self._die()
            raise ClaudeExited(f"claude exited before the prompt: {exc}", answered=False) from exc

    async def _quiet(self, quiet: float, within: float) -> None:
        """Wait until claude has drawn nothing for `quiet` seconds (at most `within`)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not self._eof:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), quiet)
            except TimeoutError:
                return

    async def _attach_image(self, path: Path) -> None:
        """Paste an image's path and wait until claude shows it as a new `[Image #N]`."""
        # Text pasted just before must be taken in first: under load, a path pasted while claude
        # still handled the text paste stayed text in the input (2.1.332, load average ~10).
        await self._quiet(IMAGE_PASTE_QUIET, IMAGE_ATTACH_TIMEOUT / 2)
        snap = self._screen.snapshot()
        before = attachments.newest_image(self._state(snap).input_text)
        self._driver.write(tui.paste_keys(attachments.image_paste_text(path)))
        await self._driver.drain()
        deadline = time.monotonic() + IMAGE_ATTACH_TIMEOUT
        seq = snap.seq
        as_text_since: float | None = None
        while True:
            snap = await self._next_snapshot(seq)
            seq = snap.seq
            if self._eof:
                raise OSError("claude exited while attaching an image")
            text = self._state(snap).input_text
            if attachments.newest_image(text) > before:
                return
            # Under load claude can show the pasted path as text for a moment before it turns
            # it into `[Image #N]`; only a path that stays text means it could not decode it.
            if not attachments.pasted_as_text(text, path):
                as_text_since = None
            elif time.monotonic() - (as_text_since := as_text_since or time.monotonic()) >= (
                IMAGE_AS_TEXT_SETTLE
            ):
                # The decoder checked the header, yet claude left the path as text: it could not
                # decode the image, or (seen under heavy load, 1 in ~50 on 2.1.332) it gave up
                # on a good one. The input now holds that text, so this claude is done; the pool
                # tries once more on another before calling the image bad.
                log.warning("image pasted as text; screen:\n%s", _screen_text(snap))
                await self._die()
                raise ImageNotTaken(
                    "claude could not read one of the request's images (it is damaged or in a "
                    "form claude does not decode); the request was not sent",
                    answered=False,
                )
            if time.monotonic() > deadline:
                log.warning("image not attached; screen:\n%s", _screen_text(snap))
                raise errors.ApiError(
                    f"claude did not attach an image within {IMAGE_ATTACH_TIMEOUT:.0f}s "
                    "(its screen is in the daemon's log)"
                )

    async def interrupt(self) -> None:
        """Stop the running turn with Esc and get back to an empty prompt, or mark dead."""
        if self._eof:
            await self._die()
            return
        with contextlib.suppress(OSError):
            self._driver.write(tui.ESC)
        deadline = time.monotonic() + 5.0
        cleared = False
        seq = -1
        while time.monotonic() < deadline:
            snap = await self._next_snapshot(seq)
            seq = snap.seq
            st = self._state(snap)
            # (ax mode names no Rewind dialog: any dialog there is closed the same way)
            if st.dialog == "rewind" or (self._ax and st.dialog is not None):
                self._driver.write(tui.ESC)
                continue
            if st.ready:
                self.state = "ready"
                return
            if not st.busy and st.input_box and st.input_text and not cleared:
                # Esc before the first response byte puts the prompt back into the input box.
                self._driver.write(tui.CLEAR_INPUT)
                cleared = True
        log.warning("interrupt did not return to the prompt", extra=self._log_extra())
        await self._die()

    # --- reset ---------------------------------------------------------------------------------
    async def reset(self, known: Callable[[], set[str]], lock: asyncio.Lock) -> bool:
        """Start a new conversation in this idle claude (`/clear`) for the next stateless turn.

        claude runs the new conversation under a session id of its own choosing, and its
        transcript file appears in the project directory as `/clear` runs: the one new file
        there that no session of the pool (`known()`) names is this claude's. `lock`, shared by
        the pool's resets, is held from the command until that file is found, so it cannot be
        another reset's. That file, not the screen, is the proof that the old conversation is
        gone; its transcript (the last caller's words) is deleted.
        True when claude is back at an empty prompt; False: close it, it is not reusable."""
        if self.state != "ready" or not self.alive or not self.ephemeral or not self.spec.commands:
            return False
        if not self._state(self._screen.snapshot()).ready:
            return False  # something left in the input box would become part of the command
        directory = self._project_dir()
        old = self._tail.path or await asyncio.to_thread(self._transcript_path)
        self.state = "busy"
        deadline = time.monotonic() + RESET_TIMEOUT
        async with lock:
            new_id = await self._clear(directory, known, deadline)
        if new_id is None:
            log.warning(
                "claude did not start a new conversation on /clear", extra=self._log_extra()
            )
            self.state = "dead"
            return False
        ready_since: float | None = None
        seq = -1
        while time.monotonic() < deadline and not self._eof:
            snap = await self._next_snapshot(seq, RESET_QUIET / 2)
            changed, seq = snap.seq != seq, snap.seq
            # The row screen is cleared for the new conversation and then gets the `/clear`
            # echo; on 2.1.197 under load the echo can come after a quiet moment, and drawn
            # during the next paste it would count as that prompt's echo (its Enter, lost to
            # the redraw, would then never be sent again): ready means the echo is there too.
            # (2.1.197's ax rendering draws no echo for `/clear`.)
            echo_missing = not self._ax and self._echo_count(snap) < 1
            if not self._state(snap).ready or echo_missing:
                ready_since = None
            elif changed or ready_since is None:
                ready_since = time.monotonic()
            elif time.monotonic() - ready_since >= RESET_QUIET:
                self.past_ids.append(self.id)
                self.id = new_id
                self._tail = TranscriptTail(directory / f"{new_id}.jsonl")
                await asyncio.to_thread(self._tail.read)  # the /clear lines are not a turn's
                if old is not None:
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(old.unlink)
                self.state = "ready"
                self.resets += 1
                self.last_used = time.time()
                return True
        log.warning("claude was not back at its prompt after /clear", extra=self._log_extra())
        self.state = "dead"
        return False

    async def _clear(
        self, directory: Path, known: Callable[[], set[str]], deadline: float
    ) -> str | None:
        """Send `/clear`; the id of the conversation claude started (its new transcript file)."""
        before = await asyncio.to_thread(transcript_ids, directory)
        try:
            self._driver.write(tui.paste_keys(tui.CLEAR_COMMAND))
            await self._driver.drain()
            await asyncio.sleep(tui.ENTER_DELAY)
            self._driver.write(tui.ENTER)
        except OSError:
            return None
        seq = -1
        while time.monotonic() < deadline and not self._eof:
            seq = (await self._next_snapshot(seq, RESET_LIST_EVERY)).seq
            fresh = await asyncio.to_thread(transcript_ids, directory)
            fresh -= before | known() | {self.id}
            if len(fresh) > 1:
                log.warning("%d unknown new transcripts after /clear", len(fresh))
                return None
            if len(fresh) == 1:
                # the file of the conversation `/clear` started records the command: a file
                # some other claude re-created (a late write to a conversation it left) does not
                new_id = fresh.pop()
                if await asyncio.to_thread(records_clear, directory / f"{new_id}.jsonl"):
                    return new_id
        return None

    # --- end -----------------------------------------------------------------------------------
    def _close_channel(self) -> None:
        if self._broker is not None and self.channel is not None:
            self._broker.close(self.channel)

    async def _drop_tmp(self) -> None:
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            # in a thread that finishes even if the caller is cancelled meanwhile
            await asyncio.shield(asyncio.to_thread(tmp.cleanup))

    async def _die(self) -> None:
        self.state = "dead"
        self._close_channel()
        await self._driver.terminate(grace=1.0)
        await self._drop_tmp()

    async def close(self) -> None:
        """Terminate claude (process group, reaped) and drop its temp dir and, for an ephemeral
        session, its transcript. Once: a second call (the pool's shutdown sweep) waits for the
        first, which a cancelled caller does not stop."""
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closed)

    async def _close(self) -> None:
        self.state = "dead"
        self._close_channel()
        await self._driver.terminate(grace=2.0)
        await self._drop_tmp()
        if self.ephemeral:
            path = self._tail.path or await asyncio.to_thread(self._transcript_path)
            if path is not None:
                # and any earlier conversation's transcript that claude wrote to again after its
                # `/clear` (deleted at the reset): with claude gone, nothing re-creates it
                olds = [path.parent / f"{old}.jsonl" for old in {*self.past_ids, self.spawn_id}]
                await asyncio.to_thread(_unlink_all, [path, *olds])


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def _with_calls(result: TurnResult, calls: tuple[ParkedCall, ...]) -> TurnResult:
    """`result` with the parked MCP calls its transcript entries lack, as tool_use blocks (the
    call carries claude's own tool_use id, the tool's name and its exact arguments). Usage that
    claude never wrote stays unknown: zero."""
    known = {t.id for t in result.tool_uses}
    extra = tuple(
        ToolUseBlock(id=c.tool_use_id, name=c.name, input=dict(c.arguments))
        for c in calls
        if c.tool_use_id not in known
    )
    return replace(result, content=(*result.content, *extra), stop_reason="tool_use")


def _screen_text(snap: Snapshot) -> str:
    return "\n".join(r.text for r in snap.rows).strip("\n")


def _last_line(snap: Snapshot) -> str:
    """The screen's last non-blank line, shortened: what a dying claude printed last."""
    lines = [r.text.strip() for r in snap.rows if r.text.strip()]
    return lines[-1][:200] if lines else "(nothing on its screen)"


def _dialog_error(st: tui.ScreenState, version: str | None) -> errors.RelayError:
    hints = {
        "trust": "claude asks whether to trust its workspace although the relay recorded that "
        "trust in claude's state; this claude version may keep it elsewhere",
        "api_key": "claude asks whether to use ANTHROPIC_API_KEY; run `claude` once and approve "
        "it, or unset it to use your subscription login",
        "login": "claude is not logged in; run `claude` once and log in (/login)",
        "bypass": "claude asks to confirm bypass-permissions mode",
        "rewind": "claude opened its Rewind dialog",
    }
    hint = hints.get(st.dialog or "", "claude is showing a dialog the relay does not answer")
    named = f"claude {version}" if version else "claude (version unknown)"
    # The screen goes to the log, not into the error: it can show paths of the user's home.
    log.warning("%s is showing a dialog:\n%s", named, st.dialog_text)
    return errors.ServiceUnavailableError(
        f"{hint} ({named}; `claude-relay doctor --self-test` qualifies a claude version)",
        category=f"dialog:{st.dialog or 'unknown'}",
    )
