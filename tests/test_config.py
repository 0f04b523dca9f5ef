"""The config loader: layer precedence, value checking, and error messages that name the source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from claude_relay.daemon import cli
from claude_relay.daemon.config import (
    Config,
    ConfigError,
    default_workspace,
    load_config,
    resolve_config_file,
)
from claude_relay.protocols.attachments import AttachmentLimits
from claude_relay.pty_pool.settings import PoolSettings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(argv_overrides={}, env={}, config_file=None)
    assert config == Config()
    assert config.host == "127.0.0.1"
    assert config.port == 7421
    assert config.claude_bin == "claude"
    assert config.workspace == default_workspace()
    assert config.workspace.name == "workspace"
    assert config.max_body_bytes == 32 * 1024 * 1024
    assert " " not in str(config.attachments_dir)  # claude cannot attach a path with a space
    assert config.attachments_dir.name == "attachments"
    assert config.default_model is None
    assert (config.system_mode, config.log_level, config.log_format) == ("append", "info", "text")


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().port = 1  # type: ignore[misc]


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'host = "0.0.0.0"\nport = 1000\nwarm = 3\nmax_busy = 6\nping_interval = 2\n',
    )
    config = load_config(
        argv_overrides={"port": "3000", "max_busy": None},
        env={"CLAUDE_RELAY_PORT": "2000", "CLAUDE_RELAY_WARM": "5", "UNRELATED": "x"},
        config_file=path,
    )
    assert config.port == 3000  # flag beats env and file
    assert config.warm == 5  # env beats file
    assert config.max_busy == 6  # a flag left at None does not override
    assert config.host == "0.0.0.0"  # file beats default
    assert config.ping_interval == 2.0
    assert isinstance(config.ping_interval, float)
    assert config.max_queue == 8  # default


def test_env_and_flag_parsing() -> None:
    config = load_config(
        argv_overrides={"system_mode": "Replace", "log_format": "json"},
        env={
            "CLAUDE_RELAY_DEFAULT_MODEL": "",
            "CLAUDE_RELAY_LOG_LEVEL": "DEBUG",
            "CLAUDE_RELAY_SHUTDOWN_GRACE": "0",
            "CLAUDE_RELAY_QUEUE_TIMEOUT": " 2.5 ",
            "CLAUDE_RELAY_WORKSPACE": "~/relay-ws",
            "CLAUDE_RELAY_CONFIG": "/ignored/here.toml",
        },
        config_file=None,
    )
    assert config.default_model is None  # empty means unset
    assert config.log_level == "debug"
    assert config.shutdown_grace == 0.0
    assert config.queue_timeout == 2.5
    assert config.workspace == Path("~/relay-ws").expanduser()
    assert config.system_mode == "replace"
    assert config.log_format == "json"


def test_relative_workspace_in_file_is_relative_to_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'workspace = "ws"\ndefault_model = "sonnet"\n')
    config = load_config(argv_overrides={}, env={}, config_file=path)
    assert config.workspace == tmp_path / "ws"
    assert config.default_model == "sonnet"


def test_pool_settings_carry_the_pool_fields(tmp_path: Path) -> None:
    config = Config(
        claude_bin="/opt/claude",
        workspace=tmp_path,
        warm=1,
        max_busy=2,
        max_queue=3,
        queue_timeout=4.0,
        default_model="opus",
        system_mode="replace",
        columns=100,
        rows=40,
        ready_timeout=5.0,
        turn_timeout=6.0,
        stall_timeout=7.0,
        max_retries=0,
        attachments_dir=tmp_path / "att",
    )
    assert config.attachment_limits() == AttachmentLimits(10 * 1024 * 1024, 24 * 1024 * 1024, 100)
    assert config.pool_settings() == PoolSettings(
        attachments_dir=tmp_path / "att",
        claude_bin="/opt/claude",
        workspace=tmp_path,
        warm=1,
        max_busy=2,
        max_queue=3,
        queue_timeout=4.0,
        default_model="opus",
        system_mode="replace",
        columns=100,
        rows=40,
        ready_timeout=5.0,
        turn_timeout=6.0,
        stall_timeout=7.0,
        max_retries=0,
    )


def test_unknown_toml_key_is_an_error_with_a_hint(tmp_path: Path) -> None:
    path = _write(tmp_path, "max_bussy = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(argv_overrides={}, env={}, config_file=path)
    message = str(info.value)
    assert str(path) in message
    assert "unknown key 'max_bussy'" in message
    assert "did you mean 'max_busy'" in message


def test_tables_are_unknown_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "[serve]\nport = 1\n")
    with pytest.raises(ConfigError, match="unknown key 'serve'"):
        load_config(argv_overrides={}, env={}, config_file=path)


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('port = "7421"', "port: expected an integer from 0 to 65535, got '7421'"),
        ("port = 70000", "port: expected an integer from 0 to 65535, got 70000"),
        ("warm = true", "warm: expected an integer >= 0, got True"),
        ("max_busy = 0", "max_busy: expected an integer >= 1"),
        ("max_busy = 2.0", "max_busy: expected an integer >= 1"),
        ("ping_interval = 0", "ping_interval: expected a number > 0"),
        ("shutdown_grace = -1", "shutdown_grace: expected a number >= 0"),
        ('system_mode = "prepend"', "system_mode: expected one of 'append', 'replace'"),
        ('log_format = "xml"', "log_format: expected one of 'text', 'json'"),
        ('host = ""', "host: expected a non-empty string"),
        ("columns = 10", "columns: expected an integer from 40 to 1000"),
        ("max_body_bytes = 10", "max_body_bytes: expected an integer >= 1024"),
    ],
)
def test_bad_file_values_name_file_and_key(tmp_path: Path, toml: str, fragment: str) -> None:
    path = _write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(argv_overrides={}, env={}, config_file=path)
    assert str(info.value).startswith(f"config file {path}: {fragment}")


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(argv_overrides={}, env={"CLAUDE_RELAY_PORT": "http"}, config_file=None)
    assert str(info.value) == (
        "environment variable CLAUDE_RELAY_PORT: expected an integer from 0 to 65535, got 'http'"
    )


def test_bad_env_float_is_rejected() -> None:
    with pytest.raises(ConfigError, match="CLAUDE_RELAY_TURN_TIMEOUT: expected a number > 0"):
        load_config(argv_overrides={}, env={"CLAUDE_RELAY_TURN_TIMEOUT": "nan"}, config_file=None)


def test_bad_flag_names_the_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(argv_overrides={"max_busy": "-1"}, env={}, config_file=None)
    assert str(info.value) == "flag --max-busy: expected an integer >= 1, got '-1'"


def test_flags_beat_a_bad_env_value_only_by_being_checked_after_it() -> None:
    # Every layer is checked, even one a higher layer overrides: a broken env var is a bug to fix.
    with pytest.raises(ConfigError, match="CLAUDE_RELAY_PORT"):
        load_config(argv_overrides={"port": "1"}, env={"CLAUDE_RELAY_PORT": "x"}, config_file=None)


def test_invalid_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, "port = \n")
    with pytest.raises(ConfigError, match=r"config file .*: invalid TOML"):
        load_config(argv_overrides={}, env={}, config_file=path)


def test_missing_explicit_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml: not found"):
        load_config(argv_overrides={}, env={}, config_file=path)


def test_resolve_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    explicit = tmp_path / "explicit.toml"
    from_env = tmp_path / "env.toml"
    assert resolve_config_file(explicit, {"CLAUDE_RELAY_CONFIG": str(from_env)}) == explicit
    assert resolve_config_file(None, {"CLAUDE_RELAY_CONFIG": str(from_env)}) == from_env
    # The default location is optional: absent means no file.
    assert resolve_config_file(None, {}) is None
    default = tmp_path / "xdg" / "claude-relay" / "config.toml"
    default.parent.mkdir(parents=True)
    default.write_text("warm = 0\n")
    assert resolve_config_file(None, {}) == default


def test_cli_reports_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("CLAUDE_RELAY_CONFIG", raising=False)
    assert cli.main(["serve", "--port", "x"]) == 2
    assert capsys.readouterr().err.strip() == (
        "claude-relay: error: flag --port: expected an integer from 0 to 65535, got 'x'"
    )


def test_cli_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_cli_flags_map_onto_config_fields() -> None:
    args = cli.build_parser().parse_args(
        ["serve", "--max-busy", "7", "--claude-bin", "/x/claude", "--workspace", "/w"]
    )
    overrides = cli._overrides(args)
    assert set(overrides) <= {f.name for f in dataclasses.fields(Config)}
    config = load_config(argv_overrides=overrides, env={}, config_file=None)
    assert (config.max_busy, config.claude_bin, config.workspace) == (7, "/x/claude", Path("/w"))
