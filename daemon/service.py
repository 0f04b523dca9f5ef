"""`claude-relay service install|uninstall|status`: run the daemon under the user's own manager.

A systemd **user** unit on Linux, a launchd LaunchAgent on macOS, both rendered from the
templates in `packaging/` (so they can be read and reviewed as files), which every install carries
as package data of `claude_relay`. The service runs `claude-relay serve` as the user who
installed it, because claude's login lives in that user's home; it restarts on failure, and a
config error (exit 2) is not retried under systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final, Literal
from xml.sax.saxutils import escape

Platform = Literal["linux", "macos"]

UNIT: Final = "claude-relay.service"
LABEL: Final = "local.claude-relay"  # "local." is launchd's prefix for agents without a domain
_COMMAND_TIMEOUT: Final = 30.0
_BASE_PATH: Final = ("/usr/local/bin", "/usr/bin", "/bin")
_PLACEHOLDER: Final = re.compile(r"@([A-Z_]+)@")


class ServiceError(Exception):
    pass


def templates_dir() -> Traversable:
    # claude_relay/packaging links to the top-level packaging/ and is package data (pyproject):
    # through importlib.resources the same name works in a checkout, an editable install and a
    # wheel, where a path relative to this file would point outside site-packages.
    return resources.files("claude_relay") / "packaging"


def current_platform() -> Platform | None:
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    return None


def relay_argv(config_file: Path | None) -> list[str]:
    """The command the service runs: this installation's console script, absolute."""
    script = Path(sys.executable).with_name("claude-relay")
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "claude_relay"]
    argv.append("serve")
    if config_file is not None:
        argv += ["--config", str(config_file.expanduser().resolve())]
    return argv


def service_path_env(claude_bin: str, env: Mapping[str, str]) -> str:
    """PATH for the service: where claude and this Python are, then the system directories."""
    dirs: list[str] = []
    found = shutil.which(claude_bin, path=env.get("PATH"))
    if found is not None:
        # The directory of the link as found (an npm or nvm bin dir also holds `node`), then
        # that of its target.
        dirs.append(str(Path(found).absolute().parent))
        dirs.append(str(Path(found).resolve().parent))
    dirs.append(str(Path(sys.executable).parent))
    dirs += _BASE_PATH
    return ":".join(dict.fromkeys(dirs))


def _systemd_arg(arg: str, *, exec_line: bool = True) -> str:
    # systemd expands %specifiers everywhere, $VARIABLES only in Exec lines, and splits on
    # whitespace unless quoted.
    text = arg.replace("%", "%%")
    if exec_line:
        text = text.replace("$", "$$")
    if text and not any(c in text for c in " \t\"'\\;"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fill(template: str, values: Mapping[str, str]) -> str:
    # One pass over the template, so a value that happens to contain "@X@" is left alone.
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ServiceError(f"service template placeholder @{key}@ has no value")
        return values[key]

    return _PLACEHOLDER.sub(sub, template)


def _read_template(name: str) -> str:
    path = templates_dir()
    for part in name.split("/"):  # Traversable.joinpath takes one name before Python 3.12
        path = path / part
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServiceError(
            f"service template {path} is missing ({exc.strerror}): this claude-relay install is "
            "incomplete; reinstall it from its checkout (pip install --force-reinstall .)"
        ) from None


def render_systemd(argv: Sequence[str], path_env: str) -> str:
    return _fill(
        _read_template("systemd/claude-relay.service"),
        {
            "EXEC_START": " ".join(_systemd_arg(a) for a in argv),
            "PATH_ENV": _systemd_arg("PATH=" + path_env, exec_line=False),
        },
    )


def render_launchd(argv: Sequence[str], path_env: str, home: Path, log_file: Path) -> str:
    args = "\n".join(f"\t\t<string>{escape(a)}</string>" for a in argv)
    return _fill(
        _read_template("launchd/local.claude-relay.plist"),
        {
            "PROGRAM_ARGUMENTS": args,
            "PATH": escape(path_env),
            "HOME": escape(str(home)),
            "LOG_FILE": escape(str(log_file)),
        },
    )


@dataclass(frozen=True, slots=True)
class Service:
    """Where the service file goes, what it says, and how the manager is told about it."""

    platform: Platform
    path: Path
    text: str
    log_hint: str
    log_dir: Path | None = None

    def install_commands(self) -> list[list[str]]:
        if self.platform == "linux":
            return [
                ["systemctl", "--user", "daemon-reload"],
                ["systemctl", "--user", "enable", UNIT],
                # restart, not start: after an upgrade the running daemon must pick up the unit
                ["systemctl", "--user", "restart", UNIT],
            ]
        domain = f"gui/{os.getuid()}"
        return [["launchctl", "bootstrap", domain, str(self.path)]]

    def uninstall_commands(self) -> list[list[str]]:
        if self.platform == "linux":
            return [["systemctl", "--user", "disable", "--now", UNIT]]
        return [["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"]]


def service_file(platform: Platform, env: Mapping[str, str], home: Path) -> Path:
    if platform == "linux":
        # where `systemctl --user` looks, which honours XDG_CONFIG_HOME
        config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        return config_home / "systemd" / "user" / UNIT
    return home / "Library" / "LaunchAgents" / f"{LABEL}.plist"


def macos_log_dir(home: Path) -> Path:
    return home / "Library" / "Logs" / "claude-relay"


def build(
    platform: Platform,
    *,
    config_file: Path | None,
    claude_bin: str,
    env: Mapping[str, str],
    home: Path,
) -> Service:
    argv = relay_argv(config_file)
    path_env = service_path_env(claude_bin, env)
    path = service_file(platform, env, home)
    if platform == "linux":
        text = render_systemd(argv, path_env)
        return Service(platform, path, text, "journalctl --user -u claude-relay -f")
    log_file = macos_log_dir(home) / "claude-relay.log"
    text = render_launchd(argv, path_env, home, log_file)
    return Service(platform, path, text, f"tail -f {log_file}", log_file.parent)


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: list[str]
    code: int
    output: str


def run(argv: list[str]) -> CommandResult:
    """Run a service manager command; a missing manager is a result, not an exception."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError:
        return CommandResult(argv, 127, f"{argv[0]}: not found")
    except subprocess.TimeoutExpired:
        return CommandResult(argv, 124, f"{argv[0]}: no answer within {_COMMAND_TIMEOUT:g}s")
    return CommandResult(argv, proc.returncode, (proc.stdout + proc.stderr).strip())


def install(service: Service) -> list[CommandResult]:
    """Write the file and tell the manager; stop at the first command that fails."""
    service.path.parent.mkdir(parents=True, exist_ok=True)
    if service.log_dir is not None:
        service.log_dir.mkdir(parents=True, exist_ok=True)  # launchd does not create it
    if service.platform == "macos" and service.path.exists():
        run(service.uninstall_commands()[0])  # a loaded agent must be booted out to reload
    service.path.write_text(service.text)
    results = []
    for argv in service.install_commands():
        results.append(run(argv))
        if results[-1].code != 0:
            break
    return results


def uninstall(service: Service) -> tuple[bool, list[CommandResult]]:
    """Stop and forget the service, then remove its file; (whether a file was removed, …)."""
    results = [run(argv) for argv in service.uninstall_commands()]
    existed = service.path.exists()
    service.path.unlink(missing_ok=True)
    if service.platform == "linux":
        results.append(run(["systemctl", "--user", "daemon-reload"]))
    return existed, results


def status(platform: Platform) -> list[str]:
    """What the service manager says about the service, one short line per fact."""
    if platform == "linux":
        lines = []
        for what in ("is-enabled", "is-active"):
            r = run(["systemctl", "--user", what, UNIT])
            lines.append(f"{what}: {r.output.splitlines()[0] if r.output else r.code}")
        return lines
    r = run(["launchctl", "print", f"gui/{os.getuid()}/{LABEL}"])
    if r.code != 0:
        return ["not loaded in launchd"]
    # `launchctl print` is a long report; these are the lines that tell whether it runs.
    keys = ("state = ", "pid = ", "last exit code = ")
    return [line.strip() for line in r.output.splitlines() if line.strip().startswith(keys)]
