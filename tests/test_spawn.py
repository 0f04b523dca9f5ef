"""What a request can put into claude's argv: checked values (400 before any spawn), and no
secret or client text in argv at all (other local users can read /proc/<pid>/cmdline)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from claude_relay.protocols import errors
from claude_relay.protocols.model import ImageBlock, Message, SpawnSpec, TextBlock, TurnRequest
from claude_relay.pty_pool.broker import SERVER_NAME
from claude_relay.pty_pool.pool import check_request
from claude_relay.pty_pool.settings import PoolSettings
from claude_relay.pty_pool.spawn import (
    MCP_CONFIG_FILE,
    SYSTEM_PROMPT_FILE,
    build_argv,
    build_env,
    max_output_bucket,
    private_args,
    spawn_spec,
    thinking_bucket,
)

SETTINGS = PoolSettings()


@pytest.mark.parametrize(
    "model",
    [
        "-p",
        "--print",
        "--dangerously-skip-permissions",
        "x\0y",
        "sonnet --tools Bash",
        "a" * 257,
        "a" * 200_000,
        "claude\nopus",
    ],
)
def test_a_model_that_could_reach_argv_as_anything_but_a_name_is_a_400(model: str) -> None:
    with pytest.raises(errors.InvalidRequestError) as refused:
        spawn_spec(model, None, SETTINGS)
    assert refused.value.param == "model"
    assert len(refused.value.message) < 300  # an excerpt, never the 200 KB value


@pytest.mark.parametrize(
    ("model", "flag"),
    [
        ("default", None),
        ("", None),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
        ("sonnet[1m]", "sonnet[1m]"),
        ("opus", "opus"),
        (
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (" haiku ", "haiku"),
    ],
)
def test_real_model_names_pass(model: str, flag: str | None) -> None:
    assert spawn_spec(model, None, SETTINGS).model == flag


def test_a_system_prompt_with_nul_is_a_400() -> None:
    with pytest.raises(errors.InvalidRequestError, match="NUL") as refused:
        spawn_spec("default", "be brief\0", SETTINGS)
    assert refused.value.param == "system"


def test_system_prompt_and_mcp_token_are_in_files_not_argv(tmp_path: Path) -> None:
    system = "You are a pirate. SECRET-SYSTEM-MARKER"
    url = "http://127.0.0.1:7421/mcp/SECRET-TOKEN-MARKER"
    spec = spawn_spec("opus", system, SETTINGS)
    files = private_args(spec, url)
    assert files[SYSTEM_PROMPT_FILE].decode() == system
    assert json.loads(files[MCP_CONFIG_FILE])["mcpServers"][SERVER_NAME]["url"] == url
    argv = build_argv(
        "/bin/claude",
        spec,
        "00000000-0000-0000-0000-000000000000",
        resume=False,
        settings=SETTINGS,
        mcp_config=tmp_path / MCP_CONFIG_FILE,
        system_file=tmp_path / SYSTEM_PROMPT_FILE,
    )
    joined = "\0".join(argv)
    assert "SECRET" not in joined
    assert argv[argv.index("--append-system-prompt-file") + 1] == str(tmp_path / SYSTEM_PROMPT_FILE)
    assert argv[argv.index("--mcp-config") + 1] == str(tmp_path / MCP_CONFIG_FILE)


def test_slash_commands_are_off_unless_the_spec_needs_them() -> None:
    """Only a stateless claude the relay resets with `/clear` runs with slash commands on."""

    def argv(spec: SpawnSpec) -> list[str]:
        return build_argv("/bin/claude", spec, "x", resume=False, settings=SETTINGS)

    assert "--disable-slash-commands" in argv(SpawnSpec())
    assert "--disable-slash-commands" not in argv(SpawnSpec(commands=True))


def test_claude_in_chrome_is_off_for_every_claude() -> None:
    """The user's own claude may drive their browser (config, or CLAUDE_CODE_ENABLE_CFC in the
    environment the daemon passes on); an API turn never gets those tools."""
    for spec in (SpawnSpec(), SpawnSpec(commands=True)):
        assert "--no-chrome" in build_argv("/bin/claude", spec, "x", resume=True, settings=SETTINGS)


def _req(*content: TextBlock | ImageBlock, model: str = "default") -> TurnRequest:
    return TurnRequest(messages=(Message("user", content),), model=model, max_tokens=16)


@pytest.mark.parametrize("text", ["\0", "\x1b\x1b", "   ", "\n\t\r", "\x9b\x85"])
def test_a_prompt_empty_once_sanitised_is_a_400(text: str) -> None:
    with pytest.raises(errors.InvalidRequestError, match="no text") as refused:
        check_request(_req(TextBlock(text)), SETTINGS)
    assert refused.value.param == "messages"


def test_a_prompt_with_text_or_an_image_passes() -> None:
    check_request(_req(TextBlock(" \0hi ")), SETTINGS)
    check_request(_req(ImageBlock("image/png", b"\x89PNG")), SETTINGS)


@pytest.mark.parametrize(
    ("version", "named"), [("2.1.197", True), (None, True), ("2.1.332", False)]
)
def test_sessions_are_named_only_where_that_saves_a_title_request(
    version: str | None, named: bool
) -> None:
    sid = "0123abcd-0000-0000-0000-000000000000"
    argv = build_argv(
        "/bin/claude",
        spawn_spec("default", None, SETTINGS),
        sid,
        resume=False,
        settings=SETTINGS,
        cli_version=version,
    )
    assert ("--name" in argv) is named
    if named:
        assert argv[argv.index("--name") + 1] == "api-0123abcd"  # unique: no name clash


@pytest.mark.parametrize(
    ("max_tokens", "bucket"),
    [(1, 8192), (1024, 8192), (8192, 8192), (8193, 32768), (65536, 65536), (65537, None)],
)
def test_max_tokens_is_bucketed(max_tokens: int, bucket: int | None) -> None:
    assert max_output_bucket(max_tokens) == bucket


@pytest.mark.parametrize(
    ("budget", "bucket"),
    [(None, 0), (1024, 1024), (2047, 1024), (2048, 2048), (10000, 8192), (4095, 2048)],
)
def test_thinking_budget_is_bucketed_down(budget: int | None, bucket: int) -> None:
    assert thinking_bucket(budget) == bucket


def test_limits_reach_claude_as_environment() -> None:
    base = {"PATH": "/bin", "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "999", "MAX_THINKING_TOKENS": "7"}
    env = build_env(base, SETTINGS, SpawnSpec(max_output=8192, thinking=0))
    assert env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "8192"
    assert env["MAX_THINKING_TOKENS"] == "0"  # thinking off unless the request asked
    env = build_env(base, SETTINGS, SpawnSpec(max_output=None, thinking=2048))
    assert "CLAUDE_CODE_MAX_OUTPUT_TOKENS" not in env  # claude's own default: the model's ceiling
    assert env["MAX_THINKING_TOKENS"] == "2048"


def test_requests_in_one_bucket_share_a_spawn_spec() -> None:
    small = check_request(_req(TextBlock("hi")), SETTINGS)
    assert small == check_request(
        TurnRequest(
            messages=(Message("user", (TextBlock("x"),)),), model="default", max_tokens=4000
        ),
        SETTINGS,
    )
    assert small == spawn_spec("default", None, SETTINGS)  # the spec the pool keeps warm
    thinking = TurnRequest(
        messages=(Message("user", (TextBlock("x"),)),),
        model="default",
        max_tokens=4000,
        thinking_budget=3000,
    )
    assert check_request(thinking, SETTINGS).thinking == 2048


def test_the_screen_reader_screen_is_drawn_without_its_startup_quiet() -> None:
    """2.1.332 waits 3 s after its screen-reader announcement before its first screen (for a
    person's screen reader); the relay's claudes skip that wait, in ax mode only."""
    base = {"PATH": "/bin"}
    ax = build_env(base, dataclasses.replace(SETTINGS, screen_mode="ax"))
    assert ax["CLAUDE_AX_STARTUP_QUIET_MS"] == "0"
    rows = build_env(base, dataclasses.replace(SETTINGS, screen_mode="rows"))
    assert "CLAUDE_AX_STARTUP_QUIET_MS" not in rows
