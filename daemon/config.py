"""The daemon's one configuration value and its one loader.

`load_config` layers defaults < TOML file < `CLAUDE_RELAY_<FIELD>` environment < CLI flags into a
frozen `Config`; the CLI is the only caller that touches the real environment and file system
paths. `Config.pool_settings()` is the slice handed down to `pty_pool`.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Final, Literal

import platformdirs

from claude_relay.protocols.attachments import AttachmentLimits, PdfLimits
from claude_relay.pty_pool.settings import PoolSettings

APP_NAME: Final = "claude-relay"
ENV_PREFIX: Final = "CLAUDE_RELAY_"
# Not a field: it selects the file, so it cannot come from the file.
CONFIG_ENV: Final = "CLAUDE_RELAY_CONFIG"

SystemMode = Literal["append", "replace"]
ScreenMode = Literal["rows", "ax"]
StreamPolicy = Literal["guarded", "eager"]
StatelessReset = Literal["respawn", "clear"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["text", "json"]


class ConfigError(Exception):
    """A configuration value is missing, malformed or out of range; the message names its source."""


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def default_workspace() -> Path:
    return Path(platformdirs.user_state_dir(APP_NAME)) / "workspace"


def default_attachments_dir() -> Path:
    """The user's runtime dir (tmpfs on Linux, emptied at logout), else a per-user temp dir.

    Not the state dir: on macOS that path has a space, and claude cannot attach a pasted path
    with a space. `platformdirs.user_runtime_dir` is used on macOS only: on Linux without
    `XDG_RUNTIME_DIR` it warns and picks a shared /tmp name.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / APP_NAME / "attachments"
    if sys.platform == "darwin":
        return Path(platformdirs.user_runtime_dir(APP_NAME)) / "attachments"
    return Path(tempfile.gettempdir()) / f"{APP_NAME}-{os.getuid()}" / "attachments"


def _split(values: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (values or "").split(",") if v.strip())


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 7421  # 0 binds an ephemeral port (tests)
    claude_bin: str = "claude"  # a bare name is looked up on PATH when a session spawns
    workspace: Path = field(default_factory=default_workspace)
    warm: int = 2
    max_busy: int = 4
    max_queue: int = 8
    queue_timeout: float = 60.0
    default_model: str | None = None
    system_mode: SystemMode = "append"
    screen_mode: ScreenMode = "ax"
    stream_policy: StreamPolicy = "guarded"
    columns: int = 120
    rows: int = 50
    ready_timeout: float = 30.0
    turn_timeout: float = 600.0
    stall_timeout: float = 90.0
    max_retries: int = 2
    sticky_idle_timeout: float = 1800.0  # seconds an untouched sticky session stays alive
    max_sticky: int = 16  # live sticky sessions; beyond that new ids get 529 + retry-after
    max_parked: int = 16  # claudes parked in tool calls; beyond that the oldest is let go
    max_sticky_queue: int = 4  # calls queued behind a running one per sticky id; then 529
    max_kept: int = 2  # claudes kept with a stateless conversation for its next call; 0: off
    kept_idle_timeout: float = 300.0  # seconds a kept claude waits for its conversation's next call
    # "clear": a stateless turn's claude is reset with /clear and reused, not respawned
    stateless_reset: StatelessReset = "clear"
    tool_result_timeout: float = 600.0  # seconds a parked tool call waits for its tool_result
    agent_tools: str | None = None  # comma-separated claude built-in tools to enable (agent mode)
    ping_interval: float = 10.0  # idle seconds before an SSE ping keeps proxies from timing out
    # a stream reader that takes no bytes for this long is gone: its turn is interrupted and its
    # slot freed (a client that stops reading would otherwise hold a claude for the whole turn)
    write_timeout: float = 30.0
    shutdown_grace: float = 10.0
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    max_body_bytes: int = 32 * 1024 * 1024
    attachments_dir: Path = field(default_factory=default_attachments_dir)
    max_attachment_bytes: int = 10 * 1024 * 1024  # one image or PDF, decoded
    max_attachments_bytes: int = 24 * 1024 * 1024  # all images and PDFs of one request
    max_attachments: int = 100  # images and PDFs in one request
    pdf_max_pages: int = 100  # pages of one PDF; more is a 400
    pdf_max_chars: int = 1_000_000  # characters of one PDF's text; more is a 400
    pdf_timeout: float = 20.0  # seconds to read a request's PDFs (in a child process) or a 400
    # Comma-separated keys clients must send (x-api-key or Authorization: Bearer); unset means no
    # authentication, which is only allowed on a loopback address. Kept out of repr: a logged
    # Config must not leak them.
    api_keys: str | None = field(default=None, repr=False)
    license_refresh_interval: float = 300.0  # seconds between background `claude auth status`
    # Comma-separated Host header values (without port) accepted besides loopback names and the
    # bind address; "*" accepts any. A browser page that rebinds its own DNS name to 127.0.0.1
    # still sends its name as Host, so this is the DNS-rebinding defence (daemon.guard).
    allowed_hosts: str | None = None
    # Comma-separated browser origins (`scheme://host[:port]`, exact) whose requests may pass;
    # any other request carrying an Origin header is refused.
    allowed_origins: str | None = None
    # Seconds a connection may take to send a request's headers (also the idle keep-alive limit),
    # and the grace before its body must keep arriving at a minimum rate (daemon.transport).
    read_timeout: float = 10.0
    max_connections: int = 256  # open client connections; beyond that new ones get a 503

    def key_list(self) -> tuple[str, ...]:
        return _split(self.api_keys)

    def host_list(self) -> tuple[str, ...]:
        return tuple(h.lower() for h in _split(self.allowed_hosts))

    def origin_list(self) -> tuple[str, ...]:
        return _split(self.allowed_origins)

    def attachment_limits(self) -> AttachmentLimits:
        return AttachmentLimits(
            max_bytes=self.max_attachment_bytes,
            max_total_bytes=self.max_attachments_bytes,
            max_count=self.max_attachments,
            pdf=PdfLimits(self.pdf_max_pages, self.pdf_max_chars, self.pdf_timeout),
        )

    def pool_settings(self) -> PoolSettings:
        return PoolSettings(
            claude_bin=self.claude_bin,
            workspace=self.workspace,
            warm=self.warm,
            max_busy=self.max_busy,
            max_queue=self.max_queue,
            queue_timeout=self.queue_timeout,
            default_model=self.default_model,
            system_mode=self.system_mode,
            screen_mode=self.screen_mode,
            stream_policy=self.stream_policy,
            columns=self.columns,
            rows=self.rows,
            ready_timeout=self.ready_timeout,
            turn_timeout=self.turn_timeout,
            stall_timeout=self.stall_timeout,
            max_retries=self.max_retries,
            sticky_idle_timeout=self.sticky_idle_timeout,
            max_sticky=self.max_sticky,
            max_parked=self.max_parked,
            max_sticky_queue=self.max_sticky_queue,
            max_kept=self.max_kept,
            kept_idle_timeout=self.kept_idle_timeout,
            stateless_reset=self.stateless_reset,
            tool_result_timeout=self.tool_result_timeout,
            agent_tools=tuple(t.strip() for t in (self.agent_tools or "").split(",") if t.strip()),
            attachments_dir=self.attachments_dir,
        )


# --- value checking ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Int:
    lo: int
    hi: int | None = None


@dataclass(frozen=True, slots=True)
class _Float:
    lo: float
    lo_open: bool = False  # True: value must be > lo, not >= lo


@dataclass(frozen=True, slots=True)
class _Str:
    optional: bool = False  # an empty string means "unset" (None)


@dataclass(frozen=True, slots=True)
class _Choice:
    choices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Path:
    pass


_Spec = _Int | _Float | _Str | _Choice | _Path

_SPECS: Final[dict[str, _Spec]] = {
    "host": _Str(),
    "port": _Int(0, 65535),
    "claude_bin": _Str(),
    "workspace": _Path(),
    "warm": _Int(0),
    "max_busy": _Int(1),
    "max_queue": _Int(0),
    "queue_timeout": _Float(0, lo_open=True),
    "default_model": _Str(optional=True),
    "system_mode": _Choice(("append", "replace")),
    "screen_mode": _Choice(("rows", "ax")),
    "stream_policy": _Choice(("guarded", "eager")),
    # claude's TUI wraps and truncates below roughly this size, which breaks screen reading.
    "columns": _Int(40, 1000),
    "rows": _Int(10, 1000),
    "ready_timeout": _Float(0, lo_open=True),
    "turn_timeout": _Float(0, lo_open=True),
    "stall_timeout": _Float(0, lo_open=True),
    "max_retries": _Int(0, 100),
    "sticky_idle_timeout": _Float(0, lo_open=True),
    "max_sticky": _Int(1, 10000),
    "max_parked": _Int(1, 10000),
    "max_sticky_queue": _Int(0, 10000),
    "max_kept": _Int(0, 1000),
    "kept_idle_timeout": _Float(0, lo_open=True),
    "stateless_reset": _Choice(("respawn", "clear")),
    "tool_result_timeout": _Float(0, lo_open=True),
    "agent_tools": _Str(optional=True),
    "ping_interval": _Float(0, lo_open=True),
    "write_timeout": _Float(0, lo_open=True),
    "shutdown_grace": _Float(0),
    "log_level": _Choice(("debug", "info", "warning", "error", "critical")),
    "log_format": _Choice(("text", "json")),
    "max_body_bytes": _Int(1024),
    "attachments_dir": _Path(),
    "max_attachment_bytes": _Int(1),
    "max_attachments_bytes": _Int(1),
    "max_attachments": _Int(1),
    "pdf_max_pages": _Int(1),
    "pdf_max_chars": _Int(1),
    "pdf_timeout": _Float(0, lo_open=True),
    "api_keys": _Str(optional=True),
    "license_refresh_interval": _Float(0, lo_open=True),
    "allowed_hosts": _Str(optional=True),
    "allowed_origins": _Str(optional=True),
    "read_timeout": _Float(0, lo_open=True),
    "max_connections": _Int(1),
}
assert set(_SPECS) == {f.name for f in fields(Config)}, "every Config field needs a spec"


def _describe(spec: _Spec) -> str:
    match spec:
        case _Int(lo, None):
            return f"an integer >= {lo}"
        case _Int(lo, hi):
            return f"an integer from {lo} to {hi}"
        case _Float(lo, lo_open):
            return f"a number {'>' if lo_open else '>='} {lo:g}"
        case _Str(optional):
            return "a string" if optional else "a non-empty string"
        case _Choice(choices):
            return "one of " + ", ".join(repr(c) for c in choices)
        case _Path():
            return "a path"


def _coerce(spec: _Spec, value: object, *, from_text: bool, base: Path | None) -> object:
    """Check one value against its spec; raise ValueError (the caller adds where it came from).

    `from_text` values (environment, flags) are strings to parse; TOML values must already have
    the right type, because a quoted number in a file is more likely a mistake than intent.
    """
    bad = ValueError(f"expected {_describe(spec)}, got {value!r}")
    match spec:
        case _Int(lo, hi):
            if from_text and isinstance(value, str):
                try:
                    value = int(value.strip())
                except ValueError:
                    raise bad from None
            # bool is an int subclass, but `port = true` is never meant as 1.
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
            if value < lo or (hi is not None and value > hi):
                raise bad
            return value
        case _Float(lo, lo_open):
            if from_text and isinstance(value, str):
                try:
                    value = float(value.strip())
                except ValueError:
                    raise bad from None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise bad
            number = float(value)
            if not math.isfinite(number) or number < lo or (lo_open and number == lo):
                raise bad
            return number
        case _Str(optional):
            if not isinstance(value, str):
                raise bad
            text = value.strip()
            if not text:
                if optional:
                    return None
                raise bad
            return text
        case _Choice(choices):
            if not isinstance(value, str) or value.strip().lower() not in choices:
                raise bad
            return value.strip().lower()
        case _Path():
            if not isinstance(value, str | Path) or not str(value).strip():
                raise bad
            path = Path(str(value).strip()).expanduser()
            # A relative path in a config file means "next to the file", not "wherever the daemon
            # happened to be started".
            if base is not None and not path.is_absolute():
                path = base / path
            return path


def _unknown_key_error(where: str, key: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_SPECS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def _read_file(path: Path) -> dict[str, object]:
    where = f"config file {path}"
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    out: dict[str, object] = {}
    for key, value in data.items():
        if key not in _SPECS:
            raise _unknown_key_error(where, key)
        try:
            out[key] = _coerce(_SPECS[key], value, from_text=False, base=path.parent)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
    return out


def load_config(
    *,
    argv_overrides: Mapping[str, object],
    env: Mapping[str, str],
    config_file: Path | None,
) -> Config:
    """Build the `Config` from its layers; raise `ConfigError` naming the offending source and key.

    `config_file` is read when given (a missing file is an error: someone asked for it);
    `resolve_config_file` decides which file that is. `argv_overrides` maps field names to flag
    values (strings, as typed); None means the flag was not given. Environment variables that
    start with the prefix but name no field are ignored, since other tools may share the prefix.
    """
    values: dict[str, object] = {}
    if config_file is not None:
        values.update(_read_file(config_file))
    for name, spec in _SPECS.items():
        env_name = ENV_PREFIX + name.upper()
        if env_name in env:
            try:
                values[name] = _coerce(spec, env[env_name], from_text=True, base=None)
            except ValueError as exc:
                raise ConfigError(f"environment variable {env_name}: {exc}") from None
    for name, value in argv_overrides.items():
        flag = "--" + name.replace("_", "-")
        if name not in _SPECS:
            raise ConfigError(f"flag {flag}: not a configuration key")
        if value is None:
            continue
        try:
            values[name] = _coerce(_SPECS[name], value, from_text=True, base=None)
        except ValueError as exc:
            raise ConfigError(f"flag {flag}: {exc}") from None
    return Config(**values)  # type: ignore[arg-type]  # each value was checked against its spec


def resolve_config_file(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    """Which TOML file to read: --config, else $CLAUDE_RELAY_CONFIG, else the default path if it
    exists (the default is optional; an explicitly named file must exist)."""
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    default = default_config_path()
    return default if default.is_file() else None
