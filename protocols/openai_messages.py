"""OpenAI Chat Completions `messages`, `tools` and `tool_choice`, decoded into the neutral model.

* `system` and `developer` messages, wherever they stand, are joined in order (blank line between)
  into the system prompt; the system prompt is fixed when a claude starts, so a conversation that
  adds one later moves to a new claude (sticky sessions see a new spawn spec).
* `user` content is a string or parts: `text`, and `image_url` with a base64 `data:` URL, decoded
  into an `ImageBlock` whose type is read from the bytes. Remote URLs are refused: the relay
  fetches nothing on a caller's behalf.
* `assistant` messages carry text (`refusal` counts as text) and `tool_calls`, whose JSON-string
  `arguments` become `ToolUseBlock.input`. Every tool call must be answered by a following `tool`
  message, and every `tool` message must answer one, as the API requires.
* consecutive `tool` messages become one user message of `ToolResultBlock`s.
* `tools` become `ToolSpec`s; `tool_choice` `auto`/`none` map as they are, `required` to `any` and
  a named function to `tool`; `parallel_tool_calls: false` sets `disable_parallel`.
* a final `assistant` message is a prefill, as in the Anthropic API (trailing whitespace removed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from claude_relay.protocols import openai_params as p
from claude_relay.protocols.attachments import (
    AttachmentLimits,
    Budget,
    document_from_data_url,
    image_from_data_url,
)
from claude_relay.protocols.errors import InvalidRequestError, excerpt
from claude_relay.protocols.model import (
    ContentBlock,
    ImageBlock,
    Message,
    TextBlock,
    ToolChoice,
    ToolChoiceType,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)

__all__ = ["TOOL_NAME", "decode_messages", "decode_tool_choice", "decode_tools"]

SYSTEM_SEPARATOR: Final = "\n\n"
TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the API's pattern for function names

# The API's string tool choices and the neutral model's names for them.
_CHOICES: Final[dict[str, ToolChoiceType]] = {"none": "none", "auto": "auto", "required": "any"}
_ROLES: Final = ("system", "assistant", "user", "function", "tool", "developer")
_PART_TYPES: Final = ("text", "image_url", "input_audio", "refusal", "audio", "file")
_MESSAGE_KEYS: Final = {
    "system": frozenset({"role", "content", "name"}),
    "developer": frozenset({"role", "content", "name"}),
    "user": frozenset({"role", "content", "name"}),
    "assistant": frozenset(),  # not checked: see _message
    "tool": frozenset({"role", "content", "tool_call_id"}),
}


# --- images -------------------------------------------------------------------------------------


def _image(url: object, param: str, budget: Budget) -> ImageBlock:
    try:
        return image_from_data_url(url, param, budget)
    except InvalidRequestError as err:
        err.openai_code = err.openai_code or "invalid_image_url"
        raise


# --- messages -----------------------------------------------------------------------------------


def _text_parts(raw: object, param: str, *, allow: tuple[str, ...] = ("text",)) -> list[str]:
    """Texts of a string-or-parts content whose parts may only be of the types in `allow`."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list):
        p.bad_type(raw, param, "one of a string or array of objects")
    out: list[str] = []
    for j, item in enumerate(raw):
        where = f"{param}[{j}]"
        part = p.obj(item, where)
        kind = p.required(part, "type", where)
        if kind not in allow:
            if kind in _PART_TYPES:
                p.fail(
                    f"Invalid '{where}.type': content parts of type '{kind}' are not allowed "
                    "in this message.",
                    f"{where}.type",
                    "invalid_value",
                )
            p.bad_value(kind, f"{where}.type", allow)
        p.no_extras(part, frozenset({"type", kind, "prompt_cache_breakpoint"}), where)
        out.append(p.string(p.required(part, kind, where), f"{where}.{kind}"))
    return out


def _user_content(raw: object, param: str, budget: Budget) -> tuple[ContentBlock, ...]:
    if isinstance(raw, str):
        return (TextBlock(raw),) if raw else ()
    if not isinstance(raw, list):
        p.bad_type(raw, param, "one of a string or array of objects")
    out: list[ContentBlock] = []
    for j, item in enumerate(raw):
        where = f"{param}[{j}]"
        part = p.obj(item, where)
        kind = p.required(part, "type", where)
        if kind == "text":
            p.no_extras(part, frozenset({"type", "text", "prompt_cache_breakpoint"}), where)
            text = p.string(p.required(part, "text", where), f"{where}.text")
            if text:
                out.append(TextBlock(text))
        elif kind == "image_url":
            p.no_extras(part, frozenset({"type", "image_url", "prompt_cache_breakpoint"}), where)
            image = p.obj(p.required(part, "image_url", where), f"{where}.image_url")
            p.no_extras(image, frozenset({"url", "detail"}), f"{where}.image_url")
            url = p.required(image, "url", f"{where}.image_url")
            out.append(_image(url, f"{where}.image_url.url", budget))
        elif kind == "file":
            p.no_extras(part, frozenset({"type", "file", "prompt_cache_breakpoint"}), where)
            file = p.obj(p.required(part, "file", where), f"{where}.file")
            p.no_extras(file, frozenset({"file_data", "filename", "file_id"}), f"{where}.file")
            if "file_id" in file:
                p.fail(
                    f"Invalid '{where}.file.file_id': uploaded files are not available through "
                    "claude-relay; send the file inline as file_data "
                    "(data:application/pdf;base64,...).",
                    f"{where}.file.file_id",
                    "unsupported_value",
                )
            name = file.get("filename")
            title = None if name is None else p.string(name, f"{where}.file.filename")
            data_url = p.required(file, "file_data", f"{where}.file")
            try:
                out.append(
                    document_from_data_url(data_url, f"{where}.file.file_data", budget, title=title)
                )
            except InvalidRequestError as err:
                err.openai_code = err.openai_code or "invalid_value"
                raise
        elif kind == "input_audio":
            p.fail(
                f"Invalid '{where}.type': content parts of type '{kind}' are not supported by "
                "claude-relay.",
                f"{where}.type",
                "unsupported_value",
            )
        else:
            p.bad_value(kind, f"{where}.type", ("text", "image_url", "input_audio", "file"))
    return tuple(out)


def _tool_calls(raw: object, param: str) -> list[ToolUseBlock]:
    calls: list[ToolUseBlock] = []
    for j, item in enumerate(p.array(raw, param)):
        where = f"{param}[{j}]"
        call = p.obj(item, where)
        kind = call.get("type", "function")
        if kind != "function":
            if kind == "custom":
                p.unsupported(f"{where}.type", "custom tools are not supported by claude-relay.")
            p.bad_value(kind, f"{where}.type", ("function", "custom"))
        call_id = p.string(p.required(call, "id", where), f"{where}.id")
        fn = p.obj(p.required(call, "function", where), f"{where}.function")
        name = p.string(p.required(fn, "name", f"{where}.function"), f"{where}.function.name")
        args = p.string(fn.get("arguments") or "", f"{where}.function.arguments")
        try:
            parsed = orjson.loads(args) if args.strip() else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            # The neutral model (and the Anthropic API behind it) holds tool input as an object.
            p.fail(
                f"Invalid '{where}.function.arguments': expected a JSON object encoded as a "
                "string.",
                f"{where}.function.arguments",
                "invalid_value",
            )
        calls.append(ToolUseBlock(id=call_id, name=name, input=parsed))
    return calls


@dataclass
class _Conversation:
    """Messages being built, with the tool-call bookkeeping the API checks."""

    budget: Budget
    messages: list[Message] = field(default_factory=list)
    system: list[str] = field(default_factory=list)
    results: list[ToolResultBlock] = field(default_factory=list)  # consecutive tool messages
    # The last assistant message's unanswered tool call ids -> that message's index; only the
    # tool messages right after it may answer them.
    open_calls: dict[str, int] = field(default_factory=dict)

    def flush_results(self) -> None:
        if self.results:
            self.messages.append(Message("user", tuple(self.results)))
            self.results = []

    def check_answered(self) -> None:
        if self.open_calls:
            index = min(self.open_calls.values())
            p.fail(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {p.quoted(', '.join(self.open_calls))}",
                f"messages.[{index}].role",
                "invalid_value",
            )


def _message(conv: _Conversation, item: object, i: int) -> None:
    where = f"messages[{i}]"
    msg = p.obj(item, where)
    role = p.string(p.required(msg, "role", where), f"{where}.role")
    if role == "function":
        p.unsupported(
            f"{where}.role",
            "'function' messages are deprecated and not supported by claude-relay; use tools.",
        )
    if role not in _MESSAGE_KEYS:
        p.bad_value(role, f"{where}.role", _ROLES)
    if role != "assistant":
        # Assistant messages are exempt: clients send response messages back as history, with
        # whatever their SDK's models hold (`annotations`, a stream accumulator's `index`, the
        # parse helpers' `parsed`/`parsed_arguments`); such fields mean nothing to the model.
        p.no_extras(msg, _MESSAGE_KEYS[role], where)
    if role != "tool":
        conv.check_answered()
        conv.flush_results()

    if role in ("system", "developer"):
        # Parts are joined like the Anthropic API's system blocks: with a plain line break.
        text = "\n".join(_text_parts(p.required(msg, "content", where), f"{where}.content"))
        if text:
            conv.system.append(text)
    elif role == "user":
        blocks = _user_content(p.required(msg, "content", where), f"{where}.content", conv.budget)
        if blocks:
            conv.messages.append(Message("user", blocks))
    elif role == "assistant":
        _assistant(conv, msg, where, i)
    else:
        call_id = p.string(p.required(msg, "tool_call_id", where), f"{where}.tool_call_id")
        if call_id not in conv.open_calls:
            p.fail(
                "Invalid parameter: messages with role 'tool' must be a response to a "
                "preceding message with 'tool_calls'.",
                f"messages.[{i}].role",
                "invalid_value",
            )
        del conv.open_calls[call_id]
        texts = _text_parts(p.required(msg, "content", where), f"{where}.content")
        conv.results.append(ToolResultBlock(call_id, tuple(TextBlock(t) for t in texts if t)))


def _assistant(conv: _Conversation, msg: dict[str, Any], where: str, i: int) -> None:
    if msg.get("audio") is not None:
        p.unsupported(f"{where}.audio", "audio is not supported by claude-relay.")
    if msg.get("function_call") is not None:
        p.unsupported(
            f"{where}.function_call",
            "is deprecated and not supported by claude-relay; use tool_calls.",
        )
    content = msg.get("content")
    texts = (
        []
        if content is None
        else _text_parts(content, f"{where}.content", allow=("text", "refusal"))
    )
    refusal = msg.get("refusal")
    if refusal is not None and not texts:
        texts = [p.string(refusal, f"{where}.refusal")]
    blocks: list[ContentBlock] = [TextBlock(t) for t in texts if t]
    calls = _tool_calls(msg["tool_calls"], f"{where}.tool_calls") if msg.get("tool_calls") else []
    blocks.extend(calls)
    conv.open_calls = {c.id: i for c in calls}
    if blocks:
        conv.messages.append(Message("assistant", tuple(blocks)))


def decode_messages(
    raw: object, limits: AttachmentLimits | None = None
) -> tuple[tuple[Message, ...], str | None]:
    """The conversation and the system prompt; images count against `limits` (413 beyond)."""
    if raw is p.MISSING or raw is None:
        p.missing("messages")
    items = p.array(raw, "messages")
    if not items:
        p.fail(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "messages",
            "empty_array",
        )
    conv = _Conversation(Budget(limits))
    for i, item in enumerate(items):
        _message(conv, item, i)
    conv.check_answered()
    conv.flush_results()
    messages = conv.messages
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant" and isinstance(last.content[-1], TextBlock):
        # A final assistant message is continued (prefill), and a prefill must not end in
        # whitespace; trimming keeps the continuation point exact.
        trimmed = last.content[-1].text.rstrip()
        head = last.content[:-1]
        content = (*head, TextBlock(trimmed)) if trimmed else head
        if content:
            messages[-1] = Message("assistant", content)
        else:
            messages.pop()
    if not messages:
        p.fail(
            "Invalid 'messages': at least one user, assistant or tool message with content is "
            "required.",
            "messages",
            "invalid_value",
        )
    system = SYSTEM_SEPARATOR.join(conv.system) or None
    return tuple(messages), system


# --- tools --------------------------------------------------------------------------------------


def decode_tools(raw: object) -> tuple[ToolSpec, ...]:
    if raw is None:
        return ()
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for j, item in enumerate(p.array(raw, "tools")):
        where = f"tools[{j}]"
        tool = p.obj(item, where)
        kind = p.required(tool, "type", where)
        if kind == "custom":
            p.unsupported(f"{where}.type", "custom tools are not supported by claude-relay.")
        if kind != "function":
            p.bad_value(kind, f"{where}.type", ("function", "custom"))
        p.no_extras(tool, frozenset({"type", "function"}), where)
        fn = p.obj(p.required(tool, "function", where), f"{where}.function")
        p.no_extras(
            fn, frozenset({"name", "description", "parameters", "strict"}), f"{where}.function"
        )
        name = p.string(p.required(fn, "name", f"{where}.function"), f"{where}.function.name")
        if not TOOL_NAME.fullmatch(name):
            p.fail(
                f"Invalid '{where}.function.name': string does not match pattern. Expected a "
                "string that matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
                f"{where}.function.name",
                "invalid_value",
            )
        if name in seen:
            p.fail(
                f"Invalid 'tools': duplicate function name '{name}'.",
                f"{where}.function.name",
                "invalid_value",
            )
        seen.add(name)
        description = fn.get("description")
        if description is not None:
            p.string(description, f"{where}.function.description")
        params = fn.get("parameters")
        # Omitted parameters mean a function that takes none, as in the API.
        schema: dict[str, object] = (
            {"type": "object", "properties": {}}
            if params is None
            else p.obj(params, f"{where}.function.parameters")
        )
        specs.append(ToolSpec(name=name, description=description or "", input_schema=schema))
    return tuple(specs)


def decode_tool_choice(raw: object, specs: tuple[ToolSpec, ...], parallel: object) -> ToolChoice:
    disable_parallel = False
    if parallel is not None:
        disable_parallel = not p.boolean(parallel, "parallel_tool_calls")
    if raw is None:
        return ToolChoice("auto", disable_parallel=disable_parallel)
    if isinstance(raw, str):
        if raw not in _CHOICES:
            p.bad_value(raw, "tool_choice", tuple(_CHOICES))
        if raw == "required" and not specs:
            p.fail(
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                "are specified.",
                "tool_choice",
                "invalid_value",
            )
        mode: ToolChoiceType = _CHOICES[raw]
        return ToolChoice(mode, disable_parallel=disable_parallel)
    choice = p.obj(raw, "tool_choice")
    kind = p.required(choice, "type", "tool_choice")
    if kind in ("allowed_tools", "custom"):
        p.unsupported("tool_choice.type", f"'{kind}' is not supported by claude-relay.")
    if kind != "function":
        p.bad_value(kind, "tool_choice.type", ("function", "allowed_tools", "custom"))
    p.no_extras(choice, frozenset({"type", "function"}), "tool_choice")
    fn = p.obj(p.required(choice, "function", "tool_choice"), "tool_choice.function")
    name = p.string(p.required(fn, "name", "tool_choice.function"), "tool_choice.function.name")
    if name not in {t.name for t in specs}:
        p.fail(
            f"Invalid value for 'tool_choice': no function named {excerpt(name)} was specified "
            "in the 'tools' parameter.",
            "tool_choice.function.name",
            "invalid_value",
        )
    return ToolChoice("tool", name=name, disable_parallel=disable_parallel)
