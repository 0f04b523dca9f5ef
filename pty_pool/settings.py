"""Settings the pool needs, as one frozen value (the daemon maps its config onto it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PoolSettings:
    claude_bin: str = "claude"
    workspace: Path = Path(".")  # claude's cwd; daemon-owned, trusted once
    warm: int = 2  # idle sessions kept ready at the prompt
    max_busy: int = 4  # turns running at once
    max_queue: int = 8  # turns waiting for a slot; beyond that: 529 overloaded_error
    queue_timeout: float = 60.0  # seconds a queued turn waits before 529
    retry_after: float = 2.0  # advertised in 529 responses
    default_model: str | None = None  # --model when the request says "default" or similar
    system_mode: str = "append"  # how a request's `system` reaches claude: append | replace
    # how claude draws and how its screen is read: "ax" (`--ax-screen-reader`: word by word,
    # OSC 133 turn marks; see ax.py) or "rows" (the default TUI: a reply row arrives once claude
    # has drawn it whole, markdown partly restored from cell attributes; see tui.py)
    screen_mode: str = "ax"
    # ax mode: "guarded" streams a reply until its first markdown sign and sends the rest exactly
    # at turn end; "eager" streams every word as drawn (markdown markers claude strips are lost)
    stream_policy: str = "guarded"
    columns: int = 120
    rows: int = 50
    ready_timeout: float = 30.0  # spawn → idle prompt
    turn_timeout: float = 600.0  # whole turn
    stall_timeout: float = 90.0  # no visible progress while busy → Esc + error
    max_retries: int = 2  # CLAUDE_CODE_MAX_RETRIES for the child
    sticky_idle_timeout: float = 1800.0  # an untouched sticky session is closed after this
    max_sticky: int = 16  # live sticky sessions at once; beyond that: 529 with retry-after
    tool_result_timeout: float = 600.0  # a parked tool call without a result is cancelled after
    # claudes waiting in tool calls for the caller's results; each is a whole claude process,
    # so beyond this the oldest is let go (its caller's next call replays the history instead)
    max_parked: int = 16
    max_sticky_queue: int = 4  # calls waiting behind a running one on the same sticky id
    # claudes kept after a stateless turn with the conversation they hold: a call that re-sends
    # that history plus a new turn continues there instead of replaying it into a fresh claude
    max_kept: int = 2
    kept_idle_timeout: float = 300.0  # a kept claude nobody continued is closed after this
    # what becomes of a stateless turn's claude: "respawn" closes it (a new one is warmed);
    # "clear" starts a new conversation in it with `/clear` and puts it back warm
    stateless_reset: str = "clear"
    agent_tools: tuple[str, ...] = ()  # claude built-in tools enabled and pre-allowed (agent mode)
    mcp_url: str | None = None  # the daemon's MCP endpoint base, set once it listens
    state_file: Path | None = None  # sticky id → claude session map (default: next to workspace)
    # private per-turn directories of image files (default: next to workspace); claude reads the
    # pasted path, so it must not contain spaces
    attachments_dir: Path | None = None
    # the config dir every claude gets (CLAUDE_CONFIG_DIR; default: next to workspace), owned by
    # the relay so that nothing of the user's Claude Code setup reaches an API turn
    claude_config_dir: Path | None = None
    extra_args: tuple[str, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = field(default=())
