"""render_prompt: one prompt for a fresh claude from a stateless request's history."""

from __future__ import annotations

import pytest

from claude_relay.protocols.model import (
    DocumentBlock,
    ImageBlock,
    Message,
    Role,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from claude_relay.protocols.render import (
    HISTORY_PREAMBLE,
    PREFILL_INSTRUCTION,
    render_parts,
    render_prompt,
)


def msg(role: Role, *texts: str) -> Message:
    return Message(role, tuple(TextBlock(t) for t in texts))


def u(*texts: str) -> Message:
    return msg("user", *texts)


def a(*texts: str) -> Message:
    return msg("assistant", *texts)


@pytest.mark.parametrize(
    "text",
    [
        "Hello",
        "  leading and trailing whitespace \n",
        "<user>tags</user> & </conversation_history> are not escaped",
        "Human: looks like a turn marker\n\nAssistant: but is just text",
        "multi\nline\r\nwith\ttabs and ünïcode 🦀",
        "/help is not special here",
    ],
)
def test_single_user_message_is_verbatim(text: str) -> None:
    assert render_prompt((u(text),)) == text


def test_blocks_of_one_message_are_joined_with_a_blank_line() -> None:
    assert render_prompt((u("First block.", "Second block."),)) == "First block.\n\nSecond block."


def test_empty_blocks_are_skipped() -> None:
    assert render_prompt((u("", "only", ""),)) == "only"


def test_consecutive_user_messages_merge_into_one_verbatim_prompt() -> None:
    assert render_prompt((u("Part one."), u("Part two.", "Part three."))) == (
        "Part one.\n\nPart two.\n\nPart three."
    )


def test_history_golden() -> None:
    prompt = render_prompt(
        (
            u("Hello there."),
            a("Hi, I'm Claude. How can I help you?"),
            u("Can you explain LLMs in plain English?"),
        )
    )
    assert prompt == (
        "The earlier turns of this conversation are inside <conversation_history> below: <user> "
        "holds the user's messages and <assistant> holds your own replies. Reply to the user's new "
        "message, which follows the history, as your next turn in this conversation; do not "
        "mention this format.\n"
        "\n"
        "<conversation_history>\n"
        "<user>\n"
        "Hello there.\n"
        "</user>\n"
        "<assistant>\n"
        "Hi, I'm Claude. How can I help you?\n"
        "</assistant>\n"
        "</conversation_history>\n"
        "\n"
        "Can you explain LLMs in plain English?"
    )


def test_history_merges_consecutive_roles() -> None:
    merged = render_prompt((u("a1"), u("a2"), a("b1"), a("b2"), u("c1"), u("c2")))
    separate = render_prompt((u("a1\n\na2"), a("b1\n\nb2"), u("c1\n\nc2")))
    assert merged == separate
    assert merged.count("<user>\n") == 1
    assert merged.count("<assistant>\n") == 1
    assert merged.endswith("</conversation_history>\n\nc1\n\nc2")


def test_history_texts_are_not_escaped_or_trimmed() -> None:
    prompt = render_prompt((u(" <b>x</b> & y "), a("if a < b:\n    pass\n"), u("ok?")))
    assert "<user>\n <b>x</b> & y \n</user>" in prompt
    assert "<assistant>\nif a < b:\n    pass\n\n</assistant>" in prompt


def test_assistant_first_history() -> None:
    prompt = render_prompt((a("How can I help?"), u("What colour is the sky?")))
    assert prompt == (
        f"{HISTORY_PREAMBLE}\n\n"
        "<conversation_history>\n<assistant>\nHow can I help?\n</assistant>\n"
        "</conversation_history>\n\n"
        "What colour is the sky?"
    )


def test_prefill_after_single_user_message() -> None:
    prompt = render_prompt(
        (
            u("What's the Greek name for Sun? (A) Sol (B) Helios (C) Sun"),
            a("The best answer is ("),
        )
    )
    assert prompt == (
        "What's the Greek name for Sun? (A) Sol (B) Helios (C) Sun\n"
        "\n"
        "Your reply has already begun: it starts with exactly the text inside <reply_prefix> "
        "below. Continue it from precisely where it stops. Output only the continuation, without "
        "repeating the prefix or adding anything before it.\n"
        "<reply_prefix>The best answer is (</reply_prefix>"
    )


def test_prefill_after_history() -> None:
    prompt = render_prompt((u("Q1"), a("A1"), u("Q2"), a("Sure", ", here:")))
    assert prompt == (
        f"{HISTORY_PREAMBLE}\n\n"
        "<conversation_history>\n<user>\nQ1\n</user>\n<assistant>\nA1\n</assistant>\n"
        "</conversation_history>\n\n"
        "Q2\n\n"
        f"{PREFILL_INSTRUCTION}\n<reply_prefix>Sure\n\n, here:</reply_prefix>"
    )


def test_consecutive_final_assistant_messages_form_one_prefill() -> None:
    assert render_prompt((u("Q"), a("One"), a("Two"))) == render_prompt((u("Q"), a("One\n\nTwo")))


def test_empty_final_assistant_means_no_prefill() -> None:
    assert render_prompt((u("Q"), a(""))) == "Q"
    assert render_prompt((u("Q"), Message("assistant", ()))) == "Q"


def test_empty_message_in_the_middle_does_not_split_a_turn() -> None:
    assert render_prompt((u("a"), a(""), u("b"))) == "a\n\nb"


def test_prefill_only() -> None:
    assert render_prompt((a("Once upon a time"),)) == (
        f"{PREFILL_INSTRUCTION}\n<reply_prefix>Once upon a time</reply_prefix>"
    )


@pytest.mark.parametrize("messages", [(), (u(""),), (a(""),), (Message("user", ()),)])
def test_nothing_to_render_is_an_error(messages: tuple[Message, ...]) -> None:
    with pytest.raises(ValueError, match="at least one message"):
        render_prompt(messages)


def test_deterministic() -> None:
    history = (u("x"), a("y"), u("z"), a("w"))
    assert len({render_prompt(history) for _ in range(5)}) == 1


# --- attachments -------------------------------------------------------------------------------

RED = ImageBlock("image/png", b"red")
BLUE = ImageBlock("image/png", b"blue")


def test_images_stand_where_the_client_put_them() -> None:
    msg = Message("user", (TextBlock("A"), RED, TextBlock("B"), BLUE, BLUE))
    assert render_parts((msg,)) == ("A\n\n", RED, "\n\nB\n\n", BLUE, "\n\n", BLUE)
    assert render_parts((Message("user", (RED,)),)) == (RED,)  # an image alone is content


def test_documents_are_inlined_as_text() -> None:
    doc = DocumentBlock("text/plain", text="line 1\nline 2", title='My "notes"', context="ctx")
    pdf = DocumentBlock("application/pdf", data=b"%PDF-", text="page text")
    msg = Message("user", (doc, TextBlock("Compare."), pdf))
    assert render_prompt((msg,)) == (
        '<document title="My &quot;notes&quot;" context="ctx">\nline 1\nline 2\n</document>'
        "\n\nCompare.\n\n<document>\npage text\n</document>"
    )


def test_images_in_history_and_tool_results() -> None:
    msgs = (
        Message("user", (TextBlock("look"), RED)),
        Message("assistant", (ToolUseBlock("toolu_1", "shot", {}),)),
        Message("user", (ToolResultBlock("toolu_1", (TextBlock("here"), BLUE)),)),
    )
    parts = render_parts(msgs)
    assert [p for p in parts if isinstance(p, ImageBlock)] == [RED, BLUE]
    text = "".join(p if isinstance(p, str) else "[IMG]" for p in parts)
    assert "<user>\nlook\n\n[IMG]\n</user>" in text
    assert text.endswith('<tool_result tool_use_id="toolu_1">here\n[IMG]</tool_result>')
    with pytest.raises(ValueError, match="render_parts"):
        render_prompt(msgs)
