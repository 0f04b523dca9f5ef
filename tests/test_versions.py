"""The tested window: one source of truth for code, dev.sh and the golden recordings."""

from __future__ import annotations

from pathlib import Path

import pytest

from claude_relay.pty_pool import isolation, versions
from claude_relay.pty_pool.settings import PoolSettings

ROOT = Path(__file__).parents[1]


def test_window_matches_what_dev_sh_installs() -> None:
    assert (ROOT / "packaging" / "claude-cli-version").read_text().strip() == versions.PINNED
    assert (ROOT / "packaging" / "claude-cli-oldest").read_text().strip() == versions.OLDEST
    for v in versions.TESTED:
        assert (ROOT / "tests" / "golden" / v / "prose.jsonl").exists()


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("2.1.332 (Claude Code)\n", "2.1.332"),
        ("2.2.0 (Claude Code)", "2.2.0"),
        ("echo (GNU coreutils) 9.1", None),
        ("", None),
        ("2.1.332\n", None),
    ],
)
def test_parse_version(text: str, version: str | None) -> None:
    assert versions.parse_version(text) == version


def test_supported_is_the_closed_window() -> None:
    assert versions.supported("2.1.197") and versions.supported("2.1.332")
    assert versions.supported("2.1.250")
    assert not versions.supported("2.1.196") and not versions.supported("2.1.333")
    assert not versions.supported(None) and not versions.supported("x")


def test_file_mentions_are_off_on_every_version() -> None:
    """The deny rule where claude lacks the switch (or its version is unknown), not where the
    rule would also refuse pasted image paths; with a reading agent tool, neither."""
    s = PoolSettings()
    assert "permissions" in isolation.flag_settings(s, "2.1.197")
    assert "permissions" in isolation.flag_settings(s, None)
    assert "permissions" not in isolation.flag_settings(s, "2.1.332")
    agent = PoolSettings(agent_tools=("Read",))
    assert "permissions" not in isolation.flag_settings(agent, "2.1.197")
    env = isolation.child_env({"HOME": "/h", "CLAUDE_RELAY_API_KEYS": "k"}, s)
    assert env["CLAUDE_CODE_DISABLE_FILE_MENTIONS"] == "1"
    assert env["CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL"] == "1"
    assert env["CLAUDE_CODE_HARBOR_KITE"] == "0"  # no cross-session inbox
    assert env["CLAUDE_SECURESTORAGE_CONFIG_DIR"] == ""
    assert "CLAUDE_RELAY_API_KEYS" not in env
    assert env["CLAUDE_CODE_SHELL_PREFIX"].endswith("false")
    assert env["CLAUDE_CODE_TMPDIR"] == str(isolation.claude_tmp_root(s))


def test_a_claudes_temp_files_and_cache_go_to_its_private_dir() -> None:
    env = isolation.private_dir_env(Path("/run/x/claude-tmp/turn-1-abc"))
    assert env == {
        "CLAUDE_CODE_TMPDIR": "/run/x/claude-tmp/turn-1-abc",
        "TMPDIR": "/run/x/claude-tmp/turn-1-abc",
        "XDG_CACHE_HOME": "/run/x/claude-tmp/turn-1-abc",
    }
