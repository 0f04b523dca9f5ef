"""The operations commands: service files (checked by systemd-analyze and plistlib), service
install/uninstall against a fake systemctl, doctor against a fake claude, status and sessions
against a live app.

HOME and XDG_CONFIG_HOME point into the test's directory, so nothing touches the real user's
service manager or config.
"""

from __future__ import annotations

import asyncio
import json
import os
import plistlib
import shutil
import socket
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from claude_relay.daemon import cli
from claude_relay.daemon.app import make_app
from claude_relay.daemon.config import Config
from claude_relay.daemon.ctl import print_sessions
from tests.support.relay_proc import free_port
from tests.test_app import FakePool
from tests.test_ops_license import API_KEY, LOGGED_OUT, FakeClaude

Capture = pytest.CaptureFixture[str]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in list(os.environ):
        if name.startswith("CLAUDE_RELAY_"):
            monkeypatch.delenv(name)
    return home


def fake_systemctl(bin_dir: Path, *, code: int) -> Path:
    """A `systemctl` that logs its arguments and exits with `code`."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / "systemctl.log"
    script = bin_dir / "systemctl"
    script.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if " + str(code) + ":\n    print('Failed to connect to bus: No medium found',"
        " file=sys.stderr)\n"
        f"sys.exit({code})\n"
    )
    script.chmod(0o755)
    return log


def systemd_verify(unit_text: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "verify" / "claude-relay.service"
    unit.parent.mkdir()
    unit.write_text(unit_text)
    runtime = tmp_path / "runtime"  # a user-mode verify needs a runtime dir, not a running manager
    runtime.mkdir(mode=0o700)
    proc = subprocess.run(
        [analyze, "--user", "verify", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        check=False,
    )
    # verify exits 0 on unknown keys and bad values too; they are reported on stderr
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


# --- service files ------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renders the systemd unit")
def test_systemd_unit_dry_run_verifies(home: Path, tmp_path: Path, capsys: Capture) -> None:
    assert cli.main(["service", "install", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# systemd user unit")
    assert f"ExecStart={Path(sys.executable).with_name('claude-relay')} serve\n" in out
    for line in ("Restart=on-failure", "RestartPreventExitStatus=2", "KillMode=mixed"):
        assert line + "\n" in out
    assert f"would write {home}/.config/systemd/user/claude-relay.service" in err
    assert "journalctl --user -u claude-relay" in err
    assert not (home / ".config").exists()  # a dry run writes nothing
    systemd_verify(out, tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renders the systemd unit")
def test_systemd_unit_quotes_odd_paths(home: Path, tmp_path: Path, capsys: Capture) -> None:
    config = tmp_path / "my configs %h $HOME" / "relay.toml"
    config.parent.mkdir()
    config.write_text("warm = 1\n")
    assert cli.main(["service", "install", "--dry-run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    exec_start = next(line for line in out.splitlines() if line.startswith("ExecStart="))
    quoted = str(config).replace("%", "%%").replace("$", "$$")
    assert exec_start.endswith(f' serve --config "{quoted}"')
    systemd_verify(out, tmp_path)


def test_launchd_plist_dry_run_parses(home: Path, tmp_path: Path, capsys: Capture) -> None:
    config = tmp_path / "a & <b>" / "relay.toml"
    config.parent.mkdir()
    config.write_text("warm = 1\n")
    argv = ["service", "install", "--dry-run", "--platform", "macos", "--config", str(config)]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    plist = plistlib.loads(out.encode())
    assert plist["Label"] == "local.claude-relay"
    assert plist["ProgramArguments"][-3:] == ["serve", "--config", str(config)]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    log = str(home / "Library" / "Logs" / "claude-relay" / "claude-relay.log")
    assert plist["StandardErrorPath"] == plist["StandardOutPath"] == log
    assert plist["WorkingDirectory"] == str(home)
    assert plist["EnvironmentVariables"]["PATH"].endswith("/usr/bin:/bin")
    assert f"{home}/Library/LaunchAgents/local.claude-relay.plist" in err


def test_other_platform_only_with_dry_run(home: Path, capsys: Capture) -> None:
    other = "macos" if sys.platform.startswith("linux") else "linux"
    assert cli.main(["service", "install", "--platform", other]) == 2
    assert "--dry-run only" in capsys.readouterr().err


def test_install_refuses_an_exposed_config(home: Path, capsys: Capture) -> None:
    config = home / ".config" / "claude-relay" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('host = "0.0.0.0"\n')
    assert cli.main(["service", "install", "--dry-run"]) == 2
    assert "without an API key" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drives systemctl")
def test_install_and_uninstall_drive_systemctl(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    log = fake_systemctl(tmp_path / "bin", code=0)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("CLAUDE_RELAY_WARM", "1")  # not seen by the service: warned about

    assert cli.main(["service", "install"]) == 0
    out, err = capsys.readouterr()
    unit = home / ".config" / "systemd" / "user" / "claude-relay.service"
    assert f"wrote {unit}" in out
    assert "CLAUDE_RELAY_WARM" in err
    assert unit.read_text().startswith("# systemd user unit")
    assert log.read_text().splitlines() == [
        "--user daemon-reload",
        "--user enable claude-relay.service",
        "--user restart claude-relay.service",
    ]

    assert cli.main(["service", "status"]) == 0
    assert "is-active" in capsys.readouterr().out

    log.unlink()
    assert cli.main(["service", "uninstall"]) == 0
    assert f"removed {unit}" in capsys.readouterr().out
    assert not unit.exists()
    assert log.read_text().splitlines() == [
        "--user disable --now claude-relay.service",
        "--user daemon-reload",
    ]
    assert cli.main(["service", "status"]) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drives systemctl")
def test_install_without_a_user_manager_says_what_to_run(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    fake_systemctl(tmp_path / "bin", code=1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    assert cli.main(["service", "install"]) == 1
    err = capsys.readouterr().err
    assert "Failed to connect to bus" in err
    assert "systemctl --user enable claude-relay.service" in err
    assert (home / ".config" / "systemd" / "user" / "claude-relay.service").is_file()


# --- doctor -------------------------------------------------------------------------------------


def doctor_json(capsys: Capture) -> tuple[int, dict[str, dict[str, str]]]:
    code = cli.main(["doctor", "--json"])
    data = json.loads(capsys.readouterr().out)
    return code, {c["name"]: c for c in data["checks"]}


def _api_key_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake claude logged in with an API key, and a free port for the doctor to find."""
    fake = FakeClaude(tmp_path)
    fake.set(API_KEY)
    monkeypatch.setenv("CLAUDE_RELAY_CLAUDE_BIN", str(fake.path))
    monkeypatch.setenv("CLAUDE_RELAY_PORT", str(free_port()))


def test_doctor_with_an_api_key_login(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    _api_key_claude(tmp_path, monkeypatch)
    code, checks = doctor_json(capsys)
    assert code == 0
    assert checks["config"]["status"] == "ok"
    assert "config.toml (not present" in checks["config"]["detail"]
    assert checks["claude"]["status"] == "ok"
    assert "2.1.197" in checks["claude"]["detail"]
    assert checks["login"]["status"] == "ok"
    assert "billing: api" in checks["login"]["detail"]
    assert checks["billing"]["status"] == "warn"
    assert "ANTHROPIC_API_KEY" in checks["billing"]["detail"]
    assert checks["port"]["status"] == "ok"
    assert checks["listen"]["status"] == "ok"
    assert "not installed" in checks["service"]["detail"]
    assert checks["attachments"]["status"] == "ok"


def test_doctor_fails_for_an_attachments_dir_with_a_space(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    _api_key_claude(tmp_path, monkeypatch)
    monkeypatch.setenv("CLAUDE_RELAY_ATTACHMENTS_DIR", str(tmp_path / "Application Support"))
    code, checks = doctor_json(capsys)
    assert code == 1
    assert checks["attachments"]["status"] == "fail"
    assert "spaces" in checks["attachments"]["detail"]


def test_doctor_fails_when_logged_out(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    fake = FakeClaude(tmp_path)
    fake.set(LOGGED_OUT)
    monkeypatch.setenv("CLAUDE_RELAY_CLAUDE_BIN", str(fake.path))
    code, checks = doctor_json(capsys)
    assert code == 1
    assert checks["login"]["status"] == "fail"
    assert "/login" in checks["login"]["detail"]


def test_doctor_reports_a_bad_config_and_goes_on(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.setenv("CLAUDE_RELAY_WARM", "lots")
    code, checks = doctor_json(capsys)
    assert code == 1
    assert checks["config"]["status"] == "fail"
    assert "CLAUDE_RELAY_WARM" in checks["config"]["detail"]
    assert {"claude", "listen", "port", "service"} <= set(checks)  # checked on the defaults


def test_doctor_without_claude_and_with_a_taken_port(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.setenv("CLAUDE_RELAY_CLAUDE_BIN", str(tmp_path / "no-claude"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("CLAUDE_RELAY_PORT", str(taken.getsockname()[1]))
        assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert lines["claude"].startswith("FAIL")
    assert "not found" in lines["claude"]
    assert lines["port"].startswith("FAIL")
    assert "in use by another program" in lines["port"]


# --- status and sessions against a live app ------------------------------------------------------


async def serve_app(aiohttp_server: AiohttpServer, tmp_path: Path, **config: Any) -> str:
    app = make_app(Config(workspace=tmp_path, **config), pool=FakePool())
    server = await aiohttp_server(app)
    return str(server.make_url(""))


async def run_cli(*argv: str) -> int:
    # The commands use blocking HTTP, as in a terminal; keep them off the server's loop.
    return await asyncio.to_thread(cli.main, list(argv))


async def test_status_reports_a_running_daemon(
    aiohttp_server: AiohttpServer, tmp_path: Path, home: Path, capsys: Capture
) -> None:
    url = await serve_app(aiohttp_server, tmp_path)
    assert await run_cli("status", "--url", url) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"relay     {url}  ok")
    assert "warm 1  busy 0  starting 1  queued 0  sticky 0" in out
    assert "login     unknown: not checked yet" in out

    assert await run_cli("status", "--url", url, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reachable"] is True
    assert report["health"]["pool"]["warm"] == 1
    assert report["license"]["configured"] is False
    assert report["sessions"] == []
    assert report["version"]["platform"] == sys.platform


async def test_status_with_auth_uses_the_configured_key(
    aiohttp_server: AiohttpServer, tmp_path: Path, home: Path, capsys: Capture
) -> None:
    url = await serve_app(aiohttp_server, tmp_path, api_keys="sekrit")
    assert await run_cli("status", "--url", url, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert "invalid API key" not in json.dumps(report)
    assert "missing API key" in report["license"]  # health is open, the rest is not
    assert await run_cli("status", "--url", url, "--api-key", "sekrit", "--json") == 0
    assert json.loads(capsys.readouterr().out)["license"]["configured"] is False


async def test_status_of_a_stopped_daemon(home: Path, capsys: Capture) -> None:
    assert await run_cli("status", "--url", f"http://127.0.0.1:{free_port()}") == 3
    assert "claude-relay is not running" in capsys.readouterr().out


async def test_sessions_list_and_kill(
    aiohttp_server: AiohttpServer, tmp_path: Path, home: Path, capsys: Capture
) -> None:
    url = await serve_app(aiohttp_server, tmp_path)
    assert await run_cli("sessions", "--url", url) == 0
    assert capsys.readouterr().out == "no sticky sessions\n"
    assert await run_cli("sessions", "--url", url, "kill", "a/b c") == 1
    assert "no session with id 'a/b c'" in capsys.readouterr().err


def test_sessions_table() -> None:
    out = StringIO()
    data: dict[str, object] = {
        "sessions": [
            {
                "id": "chat-1",
                "state": "ready",
                "model": "sonnet",
                "pid": 42,
                "turns": 3,
                "last_used": 0.0,
            },
        ]
    }
    print_sessions(data, out)
    header, row = out.getvalue().splitlines()
    assert header.split() == ["ID", "STATE", "MODEL", "PID", "TURNS", "LAST", "USED"]
    assert row.split()[:5] == ["chat-1", "ready", "sonnet", "42", "3"]
