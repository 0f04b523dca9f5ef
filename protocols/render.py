"""Render a stateless request's message history as the one prompt typed into a fresh claude.

A claude process keeps its own conversation, so a request that carries history the process has not
seen must be replayed as a single user turn. The contract:

* One user message (the common case, and every turn of a continued session): its text verbatim,
  nothing added, so what the client sent is exactly what claude reads.
* Longer histories: a one-paragraph preamble, the earlier turns inside `<conversation_history>`
  as `<user>`/`<assistant>` elements, then the new user message verbatim after the history.
* A final `assistant` message (prefill): an instruction to continue that reply from precisely where
  it stops, with the prefix quoted inside `<reply_prefix>`.

Why this format: Claude is trained to treat XML-ish tags as structure, and tags are unambiguous
where `Human:`/`Assistant:` labels are not (those are turn markers with special meaning to the
model and appear in ordinary text). The new message is left outside the history, unwrapped, so it
reads as the thing to answer rather than more history. Nothing is escaped: turn texts are inserted
verbatim, because rewriting `<` or `&` would change code and markup the model must see exactly; a
message that itself contains `</user>` can blur a boundary, which the model tolerates far better
than mangled content.

Tool exchanges (a conversation that used the caller's tools, replayed on a claude that did not
make those calls): a `tool_use` block becomes `<tool_use id="…" name="…">{input JSON}</tool_use>`
and a `tool_result` block `<tool_result tool_use_id="…">text</tool_result>` (with
`is_error="true"` when set), in their places among the text; the preamble then says what the tags
mean.

Text joins: blocks within one message, and consecutive messages of the same role (which the API
merges into one turn), are joined with a blank line ("\\n\\n"). The API keeps them as separate
blocks; a blank line is the plain-text equivalent of a block boundary and never glues two words or
sentences together. Empty blocks are skipped. The function is deterministic: same input, same
bytes.
"""

from __future__ import annotations

import json
from typing import Final

from protocols.model import ContentBlock, Message, Role, TextBlock, ToolResultBlock, ToolUseBlock

__all__ = ["BLOCK_SEPARATOR", "HISTORY_PREAMBLE", "PREFILL_INSTRUCTION", "render_prompt"]

BLOCK_SEPARATOR: Final = "\n\n"

HISTORY_PREAMBLE: Final = (
    "The earlier turns of this conversation are inside <conversation_history> below: <user> holds "
    "the user's messages and <assistant> holds your own replies. Reply to the user's new message, "
    "which follows the history, as your next turn in this conversation; do not mention this format."
)

PREFILL_INSTRUCTION: Final = (
    "Your reply has already begun: it starts with exactly the text inside <reply_prefix> below. "
    "Continue it from precisely where it stops. Output only the continuation, without repeating "
    "the prefix or adding anything before it."
)


TOOLS_NOTE: Final = (
    "Tool calls you made appear as <tool_use> with their input, and what they returned as "
    "<tool_result>."
)


def _block_text(block: ContentBlock) -> str:
    if isinstance(block, TextBlock):
        return block.text
    if isinstance(block, ToolUseBlock):
        args = json.dumps(block.input, ensure_ascii=False, separators=(",", ":"))
        return f'<tool_use id="{block.id}" name="{block.name}">{args}</tool_use>'
    if isinstance(block, ToolResultBlock):
        error = ' is_error="true"' if block.is_error else ""
        return f'<tool_result tool_use_id="{block.tool_use_id}"{error}>{block.text}</tool_result>'
    return ""  # attachments are referenced by the caller of render_prompt, not inlined here


def _merge(messages: tuple[Message, ...]) -> list[tuple[Role, str]]:
    """Collapse consecutive same-role messages into one turn each, ignoring messages with no text
    (an empty final assistant message is "no prefill", as in the API)."""
    turns: list[tuple[Role, list[str]]] = []
    for message in messages:
        texts = [t for t in map(_block_text, message.content) if t]
        if not texts:
            continue
        if turns and turns[-1][0] == message.role:
            turns[-1][1].extend(texts)
        else:
            turns.append((message.role, texts))
    return [(role, BLOCK_SEPARATOR.join(texts)) for role, texts in turns]


def render_prompt(messages: tuple[Message, ...]) -> str:
    """The single prompt that makes a fresh claude answer `messages` as the API would."""
    turns = _merge(messages)
    if not turns:
        raise ValueError("render_prompt needs at least one message with text")

    prefill: str | None = None
    if turns[-1][0] == "assistant":
        prefill = turns.pop()[1]
    question: str | None = None
    if turns and turns[-1][0] == "user":
        question = turns.pop()[1]
    # After merging, roles alternate, so whatever remains ends with an assistant turn.
    history = turns

    parts: list[str] = []
    if history:
        rendered = "\n".join(f"<{role}>\n{text}\n</{role}>" for role, text in history)
        tools = any(
            isinstance(b, ToolUseBlock | ToolResultBlock) for m in messages for b in m.content
        )
        parts.append(f"{HISTORY_PREAMBLE} {TOOLS_NOTE}" if tools else HISTORY_PREAMBLE)
        parts.append(f"<conversation_history>\n{rendered}\n</conversation_history>")
    if question is not None:
        parts.append(question)
    if prefill is not None:
        # The prefix sits inline between the tags: a newline there would read as part of it.
        parts.append(f"{PREFILL_INSTRUCTION}\n<reply_prefix>{prefill}</reply_prefix>")
    return "\n\n".join(parts)
