"""The pool: warm claude sessions, admission control, and the turns that run on them.

Stateless contract: a request without a session id runs on a fresh claude (taken warm from the
pool when one with the same spawn settings is ready) which is disposed after the turn, so no call
can see another's conversation; a replacement is spawned in the background. Sessions are keyed by
`SpawnSpec` (model, system prompt, and the bucketed output cap and thinking budget), and the pool
keeps warming the specs used at least WARM_AFTER_USES times among the recent ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from claude_relay.protocols import errors
from claude_relay.protocols.model import (
    DocumentBlock,
    ImageBlock,
    Message,
    SpawnSpec,
    TextBlock,
    TextDelta,
    ToolResultBlock,
    TurnEvent,
    TurnRequest,
    TurnResult,
)
from claude_relay.protocols.render import render_parts
from claude_relay.protocols.tools import trailing_results

from . import attachments, isolation, tui, versions
from .broker import Broker
from .driver import spawner_stuck
from .session import ClaudeExited, ImageNotTaken, Prompt, Session
from .settings import PoolSettings
from .spawn import build_env, find_claude, spawn_spec
from .sticky import Sticky, StickyStore, held_after

log = logging.getLogger(__name__)

_SPAWN_BACKOFF_MAX = 30.0
RECENT_SPECS = 8  # distinct spawn settings remembered for warming
# Settings are warmed once asked for this often among the recent ones: a one-off system prompt (a
# timestamp in it is enough) spawns its own claude instead of evicting the default warm one.
WARM_AFTER_USES = 2
SWEEP_INTERVAL = 300.0  # seconds between sweeps of attachment directories left by crashes
SPARE_IDLE = 60.0  # a reset claude beyond `warm` that nobody took this long is closed
# A call waits for a reset under way (normally ~0.3 s) at most this long, about one spawn, then
# starts its own claude: a reset that hangs until its timeout must not hold the call up.
RESET_PATIENCE = 2.0


def _tool_results(req: TurnRequest) -> tuple[ToolResultBlock, ...]:
    """The final message's tool results; its text blocks (the API allows text beside results)
    ride along in the last result, since a parked claude can only receive tool results."""
    last = req.messages[-1]
    results = list(trailing_results(req.messages))
    extra = tuple(b for b in last.content if isinstance(b, TextBlock) and b.text)
    if results and extra:
        results[-1] = replace(results[-1], content=results[-1].content + extra)
    return tuple(results)


@dataclass(eq=False)
class Parked:
    """A claude waiting inside tool calls for the caller's next request."""

    session: Session
    sticky: Sticky | None
    ids: tuple[str, ...]
    owner: str | None = None  # the tenant whose request parked it: only it may answer
    # set once it leaves the registry: its timeout task ends then, instead of holding the
    # session (screen, transcript) for the rest of tool_result_timeout
    gone: asyncio.Event = field(default_factory=asyncio.Event)


def sticky_key(owner: str | None, sid: str) -> str:
    """Sticky ids are per tenant: two API keys may both use "chat-1" without meeting."""
    return sid if owner is None else f"{owner}/{sid}"


class Turn:
    """One admitted turn. Use as `async with pool.open_turn(req) as turn: async for ev in turn:`.

    Iterating yields `TextDelta`s (provisional, from the screen) and finally one `TurnResult`
    (exact, from the transcript), or raises a `protocols.errors.RelayError`. Leaving the `async
    with` block before the result (client gone) hands the turn back to the pool, which interrupts
    claude and recovers or replaces the session; the handler never does process work itself.
    """

    def __init__(self, pool: Pool, request: TurnRequest) -> None:
        self._pool = pool
        self._request = request
        self._gen: AsyncGenerator[TurnEvent, None] | None = None
        self._admitted = False
        self._has_slot = False
        self._spec: SpawnSpec | None = None

    async def __aenter__(self) -> Turn:
        # a request claude could not be started with, or one with nothing to say, is a 400
        # before it takes a place in the queue (and, streamed, before the 200 is committed)
        self._spec = check_request(self._request, self._pool.settings)
        self._pool._admit(self)
        self._admitted = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        gen = self._gen
        if gen is not None:
            # The pool, not the handler, finishes an abandoned turn (Esc, recover, dispose).
            self._pool._spawn_task(gen.aclose(), "abandon turn")
        elif self._admitted:
            self._pool._waiting -= 1
            self._admitted = False

    def __aiter__(self) -> AsyncIterator[TurnEvent]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    async def _run(self) -> AsyncGenerator[TurnEvent, None]:
        # the turn's attachment files live exactly as long as this generator: deleted when the
        # turn ends, fails, or is abandoned by its client (aclose)
        async with contextlib.AsyncExitStack() as files:
            async for ev in self._run_in(files):
                yield ev

    async def _prompt(
        self, files: contextlib.AsyncExitStack, messages: tuple[Message, ...]
    ) -> Prompt:
        """The prompt for `messages`: text, or text and image files written for this turn."""
        parts = render_parts(messages)
        if all(isinstance(p, str) for p in parts):
            return "".join(str(p) for p in parts)
        root = self._pool.attachments_root
        try:
            turn = await files.enter_async_context(attachments.turn_files(root))
            out: list[str | Path] = []
            for part in parts:
                if isinstance(part, ImageBlock):
                    path = await turn.write(part.data, part.media_type)
                    attachments.image_paste_text(path)  # claude must read this path as given
                    out.append(path)
                else:
                    out.append(part)
        except (OSError, ValueError) as exc:
            raise errors.ApiError(
                f"claude-relay cannot hand images to claude from its attachments directory "
                f"{root} ({exc}); set attachments_dir to a private path without spaces"
            ) from exc
        return tuple(out)

    async def _run_in(self, files: contextlib.AsyncExitStack) -> AsyncGenerator[TurnEvent, None]:
        pool = self._pool
        req = self._request
        if req.session_id is not None:
            sticky = pool._sticky_entry(req.session_id, req.owner)
            async for ev in self._run_sticky(sticky, files):
                yield ev
            return
        await self._take_slot()
        session: Session | None = None
        spec: SpawnSpec | None = None
        result: TurnResult | None = None
        events: AsyncGenerator[TurnEvent, None] | None = None
        streamed: list[str] = []
        failed = False
        try:
            # tool results for calls a claude is parked in: that claude answers (stateless
            # clients resend the whole history, so the tool_use ids are the routing key)
            session = pool._unpark(req, None)
            if session is not None:
                pool._busy.add(session)
                events = resumed = session.resume_turn(_tool_results(req))
                async for ev in resumed:
                    yield ev
                return
            spec = pool._stateless_spec(self._spec or check_request(req, pool.settings), req)
            # a history that extends a conversation a kept claude holds continues there: only
            # the new messages are pasted (no spawn, no replay of the whole history)
            kept = pool._take_kept(req, spec)
            for attempt in (1, 2):
                if kept is not None and attempt == 1:
                    session, known = kept
                    pool._busy.add(session)
                    prompt = await self._prompt(files, req.messages[known:])
                else:
                    prompt = await self._prompt(files, req.messages)
                    session = await pool._acquire(spec)
                try:
                    events = turn = session.run_turn(prompt, req.tools, req.tool_choice)
                    async for ev in turn:
                        if isinstance(ev, TextDelta):
                            streamed.append(ev.text)
                        else:
                            result = ev
                        yield ev
                    break
                except ClaudeExited as exc:
                    # a warm (or kept) claude that died unnoticed before taking the prompt, or
                    # one that did not take an image: use another, with the whole history
                    if exc.answered or attempt == 2 or pool._closing:
                        if isinstance(exc, ImageNotTaken):
                            raise exc.as_request_error() from exc
                        raise
                    pool._release(session)
                    session = None
        except (GeneratorExit, asyncio.CancelledError):
            raise  # the client left: claude is interrupted, and reusable as before
        except BaseException:
            # An error turn's claude is closed, not reset: after some (a 400 "prompt is too
            # long") claude does not take `/clear`, and a reset that never comes holds up the
            # calls waiting for it.
            failed = True
            raise
        finally:
            pool._slots.release()
            self._has_slot = False
            # a claude that failed is closed; so is one that was handed images or PDFs (it
            # keeps copies of them in its temp dir, which must not outlive this turn)
            reuse = None if failed or _has_files(req) else spec
            if session is not None:
                if session.state == "parked":
                    pool._park(session, None, req.owner)
                elif result is not None and session.state == "ready" and session.alive:
                    pool._keep(session, spec, req, result, "".join(streamed))
                elif events is not None and session.state == "busy":
                    # Abandoned mid-turn (client gone): the slot is free now, and the session's
                    # own `finally` still has to stop claude with Esc. Closing it meanwhile
                    # would SIGTERM a claude that is reading that Esc.
                    pool._spawn_task(pool._after_abandoned(session, events, reuse), "interrupt")
                else:
                    # a turn interrupted in this task (cancelled) is reset if claude is back at
                    # its prompt
                    pool._release(session, reuse)

    async def _run_sticky(
        self, sticky: Sticky, files: contextlib.AsyncExitStack
    ) -> AsyncGenerator[TurnEvent, None]:
        """A turn on the claude that holds this id's conversation (per-id calls queue in order)."""
        pool = self._pool
        req = self._request
        sticky.queued += 1
        try:
            await sticky.lock.acquire()
        finally:
            sticky.queued -= 1
        try:
            await self._take_slot()
            try:
                spec = self._spec or check_request(req, pool.settings)
                session = pool._unpark(req, sticky)
                resume = session is not None
                # what claude held before this call's messages: kept when the call sends only
                # its new user turn (the daemon holds the state), else the call's own history
                held: list[list[str]] = []
                if session is None and (sticky.session is None or sticky.session.state != "parked"):
                    known = sticky.extended_by(req.messages, spec)
                    if known is None and sticky.continued_by(req.messages, spec):
                        known, held = 0, list(sticky.seen)
                    if known is not None:
                        sticky.set_spec(spec)  # the same digest; after a restart, the text too
                        prompt = await self._prompt(files, req.messages[known:])
                        session = await pool._sticky_session(sticky, fresh=False)
                if session is None and held:
                    raise _lost(sticky)
                if session is None:
                    # first call, edited history, other spawn settings, tool calls abandoned, or
                    # claude lost the conversation: a fresh claude gets the whole history
                    prompt = await self._prompt(files, req.messages)
                    sticky.set_spec(spec)
                    session = await pool._sticky_session(sticky, fresh=True)
                    assert session is not None  # fresh=True raises rather than return None
                streamed: list[str] = []
                pool._busy.add(session)
                events = (
                    session.resume_turn(_tool_results(req))
                    if resume
                    else self._sticky_events(sticky, session, prompt, files, bool(held))
                )
                try:
                    async for ev in events:
                        if isinstance(ev, TextDelta):
                            streamed.append(ev.text)
                        else:
                            sticky.seen = held + held_after(req.messages, ev, "".join(streamed))
                            sticky.turns += 1
                            sticky.last_used = time.time()
                            await pool._persist()
                        yield ev
                finally:
                    # an abandoned turn's Esc is done before the next call on this id may start
                    await events.aclose()
                    pool._busy.discard(session)
                    pool._idle.set()
                    sticky.last_used = time.time()
                    if session is sticky.session and session.state == "parked":
                        pool._park(session, sticky, req.owner)
            finally:
                pool._slots.release()
                self._has_slot = False
        finally:
            sticky.lock.release()

    async def _sticky_events(
        self,
        sticky: Sticky,
        session: Session,
        prompt: Prompt,
        files: contextlib.AsyncExitStack,
        continued: bool = False,
    ) -> AsyncGenerator[TurnEvent, None]:
        """Run the turn; a claude that died while idle is resumed (or rebuilt) and tried once."""
        req = self._request
        try:
            # aclosing: a turn abandoned here is interrupted now, not when the GC finalizes it
            async with contextlib.aclosing(
                session.run_turn(prompt, req.tools, req.tool_choice)
            ) as ev_:
                async for ev in ev_:
                    yield ev
            return
        except ClaudeExited as exc:
            if exc.answered or self._pool._closing:
                raise
            log.warning("sticky claude %s was gone; resuming it", sticky.claude_id)
        pool = self._pool
        pool._busy.discard(session)
        again = await pool._sticky_session(sticky, fresh=False)
        if again is None and continued:
            raise _lost(sticky)
        if again is None:
            prompt = await self._prompt(files, self._request.messages)
            again = await pool._sticky_session(sticky, fresh=True)
            assert again is not None
        pool._busy.add(again)
        try:
            async with contextlib.aclosing(
                again.run_turn(prompt, req.tools, req.tool_choice)
            ) as ev_:
                async for ev in ev_:
                    yield ev
        except ImageNotTaken as exc:
            raise exc.as_request_error() from exc
        finally:
            pool._busy.discard(again)
            pool._idle.set()

    async def _take_slot(self) -> None:
        pool = self._pool
        try:
            try:
                await asyncio.wait_for(pool._slots.acquire(), pool.settings.queue_timeout)
            except TimeoutError:
                raise errors.OverloadedError(
                    "claude-relay is at capacity: the request waited "
                    f"{pool.settings.queue_timeout:.0f}s for a free claude session",
                    retry_after=pool.settings.retry_after,
                ) from None
            self._has_slot = True
        finally:
            pool._waiting -= 1
            self._admitted = False


def _lost(sticky: Sticky) -> errors.NotFoundError:
    """A call that sent only its new turn, on an id whose conversation claude cannot resume
    (its transcript is gone): rebuilding from this one message would silently drop the earlier
    turns, so the client is told, and the id starts afresh on its next call."""
    sticky.seen = []
    return errors.NotFoundError(
        f"session {errors.excerpt(sticky.id)}: claude could not restore the conversation; "
        "send the whole history, or start again with this id"
    )


def check_request(req: TurnRequest, settings: PoolSettings) -> SpawnSpec:
    """The request's spawn settings, or a 400: values that would reach claude's argv are
    checked (`spawn_spec`), and a final user message that is empty once sanitised for the
    paste (only control characters or whitespace) would leave claude nothing to answer."""
    spec = spawn_spec(
        req.model,
        req.system,
        settings,
        max_tokens=req.max_tokens,
        thinking=req.thinking_budget,
    )
    last = req.messages[-1] if req.messages else None
    if (
        last is not None
        and last.role == "user"
        and all(isinstance(b, TextBlock) for b in last.content)
        and not tui.sanitize_prompt(last.text).strip()
    ):
        raise errors.InvalidRequestError(
            f"messages.{len(req.messages) - 1}: the message has no text once control "
            "characters and surrounding whitespace are removed",
            param="messages",
        )
    return spec


def _could_start_command(req: TurnRequest) -> bool:
    """Whether a piece of text the turn could paste might start a slash command: any text
    block of the request, and any text part of its rendering (what follows an image)."""
    texts = [b.text for m in req.messages for b in m.content if isinstance(b, TextBlock)]
    texts += [p for p in render_parts(req.messages) if isinstance(p, str)]
    return any(tui.starts_command(t) for t in texts)


def _has_files(req: TurnRequest) -> bool:
    """Whether any message carries an image or a document (tool results included)."""
    for m in req.messages:
        for b in m.content:
            if isinstance(b, ImageBlock | DocumentBlock):
                return True
            if isinstance(b, ToolResultBlock) and any(
                isinstance(c, ImageBlock | DocumentBlock) for c in b.content
            ):
                return True
    return False


class Pool:
    def __init__(self, settings: PoolSettings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.broker = broker  # serves requests' tools to claude; None: tools are refused
        self._parked: dict[str, Parked] = {}  # tool_use id → the claude waiting in that call
        self._slots = asyncio.Semaphore(settings.max_busy)
        self._waiting = 0  # admitted turns not yet holding a slot
        self._warm: OrderedDict[SpawnSpec, list[Session]] = OrderedDict()
        self._starting: dict[SpawnSpec, int] = {}
        # stateless_reset = "clear": claudes being reset for their next caller, by spawn
        # settings (counted as warm-to-be), and the lock that runs one reset at a time (a reset
        # finds its new transcript as the one unknown new file: see Session.reset)
        self._resetting: dict[SpawnSpec, int] = {}
        self._reset_lock = asyncio.Lock()
        self.resets = 0  # claudes put back warm after a reset
        self._refreshed = 0.0  # when recycle() last replaced the warm claudes
        self._busy: set[Session] = set()
        # recently asked-for spawn settings → how often (of the last RECENT_SPECS distinct ones)
        self._recent: OrderedDict[SpawnSpec, int] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        # every claude this pool started and not yet collected: close() stops any a code path
        # lost track of (a start cancelled between maps), so none outlives the pool
        self._made: weakref.WeakSet[Session] = weakref.WeakSet()
        self._binary: str | None = None
        self.cli_version: str | None = None  # what `claude --version` said at start
        self._claude_error: str | None = None
        self._claude_problem: str | None = None  # its category (`RelayError.category`)
        self._closing = False
        self._wake = asyncio.Event()
        self._closed = asyncio.Event()  # set when close() starts; background loops end on it
        self._idle = asyncio.Event()  # set whenever a busy session is released
        self._warmed = asyncio.Event()  # set whenever a session becomes warm (or fails to)
        self._waiters: dict[SpawnSpec, int] = {}  # turns waiting for a starting session
        self._backoff = 0.0
        # spawn settings whose claude failed to start: not warmed again (a request's bad value
        # must not poison the warm pool) until a request's own spawn of them succeeds
        self._failed: OrderedDict[SpawnSpec, None] = OrderedDict()
        self.spawned = 0
        self.deaths = 0
        self.started = time.time()
        self._sticky: dict[str, Sticky] = {}
        # stateless conversations whose claude is kept after its turn (least recently used
        # first), bounded by max_kept: a call re-sending that history plus a new turn goes on
        self._kept: OrderedDict[Session, Sticky] = OrderedDict()
        self.kept_hits = 0  # calls that continued on a kept claude
        state = settings.state_file or settings.workspace.parent / "sessions.json"
        self._store = StickyStore(state)
        self._persisted = 0  # version of the last sticky map handed to the store
        self.attachments_root = isolation.attachments_root(settings)

    # --- lifetime ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Begin warming sessions in the background; never raises for a missing claude binary."""
        self._spawn_task(self._sweep_attachments(), "sweep attachments")
        self._binary = await asyncio.to_thread(find_claude, self.settings.claude_bin)
        if self._binary is None:
            self._claude_error = (
                f"claude binary not found: {self.settings.claude_bin!r} "
                "(install Claude Code or pass --claude-bin)"
            )
            self._claude_problem = "claude_not_found"
            log.error("%s", self._claude_error)
            return
        # trust, onboarding and the user's login decisions, in the config dir only the relay's
        # claudes read: settled before any claude starts, so no dialog has to be answered
        await asyncio.to_thread(isolation.prepare, self.settings, dict(os.environ))
        # temp dirs of claudes a crashed daemon started (its pid is gone); live ones stay
        await asyncio.to_thread(
            attachments.sweep, isolation.claude_tmp_root(self.settings), math.inf
        )
        try:
            self.cli_version = await versions.probe(
                self._binary, build_env(os.environ, self.settings)
            )
        except versions.ProbeError as exc:
            log.error("%s", exc)
        else:
            if not versions.supported(self.cli_version):
                log.warning(
                    "claude %s is outside the versions claude-relay is tested on (%s to %s); "
                    "run `claude-relay doctor --self-test` to qualify it",
                    self.cli_version,
                    versions.OLDEST,
                    versions.PINNED,
                )
        self._recent[self._default_spec()] = WARM_AFTER_USES
        self._sticky = await asyncio.to_thread(self._store.load)
        self._spawn_task(self._replenish(), "replenish")
        self._spawn_task(self._reap_idle(), "reap idle sticky")

    async def close(self, grace: float = 10.0) -> None:
        """Stop admitting, let running turns finish up to `grace`, interrupt the rest, kill all."""
        self._closing = True
        self._closed.set()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self._busy:
                    self._idle.clear()
                    await self._idle.wait()
        sessions = list(self._busy) + [s for lst in self._warm.values() for s in lst]
        # sticky claudes stop too; their ids stay in the state file and resume after a restart
        sessions += [st.session for st in self._sticky.values() if st.session is not None]
        sessions += [p.session for p in self._parked.values()]
        sessions += list(self._kept)
        self._kept.clear()
        for entry in list(self._parked.values()):
            self._forget(entry)
        sessions = list(dict.fromkeys(sessions))
        self._warm.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        # Let abandoned-turn and spawn tasks see their sessions die, then cancel what is left.
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=3.0)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # (close is once per session: the ones closed above cost nothing here)
        await asyncio.gather(*(s.close() for s in list(self._made)), return_exceptions=True)

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool task %s failed", task.get_name(), exc_info=task.exception())

    # --- admission -----------------------------------------------------------------------------
    def open_turn(self, request: TurnRequest) -> Turn:
        return Turn(self, request)

    def _admit(self, turn: Turn) -> None:
        if self._closing:
            raise errors.ServiceUnavailableError("claude-relay is shutting down")
        if self._claude_error is not None and self._binary is None:
            raise errors.ServiceUnavailableError(self._claude_error)
        if self._slots.locked() and self._waiting >= self.settings.max_queue:
            raise errors.OverloadedError(
                f"claude-relay is at capacity ({self.settings.max_busy} turns running, "
                f"{self._waiting} queued); retry later",
                retry_after=self.settings.retry_after,
            )
        req = turn._request
        if req.session_id is not None:
            sticky = self._sticky.get(sticky_key(req.owner, req.session_id))
            # calls on one id run one at a time; a client must not pile up unbounded waiters
            if (
                sticky is not None
                and sticky.lock.locked()
                and (sticky.queued >= self.settings.max_sticky_queue)
            ):
                raise errors.OverloadedError(
                    f"session {errors.excerpt(req.session_id)} is busy with a call and "
                    f"{sticky.queued} more are waiting; retry later",
                    retry_after=self.settings.retry_after,
                )
        self._waiting += 1

    # --- sessions ------------------------------------------------------------------------------
    def _new_session(
        self,
        spec: SpawnSpec,
        *,
        session_id: str | None = None,
        resume: bool = False,
        ephemeral: bool = True,
    ) -> Session:
        assert self._binary is not None
        session = Session(
            spec,
            self.settings,
            self._binary,
            session_id=session_id,
            resume=resume,
            ephemeral=ephemeral,
            broker=self.broker,
            cli_version=self.cli_version,
        )
        self._made.add(session)
        return session

    def _default_spec(self) -> SpawnSpec:
        """The spawn settings kept warm when no others are asked for often."""
        return replace(
            spawn_spec("default", None, self.settings),
            commands=self.settings.stateless_reset == "clear",
        )

    def _stateless_spec(self, spec: SpawnSpec, req: TurnRequest) -> SpawnSpec:
        """A stateless turn's spawn settings. With `stateless_reset = "clear"` its claude has
        slash commands on, for the relay's `/clear` after the turn, unless some text of the
        request could start one there (`tui.starts_command`): that turn gets a claude with them
        off, closed after it."""
        if self.settings.stateless_reset != "clear" or _could_start_command(req):
            return spec
        return replace(spec, commands=True)

    async def _acquire(self, spec: SpawnSpec) -> Session:
        self._recent[spec] = self._recent.get(spec, 0) + 1
        self._recent.move_to_end(spec)
        while len(self._recent) > RECENT_SPECS:
            self._recent.popitem(last=False)
        self._wake.set()
        started = time.monotonic()
        deadline = started + self.settings.ready_timeout
        while True:
            warm = self._warm.get(spec)
            while warm:
                session = warm.pop(0)
                if not warm:
                    del self._warm[spec]
                if session.alive and session.state == "ready":
                    self._busy.add(session)
                    self._wake.set()
                    return session
                self._spawn_task(session.close(), "close dead")
            # A session for this spec is already starting and nobody else waits for it: waiting
            # is cheaper than a second cold spawn competing for the same CPU.
            patient = time.monotonic() - started <= RESET_PATIENCE
            resetting = self._resetting.get(spec, 0) if patient else 0
            coming = self._starting.get(spec, 0) + resetting
            if patient and coming <= self._waiters.get(spec, 0) and self._reclaim_kept(spec):
                continue  # a kept claude is being reset for this call
            if coming <= self._waiters.get(spec, 0):
                break
            if self._claude_error is not None or spec in self._failed:
                break  # warm-ups are failing (and backing off): fail fast on our own spawn
            if time.monotonic() > deadline:
                break
            self._waiters[spec] = self._waiters.get(spec, 0) + 1
            try:
                self._warmed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._warmed.wait(), 1.0)
            finally:
                self._waiters[spec] -= 1
                if not self._waiters[spec]:
                    del self._waiters[spec]  # no key left behind per one-off spec
        if self._closing:
            raise errors.ServiceUnavailableError("claude-relay is shutting down")
        assert self._binary is not None
        session = self._new_session(spec)
        self.spawned += 1
        self._busy.add(session)
        try:
            await session.start()
        except BaseException as exc:
            self._busy.discard(session)
            await session.close()
            if isinstance(exc, errors.RelayError):
                self._spawn_failed(spec)
            raise
        self._failed.pop(spec, None)
        return session

    def _spawn_failed(self, spec: SpawnSpec) -> None:
        """Stop warming `spec`: warming falls back to the default (or another recent) spec."""
        if spec != self._default_spec():
            self._failed[spec] = None
            while len(self._failed) > RECENT_SPECS:
                self._failed.popitem(last=False)
            self._recent.pop(spec, None)
            self._wake.set()

    # --- kept stateless conversations ---------------------------------------------------------
    def _keep(
        self,
        session: Session,
        spec: SpawnSpec | None,
        req: TurnRequest,
        result: TurnResult,
        streamed: str,
    ) -> None:
        """After a stateless turn: keep its claude with the digests of what it now holds, the
        least recently used one beyond `max_kept` closed; or dispose of it as before."""
        if self.settings.max_kept == 0 or spec is None or self._closing or _has_files(req):
            # (a conversation with images or PDFs is not kept: claude holds copies of them in
            # its temp dir, and they must not outlive the turn that sent them)
            self._release(session, None if _has_files(req) else spec)
            return
        if session.channel is not None:
            session.channel.set_tools(())  # a kept claude holds no caller's tools between turns
        self._busy.discard(session)
        self._idle.set()
        seen = held_after(req.messages, result, streamed)
        entry = Sticky(id="", claude_id=session.id, spec=spec, owner=req.owner, seen=seen)
        entry.session = session
        self._kept[session] = entry
        while len(self._kept) > self.settings.max_kept:
            old, old_entry = self._kept.popitem(last=False)
            self._release(old, old_entry.spec)
        self._wake.set()

    def _take_kept(self, req: TurnRequest, spec: SpawnSpec) -> tuple[Session, int] | None:
        """The kept claude whose conversation `req`'s history extends (same caller, same spawn
        settings, every earlier message identical), taken out of the kept set, and how many of
        the messages it already holds."""
        if not self._kept or len(req.messages) < 3:
            return None
        for session, entry in reversed(self._kept.items()):
            if entry.owner != req.owner or not session.alive or session.state != "ready":
                continue
            if entry.spec.commands != spec.commands:
                continue  # text that could start a command never goes to a claude that runs one
            known = entry.extended_by(req.messages, spec)
            if known is not None:
                del self._kept[session]
                self.kept_hits += 1
                return session, known
        return None

    def _prune_kept(self, idle: float) -> None:
        """Close kept claudes that died, or that nobody continued for `idle` seconds."""
        now = time.time()
        for session, entry in list(self._kept.items()):
            if not session.alive or session.state != "ready" or now - entry.last_used > idle:
                del self._kept[session]
                self._release(session, entry.spec)

    def _release(self, session: Session, spec: SpawnSpec | None = None) -> bool:
        """Done with a stateless claude: closed, or, with `stateless_reset = "clear"` and the
        `spec` it was started with, reset for the next caller in the background (True)."""
        self._busy.discard(session)
        self._idle.set()
        if (
            spec is not None
            and spec.commands  # only a claude with slash commands on can run `/clear`
            and self.settings.stateless_reset == "clear"
            # spawn settings asked for once so far (a system prompt with a timestamp in it) are
            # not worth a reset: nobody may ask for them again
            and (spec == self._default_spec() or self._recent.get(spec, 0) >= WARM_AFTER_USES)
            and session.ephemeral
            and session.alive
            and session.state == "ready"
            and not self._closing
        ):
            self._resetting[spec] = self._resetting.get(spec, 0) + 1
            self._spawn_task(self._reset_for_reuse(session, spec), "reset")
            return True
        # Never reuse a conversation. Closing takes a few ms of SIGTERM handling.
        self._spawn_task(session.close(), "dispose")
        self._wake.set()
        return False

    async def _after_abandoned(
        self,
        session: Session,
        events: AsyncGenerator[TurnEvent, None],
        spec: SpawnSpec | None,
    ) -> None:
        """A stateless turn its client left: let the session interrupt claude (Esc, back at an
        empty prompt, or marked dead), then release it like any other: reset for reuse or closed.
        Until then it counts as busy, so no replacement is warmed for a claude about to return."""
        try:
            await events.aclose()
        finally:
            self._release(session, spec)

    async def _reset_for_reuse(self, session: Session, spec: SpawnSpec) -> None:
        """Reset `session` to a new conversation and put it back warm (up to max_busy warm
        claudes: as many as ran at once), or close it when that fails or is not needed."""
        reset = False
        try:
            if session.channel is not None:
                session.channel.set_tools(())  # the next caller's tools are offered afresh
            if not self._closing:
                reset = await session.reset(self._known_ids, self._reset_lock)
        finally:
            self._resetting[spec] -= 1
            if not self._resetting[spec]:
                del self._resetting[spec]
            # room for it among the idle ones (claudes still starting do not count: under load
            # the replenisher has some on the way most of the time)
            idle = sum(len(v) for v in self._warm.values()) + sum(self._resetting.values())
            room = idle < max(self.settings.warm, self.settings.max_busy)
            # a claude started before a SIGHUP or login change has the old binary or login
            current = session.created > self._refreshed
            if reset and room and current and not self._closing:
                self._warm.setdefault(spec, []).append(session)
                self._warm.move_to_end(spec)
                session.on_death = self._wake.set
                self.resets += 1
            else:
                log.debug(
                    "closing a claude after its reset (reset %s, room %s, current %s)",
                    reset,
                    room,
                    current,
                    extra={"session_id": session.id, "pid": session.pid},
                )
                self._spawn_task(session.close(), "dispose")
            self._warmed.set()
            self._wake.set()

    def _reclaim_kept(self, spec: SpawnSpec) -> bool:
        """With `stateless_reset = "clear"`, reset the least recently used kept claude of `spec`
        for a call that finds none warm: a reset (0.3 s) is cheaper than a start (1–2 s), and
        a kept conversation is only a guess that its caller comes back."""
        if not spec.commands:
            return False
        for session, entry in self._kept.items():
            if entry.spec == spec and session.alive and session.state == "ready":
                del self._kept[session]
                return self._release(session, spec)
        return False

    def _returning(self, spec: SpawnSpec) -> int:
        """Busy stateless claudes of `spec` that come back warm after their turn and reset
        (`stateless_reset = "clear"`): warming more for them would spend a start-up's CPU on a
        claude that only adds to the idle ones. A call that finds none warm meanwhile starts
        its own, as before."""
        if not spec.commands:
            return 0
        return sum(1 for s in self._busy if s.ephemeral and s.spec == spec)

    def _known_ids(self) -> set[str]:
        """The session ids of every claude conversation this pool knows of."""
        made = list(self._made)
        ids = {s.id for s in made} | {s.claude_id for s in self._sticky.values()}
        return ids.union(*(s.past_ids for s in made), (s.spawn_id for s in made))

    def _trim_spares(self, idle: float) -> None:
        """Close reset claudes beyond `warm` that nobody took for `idle` seconds."""
        spare = self._warm_count() - self.settings.warm
        now = time.time()
        for spec, sessions in list(self._warm.items()):
            for s in sorted(sessions, key=lambda s: s.last_used):
                if spare <= 0 or now - s.last_used <= idle:
                    break
                sessions.remove(s)
                spare -= 1
                self._spawn_task(s.close(), "trim spare")
            if not sessions:
                del self._warm[spec]

    def _warm_count(self) -> int:
        return (
            sum(len(v) for v in self._warm.values())
            + sum(self._starting.values())
            + sum(self._resetting.values())
        )

    async def _replenish(self) -> None:
        """Keep `settings.warm` sessions ready for the most recently used spawn settings."""
        while not self._closing:
            self._wake.clear()
            self._prune_dead()
            target = next(
                (
                    s
                    for s, uses in reversed(self._recent.items())
                    if uses >= WARM_AFTER_USES and s not in self._failed
                ),
                self._default_spec(),
            )
            have = (
                len(self._warm.get(target, []))
                + self._starting.get(target, 0)
                + self._resetting.get(target, 0)
                + self._returning(target)
            )
            if have < self.settings.warm and not self._closing:
                # make room: warm sessions of older specs go first
                while self._warm_count() >= self.settings.warm:
                    victim = next((s for s, v in self._warm.items() if s != target and v), None)
                    if victim is None:
                        break
                    self._spawn_task(self._warm[victim].pop(0).close(), "evict")
                    if not self._warm[victim]:
                        del self._warm[victim]
                if self._warm_count() < self.settings.warm:
                    self._starting[target] = self._starting.get(target, 0) + 1
                    self._spawn_task(self._warm_one(target), "warm")
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 5.0)

    async def _warm_one(self, spec: SpawnSpec) -> None:
        assert self._binary is not None
        session: Session | None = None
        try:
            if self._backoff:
                await asyncio.sleep(self._backoff)
            session = self._new_session(spec)
            self.spawned += 1
            await session.start()
            self._backoff = 0.0
            self._claude_error = self._claude_problem = None
            self._failed.pop(spec, None)
            if self._closing:
                await session.close()
                return
            self._warm.setdefault(spec, []).append(session)
            self._warm.move_to_end(spec)
            session.on_death = self._wake.set  # an idle claude that dies is replaced at once
            session = None
        except errors.RelayError as exc:
            log.error("warming a claude session failed: %s", exc.message)
            if spec != self._default_spec():
                # that spec's own problem (a request's model or system prompt): the pool is
                # not degraded, it just stops warming it
                self._spawn_failed(spec)
            else:
                self._claude_error = exc.message
                self._claude_problem = exc.category or "start_failed"
                self._backoff = min(_SPAWN_BACKOFF_MAX, max(1.0, self._backoff * 2))
        finally:
            # only now, with the session in `_warm`, may waiters look again
            self._starting[spec] -= 1
            if not self._starting[spec]:
                del self._starting[spec]
            self._wake.set()
            self._warmed.set()
            if session is not None:
                await session.close()

    # --- parked tool calls ----------------------------------------------------------------------
    def _park(self, session: Session, sticky: Sticky | None, owner: str | None) -> None:
        """Keep a claude that waits in tool calls until the results come (or time runs out).

        Each parked claude is a whole process holding no slot, so their number is capped: past
        `max_parked` the oldest is let go. Its caller loses nothing but speed: the next call's
        history is replayed on a fresh claude, as for any call whose parked claude is gone."""
        self._busy.discard(session)
        self._idle.set()
        entry = Parked(session, sticky, session.parked_ids, owner)
        for tool_use_id in entry.ids:
            self._parked[tool_use_id] = entry
        self._spawn_task(self._expire(entry), "tool result timeout")
        entries = list(dict.fromkeys(self._parked.values()))  # oldest first
        for old in entries[: max(0, len(entries) - self.settings.max_parked)]:
            if self._forget(old):
                log.warning(
                    "more than %d claudes parked in tool calls; letting the oldest go",
                    self.settings.max_parked,
                    extra={"session_id": old.session.id, "pid": old.session.pid},
                )
                self._spawn_task(self._abandon(old), "abandon tool calls")

    def _forget(self, entry: Parked) -> bool:
        """Unregister `entry`; False when it was already gone (taken or expired)."""
        found = False
        for tool_use_id in entry.ids:
            if self._parked.get(tool_use_id) is entry:
                del self._parked[tool_use_id]
                found = True
        entry.gone.set()
        return found

    def _unpark(self, req: TurnRequest, sticky: Sticky | None) -> Session | None:
        """The parked claude whose calls `req`'s final message answers, taken out of the
        registry; None when there is none (then the history is replayed on a fresh claude)."""
        results = trailing_results(req.messages)
        entry = next(
            (self._parked[r.tool_use_id] for r in results if r.tool_use_id in self._parked), None
        )
        if entry is None or entry.sticky is not sticky or entry.owner != req.owner:
            return None  # another tenant's calls are not this request's to answer
        self._forget(entry)
        answered = {r.tool_use_id for r in results}
        session = entry.session
        if not set(entry.ids) <= answered or not session.alive or session.state != "parked":
            # it waits for a call this request does not answer: it can never finish
            self._spawn_task(self._abandon(entry), "abandon tool calls")
            return None
        return session

    async def _expire(self, entry: Parked) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(entry.gone.wait(), self.settings.tool_result_timeout)
        if self._forget(entry):
            log.warning(
                "no tool_result within %.0fs; cancelling the tool calls",
                self.settings.tool_result_timeout,
                extra={"session_id": entry.session.id, "pid": entry.session.pid},
            )
            await self._abandon(entry)

    async def _abandon(self, entry: Parked) -> None:
        """Cancel parked calls: Esc makes claude drop them and return to its prompt."""
        session = entry.session
        if entry.sticky is None:
            await session.close()  # stateless: it would be disposed after the turn anyway
            self._wake.set()
            return
        if entry.sticky.session is not session:
            return  # already replaced by a fresh claude for this id
        if session.state == "parked":
            await session.interrupt()
        # claude's conversation now ends in cancelled calls the client never saw: rebuild it
        entry.sticky.seen = []

    # --- sticky sessions -------------------------------------------------------------------------
    def _sticky_entry(self, sid: str, owner: str | None) -> Sticky:
        key = sticky_key(owner, sid)
        entry = self._sticky.get(key)
        if entry is not None:
            return entry
        # ids whose first call is still starting its claude count too: calls on many new ids at
        # once must not pass the check together
        live = sum(
            1
            for s in self._sticky.values()
            if (s.session is not None and s.session.alive) or s.lock.locked() or s.queued
        )
        if live >= self.settings.max_sticky:
            raise errors.OverloadedError(
                f"claude-relay holds its maximum of {self.settings.max_sticky} sticky sessions; "
                "retry later or close one with DELETE /v1/sessions/{id}",
                retry_after=self.settings.retry_after,
            )
        spec = spawn_spec("default", None, self.settings)  # the first call sets the real one
        entry = Sticky(id=sid, claude_id=str(uuid.uuid4()), spec=spec, owner=owner)
        self._sticky[key] = entry
        return entry

    async def _sticky_session(self, sticky: Sticky, *, fresh: bool) -> Session | None:
        """The live claude for `sticky`: reused, resumed (after a restart or a crash), or new.

        Returns None when `fresh` is False and the conversation cannot be resumed.
        """
        current = sticky.session
        if (
            not fresh
            and current is not None
            and current.alive
            and current.state == "ready"
            # other output or thinking limits are per spawn: the same conversation is resumed
            # in a claude started with the new ones
            and current.spec == sticky.spec
        ):
            return current
        if current is not None:
            sticky.session = None
            await current.close()
        if self._binary is None:
            raise errors.ServiceUnavailableError(self._claude_error or "claude is not available")
        if fresh:
            sticky.claude_id = str(uuid.uuid4())
            sticky.seen = []
        session = self._new_session(
            sticky.spec, session_id=sticky.claude_id, resume=not fresh, ephemeral=False
        )
        self.spawned += 1
        try:
            await session.start()
        except BaseException as exc:
            # a cancelled start (the client left) must stop its claude too, or nothing would
            await session.close()
            if fresh or not isinstance(exc, errors.RelayError):
                raise
            log.warning("could not resume claude session %s", sticky.claude_id)
            return None
        sticky.session = session
        return session

    async def _persist(self) -> None:
        # the map and its version are taken together, on the loop: the store keeps the newest
        self._persisted += 1
        entries = {sid: s.to_json() for sid, s in self._sticky.items() if s.seen}
        await asyncio.to_thread(self._store.save, entries, self._persisted)

    async def _sweep_attachments(self) -> None:
        """Remove attachment directories a crashed daemon left (at once, then now and then);
        a live turn's directory is never older than the longest turn."""
        older_than = self.settings.turn_timeout + 60.0
        while not self._closing:
            try:
                removed = await asyncio.to_thread(
                    attachments.sweep, self.attachments_root, older_than
                )
            except OSError as exc:
                log.warning("attachment sweep of %s failed: %s", self.attachments_root, exc)
            else:
                if removed:
                    log.info("removed %d leftover attachment directories", removed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), SWEEP_INTERVAL)

    async def _reap_idle(self) -> None:
        idle = self.settings.sticky_idle_timeout
        kept_idle = self.settings.kept_idle_timeout
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                wait = min(60.0, max(0.5, min(idle, kept_idle) / 4))
                await asyncio.wait_for(self._closed.wait(), wait)
            if self._closing:
                return
            self._prune_kept(kept_idle)
            self._trim_spares(SPARE_IDLE)
            now = time.time()
            stale = [
                s for s in self._sticky.values() if now - s.last_used > idle and not s.lock.locked()
            ]
            for s in stale:
                await self.close_session(s.id, s.owner)

    async def close_session(self, sid: str, owner: str | None = None) -> bool:
        """Forget `owner`'s sticky session `sid` and stop its claude. False when there is none."""
        entry = self._sticky.pop(sticky_key(owner, sid), None)
        if entry is None:
            return False
        async with entry.lock:  # let a running turn on it finish first
            if entry.session is not None:
                await entry.session.close()
                entry.session = None
        await self._persist()
        return True

    def sessions(self, owner: str | None = None) -> list[dict[str, object]]:
        """`owner`'s sticky sessions (with API keys, each key sees only its own)."""
        out: list[dict[str, object]] = []
        for s in self._sticky.values():
            if s.owner != owner:
                continue
            live = s.session is not None and s.session.alive
            out.append(
                {
                    "id": s.id,
                    "claude_session_id": s.claude_id,
                    "pid": s.session.pid if live and s.session is not None else None,
                    "state": (s.session.state if live and s.session is not None else "stopped"),
                    "model": s.spec.model or "default",
                    "created": s.created,
                    "last_used": s.last_used,
                    "turns": s.turns,
                }
            )
        return out

    def recycle(self) -> None:
        """Replace every idle warm session (SIGHUP, a login change): they pick up a new binary
        or login. The user's login decisions are copied into claude's state again first."""
        idle = [s for sessions in self._warm.values() for s in sessions]
        self._warm.clear()
        self._refreshed = time.time()
        self._spawn_task(self._recycle(idle), "recycle")

    async def _recycle(self, idle: list[Session]) -> None:
        try:
            await asyncio.to_thread(isolation.prepare, self.settings, dict(os.environ))
        except OSError as exc:
            log.warning("could not refresh claude's state: %s", exc)
        self._wake.set()  # only now: replacements start with the refreshed state
        await asyncio.gather(*(s.close() for s in idle), return_exceptions=True)

    def _prune_dead(self) -> None:
        """Drop warm sessions whose claude died while idle; the replenisher replaces them."""
        for spec, sessions in list(self._warm.items()):
            dead = [s for s in sessions if not s.alive or s.state != "ready"]
            for s in dead:
                sessions.remove(s)
                self.deaths += 1
                log.warning("idle claude died; replacing it", extra={"pid": s.pid})
                self._spawn_task(s.close(), "close dead")
            if not sessions:
                del self._warm[spec]

    # --- inspection ----------------------------------------------------------------------------
    def live_sessions(self) -> list[tuple[str, Session, str | None, str | None]]:
        """Every live claude as (role, session, sticky id, owner tenant), read-only, for the
        dashboard's screen mirror. Roles: sticky, parked (stateless calls waiting for results),
        kept (a stateless conversation kept for its next call), busy (a stateless turn; its
        owner is not recorded, so None) and warm."""
        out: list[tuple[str, Session, str | None, str | None]] = []
        seen: set[Session] = set()
        for st in self._sticky.values():
            if st.session is not None and st.session.alive:
                out.append(("sticky", st.session, st.id, st.owner))
                seen.add(st.session)
        for entry in dict.fromkeys(self._parked.values()):
            if entry.session not in seen and entry.session.alive:
                out.append(("parked", entry.session, None, entry.owner))
                seen.add(entry.session)
        out += [
            ("kept", s, None, e.owner) for s, e in self._kept.items() if s not in seen and s.alive
        ]
        seen |= set(self._kept)
        out += [("busy", s, None, None) for s in self._busy if s not in seen and s.alive]
        seen |= self._busy
        out += [("warm", s, None, None) for v in self._warm.values() for s in v if s not in seen]
        return out

    def stats(self) -> dict[str, int]:
        """Counts for /v1/health: warm, busy, starting, queued, sessions, max_busy, max_queue."""
        warm = sum(1 for v in self._warm.values() for s in v if s.state == "ready" and s.alive)
        starting = sum(self._starting.values())
        resetting = sum(self._resetting.values())
        sticky = {
            s.session for s in self._sticky.values() if s.session is not None and s.session.alive
        }
        kept = {s for s in self._kept if s.alive}
        return {
            "warm": warm,
            "busy": len(self._busy),
            "starting": starting,
            "queued": self._waiting,
            "sessions": warm + starting + resetting + len(self._busy | sticky | kept),
            "max_busy": self.settings.max_busy,
            "max_queue": self.settings.max_queue,
            "spawned": self.spawned,
            "deaths": self.deaths,
            "sticky": len(sticky),
            "max_sticky": self.settings.max_sticky,
            "parked": len({id(p) for p in self._parked.values()}),
            "kept": len(kept),
            "max_kept": self.settings.max_kept,
            "kept_hits": self.kept_hits,
            "resetting": resetting,
            "resets": self.resets,
        }

    @property
    def claude_error(self) -> str | None:
        """Why claude cannot be started (e.g. binary not found), or None."""
        if self._claude_error is None and (stuck := spawner_stuck()) is not None:
            return f"a claude spawn has not returned for {stuck:.0f}s"
        return self._claude_error

    @property
    def claude_problem(self) -> str | None:
        """`claude_error` as a category word (`claude_not_found`, `spawn_failed`,
        `exited_at_start`, `not_ready`, `dialog:<kind>`, `spawner_stuck`), or None: what an
        unauthenticated /v1/health shows, since the message can name paths of the home dir."""
        if self._claude_error is None and spawner_stuck() is not None:
            return "spawner_stuck"
        if self._claude_error is None:
            return None
        return self._claude_problem or "start_failed"
