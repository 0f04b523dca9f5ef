"""The `claude-relay` command: parse flags, load the config, run the daemon until a signal.

`serve` builds the app (daemon.app) and runs it on an AppRunner with its own signal handling:
the first SIGINT/SIGTERM stops accepting and drains the pool within `shutdown_grace`; a second one
stops waiting, and the pool is still closed with no grace so no claude process outlives us. The
operations commands (status, sessions, doctor, service) are carried out by daemon.cli_ops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from claude_relay.daemon import POOL_KEY, RelayPool, cli_ops, dashboard_cli, demo
from claude_relay.daemon.app import make_app
from claude_relay.daemon.auth import exposure_error
from claude_relay.daemon.config import Config, ConfigError, load_config, resolve_config_file
from claude_relay.daemon.logs import setup_logging
from claude_relay.daemon.transport import RelayRunner, TransportLimits

log = logging.getLogger(__name__)

# After the pool has drained, handlers only need to flush their last frames.
_FLUSH_SECONDS = 5.0
EXIT_FORCED = 130  # the shell's convention for "ended by SIGINT"

# Flags that map one-to-one onto Config fields (values stay strings; the loader checks them, so
# a bad flag and a bad env var get the same kind of message).
_FIELD_FLAGS = (
    ("--host", "ADDR", "address to listen on (default 127.0.0.1)"),
    ("--port", "N", "port to listen on (default 7421)"),
    ("--claude-bin", "PATH", "claude executable (default: `claude` on PATH)"),
    ("--workspace", "DIR", "working directory for claude sessions"),
    ("--warm", "N", "idle sessions kept ready (default 2)"),
    ("--max-busy", "N", "turns running at once (default 4)"),
    ("--max-queue", "N", "turns waiting for a slot before 529 (default 8)"),
    ("--default-model", "MODEL", "model for sessions when a request does not pick one"),
    ("--system-mode", "MODE", "how `system` reaches claude: append or replace"),
    ("--log-level", "LEVEL", "debug, info, warning, error or critical"),
    ("--log-format", "FORMAT", "text or json"),
)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config file (default: $CLAUDE_RELAY_CONFIG, else the user config dir)",
    )


def _client_options(parser: argparse.ArgumentParser) -> None:
    _config_option(parser)
    parser.add_argument("--url", help="daemon address (default: from the config)")
    parser.add_argument("--api-key", help="API key (default: the first of the config's api_keys)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="claude-relay",
        description="Serve warm claude CLI sessions as the Anthropic Messages API.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the relay daemon in the foreground")
    _config_option(serve)
    for flag, metavar, help_text in _FIELD_FLAGS:
        serve.add_argument(flag, metavar=metavar, help=help_text)
    serve.add_argument(
        "--demo",
        action="store_true",
        help="answer with a built-in stand-in model instead of Anthropic (no login needed; "
        "deterministic replies, docs/demo.md)",
    )

    dash = commands.add_parser("dashboard", help="open the live dashboard in a browser")
    _client_options(dash)
    dash.add_argument("--no-open", action="store_true", help="only print the dashboard's URL")

    status = commands.add_parser("status", help="is the daemon running: pool, sessions, login")
    _client_options(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    sessions = commands.add_parser("sessions", help="list sticky sessions, or kill one")
    _client_options(sessions)
    sessions.add_argument("--json", action="store_true", help="print JSON")
    sessions_cmd = sessions.add_subparsers(dest="sessions_command", metavar="ACTION")
    kill = sessions_cmd.add_parser("kill", help="close a sticky session and its claude")
    kill.add_argument("id", help="the session id")

    doctor = commands.add_parser("doctor", help="check claude, its login, config, port, service")
    _config_option(doctor)
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.add_argument(
        "--self-test",
        action="store_true",
        help="qualify the claude binary: drive it in a scratch HOME against a built-in fake "
        "upstream (start-up, turn, injection corpus, isolation)",
    )
    doctor.add_argument("--claude", metavar="BIN", help="with --self-test: the claude to test")

    svc = commands.add_parser("service", help="run the daemon as a systemd/launchd user service")
    actions = svc.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    for name, help_text in (
        ("install", "write the unit (Linux) or LaunchAgent (macOS), enable and start it"),
        ("uninstall", "stop and disable the service and remove its file"),
        ("status", "show whether the service is installed and running"),
    ):
        action = actions.add_parser(name, help=help_text)
        _config_option(action)
        action.add_argument(
            "--platform",
            choices=("linux", "macos"),
            help="render for this platform (default: this machine's); with --dry-run only",
        )
        if name != "status":
            action.add_argument(
                "--dry-run", action="store_true", help="print the file and commands; change nothing"
            )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
        for flag, _, _ in _FIELD_FLAGS
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "dashboard":
        return dashboard_cli.run(args)
    if args.command != "serve":
        return cli_ops.run(args)
    env = os.environ
    try:
        config = load_config(
            argv_overrides=_overrides(args),
            env=env,
            config_file=resolve_config_file(args.config, env),
        )
    except ConfigError as exc:
        print(f"claude-relay: error: {exc}", file=sys.stderr)
        return 2
    if (refusal := exposure_error(config)) is not None:
        print(f"claude-relay: error: {refusal}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    with _blocking_detector(env):
        if args.demo:
            return asyncio.run(demo.run(config, lambda c, url: serve(c, demo_url=url)))
        return asyncio.run(serve(config))


# The e2e tests run every daemon with this set: a blocking call that the relay's own code makes
# on the event loop (file I/O, sleep, a blocking socket or process call) then raises instead of
# stalling every other request, so the test that caused it fails and names the call.
DETECT_BLOCKING_ENV = "CLAUDE_RELAY_DETECT_BLOCKING"


def _blocking_detector(env: os._Environ[str]) -> contextlib.AbstractContextManager[object]:
    if env.get(DETECT_BLOCKING_ENV) != "1":
        return contextlib.nullcontext()
    try:
        from blockbuster import blockbuster_ctx  # noqa: PLC0415 (a dev dependency: only if asked)
    except ImportError:  # an installation without the development dependencies
        log.warning("%s=1, but blockbuster is not installed: not detecting", DETECT_BLOCKING_ENV)
        return contextlib.nullcontext()
    log.info("%s=1: blocking calls on the event loop raise", DETECT_BLOCKING_ENV)
    return blockbuster_ctx("claude_relay")


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    config: Config, *, pool: RelayPool | None = None, demo_url: str | None = None
) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    force = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: exiting without waiting for running turns", signum.name)
            force.set()
        else:
            log.info("%s: shutting down (grace %gs)", signum.name, config.shutdown_grace)
            stop.set()

    app = make_app(config, pool=pool, demo_url=demo_url)
    # Signals are handled below (aiohttp's would not know about the second one); the runner adds
    # the socket-level defences: read clocks, the connection cap, JSON for malformed requests.
    runner = RelayRunner(
        app,
        limits=TransportLimits.from_config(config),
        shutdown_timeout=config.shutdown_grace + _FLUSH_SECONDS,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    def on_hup() -> None:
        # e.g. after `claude` was upgraded or re-logged-in: idle sessions are replaced by fresh
        # ones; running turns are not touched
        log.info("SIGHUP: recycling idle claude sessions")
        app[POOL_KEY].recycle()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await runner.setup()
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:
            print(
                f"claude-relay: cannot listen on {_url(config.host, config.port)}: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            await runner.cleanup()
            return 1
        port = runner.addresses[0][1] if runner.addresses else config.port
        print(f"claude-relay listening on {_url(config.host, port)}", file=sys.stderr, flush=True)
        await stop.wait()
        return await _shutdown(runner, app[POOL_KEY], force)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _shutdown(runner: web.AppRunner, pool: RelayPool, force: asyncio.Event) -> int:
    # runner.cleanup: stop listening → on_shutdown drains the pool → wait for handlers →
    # cleanup_ctx closes the pool. A second signal cuts that short.
    cleanup = asyncio.create_task(runner.cleanup())
    forced = asyncio.create_task(force.wait())
    await asyncio.wait({cleanup, forced}, return_when=asyncio.FIRST_COMPLETED)
    if cleanup.done():
        forced.cancel()
        await asyncio.wait({forced})
        if (exc := cleanup.exception()) is not None:
            log.error("shutdown failed", exc_info=exc)
            return 1
        log.info("stopped")
        return 0
    cleanup.cancel()
    await asyncio.wait({cleanup})
    if not cleanup.cancelled() and (exc := cleanup.exception()) is not None:
        log.error("shutdown failed", exc_info=exc)
    await pool.close(grace=0)
    return EXIT_FORCED
