"""The relay's entitlement: claude's own login, checked in the background and cached.

`LicenseMonitor` asks the claude binary (`claude --version`, `claude auth status --json`) at
start, every `license_refresh_interval` seconds (every 30 s while logged out, so a fresh login is
noticed soon) and on `POST /v1/license/refresh`. Requests never wait for it: `LicensedPool`
reads the cached state, and refuses turns with a 503 that says how to log in, instead of leaving
a claude stuck on its login screen. An unknown state (not checked yet, probe failed) never
refuses anything: the pool's own errors still apply.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Protocol

from aiohttp import web

from claude_relay.daemon import POOL_KEY, RelayPool, TurnHandle
from claude_relay.daemon.claude_probe import (
    LOGIN_HELP,
    AuthStatus,
    ProbeError,
    auth_status,
    claude_version,
)
from claude_relay.daemon.config import Config
from claude_relay.daemon.pool_proxy import PoolProxy
from claude_relay.protocols.errors import ServiceUnavailableError
from claude_relay.protocols.model import TurnEvent, TurnRequest
from claude_relay.pty_pool.spawn import build_env, find_claude

log = logging.getLogger(__name__)

LOGGED_OUT_RECHECK: Final = 30.0  # seconds between checks while claude is logged out


@dataclass(frozen=True, slots=True)
class LicenseState:
    """What the daemon last learned about its claude; None fields were not learned."""

    claude_bin: str  # as configured
    binary: str | None = None  # resolved path; None when not found (or not looked up yet)
    version: str | None = None
    auth: AuthStatus | None = None  # None: not asked yet, or the probe failed (see `error`)
    error: str | None = None
    refreshed_at: float | None = None  # time.time() of the last completed check

    @property
    def logged_out(self) -> bool:
        """Known to be logged out: the only state in which turns are refused."""
        return self.auth is not None and not self.auth.logged_in

    @property
    def missing(self) -> bool:
        return self.refreshed_at is not None and self.binary is None

    def login_message(self) -> str:
        return (
            f"claude is not logged in; {LOGIN_HELP}, then POST /v1/license/refresh "
            f"(or wait up to {LOGGED_OUT_RECHECK:g} s)"
        )

    def body(self) -> dict[str, object]:
        """The `GET /v1/license` JSON."""
        auth = self.auth
        if auth is None:
            message = self.error or "not checked yet"
        elif not auth.logged_in:
            message = self.login_message()
        else:
            message = None
        refreshed = (
            datetime.fromtimestamp(self.refreshed_at, UTC).isoformat(timespec="seconds")
            if self.refreshed_at is not None
            else None
        )
        return {
            "configured": auth is not None,
            "license": {
                "valid": auth is not None and auth.logged_in,
                "method": auth.method if auth is not None else "unknown",
                "provider": auth.provider if auth is not None else None,
                "account": (auth.email or auth.organization) if auth is not None else None,
                "organization": auth.organization if auth is not None else None,
                "subscriptionType": auth.subscription_type if auth is not None else None,
                "apiKeySource": auth.api_key_source if auth is not None else None,
                "billing": auth.billing if auth is not None else "unknown",
                "warnings": list(auth.warnings) if auth is not None else [],
                "message": message,
            },
            "refreshedAt": refreshed,
        }


async def check_claude(claude_bin: str, env: Mapping[str, str]) -> LicenseState:
    """One full check: find the binary, then ask it its version and login (concurrently)."""
    # shutil.which stats files along PATH: off the loop, like every file system wait.
    binary = await asyncio.to_thread(find_claude, claude_bin)
    now = time.time()
    if binary is None:
        error = f"claude binary not found: {claude_bin!r}"
        return LicenseState(claude_bin, error=error, refreshed_at=now)
    version, auth = await asyncio.gather(
        claude_version(binary, env), auth_status(binary, env), return_exceptions=True
    )
    errors = []
    for result in (version, auth):
        if isinstance(result, ProbeError):
            errors.append(str(result))
        elif isinstance(result, BaseException):
            raise result
    return LicenseState(
        claude_bin,
        binary=binary,
        version=version if isinstance(version, str) else None,
        auth=auth if isinstance(auth, AuthStatus) else None,
        error="; ".join(errors) or None,
        refreshed_at=time.time(),
    )


class LicenseSource(Protocol):
    @property
    def state(self) -> LicenseState: ...

    async def refresh(self) -> LicenseState: ...


class FixedLicense:
    """A state that never changes: for apps built around a test pool, which has no claude."""

    def __init__(self, state: LicenseState) -> None:
        self._state = state

    @property
    def state(self) -> LicenseState:
        return self._state

    async def refresh(self) -> LicenseState:
        return self._state


class LicenseMonitor:
    def __init__(self, claude_bin: str, env: Mapping[str, str], interval: float) -> None:
        self._claude_bin = claude_bin
        self._env = dict(env)
        self._interval = interval
        self._state = LicenseState(claude_bin)
        self._inflight: asyncio.Task[LicenseState] | None = None
        self.on_change: Callable[[LicenseState], None] | None = None

    @classmethod
    def for_config(cls, config: Config) -> LicenseMonitor:
        # The environment claude sessions get, so the check sees the login they will use.
        env = build_env(os.environ, config.pool_settings())
        return cls(config.claude_bin, env, config.license_refresh_interval)

    @property
    def state(self) -> LicenseState:
        return self._state

    async def refresh(self) -> LicenseState:
        """Check now; concurrent callers share one check, and a cancelled caller leaves it be."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._check(), name="license check")
        return await asyncio.shield(self._inflight)

    async def _check(self) -> LicenseState:
        old = self._state
        new = await check_claude(self._claude_bin, self._env)
        self._state = new
        if _login_changed(old, new):
            if new.logged_out:
                log.warning("%s", new.login_message())
            elif new.auth is not None:
                log.info("claude login: %s (billing: %s)", new.auth.method, new.auth.billing)
                for warning in new.auth.warnings:
                    log.warning("%s", warning)
            if old.auth is not None and self.on_change is not None:
                self.on_change(new)
        if new.error is not None and new.error != old.error:
            log.warning("claude check failed: %s", new.error)
        return new

    async def run(self) -> None:
        """Check now and then periodically, until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug, not a claude problem (those are ProbeErrors in the state)
                log.exception("claude check failed")
            delay = self._interval
            if self._state.logged_out:
                delay = min(delay, LOGGED_OUT_RECHECK)
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()
            await asyncio.wait({self._inflight})


def _login_changed(old: LicenseState, new: LicenseState) -> bool:
    if new.auth is None:
        return False
    if old.auth is None:
        return True
    a, b = old.auth, new.auth
    return (a.logged_in, a.method, a.email, a.api_key_source) != (
        b.logged_in,
        b.method,
        b.email,
        b.api_key_source,
    )


LICENSE_KEY: Final = web.AppKey[LicenseSource]("license")


def license_lifetime(monitor: LicenseMonitor) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup_ctx that runs the background checks for the app's lifetime."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        pool = app[POOL_KEY]

        def recycle(state: LicenseState) -> None:
            # Idle claudes started under the old login would keep using it (or sit at a login
            # screen): replace them, like SIGHUP does.
            log.info("claude login changed; recycling idle sessions")
            pool.recycle()

        monitor.on_change = recycle
        task = asyncio.create_task(monitor.run(), name="license monitor")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait({task})
            await monitor.stop()

    return lifetime


class _Refused:
    """A turn handle that is refused at admission, before any response is prepared."""

    def __init__(self, message: str) -> None:
        self._message = message

    async def __aenter__(self) -> AsyncIterable[TurnEvent]:
        raise ServiceUnavailableError(self._message)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class LicensedPool(PoolProxy):
    """Refuses turns while claude is known to be logged out; otherwise the inner pool decides."""

    def __init__(self, inner: RelayPool, license: LicenseSource) -> None:
        super().__init__(inner)
        self._license = license

    @property
    def claude_error(self) -> str | None:
        # Routes check this before opening a turn (and health reports it); a logged-out claude
        # sits at its login screen, which the pool would only report as an unanswered dialog.
        state = self._license.state
        if state.logged_out:
            return state.login_message()
        return self.inner.claude_error

    @property
    def claude_problem(self) -> str | None:
        if self._license.state.logged_out:
            return "logged_out"
        return self.inner.claude_problem

    def open_turn(self, request: TurnRequest) -> TurnHandle:
        state = self._license.state
        if state.logged_out:
            return _Refused(f"claude is not available: {state.login_message()}")
        return self.inner.open_turn(request)
