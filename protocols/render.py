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

Attachments: a text or PDF document becomes `<document title="…">\ntext\n</document>` where the
block stands (a PDF's text was extracted by the decoder); an image stays an `ImageBlock` part of
`render_parts`, where the session attaches it. `render_prompt` is the text-only form.

Text joins: blocks within one message, and consecutive messages of the same role (which the API
merges into one turn), are joined with a blank line ("\\n\\n"). The API keeps them as separate
blocks; a blank line is the plain-text equivalent of a block boundary and never glues two words or
sentences together. Empty blocks are skipped. The function is deterministic: same input, same
bytes.
"""

from __future__ import annotations

import html
import json
from typing import Final

from claude_relay.protocols.model import (
    ContentBlock,
    DocumentBlock,
    ImageBlock,
    Message,
    Role,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)

__all__ = [
    "BLOCK_SEPARATOR",
    "HISTORY_PREAMBLE",
    "PREFILL_INSTRUCTION",
    "PromptPart",
    "render_parts",
    "render_prompt",
]

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

# A prompt is text with images where the client put them: strings and images alternate.
PromptPart = str | ImageBlock
_Parts = list[PromptPart]


def _join(groups: list[_Parts], sep: str) -> _Parts:
    """Concatenate non-empty groups with `sep` between them; adjacent strings merge and empty
    strings vanish, so strings and images alternate."""
    out: _Parts = []
    for n, group in enumerate(g for g in groups if g):
        for part in [sep, *group] if n else group:
            if isinstance(part, str) and out and isinstance(out[-1], str):
                out[-1] += part
            elif part != "":
                out.append(part)
    return out


def _document_text(block: DocumentBlock) -> str:
    attrs = "".join(
        f' {name}="{html.escape(value)}"'
        for name, value in (("title", block.title), ("context", block.context))
        if value
    )
    return f"<document{attrs}>\n{block.text or ''}\n</document>"


def _block_parts(block: ContentBlock) -> _Parts:
    if isinstance(block, TextBlock):
        return [block.text]
    if isinstance(block, ImageBlock):
        return [block]
    if isinstance(block, DocumentBlock):
        return [_document_text(block)]
    if isinstance(block, ToolUseBlock):
        args = json.dumps(block.input, ensure_ascii=False, separators=(",", ":"))
        return [f'<tool_use id="{block.id}" name="{block.name}">{args}</tool_use>']
    if isinstance(block, ThinkingBlock):
        return []  # the model's own scratch work: a rendered history carries only its words
    error = ' is_error="true"' if block.is_error else ""
    inner = _join([_block_parts(b) for b in block.content], "\n")
    return _join(
        [[f'<tool_result tool_use_id="{block.tool_use_id}"{error}>', *inner, "</tool_result>"]], ""
    )


def _merge(messages: tuple[Message, ...]) -> list[tuple[Role, _Parts]]:
    """Collapse consecutive same-role messages into one turn each, ignoring messages with no
    content (an empty final assistant message is "no prefill", as in the API)."""
    turns: list[tuple[Role, list[_Parts]]] = []
    for message in messages:
        blocks = [p for p in map(_block_parts, message.content) if _join([p], "")]
        if not blocks:
            continue
        if turns and turns[-1][0] == message.role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((message.role, blocks))
    return [(role, _join(blocks, BLOCK_SEPARATOR)) for role, blocks in turns]


def render_parts(messages: tuple[Message, ...]) -> tuple[PromptPart, ...]:
    """The prompt that makes a fresh claude answer `messages` as the API would: text, with each
    image where the client put it."""
    turns = _merge(messages)
    if not turns:
        raise ValueError("render_parts needs at least one message with content")

    prefill: _Parts | None = None
    if turns[-1][0] == "assistant":
        prefill = turns.pop()[1]
    question: _Parts | None = None
    if turns and turns[-1][0] == "user":
        question = turns.pop()[1]
    # After merging, roles alternate, so whatever remains ends with an assistant turn.
    history = turns

    sections: list[_Parts] = []
    if history:
        rendered = _join([[f"<{role}>\n", *p, f"\n</{role}>"] for role, p in history], "\n")
        tools = any(
            isinstance(b, ToolUseBlock | ToolResultBlock) for m in messages for b in m.content
        )
        sections.append([f"{HISTORY_PREAMBLE} {TOOLS_NOTE}" if tools else HISTORY_PREAMBLE])
        sections.append(["<conversation_history>\n", *rendered, "\n</conversation_history>"])
    if question is not None:
        sections.append(question)
    if prefill is not None:
        # The prefix sits inline between the tags: a newline there would read as part of it.
        sections.append([f"{PREFILL_INSTRUCTION}\n<reply_prefix>", *prefill, "</reply_prefix>"])
    return tuple(_join(sections, "\n\n"))


def render_prompt(messages: tuple[Message, ...]) -> str:
    """The single prompt that makes a fresh claude answer `messages` (text only: images are in
    `render_parts`)."""
    parts = render_parts(messages)
    if not all(isinstance(p, str) for p in parts):
        raise ValueError("render_prompt cannot carry images; use render_parts")
    return "".join(str(p) for p in parts)
