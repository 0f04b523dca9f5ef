"""Tool definitions, tool choice and the tool_use/tool_result pairing rules, wire-neutral.

Both API shapes validate their tools here so the relay's 400s say the same thing for the same
problem: names as the Messages API allows them, minus the room claude's `mcp__api__` prefix takes
(the upstream sees that prefixed name); input schemas checked as JSON Schema (draft 2020-12, like
the API) by `response_format.invalid_schema`, so their patterns must compile in RE2 (the relay
never runs them, but checking compiles them, and Python's `re` overflows its stack on deep
nesting); and the API's pairing rule that every tool_use is answered by tool_results in the very
next message.
"""

from __future__ import annotations

import re
from typing import Any, Final

from claude_relay.protocols.errors import InvalidRequestError, excerpt
from claude_relay.protocols.model import (
    Message,
    ToolChoice,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)
from claude_relay.protocols.response_format import invalid_schema

# claude serves the caller's tools as MCP tools named `mcp__api__<name>`; the API's limit of 64
# characters applies to that full name.
NAME_PREFIX_LENGTH: Final = len("mcp__api__")
MAX_NAME_LENGTH: Final = 64 - NAME_PREFIX_LENGTH
_NAME: Final = re.compile(r"^[a-zA-Z0-9_-]+$")
_TOOL_USE_ID: Final = re.compile(r"^[a-zA-Z0-9_-]+$")


def _fail(path: str, problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"{path}: {problem}", param=path)


def check_name(name: object, path: str) -> str:
    if not isinstance(name, str):
        raise _fail(path, "Input should be a valid string")
    if not _NAME.match(name) or len(name) > 64:
        raise _fail(path, "String should match pattern '^[a-zA-Z0-9_-]{1,64}$'")
    if len(name) > MAX_NAME_LENGTH:
        raise _fail(
            path,
            f"tool names are limited to {MAX_NAME_LENGTH} characters by claude-relay: claude "
            "offers them to the model as `mcp__api__<name>`, which must fit the API's 64",
        )
    return name


def check_schema(schema: object, path: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise _fail(path, "Input should be a valid dictionary")
    if schema.get("type") != "object":
        raise _fail(f"{path}.type", "Input should be 'object'")
    exc = invalid_schema(schema)
    if exc is not None:
        where = ".".join(str(p) for p in exc.absolute_path)
        raise _fail(path, f"JSON schema is invalid{' at ' + where if where else ''}: {exc.message}")
    return schema


def check_unique(tools: list[ToolSpec], path: str) -> None:
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise _fail(path, f"Tool names must be unique: {tool.name!r} appears twice")
        seen.add(tool.name)


def check_choice(choice: ToolChoice, tools: tuple[ToolSpec, ...], path: str) -> None:
    if choice.type in ("any", "tool") and not tools:
        raise _fail(path, f"tool_choice {choice.type!r} needs at least one tool in tools")
    if choice.type == "tool" and choice.name not in {t.name for t in tools}:
        raise _fail(f"{path}.name", f"tool {excerpt(choice.name)} is not one of the tools offered")


def check_tool_use_id(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, "Input should be a valid string")
    if not _TOOL_USE_ID.match(value):
        raise _fail(path, "String should match pattern '^[a-zA-Z0-9_-]+$'")
    return value


def check_pairing(messages: tuple[Message, ...]) -> None:
    """The API's rule: tool_use blocks are answered by tool_result blocks in the next message,
    and a tool_result answers a tool_use of the message right before it."""
    for i, message in enumerate(messages):
        uses = [b.id for b in message.content if isinstance(b, ToolUseBlock)]
        results = [b.tool_use_id for b in message.content if isinstance(b, ToolResultBlock)]
        if uses and message.role != "assistant":
            raise _fail(f"messages.{i}", "tool_use blocks can only appear in assistant messages")
        if results and message.role != "user":
            raise _fail(f"messages.{i}", "tool_result blocks can only appear in user messages")
        if results:
            before = messages[i - 1] if i else None
            offered = (
                {b.id for b in before.content if isinstance(b, ToolUseBlock)} if before else set()
            )
            stray = [r for r in results if r not in offered]
            if stray:
                raise _fail(
                    f"messages.{i}",
                    f"unexpected `tool_use_id` found in `tool_result` blocks: {', '.join(stray)}. "
                    "Each `tool_result` block must have a corresponding `tool_use` block in the "
                    "previous message.",
                )
        if uses:
            after = messages[i + 1] if i + 1 < len(messages) else None
            if after is None:
                raise _fail(
                    f"messages.{i}",
                    "the final assistant message cannot contain tool_use blocks: send the "
                    "tool_result blocks in a user message after it",
                )
            answered = {b.tool_use_id for b in after.content if isinstance(b, ToolResultBlock)}
            missing = [u for u in uses if u not in answered]
            if missing:
                raise _fail(
                    f"messages.{i + 1}",
                    f"`tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding "
                    "`tool_result` block in the next message.",
                )


def trailing_results(messages: tuple[Message, ...]) -> tuple[ToolResultBlock, ...]:
    """The tool results the final (user) message brings, in order."""
    if not messages or messages[-1].role != "user":
        return ()
    return tuple(b for b in messages[-1].content if isinstance(b, ToolResultBlock))
