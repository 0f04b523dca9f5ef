"""`claude-relay doctor`: check, before (or while) the daemon runs, everything it depends on.

Config, claude binary and version, claude's login and who pays for it, the listen address and
port, the service file. Each check says what is wrong and what to do; nothing is changed. The
claude checks use the same probes (and environment) as the daemon's license monitor.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal, TextIO

from claude_relay.daemon import ctl, service
from claude_relay.daemon.auth import exposure_error, is_loopback
from claude_relay.daemon.claude_probe import LOGIN_HELP, AuthStatus
from claude_relay.daemon.config import Config, default_config_path
from claude_relay.daemon.license import check_claude as claude_state
from claude_relay.pty_pool import versions
from claude_relay.pty_pool.spawn import build_env

Status = Literal["ok", "warn", "fail"]
_MARK: Final = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str


def check_config(config_file: Path | None, error: str | None) -> Check:
    default = default_config_path()
    if error is not None:
        return Check("config", "fail", error)
    if config_file is None:
        return Check("config", "ok", f"{default} (not present: built-in defaults)")
    return Check("config", "ok", f"{config_file} (valid)")


def check_claude(config: Config, env: Mapping[str, str]) -> list[Check]:
    # What the daemon's sessions will get: PATH lookup and environment as in the pool.
    state = asyncio.run(claude_state(config.claude_bin, build_env(env, config.pool_settings())))
    if state.binary is None:
        return [
            Check(
                "claude",
                "fail",
                f"{config.claude_bin!r} not found on PATH: install Claude Code "
                "(npm install -g @anthropic-ai/claude-code) or set claude_bin",
            )
        ]
    if state.version is None:
        return [Check("claude", "fail", f"{state.binary}: {state.error}")]
    if not versions.supported(state.version):
        claude = Check(
            "claude",
            "warn",
            f"{state.binary}, version {state.version}; claude-relay is tested with "
            f"{versions.OLDEST} to {versions.PINNED}, and another version may draw its screen "
            "differently: `claude-relay doctor --self-test` qualifies it",
        )
    else:
        claude = Check("claude", "ok", f"{state.binary}, version {state.version}")
    auth: AuthStatus | str = state.auth if state.auth is not None else (state.error or "?")
    return [claude, *check_login(auth)]


def check_login(auth: AuthStatus | str) -> list[Check]:
    """`auth` is claude's answer, or why there is none."""
    if isinstance(auth, str):
        return [Check("login", "fail", f"`claude auth status` failed: {auth}")]
    if not auth.logged_in:
        return [Check("login", "fail", f"claude is not logged in: {LOGIN_HELP}")]
    who = ", ".join(x for x in (auth.subscription_type, auth.email or auth.organization) if x)
    detail = f"{auth.method}" + (f" ({who})" if who else "")
    if auth.api_key_source:
        detail += f", API key from {auth.api_key_source}"
    detail += f"; billing: {auth.billing}"
    checks = [Check("login", "ok", detail)]
    checks += [Check("billing", "warn", w) for w in auth.warnings]
    if auth.billing == "api" and not auth.warnings:
        checks.append(Check("billing", "warn", "requests are billed to an API account"))
    return checks


def check_listen(config: Config) -> Check:
    error = exposure_error(config)
    if error is not None:
        return Check("listen", "fail", error)
    keys = len(config.key_list())
    if is_loopback(config.host):
        auth = f"{keys} API key(s) required" if keys else "no API key (loopback only)"
        return Check("listen", "ok", f"{config.host}, {auth}")
    return Check("listen", "ok", f"{config.host}, reachable from the network, {keys} API key(s)")


def _relay_answers(config: Config) -> bool:
    try:
        health = ctl.Client(ctl.base_url(config)).get("/v1/health")
    except (ctl.Unreachable, ctl.HttpError):
        return False
    return "pool" in health and "claude" in health


def check_port(config: Config) -> Check:
    where = f"{config.host}:{config.port}"
    if config.port == 0:
        return Check("port", "ok", "0: an ephemeral port is chosen at start")
    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return Check("port", "fail", f"cannot resolve {config.host}: {exc.strerror}")
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As aiohttp binds: a port in TIME_WAIT after a restart counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return Check("port", "fail", f"cannot bind {where}: {exc.strerror}")
        else:
            return Check("port", "ok", f"{where} is free")
    if _relay_answers(config):
        return Check("port", "ok", f"{where} is in use by a running claude-relay")
    return Check("port", "fail", f"{where} is in use by another program: pick another port")


def check_service(env: Mapping[str, str], home: Path) -> Check:
    platform = service.current_platform()
    if platform is None:
        return Check("service", "warn", "no service support on this platform")
    path = service.service_file(platform, env, home)
    if not path.exists():
        return Check("service", "ok", f"not installed ({path}); `claude-relay service install`")
    return Check("service", "ok", f"installed: {path} ({'; '.join(service.status(platform))})")


def run_checks(
    config: Config | None,
    *,
    config_file: Path | None,
    config_error: str | None,
    env: Mapping[str, str],
    home: Path,
) -> list[Check]:
    checks = [check_config(config_file, config_error)]
    # With a broken config the rest still runs on the defaults, so one run shows every problem.
    cfg = config if config is not None else Config()
    checks += check_claude(cfg, env)
    checks += [check_listen(cfg), check_port(cfg), check_service(env, home)]
    checks.append(Check("workspace", "ok", str(cfg.workspace)))
    checks.append(check_attachments(cfg))
    return checks


def check_attachments(config: Config) -> Check:
    """The attachments dir: claude splits a pasted path at a space, so images from a path with
    one would never attach."""
    path = config.attachments_dir
    if not path.is_absolute() or any(c.isspace() for c in str(path)):
        return Check(
            "attachments",
            "fail",
            f"{path}: images cannot be attached from a path with spaces; set attachments_dir",
        )
    return Check("attachments", "ok", str(path))


def print_checks(checks: list[Check], out: TextIO, *, as_json: bool) -> None:
    if as_json:
        data = {
            "ok": not any(c.status == "fail" for c in checks),
            "configPath": str(default_config_path()),
            "checks": [asdict(c) for c in checks],
        }
        print(json.dumps(data, indent=2), file=out)
        return
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{_MARK[c.status]:<4}  {c.name:<{width}}  {c.detail}", file=out)
