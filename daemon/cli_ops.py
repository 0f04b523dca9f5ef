"""The operations commands behind `claude-relay status|sessions|doctor|service`.

Each loads the config like `serve` does (so they look where the daemon listens), then hands off to
daemon.ctl (HTTP client), daemon.doctor or daemon.service, and returns the exit code: 0 fine,
1 a failed check or command, 2 a usage or config error, 3 daemon not running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Final

from claude_relay.daemon import ctl, doctor, selftest, service
from claude_relay.daemon.auth import exposure_error
from claude_relay.daemon.config import CONFIG_ENV, ENV_PREFIX, Config, ConfigError, load_config
from claude_relay.daemon.config import resolve_config_file as _resolve

# Variables the test suite and tooling set that are no config fields.
_NOT_SETTINGS: Final = frozenset(
    {CONFIG_ENV, "CLAUDE_RELAY_TEST_CLAUDE_BIN", "CLAUDE_RELAY_E2E_LOGS"}
)


def _error(message: str) -> int:
    print(f"claude-relay: error: {message}", file=sys.stderr)
    return 2


def _load(args: argparse.Namespace, env: dict[str, str]) -> Config:
    return load_config(argv_overrides={}, env=env, config_file=_resolve(args.config, env))


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.command == "doctor":
        return _doctor(args, env)
    try:
        config = _load(args, env)
    except ConfigError as exc:
        return _error(str(exc))
    if args.command == "service":
        return _service(args, env)
    client = ctl.Client(
        args.url or ctl.base_url(config),
        args.api_key or next(iter(config.key_list()), None),
    )
    if args.command == "status":
        return _status(client, as_json=args.json)
    return _sessions(client, args)


def _status(client: ctl.Client, *, as_json: bool) -> int:
    report = ctl.gather_status(client)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        ctl.print_status(report, sys.stdout)
    return 0 if report["reachable"] else ctl.EXIT_UNREACHABLE


def _sessions(client: ctl.Client, args: argparse.Namespace) -> int:
    try:
        if args.sessions_command == "kill":
            client.call("DELETE", "/v1/sessions/" + ctl.quote_id(args.id))
            print(f"closed session {args.id}")
            return 0
        data = client.get("/v1/sessions")
    except ctl.Unreachable as exc:
        print(f"claude-relay is not running: {exc}", file=sys.stderr)
        return ctl.EXIT_UNREACHABLE
    except ctl.HttpError as exc:
        print(f"claude-relay: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        ctl.print_sessions(data, sys.stdout)
    return 0


def _doctor(args: argparse.Namespace, env: dict[str, str]) -> int:
    if args.self_test:
        binary = args.claude
        if binary is None:
            try:
                binary = _load(args, env).claude_bin
            except ConfigError as exc:
                return _error(str(exc))
        return selftest.main(binary, sys.stdout)
    config: Config | None = None
    config_file: Path | None = None
    error: str | None = None
    try:
        config_file = _resolve(args.config, env)
        config = _load(args, env)
    except ConfigError as exc:
        error = str(exc)
    checks = doctor.run_checks(
        config, config_file=config_file, config_error=error, env=env, home=Path.home()
    )
    doctor.print_checks(checks, sys.stdout, as_json=args.json)
    return 1 if any(c.status == "fail" for c in checks) else 0


def _service(args: argparse.Namespace, env: dict[str, str]) -> int:
    here = service.current_platform()
    platform = args.platform or here
    if platform is None:
        return _error("services are supported on Linux (systemd) and macOS (launchd) only")
    if platform != here and not getattr(args, "dry_run", False):
        return _error(f"--platform {platform} on this machine works with --dry-run only")
    explicit = args.config is not None or bool(env.get(CONFIG_ENV))
    config_file = _resolve(args.config, env)
    try:
        # What the service will see: the file, not this shell's CLAUDE_RELAY_* variables.
        config = load_config(argv_overrides={}, env={}, config_file=config_file)
    except ConfigError as exc:
        return _error(str(exc))
    try:
        svc = service.build(
            platform,
            config_file=config_file if explicit else None,
            claude_bin=config.claude_bin,
            env=env,
            home=Path.home(),
        )
    except service.ServiceError as exc:
        return _error(str(exc))
    if args.service_command == "status":
        return _service_status(svc)
    if args.service_command == "uninstall":
        return _service_uninstall(svc, dry_run=args.dry_run)
    if (refusal := exposure_error(config)) is not None:
        return _error(refusal)
    if shutil.which(config.claude_bin, path=env.get("PATH")) is None:
        print(
            f"warning: {config.claude_bin!r} is not on this PATH, so the service will not find "
            "it either (health will say degraded); install claude or set claude_bin first",
            file=sys.stderr,
        )
    return _service_install(svc, env, dry_run=args.dry_run)


def _service_install(svc: service.Service, env: dict[str, str], *, dry_run: bool) -> int:
    unseen = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in _NOT_SETTINGS)
    if unseen:
        print(
            "warning: the service does not see this shell's environment; put these settings in "
            f"the config file instead: {', '.join(unseen)}",
            file=sys.stderr,
        )
    commands = svc.install_commands()
    if dry_run:
        sys.stdout.write(svc.text)
        print(f"# would write {svc.path}", file=sys.stderr)
        for argv in commands:
            print(f"# then run: {' '.join(argv)}", file=sys.stderr)
        print(f"# logs: {svc.log_hint}", file=sys.stderr)
        return 0
    results = service.install(svc)
    print(f"wrote {svc.path}")
    failed = [r for r in results if r.code != 0]
    if failed:
        r = failed[0]
        print(f"claude-relay: `{' '.join(r.argv)}` failed ({r.code}): {r.output}", file=sys.stderr)
        print("the file is in place; start the service once its manager runs:", file=sys.stderr)
        for argv in commands:
            print(f"  {' '.join(argv)}", file=sys.stderr)
        return 1
    print(f"started; logs: {svc.log_hint}")
    return 0


def _service_uninstall(svc: service.Service, *, dry_run: bool) -> int:
    if dry_run:
        for argv in svc.uninstall_commands():
            print(f"# would run: {' '.join(argv)}", file=sys.stderr)
        print(f"# would remove {svc.path}", file=sys.stderr)
        return 0
    existed, results = service.uninstall(svc)
    for r in results:
        if r.code != 0 and r.output:
            print(f"note: `{' '.join(r.argv)}`: {r.output}", file=sys.stderr)
    print(f"removed {svc.path}" if existed else f"not installed ({svc.path} absent)")
    return 0


def _service_status(svc: service.Service) -> int:
    if not svc.path.exists():
        print(f"not installed ({svc.path} absent)")
        return ctl.EXIT_UNREACHABLE
    print(f"installed: {svc.path}")
    for line in service.status(svc.platform):
        print(line)
    print(f"logs: {svc.log_hint}")
    return 0
