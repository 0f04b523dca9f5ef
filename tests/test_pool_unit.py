"""Pool against a fake claude (tests/helpers/fake_claude.py) that reaches the idle prompt and never
answers: a missing binary, warming, stats, admission control, and shutdown without leftovers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from claude_relay.protocols import errors
from claude_relay.protocols.model import Message, TextBlock, TurnRequest
from claude_relay.pty_pool import pool as pool_module
from claude_relay.pty_pool.pool import Pool
from claude_relay.pty_pool.settings import PoolSettings
from claude_relay.pty_pool.spawn import spawn_spec
from claude_relay.pty_pool.sticky import Sticky, message_digest
from tests.helpers.proc import (
    helper,
    kill_and_reap,
    ppid,
    reaped,
    until,
    with_cmdline,
    zombie_children,
)

pytestmark = pytest.mark.timeout(20)

REQUEST = TurnRequest(
    messages=(Message("user", (TextBlock("hello"),)),), model="default", max_tokens=16
)


class FakeClaude:
    """Pools whose claude is the fake, each process tagged with a marker unique to the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.launcher = tmp_path / "claude"
        self.launcher.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" "{helper("fake_claude.py")}" "$@"\n'
        )
        self.launcher.chmod(0o755)
        self.marker = f"relay-test-{uuid.uuid4().hex}"
        self.base = PoolSettings(
            claude_bin=str(self.launcher),
            workspace=tmp_path / "workspace",
            warm=1,
            screen_mode="rows",  # the fake draws claude's default screen
            extra_args=("--test-marker", self.marker),
        )
        self.pools: list[Pool] = []

    def pool(self, **overrides: Any) -> Pool:
        pool = Pool(dataclasses.replace(self.base, **overrides))
        self.pools.append(pool)
        return pool

    def processes(self) -> list[int]:
        """Live fake claudes started by this test."""
        return with_cmdline(self.marker)


@pytest.fixture
async def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeClaude]:
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-config"))
    fake = FakeClaude(tmp_path)
    yield fake
    for pool in fake.pools:
        await pool.close(grace=0)
    for pid in fake.processes():  # only after a failure: nothing must outlive the test
        kill_and_reap(pid)


async def assert_all_gone(fake: FakeClaude, pids: list[int]) -> None:
    assert fake.processes() == []
    for pid in pids:
        assert reaped(pid)
    assert zombie_children() == []


async def stop(fake: FakeClaude, pool: Pool, *tasks: asyncio.Task[None]) -> None:
    """Cancel the test's turns, close the pool, and check that every claude is gone."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    pids = fake.processes()
    await pool.close(grace=0)
    await assert_all_gone(fake, pids)


async def run_turn(pool: Pool, request: TurnRequest = REQUEST) -> None:
    """Run one turn to its end; on the fake claude it never gets an answer."""
    async with pool.open_turn(request) as turn:
        async for _ in turn:
            pass


# --- claude missing or broken -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["claude-relay-no-such-claude", "/nonexistent/bin/claude"])
async def test_missing_binary_is_reported_not_raised(fake: FakeClaude, name: str) -> None:
    pool = fake.pool(claude_bin=name)
    await pool.start()
    assert pool.claude_error is not None
    assert name in pool.claude_error and "not found" in pool.claude_error
    with pytest.raises(errors.ServiceUnavailableError, match="not found") as refused:
        await pool.open_turn(REQUEST).__aenter__()
    assert refused.value.status == 503
    stats = pool.stats()
    assert stats["spawned"] == 0 and stats["sessions"] == 0 and stats["queued"] == 0
    await pool.close(grace=0)


async def test_claude_exiting_at_startup_is_reported(fake: FakeClaude) -> None:
    # ready_timeout bounds how long a turn waits for the (failing) warmer before its own spawn
    pool = fake.pool(extra_env=(("FAKE_CLAUDE_EXIT", "1"),), ready_timeout=2.0)
    await pool.start()
    await until(lambda: pool.claude_error is not None, timeout=10.0, what="claude_error")
    assert "exited during startup" in (pool.claude_error or "")
    assert "failing on purpose" in (pool.claude_error or "")  # the screen is quoted
    assert pool.stats()["warm"] == 0
    with pytest.raises(errors.ServiceUnavailableError, match="exited during startup"):
        await run_turn(pool)
    assert pool.stats()["busy"] == pool.stats()["queued"] == 0
    await pool.close(grace=0)
    await assert_all_gone(fake, [])


async def test_a_spec_whose_claude_fails_to_start_fails_only_its_request(
    fake: FakeClaude,
) -> None:
    """A request's own spawn settings (here a system prompt this claude exits on) fail that
    request; the pool is not degraded and does not keep warming those settings."""
    pool = fake.pool(
        extra_env=(
            ("FAKE_CLAUDE_EXIT", "1"),
            ("FAKE_CLAUDE_EXIT_ON", "--append-system-prompt-file"),
        )
    )
    await pool.start()
    await until(lambda: pool.stats()["warm"] == 1, timeout=10.0, what="a warm session")
    bad = dataclasses.replace(REQUEST, system="a system prompt this claude cannot start with")
    with pytest.raises(errors.ServiceUnavailableError, match="exited during startup"):
        await run_turn(pool, bad)
    assert pool.claude_error is None and pool.claude_problem is None
    # warming is back on the default settings, not on the ones that failed
    await until(lambda: pool.stats()["warm"] == 1, timeout=10.0, what="a warm default session")
    assert [spec.system for spec in pool._warm if pool._warm[spec]] == [None]
    assert pool._recent and all(spec.system is None for spec in pool._recent)
    spawned = pool.stats()["spawned"]
    assert pool.stats()["starting"] == 0 and pool.stats()["spawned"] == spawned
    await pool.close(grace=0)


async def test_a_spawn_that_never_returns_makes_health_say_so(
    fake: FakeClaude, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spawns run one at a time on one thread: one that hangs holds up every later spawn, so
    health must not keep saying ok (before, it did while every request hung)."""
    import time

    from claude_relay.pty_pool import driver

    pool = fake.pool()
    await pool.start()
    await until(lambda: pool.stats()["warm"] == 1, timeout=10.0, what="a warm session")
    assert pool.claude_problem is None
    monkeypatch.setattr(driver, "_spawning_since", time.monotonic() - driver.SPAWN_STUCK_AFTER - 1)
    assert pool.claude_problem == "spawner_stuck"
    assert "has not returned" in (pool.claude_error or "")
    await pool.close(grace=0)


async def test_one_off_spawn_settings_neither_evict_the_warm_claude_nor_stay_behind(
    fake: FakeClaude,
) -> None:
    """A request with a system prompt seen once (a timestamp in it is enough) gets a claude of
    its own; the default warm claude stays, and no key of that spec is left in the pool's maps
    (before: two spawns, the warm claude evicted, and a key per distinct prompt for good)."""
    pool = fake.pool(turn_timeout=1.5, stall_timeout=1.0)
    await pool.start()
    await until(lambda: pool.stats()["warm"] == 1, timeout=10.0, what="a warm session")
    warm_pid = fake.processes()
    for n in range(3):
        once = dataclasses.replace(REQUEST, system=f"request at t={n}")
        with pytest.raises(errors.TimeoutError_):
            await run_turn(pool, once)  # the fake never answers: each turn times out
    assert pool.stats()["spawned"] == 4  # the warm one, then one per request: no extra warming
    assert set(warm_pid) <= set(fake.processes())  # the default warm claude was not evicted
    assert [spec.system for spec in pool._warm] == [None]
    assert pool._starting == {} and pool._waiters == {}
    # the same settings asked for again are worth warming
    assert sum(1 for s in pool._recent if s.system is not None) == 3
    await pool.close(grace=0)


async def test_a_call_waits_for_a_reset_only_about_as_long_as_a_spawn(
    fake: FakeClaude, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call that finds no warm claude waits for a reset under way (normally ~0.3 s), but not
    for one that hangs until its own timeout: after RESET_PATIENCE it starts its own claude."""
    monkeypatch.setattr(pool_module, "RESET_PATIENCE", 0.3)
    pool = fake.pool(warm=0, ready_timeout=60.0)
    await pool.start()
    spec = pool._default_spec()
    pool._resetting[spec] = 1  # a reset that will never finish
    async with asyncio.timeout(30):  # far below ready_timeout: the call did not wait it out
        session = await pool._acquire(spec)
    assert pool.stats()["spawned"] == 1 and session.alive
    del pool._resetting[spec]
    pool._release(session)
    await pool.close(grace=0)
    await assert_all_gone(fake, [])


# --- warming and stats --------------------------------------------------------------------------
async def test_warm_sessions_and_stats(fake: FakeClaude) -> None:
    pool = fake.pool(warm=2, max_busy=3, max_queue=5)
    await pool.start()
    await until(lambda: pool.stats()["warm"] == 2, timeout=10.0, what="two warm sessions")
    assert pool.stats() == {
        "warm": 2,
        "busy": 0,
        "starting": 0,
        "queued": 0,
        "sessions": 2,
        "max_busy": 3,
        "max_queue": 5,
        "spawned": 2,
        "deaths": 0,
        "sticky": 0,
        "max_sticky": 16,
        "parked": 0,
        "kept": 0,
        "max_kept": 2,
        "kept_hits": 0,
        "resetting": 0,
        "resets": 0,
    }
    assert pool.claude_error is None
    pids = fake.processes()
    assert len(pids) == 2
    assert all(ppid(pid) == os.getpid() for pid in pids)
    assert (fake.base.workspace).is_dir()

    await pool.close(grace=0)
    await assert_all_gone(fake, pids)
    with pytest.raises(errors.ServiceUnavailableError, match="shutting down"):
        await pool.open_turn(REQUEST).__aenter__()


# --- admission control --------------------------------------------------------------------------
async def test_overloaded_when_busy_and_no_queue(fake: FakeClaude) -> None:
    pool = fake.pool(
        warm=1, max_busy=1, max_queue=0, retry_after=7.0, turn_timeout=2.0, stall_timeout=1.0
    )
    await pool.start()
    await until(lambda: pool.stats()["warm"] == 1, timeout=10.0, what="a warm session")
    first = asyncio.create_task(run_turn(pool))
    try:
        await until(lambda: pool.stats()["busy"] == 1, timeout=5.0, what="the turn to start")
        with pytest.raises(errors.OverloadedError) as overloaded:
            await pool.open_turn(REQUEST).__aenter__()
        assert overloaded.value.retry_after == 7.0
        assert overloaded.value.status == 529
        assert pool.stats()["queued"] == 0  # a refused turn leaves no trace

        # the fake never answers: turn_timeout ends the first turn and frees its slot
        with pytest.raises(errors.TimeoutError_):
            await first
        assert pool.stats()["busy"] == 0
        async with pool.open_turn(REQUEST):
            assert pool.stats()["queued"] == 1
        assert pool.stats()["queued"] == 0
    finally:
        await stop(fake, pool, first)


async def test_calls_queued_on_one_sticky_id_are_bounded(fake: FakeClaude) -> None:
    """Calls on one id run one at a time; beyond max_sticky_queue waiting behind the running
    one, a call is refused at once with 529 (before, they piled up without bound)."""
    pool = fake.pool(warm=1, max_busy=4, max_sticky_queue=1, retry_after=3.0, turn_timeout=20.0)
    await pool.start()
    await until(lambda: pool.stats()["warm"] == 1, timeout=10.0, what="a warm session")
    sticky = dataclasses.replace(REQUEST, session_id="one-id")
    running = asyncio.create_task(run_turn(pool, sticky))
    waiting: asyncio.Task[None] | None = None
    try:
        await until(lambda: pool.stats()["busy"] == 1, timeout=10.0, what="the first call")
        waiting = asyncio.create_task(run_turn(pool, sticky))
        entry = pool._sticky["one-id"]
        await until(lambda: entry.queued == 1, timeout=5.0, what="the second call to queue")
        with pytest.raises(errors.OverloadedError, match="one-id") as refused:
            await pool.open_turn(sticky).__aenter__()
        assert refused.value.retry_after == 3.0
        # another tenant's id of the same name is not this one
        other = dataclasses.replace(sticky, owner="other-tenant")
        async with pool.open_turn(other):
            pass
    finally:
        for task in (running, waiting):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        pids = fake.processes()
        await pool.close(grace=0)
    await assert_all_gone(fake, pids)


async def test_queue_is_bounded_and_times_out(fake: FakeClaude) -> None:
    pool = fake.pool(warm=1, max_busy=1, max_queue=1, queue_timeout=0.3, retry_after=3.0)
    await pool.start()
    await until(lambda: pool.stats()["warm"] == 1, timeout=10.0, what="a warm session")
    first = asyncio.create_task(run_turn(pool))
    try:
        await until(lambda: pool.stats()["busy"] == 1, timeout=5.0, what="the turn to start")
        async with pool.open_turn(REQUEST) as queued:
            assert pool.stats()["queued"] == 1
            with pytest.raises(errors.OverloadedError):  # the queue is full
                await pool.open_turn(REQUEST).__aenter__()
            with pytest.raises(errors.OverloadedError, match="waited") as waited:
                async for _ in queued:
                    pass
            assert waited.value.retry_after == 3.0
        assert pool.stats()["queued"] == 0

        # shutting down with a turn still running: its session is killed, the turn fails
        pids = fake.processes()
        await pool.close(grace=0)
        with pytest.raises(errors.ApiError, match="exited during the turn"):
            await first
    finally:
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
    await assert_all_gone(fake, pids)


# --- shutdown -----------------------------------------------------------------------------------
async def test_close_while_a_session_is_starting(fake: FakeClaude) -> None:
    """close() gives up on a session that is not ready yet, and still kills its claude."""
    pool = fake.pool(extra_env=(("FAKE_CLAUDE_READY_DELAY", "60"),))
    await pool.start()
    await until(lambda: len(fake.processes()) == 1, timeout=5.0, what="claude to be spawned")
    pids = fake.processes()
    assert pool.stats()["starting"] == 1
    await pool.close(grace=0)
    await assert_all_gone(fake, pids)


async def test_new_sticky_ids_count_while_their_claude_starts(fake: FakeClaude) -> None:
    """max_sticky holds for calls on new ids that arrive together: an id whose claude is still
    starting counts (before, only ids with a live claude did, so both calls passed the check)."""
    # the first claude stays starting for a while (under load one ready at once raced the
    # check), so the test also ends with a turn cancelled while its claude starts
    pool = fake.pool(
        warm=0,
        max_busy=4,
        max_sticky=1,
        turn_timeout=20.0,
        extra_env=(("FAKE_CLAUDE_READY_DELAY", "5"),),
    )
    await pool.start()
    first = asyncio.create_task(run_turn(pool, dataclasses.replace(REQUEST, session_id="a")))
    try:
        await until(lambda: "a" in pool._sticky, timeout=5.0, what="the first id")
        assert pool._sticky["a"].session is None or not pool._sticky["a"].session.alive
        with pytest.raises(errors.OverloadedError, match="maximum of 1 sticky"):
            await run_turn(pool, dataclasses.replace(REQUEST, session_id="b"))
        assert "b" not in pool._sticky
    finally:
        await stop(fake, pool, first)


def test_a_kept_conversation_is_continued_only_by_its_own_caller_and_settings(
    tmp_path: Path,
) -> None:
    """`_take_kept` matches the exact history, the same spawn settings and the same tenant."""
    pool = Pool(PoolSettings(workspace=tmp_path / "workspace"))
    spec = spawn_spec("default", None, pool.settings)

    class Idle:  # what _take_kept asks of a session
        alive = True
        state = "ready"
        id = "kept-claude"

    session: Any = Idle()
    said = Message("user", (TextBlock("hi"),))
    answer = Message("assistant", (TextBlock("hello"),))
    seen = [[message_digest(m.role, m.text, m.content)] for m in (said, answer)]
    pool._kept[session] = Sticky(id="", claude_id="c", spec=spec, owner="key-a", seen=seen)
    req = dataclasses.replace(
        REQUEST, messages=(said, answer, Message("user", (TextBlock("more"),))), owner="key-b"
    )
    assert pool._take_kept(req, spec) is None  # another key
    other_spec = spawn_spec("default", "be brief", pool.settings)
    assert pool._take_kept(dataclasses.replace(req, owner="key-a"), other_spec) is None
    edited = dataclasses.replace(
        req, owner="key-a", messages=(said, Message("assistant", (TextBlock("hey"),)), said)
    )
    assert pool._take_kept(edited, spec) is None
    assert pool._take_kept(dataclasses.replace(req, owner="key-a"), spec) == (session, 2)
    assert session not in pool._kept  # taken: a second call on it at once runs fresh


def test_only_clear_mode_gives_stateless_claudes_slash_commands_and_never_for_a_slash(
    tmp_path: Path,
) -> None:
    """With `stateless_reset = "clear"` a stateless claude runs with slash commands on (the
    relay resets it with `/clear`), except for a request with text that could start one."""
    clear = Pool(PoolSettings(workspace=tmp_path / "workspace", stateless_reset="clear"))
    spec = spawn_spec("default", None, clear.settings)
    assert clear._default_spec().commands
    assert clear._stateless_spec(spec, REQUEST).commands
    for text in ("/clear", "\u200b/model opus"):
        slashy = dataclasses.replace(REQUEST, messages=(Message("user", (TextBlock(text),)),))
        assert not clear._stateless_spec(spec, slashy).commands
    respawn = Pool(PoolSettings(workspace=tmp_path / "workspace", stateless_reset="respawn"))
    assert not respawn._default_spec().commands
    assert not respawn._stateless_spec(spec, REQUEST).commands
