"""The Anthropic Messages wire format: request decoding, response and SSE encoding, error bodies.

Validation mirrors the real API closely enough that clients see familiar 400s: messages are
`<field.path>: <problem>` with pydantic's phrasing (the API is pydantic-validated), and the few
semantic checks reuse the API's own sentences. Every `InvalidRequestError` carries the exact field
path in `param` (the OpenAI envelope shows it; the Anthropic envelope has no such field). Only the
first problem is reported.

Top-level request fields:

=====================  ==========================================================================
field                  handling
=====================  ==========================================================================
model                  enforced: required, non-empty string; echoed back verbatim in responses
max_tokens             enforced: required integer >= 1 (the API's 0, "pre-warm the prompt cache",
                       cannot be served by a CLI, so it is rejected)
messages               enforced: see below
system                 enforced: string or list of text blocks; blocks joined with "\\n"
stream                 enforced: boolean
stop_sequences         enforced: list of strings, each with non-whitespace characters; applied by
                       the relay to the reply (protocols.stops)
temperature, top_p     validated: number in [0, 1]; not applied (claude sets its own sampling)
top_k                  validated: integer >= 0; not applied
metadata               enforced: object with optional string `user_id`, nothing else
tools                  enforced: custom tools (name, description, input_schema as JSON Schema;
                       `cache_control`, `strict`, `input_examples` accepted); names unique and at
                       most 54 characters (claude adds `mcp__api__`); server tools rejected
tool_choice            enforced: auto, none, any, or tool with `name` one of the tools;
                       `disable_parallel_tool_use` validated (see docs/tools.md for how each is
                       honoured)
output_config          `effort` accepted and ignored; a non-null `format` (structured outputs) is
                       rejected, since ignoring it would silently break the client's contract
session_id             claude-relay extension (the X-IR-Session-ID header wins): string, ignored
                       unless 1..128 printable characters
thinking               enforced: `{"type": "enabled", "budget_tokens": N}` (N >= 1024 and below
                       max_tokens, as the API requires), `{"type": "adaptive"}` or
                       `{"type": "disabled"}`, `display` accepted; the budget reaches claude
                       bucketed (docs/limits.md), and thinking blocks are returned only when
                       asked for
service_tier, container, mcp_servers, context_management, cache_control,
diagnostics, inference_geo, speed, user_profile_id, workspace_id
                       accepted and ignored: they tune how the API runs the model, which the relay
                       does not control; their contents are not validated
anything else          rejected: "<field>: Extra inputs are not permitted", as the API does
=====================  ==========================================================================

`null` is accepted for every optional field and means "absent", as for the API's Optional fields.

Messages: roles `user`/`assistant`; consecutive same-role messages are accepted (the API merges
them; `protocols.render` does the same) and kept as sent in `TurnRequest.messages`. The first
message may be `assistant` (the first-party API accepts that) and the final one may be `assistant`
(prefill; it must not end with whitespace, as the API requires; it may be empty). `system`-role
messages are rejected as not supported yet. Content is a string or a list of blocks: `text`
blocks (with `cache_control`/`citations` accepted and ignored), `image` (base64 PNG, JPEG, GIF,
WebP) and `document` (base64 PDF, whose text is extracted; `text`; `content`) blocks in user
messages, checked by `protocols.attachments` against one per-request budget (413 beyond it; URL
and file sources are a 400: nothing is fetched), `tool_use` in assistant messages and
`tool_result` (string or text, image and document content, `is_error`) in user messages, paired
as the API requires (`protocols.tools.check_pairing`), `thinking` (kept, never pasted) and
`redacted_thinking` (dropped) in assistant messages; other API block types get a "not supported
yet by claude-relay" 400, unknown types pydantic's tag error.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import replace
from typing import Any, Final, NoReturn

import orjson

from claude_relay.protocols import attachments
from claude_relay.protocols import tools as tool_rules
from claude_relay.protocols.errors import EXCERPT_CHARS, InvalidRequestError, RelayError, excerpt
from claude_relay.protocols.model import (
    ContentBlock,
    DocumentBlock,
    ImageBlock,
    Message,
    Role,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ToolChoice,
    ToolResultBlock,
    ToolResultContent,
    ToolSpec,
    ToolUseBlock,
    TurnRequest,
    TurnResult,
    Usage,
    session_id,
)

__all__ = [
    "PING_FRAME",
    "SYSTEM_BLOCK_SEPARATOR",
    "StreamEncoder",
    "decode_request",
    "encode_message",
    "error_body",
    "new_message_id",
    "sse_frame",
]

# Clients split `system` into blocks for cache breakpoints, not to start new sections, so the
# blocks are glued back into one prompt with a plain line break.
SYSTEM_BLOCK_SEPARATOR: Final = "\n"

_ENFORCED_FIELDS: Final = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stream",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "tools",
        "tool_choice",
        "output_config",
        "session_id",
        "thinking",
    }
)
_IGNORED_FIELDS: Final = frozenset(
    {
        "service_tier",
        "container",
        "mcp_servers",
        "context_management",
        "cache_control",
        "diagnostics",
        "inference_geo",
        "speed",
        "user_profile_id",
        "workspace_id",
    }
)
_ALLOWED_FIELDS: Final = _ENFORCED_FIELDS | _IGNORED_FIELDS

# Every content block type of the API, ordered as the SDK lists them so the unknown-type message
# reads like the API's; those the relay cannot translate yet get a clear "not supported yet".
_KNOWN_BLOCK_TYPES: Final = (
    "text",
    "image",
    "document",
    "search_result",
    "thinking",
    "redacted_thinking",
    "tool_use",
    "tool_result",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "container_upload",
    "mcp_tool_use",
    "mcp_tool_result",
    "compaction",
)
_UNSUPPORTED_BLOCK_TYPES: Final = tuple(
    t
    for t in _KNOWN_BLOCK_TYPES
    if t not in ("text", "image", "document", "tool_use", "tool_result")
)
_TEXT_BLOCK_KEYS: Final = frozenset({"type", "text", "cache_control", "citations"})

_MISSING: Final = object()


def _fail(path: str, problem: str, *, param: str | None = None) -> NoReturn:
    raise InvalidRequestError(f"{path}: {problem}", param=param if param is not None else path)


def _str(value: object, path: str) -> str:
    if not isinstance(value, str):
        _fail(path, "Input should be a valid string")
    return value


def _int(value: object, path: str, *, ge: int) -> int:
    # bool is an int subclass but never a valid integer in the API; integral floats (1024.0) pass,
    # as they do in pydantic's lax mode.
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(path, "Input should be a valid integer")
    if isinstance(value, float):
        if not value.is_integer():
            _fail(path, "Input should be a valid integer, got a number with a fractional part")
        value = int(value)
    if value < ge:
        _fail(path, f"Input should be greater than or equal to {ge}")
    return value


def _unit_float(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(path, "Input should be a valid number")
    if value < 0:
        _fail(path, "Input should be greater than or equal to 0")
    if value > 1:
        _fail(path, "Input should be less than or equal to 1")
    return float(value)


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, "Input should be a valid dictionary")
    return value


def _no_extras(obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            # the key as sent, unless it is too long to quote whole
            name = key if len(key) <= EXCERPT_CHARS else excerpt(key)
            _fail(f"{path}.{name}" if path else name, "Extra inputs are not permitted")


def _text_block(raw: object, path: str, *, tagged: bool) -> TextBlock:
    """Validate one `text` block; `tagged` adds pydantic's union tag to paths, as the API does."""
    if not isinstance(raw, dict):
        _fail(path, "Input should be a valid dictionary or object to extract fields from")
    block_type = raw.get("type", _MISSING)
    if tagged:
        if not isinstance(block_type, str):
            _fail(path, "Unable to extract tag using discriminator 'type'")
        if block_type in _UNSUPPORTED_BLOCK_TYPES:
            _fail(
                path, f"content blocks of type '{block_type}' are not supported yet by claude-relay"
            )
        if block_type != "text":
            expected = ", ".join(f"'{t}'" for t in _KNOWN_BLOCK_TYPES)
            _fail(
                path,
                f"Input tag {excerpt(block_type)} found using 'type' does not match any of the "
                f"expected tags: {expected}",
            )
        fields = f"{path}.text"
    else:
        fields = path
        if block_type is _MISSING:
            _fail(f"{fields}.type", "Field required")
        if block_type != "text":
            _fail(f"{fields}.type", "Input should be 'text'")
    _no_extras(raw, _TEXT_BLOCK_KEYS, fields)
    text = raw.get("text", _MISSING)
    if text is _MISSING:
        _fail(f"{fields}.text", "Field required")
    return TextBlock(_str(text, f"{fields}.text"))


# `caller` and `toolset_name` (API features the relay does not use) are accepted and ignored: the
# SDK echoes them back, as null, when a client resends a reply's blocks.
_TOOL_USE_KEYS: Final = frozenset(
    {"type", "id", "name", "input", "cache_control", "caller", "toolset_name"}
)
_TOOL_RESULT_KEYS: Final = frozenset(
    {"type", "tool_use_id", "content", "is_error", "cache_control", "toolset_name"}
)


def _tool_use_block(raw: dict[str, Any], path: str) -> ToolUseBlock:
    _no_extras(raw, _TOOL_USE_KEYS, f"{path}.tool_use")
    for key in ("id", "name", "input"):
        if key not in raw:
            _fail(f"{path}.tool_use.{key}", "Field required")
    return ToolUseBlock(
        id=tool_rules.check_tool_use_id(raw["id"], f"{path}.tool_use.id"),
        # names in history are not offered to claude, so only the API's own rule applies
        name=_str(raw["name"], f"{path}.tool_use.name"),
        input=_object(raw["input"], f"{path}.tool_use.input"),
    )


_IMAGE_KEYS: Final = frozenset({"type", "source", "cache_control"})
_DOCUMENT_KEYS: Final = frozenset(
    {"type", "source", "title", "context", "citations", "cache_control"}
)


def _image_block(raw: dict[str, Any], path: str, budget: attachments.Budget) -> ImageBlock:
    where = f"{path}.image"
    _no_extras(raw, _IMAGE_KEYS, where)
    if "source" not in raw:
        _fail(f"{where}.source", "Field required")
    return attachments.image_from_source(raw["source"], f"{where}.source", budget)


def _document_blocks(
    raw: dict[str, Any], path: str, budget: attachments.Budget
) -> tuple[DocumentBlock | ImageBlock, ...]:
    """A document's blocks: one text document, or a `content` document's texts and images."""
    where = f"{path}.document"
    _no_extras(raw, _DOCUMENT_KEYS, where)
    if "source" not in raw:
        _fail(f"{where}.source", "Field required")
    title = raw.get("title")
    if title is not None:
        title = _str(title, f"{where}.title")
    context = raw.get("context")
    if context is not None:
        context = _str(context, f"{where}.context")
    blocks = attachments.document_from_source(
        raw["source"], f"{where}.source", budget, title=title or None
    )
    if context:
        first = next(i for i, b in enumerate(blocks) if isinstance(b, DocumentBlock))
        doc = blocks[first]
        assert isinstance(doc, DocumentBlock)
        blocks = (*blocks[:first], replace(doc, context=context), *blocks[first + 1 :])
    return blocks


def _tool_result_block(
    raw: dict[str, Any], path: str, budget: attachments.Budget
) -> ToolResultBlock:
    where = f"{path}.tool_result"
    _no_extras(raw, _TOOL_RESULT_KEYS, where)
    if "tool_use_id" not in raw:
        _fail(f"{where}.tool_use_id", "Field required")
    tool_use_id = tool_rules.check_tool_use_id(raw["tool_use_id"], f"{where}.tool_use_id")
    is_error = raw.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        _fail(f"{where}.is_error", "Input should be a valid boolean")
    content = raw.get("content")
    parts: tuple[ToolResultContent, ...] = ()
    if isinstance(content, str):
        parts = (TextBlock(content),) if content else ()
    elif isinstance(content, list):
        parts = tuple(
            part
            for j, b in enumerate(content)
            for part in _attachment_or_text(b, f"{where}.content.{j}", budget)
        )
    elif content is not None:
        _fail(f"{where}.content", "Input should be a valid string or a list of content blocks")
    return ToolResultBlock(tool_use_id, parts, bool(is_error))


def _attachment_or_text(
    raw: object, path: str, budget: attachments.Budget
) -> tuple[TextBlock | ImageBlock | DocumentBlock, ...]:
    if isinstance(raw, dict) and raw.get("type") == "image":
        return (_image_block(raw, path, budget),)
    if isinstance(raw, dict) and raw.get("type") == "document":
        return _document_blocks(raw, path, budget)
    return (_text_block(raw, path, tagged=True),)


def _thinking_block(raw: dict[str, Any], path: str) -> ThinkingBlock:
    _no_extras(raw, frozenset({"type", "thinking", "signature", "cache_control"}), path)
    values: list[str] = []
    for name in ("thinking", "signature"):
        value = raw.get(name, _MISSING)
        if value is _MISSING:
            _fail(f"{path}.thinking.{name}", "Field required")
        values.append(_str(value, f"{path}.thinking.{name}"))
    return ThinkingBlock(values[0], values[1])


def _blocks(raw: object, path: str, budget: attachments.Budget) -> tuple[ContentBlock, ...]:
    """One client block as neutral blocks (a `content` document may give several)."""
    if isinstance(raw, dict) and raw.get("type") == "thinking":
        return (_thinking_block(raw, path),)
    if isinstance(raw, dict) and raw.get("type") == "redacted_thinking":
        # an earlier reply's encrypted thinking: claude holds its own, and a rendered history
        # carries only the words, so there is nothing to keep
        return ()
    if isinstance(raw, dict) and raw.get("type") == "tool_use":
        return (_tool_use_block(raw, path),)
    if isinstance(raw, dict) and raw.get("type") == "tool_result":
        return (_tool_result_block(raw, path, budget),)
    return _attachment_or_text(raw, path, budget)


def _content(
    raw: object, path: str, budget: attachments.Budget
) -> tuple[tuple[int, ContentBlock], ...]:
    """The blocks of a message's content, each with the index of the client block it came from."""
    if isinstance(raw, str):
        # The string form is shorthand for one text block; "" means no content at all.
        return ((0, TextBlock(raw)),) if raw else ()
    if not isinstance(raw, list):
        _fail(path, "Input should be a valid string or a list of content blocks")
    return tuple(
        (j, block) for j, b in enumerate(raw) for block in _blocks(b, f"{path}.{j}", budget)
    )


def _messages(raw: object, budget: attachments.Budget) -> tuple[Message, ...]:
    if raw is _MISSING:
        _fail("messages", "Field required")
    if not isinstance(raw, list):
        _fail("messages", "Input should be a valid list")
    if not raw:
        _fail("messages", "at least one message is required")
    last = len(raw) - 1
    out: list[Message] = []
    for i, item in enumerate(raw):
        path = f"messages.{i}"
        if not isinstance(item, dict):
            _fail(path, "Input should be a valid dictionary or object to extract fields from")
        _no_extras(item, frozenset({"role", "content"}), path)
        role = item.get("role", _MISSING)
        if role is _MISSING:
            _fail(f"{path}.role", "Field required")
        if role == "system":
            _fail(
                f"{path}.role",
                "messages with role 'system' are not supported yet by claude-relay; "
                "use the top-level system parameter",
            )
        if role not in ("user", "assistant"):
            _fail(f"{path}.role", "Input should be 'user' or 'assistant'")
        checked_role: Role = "user" if role == "user" else "assistant"
        content = item.get("content", _MISSING)
        if content is _MISSING:
            _fail(f"{path}.content", "Field required")
        indexed = _content(content, f"{path}.content", budget)
        blocks = tuple(block for _, block in indexed)
        final_assistant = i == last and checked_role == "assistant"
        if not blocks and not final_assistant:
            _fail(
                path,
                "all messages must have non-empty content except for the optional final "
                "assistant message",
            )
        last_block = len(blocks) - 1
        for k, (j, block) in enumerate(indexed):
            if checked_role == "user" and isinstance(block, ThinkingBlock):
                _fail(
                    f"{path}.content.{j}", "thinking blocks are only allowed in assistant messages"
                )
            if checked_role == "assistant" and isinstance(block, ImageBlock | DocumentBlock):
                # the API's rule: only the user sends images and documents
                _fail(
                    f"{path}.content.{j}",
                    "images and documents are only allowed in user messages",
                )
            if not isinstance(block, TextBlock):
                continue
            param = f"{path}.content" if isinstance(content, str) else f"{path}.content.{j}.text"
            if not block.text:
                _fail("messages", "text content blocks must be non-empty", param=param)
            if final_assistant and k == last_block and block.text != block.text.rstrip():
                # The API's rule; it also keeps the prefill an exact place to continue from.
                _fail(
                    "messages",
                    "final assistant content cannot end with trailing whitespace",
                    param=param,
                )
            if not block.text.strip():
                _fail(
                    "messages", "text content blocks must contain non-whitespace text", param=param
                )
        out.append(Message(checked_role, blocks))
    if not any(m.content for m in out):
        _fail("messages", "at least one message must have non-empty content")
    messages = tuple(out)
    tool_rules.check_pairing(messages)
    return messages


def _system(raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw or None
    if not isinstance(raw, list):
        _fail("system", "Input should be a valid string or a list of text blocks")
    texts: list[str] = []
    for j, item in enumerate(raw):
        block = _text_block(item, f"system.{j}", tagged=False)
        if not block.text:
            _fail("system", "text content blocks must be non-empty", param=f"system.{j}.text")
        texts.append(block.text)
    return SYSTEM_BLOCK_SEPARATOR.join(texts) or None


def _stop_sequences(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        _fail("stop_sequences", "Input should be a valid list")
    out: list[str] = []
    for j, item in enumerate(raw):
        seq = _str(item, f"stop_sequences.{j}")
        if not seq.strip():
            # An empty sequence would match everywhere; the relay applies these itself.
            _fail(f"stop_sequences.{j}", "stop sequences must contain non-whitespace characters")
        out.append(seq)
    return tuple(out)


def _metadata_user_id(raw: object) -> str | None:
    if raw is None:
        return None
    meta = _object(raw, "metadata")
    _no_extras(meta, frozenset({"user_id"}), "metadata")
    user_id = meta.get("user_id")
    return None if user_id is None else _str(user_id, "metadata.user_id")


_TOOL_KEYS: Final = frozenset(
    {"type", "name", "description", "input_schema", "cache_control", "strict", "input_examples"}
)


def _tools(raw: object) -> tuple[ToolSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        _fail("tools", "Input should be a valid list")
    out: list[ToolSpec] = []
    for j, item in enumerate(raw):
        path = f"tools.{j}"
        tool = _object(item, path)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            _fail(
                f"{path}.type",
                f"server tools ({excerpt(kind)}) are not supported by claude-relay; "
                "only custom tools with an input_schema",
            )
        _no_extras(tool, _TOOL_KEYS, path)
        if "name" not in tool:
            _fail(f"{path}.name", "Field required")
        if "input_schema" not in tool:
            _fail(f"{path}.input_schema", "Field required")
        description = tool.get("description")
        out.append(
            ToolSpec(
                name=tool_rules.check_name(tool["name"], f"{path}.name"),
                description="" if description is None else _str(description, f"{path}.description"),
                input_schema=tool_rules.check_schema(tool["input_schema"], f"{path}.input_schema"),
            )
        )
    tool_rules.check_unique(out, "tools")
    return tuple(out)


def _tool_choice(raw: object, tools: tuple[ToolSpec, ...]) -> ToolChoice:
    if raw is None:
        return ToolChoice()
    choice = _object(raw, "tool_choice")
    kind = choice.get("type", _MISSING)
    if kind is _MISSING:
        _fail("tool_choice.type", "Field required")
    if kind not in ("auto", "any", "tool", "none"):
        _fail("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if kind == "tool" else set())
    _no_extras(choice, frozenset(allowed), "tool_choice")
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        _fail("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")
    name = None
    if kind == "tool":
        if "name" not in choice:
            _fail("tool_choice.name", "Field required")
        name = _str(choice["name"], "tool_choice.name")
    result = ToolChoice(type=kind, name=name, disable_parallel=bool(parallel))
    tool_rules.check_choice(result, tools, "tool_choice")
    return result


def _thinking(raw: object, max_tokens: int) -> int | None:
    """The thinking budget a request asks for (None: no thinking), checked as the API does."""
    if raw is None:
        return None
    config = _object(raw, "thinking")
    kind = config.get("type", _MISSING)
    if kind is _MISSING:
        _fail("thinking.type", "Field required")
    if kind == "disabled":
        _no_extras(config, frozenset({"type"}), "thinking.disabled")
        return None
    if kind == "adaptive":
        _no_extras(config, frozenset({"type", "display"}), "thinking.adaptive")
        # the model decides how much to think: claude gets the largest budget that fits
        return max(_MIN_THINKING_BUDGET, max_tokens - 1)
    if kind != "enabled":
        _fail(
            "thinking",
            "Input tag '" + str(kind) + "' found using 'type' does not match any "
            "of the expected tags: 'enabled', 'disabled', 'adaptive'",
        )
    _no_extras(config, frozenset({"type", "budget_tokens", "display"}), "thinking.enabled")
    budget = config.get("budget_tokens", _MISSING)
    if budget is _MISSING:
        _fail("thinking.enabled.budget_tokens", "Field required")
    budget = _int(budget, "thinking.enabled.budget_tokens", ge=_MIN_THINKING_BUDGET)
    if budget >= max_tokens:
        _fail(
            "max_tokens",
            "`max_tokens` must be greater than `thinking.budget_tokens`",
            param="thinking.budget_tokens",
        )
    return budget


_MIN_THINKING_BUDGET: Final = 1024


def _check_output_config(raw: object) -> None:
    if raw is None:
        return
    config = _object(raw, "output_config")
    if config.get("format") is not None:
        _fail("output_config.format", "structured outputs are not supported yet by claude-relay")


def decode_request(
    raw: bytes,
    *,
    session_header: str | None = None,
    attachment_limits: attachments.AttachmentLimits | None = None,
) -> TurnRequest:
    """Parse and validate a POST /v1/messages body; raise `InvalidRequestError` on any problem
    (`RequestTooLargeError` when its images and documents exceed `attachment_limits`)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object")

    # Unknown fields first: a misspelt required field is then reported as the typo it is.
    _no_extras(body, _ALLOWED_FIELDS, "")

    model = body.get("model", _MISSING)
    if model is _MISSING:
        _fail("model", "Field required")
    model = _str(model, "model")
    if not model:
        _fail("model", "String should have at least 1 character")

    max_tokens = body.get("max_tokens", _MISSING)
    if max_tokens is _MISSING:
        _fail("max_tokens", "Field required")
    max_tokens = _int(max_tokens, "max_tokens", ge=1)

    messages = _messages(body.get("messages", _MISSING), attachments.Budget(attachment_limits))
    # Optional fields from here on: a JSON null means "absent", as for the API's Optional fields.
    system = _system(body.get("system"))
    stop_sequences = _stop_sequences(body.get("stop_sequences"))

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        _fail("stream", "Input should be a valid boolean")

    temperature = body.get("temperature")
    temperature = None if temperature is None else _unit_float(temperature, "temperature")
    top_p = body.get("top_p")
    top_p = None if top_p is None else _unit_float(top_p, "top_p")
    top_k = body.get("top_k")
    top_k = None if top_k is None else _int(top_k, "top_k", ge=0)
    metadata_user_id = _metadata_user_id(body.get("metadata"))
    tools = _tools(body.get("tools"))
    tool_choice = _tool_choice(body.get("tool_choice"), tools)
    _check_output_config(body.get("output_config"))
    thinking_budget = _thinking(body.get("thinking"), max_tokens)

    body_session = body.get("session_id")
    if body_session is not None:
        _str(body_session, "session_id")

    return TurnRequest(
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        stream=bool(stream),
        system=system,
        stop_sequences=stop_sequences,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        metadata_user_id=metadata_user_id,
        session_id=session_id(session_header, body_session),
        tools=tools,
        tool_choice=tool_choice,
        thinking_budget=thinking_budget,
    )


# --- responses ---------------------------------------------------------------------------------

_BASE62: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase


def new_message_id() -> str:
    """A fresh id shaped like the API's (`msg_01` + 22 base62 characters, 28 in all)."""
    return "msg_01" + "".join(secrets.choice(_BASE62) for _ in range(22))


def _usage(usage: Usage, *, output_tokens: int) -> dict[str, Any]:
    # Key order follows the API's responses; the optional SDK fields (server_tool_use,
    # service_tier, cache_creation, ...) are omitted because the relay has nothing true to say.
    return {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "output_tokens": output_tokens,
    }


def encode_message(result: TurnResult, *, request_model: str, message_id: str) -> dict[str, Any]:
    """The API's Message object for a finished turn.

    Empty text blocks are dropped (the API answers an empty generation with `"content": []`),
    which also keeps this identical to what a client accumulates from `StreamEncoder`.
    """
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request_model,
        "content": [
            _block_json(b) for b in result.content if not isinstance(b, TextBlock) or b.text
        ],
        "stop_reason": result.stop_reason,
        "stop_sequence": result.stop_sequence,
        "usage": _usage(result.usage, output_tokens=result.usage.output_tokens),
    }


def _block_json(block: ContentBlock) -> dict[str, Any]:
    if isinstance(block, ThinkingBlock):
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    if isinstance(block, ToolUseBlock):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    assert isinstance(block, TextBlock), block  # a reply holds only text and tool calls
    return {"type": "text", "text": block.text}


def error_body(err: RelayError, request_id: str | None = None) -> dict[str, Any]:
    """The API's error envelope; `request_id` sits at the top level, as in the SDK's ErrorResponse,
    and is left out when unknown rather than sent as null."""
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": err.anthropic_type, "message": err.message},
    }
    if request_id is not None:
        body["request_id"] = request_id
    return body


# --- streaming ---------------------------------------------------------------------------------

# The API sends ping with a space after the colon, unlike every other event; copied byte for byte.
PING_FRAME: Final = b'event: ping\ndata: {"type": "ping"}\n\n'


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event framed as the API does: `event: X\\ndata: {compact json}\\n\\n`."""
    assert "\n" not in event, event
    assert "\r" not in event, event
    # orjson never emits raw newlines (they are escaped inside strings), so one data line is safe.
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamEncoder:
    """Turns one turn's events into the API's SSE sequence.

    message_start, then (if any text) one text block at index 0 built from the deltas, then
    content_block_stop, message_delta (stop reason, cumulative usage) and message_stop. A turn that
    produced no text gets no content block at all, matching `encode_message`'s `"content": []`.
    Calls out of order (delta before start, anything after finish/error) are programming errors
    and fail an assertion.
    """

    def __init__(self, request_model: str, message_id: str, *, thinking: bool = False) -> None:
        self._model = request_model
        self._id = message_id
        self._started = False
        self._block_open = False
        self._closed = False
        self._streamed: list[str] = []
        # With thinking asked for, the thinking blocks must come first, and claude's screen
        # shows only the text: the exact thinking and its signature are known from the
        # transcript at the turn's end, so text deltas are held until then (docs/limits.md).
        self._thinking = thinking
        self._held: list[TextDelta] = []
        self._text_index = 0

    @property
    def closed(self) -> bool:
        """True once finish() or error() has produced the stream's last frame."""
        return self._closed

    def start(self, input_usage: Usage | None = None) -> bytes:
        assert not self._started, "start() called twice"
        assert not self._closed, "start() after error()"
        self._started = True
        usage = input_usage if input_usage is not None else Usage()
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # output_tokens 1, like the API, which has produced the first token by this point; the
            # message_delta carries the real cumulative count.
            "usage": _usage(usage, output_tokens=1),
        }
        return sse_frame("message_start", {"type": "message_start", "message": message})

    def delta(self, ev: TextDelta) -> bytes:
        assert self._started, "delta() before start()"
        assert not self._closed, "delta() after finish()/error()"
        if not ev.text:
            return b""
        if self._thinking:
            self._held.append(ev)
            return b""
        return self._text_delta(ev)

    def _text_delta(self, ev: TextDelta) -> bytes:
        out = b""
        index = self._text_index
        if not self._block_open:
            self._block_open = True
            out = sse_frame(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        self._streamed.append(ev.text)
        return out + sse_frame(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": ev.text},
            },
        )

    def finish(self, result: TurnResult) -> bytes:
        assert self._started, "finish() before start()"
        assert not self._closed, "finish() after finish()/error()"
        out = b""
        if self._thinking:
            for block in result.thinking:
                out += self._thinking_block(block, self._text_index)
                self._text_index += 1
            for ev in self._held:
                out += self._text_delta(ev)
            self._held = []
        # Deltas come from the screen and may lag the transcript: when what was streamed is a
        # prefix of the final text, send the rest so the client ends with the exact text. A
        # divergent stream cannot be retracted, so then nothing is added.
        streamed = "".join(self._streamed)
        final = result.text
        if len(final) > len(streamed) and final.startswith(streamed):
            out += self._text_delta(TextDelta(final[len(streamed) :]))
        index = self._text_index
        if self._block_open:
            out += sse_frame("content_block_stop", {"type": "content_block_stop", "index": index})
            self._block_open = False
            index += 1
        for tool in result.tool_uses:
            out += self._tool_block(tool, index)
            index += 1
        out += sse_frame(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": result.stop_reason, "stop_sequence": result.stop_sequence},
                "usage": _usage(result.usage, output_tokens=result.usage.output_tokens),
            },
        )
        out += sse_frame("message_stop", {"type": "message_stop"})
        self._closed = True
        return out

    @staticmethod
    def _thinking_block(block: ThinkingBlock, index: int) -> bytes:
        """A thinking block as the API streams it: thinking_delta, then signature_delta."""
        start = {"type": "thinking", "thinking": "", "signature": ""}
        out = sse_frame(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        deltas: list[dict[str, Any]] = []
        if block.thinking:
            deltas.append({"type": "thinking_delta", "thinking": block.thinking})
        deltas.append({"type": "signature_delta", "signature": block.signature})
        for delta in deltas:
            out += sse_frame(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        return out + sse_frame("content_block_stop", {"type": "content_block_stop", "index": index})

    @staticmethod
    def _tool_block(tool: ToolUseBlock, index: int) -> bytes:
        """A tool_use block as the API streams it: empty input at start, then the JSON."""
        start = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}
        partial = orjson.dumps(tool.input).decode()
        return (
            sse_frame(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            + sse_frame(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": partial},
                },
            )
            + sse_frame("content_block_stop", {"type": "content_block_stop", "index": index})
        )

    def ping(self) -> bytes:
        assert not self._closed, "ping() after finish()/error()"
        return PING_FRAME

    def error(self, err: RelayError, request_id: str | None = None) -> bytes:
        """The API's mid-stream failure event; it ends the stream (no message_stop follows)."""
        assert not self._closed, "error() after finish()/error()"
        self._closed = True
        return sse_frame("error", error_body(err, request_id))
