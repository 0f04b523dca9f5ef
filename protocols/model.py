"""The neutral turn model shared by every layer.

HTTP decoders (protocols.anthropic, later protocols.openai) produce a `TurnRequest`; the pool
consumes it and yields `TurnEvent`s (text deltas, then one `TurnResult`); encoders turn those back
into a wire format. Everything here is a frozen value so it can cross task boundaries safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final, Literal

Role = Literal["user", "assistant"]
SystemMode = Literal["append", "replace"]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]


@dataclass(frozen=True, slots=True)
class TextBlock:
    text: str


@dataclass(frozen=True, slots=True)
class ImageBlock:
    """Image bytes, already decoded and checked against `media_type` by the decoder."""

    media_type: str  # image/png, image/jpeg, image/gif or image/webp
    data: bytes


@dataclass(frozen=True, slots=True)
class DocumentBlock:
    """A document: PDF bytes (`data`) or plain text (`text`), with an optional title."""

    media_type: str  # application/pdf or text/plain
    data: bytes = b""
    text: str | None = None  # a PDF's extracted text, or the plain text
    title: str | None = None
    context: str | None = None  # the API's `context`: about the document, not part of it


@dataclass(frozen=True, slots=True)
class ToolUseBlock:
    """A tool call the model made: `id` is the upstream's `toolu_…` id, `input` its exact JSON."""

    id: str
    name: str  # the caller's tool name (claude's `mcp__<server>__` prefix removed)
    input: dict[str, object]


# What a tool result may carry back to the model (the API allows text and images, documents too).
ToolResultContent = TextBlock | ImageBlock | DocumentBlock


@dataclass(frozen=True, slots=True)
class ToolResultBlock:
    tool_use_id: str
    content: tuple[ToolResultContent, ...] = ()
    is_error: bool = False

    @property
    def text(self) -> str:
        return "\n".join(b.text for b in self.content if isinstance(b, TextBlock))


@dataclass(frozen=True, slots=True)
class ThinkingBlock:
    """The model's extended thinking, with the upstream's signature (opaque, passed on as is).

    In a reply: read from claude's transcript. In a client's history: accepted and kept, but
    never pasted (claude holds its own thinking; a rendered history carries only the words)."""

    thinking: str
    signature: str = ""


ContentBlock = (
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
)


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: tuple[ContentBlock, ...]

    @property
    def text(self) -> str:
        """The message's text blocks joined (other blocks contribute nothing)."""
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the caller offers: served to claude over MCP with exactly these fields."""

    name: str
    description: str = ""
    input_schema: dict[str, object] = field(default_factory=dict, hash=False)


ToolChoiceType = Literal["auto", "any", "tool", "none"]


@dataclass(frozen=True, slots=True)
class ToolChoice:
    type: ToolChoiceType = "auto"
    name: str | None = None  # for type "tool"
    disable_parallel: bool = False


@dataclass(frozen=True, slots=True)
class SpawnSpec:
    """Everything that must be fixed when a claude process starts; processes are keyed by it."""

    model: str | None = None
    system: str | None = None
    system_mode: SystemMode = "append"
    # claude's output cap per upstream request (CLAUDE_CODE_MAX_OUTPUT_TOKENS) and thinking
    # budget (MAX_THINKING_TOKENS, 0: thinking off), both bucketed (`pty_pool.spawn`) so that
    # distinct request values do not each need a claude of their own; None: claude's default
    max_output: int | None = None
    thinking: int | None = None
    # slash commands on: only for a stateless claude the relay resets with its own `/clear`
    # (stateless_reset = "clear") and whose callers' text cannot start a command
    commands: bool = False


MAX_SESSION_ID_LENGTH: Final = 128


def session_id(header: object, body: object) -> str | None:
    """The sticky session id of a request, from the X-IR-Session-ID header or else the body's
    `session_id` (a claude-relay extension in both API shapes). Ids key server-side state and
    show up in logs, so only 1..128 printable characters count; anything else means stateless."""
    for value in (header, body):
        if (
            isinstance(value, str)
            and value.strip()
            and len(value) <= MAX_SESSION_ID_LENGTH
            and value.isprintable()
        ):
            return value
    return None


@dataclass(frozen=True, slots=True)
class TurnRequest:
    messages: tuple[Message, ...]
    model: str  # as the client sent it; echoed back in responses
    max_tokens: int
    stream: bool = False
    system: str | None = None
    stop_sequences: tuple[str, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata_user_id: str | None = None
    session_id: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    # `thinking.budget_tokens` of a request that asked for extended thinking; None: not asked
    # (then no thinking is returned, and claude is started with thinking off)
    thinking_budget: int | None = None
    # Who is asking (set by the daemon: the API key's tenant tag, None without keys). Sticky ids
    # and parked tool calls are looked up within the owner's own.
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Provisional text from claude's screen; concatenated deltas form the streamed text."""

    text: str


@dataclass(frozen=True, slots=True)
class TurnResult:
    """The exact outcome of a turn, read from claude's transcript at turn end."""

    content: tuple[ContentBlock, ...]
    stop_reason: StopReason
    usage: Usage
    model: str | None = None  # the model id the upstream reported
    stop_sequence: str | None = None
    upstream_message_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_uses(self) -> tuple[ToolUseBlock, ...]:
        return tuple(b for b in self.content if isinstance(b, ToolUseBlock))

    @property
    def thinking(self) -> tuple[ThinkingBlock, ...]:
        return tuple(b for b in self.content if isinstance(b, ThinkingBlock))

    def without_thinking(self) -> TurnResult:
        """The result as a client that did not ask for thinking sees it."""
        if not self.thinking:
            return self
        content = tuple(b for b in self.content if not isinstance(b, ThinkingBlock))
        return replace(self, content=content)


TurnEvent = TextDelta | TurnResult
