"""Unit tests of the pure TUI helpers: sanitising, keys, row joining."""

from __future__ import annotations

import re

import pytest

from claude_relay.pty_pool import attachments, tui
from claude_relay.pty_pool.screen import Row, ScreenReader


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("hello", "hello"),
        ("/exit", " /exit"),
        ("!touch pwned", " !touch pwned"),
        ("x\x1b[201~/exit\r", "x[201~/exit\n"),
        ("a\r\nb\rc", "a\nb\nc"),
        ("tab\tand\nnewline", "tab\tand\nnewline"),
        ("ctl\x03\x04\x08\x7fend", "ctlend"),
        ("@/etc/hostname", "@\u200b/etc/hostname"),
        ("look at @file now", "look at @\u200bfile now"),
        ("bob@example.com", "bob@example.com"),
        ("line\n@file", "line\n@\u200bfile"),
        # 2.1.332 strips invisible characters from a paste before it looks at the first one:
        # without the space `\u200b/model opus` became an unknown command, never answered
        ("\u200b/model opus", " \u200b/model opus"),
        ("\u2060!touch pwned", " \u2060!touch pwned"),
        # a space or newline claude keeps already
        (" /exit", " /exit"),
        ("\n/exit", "\n/exit"),
    ],
)
def test_sanitize(raw: str, safe: str) -> None:
    assert tui.sanitize_prompt(raw) == safe


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("/clear", True),
        ("  /clear", True),
        ("\n\t/model opus", True),
        ("\u200b/clear", True),
        ("\u2800\u00ad\ufeff/help", True),
        ("\u3000/x", True),
        ("a /clear", False),
        ("!ls", False),
        ("", False),
        ("path/to", False),
    ],
)
def test_text_that_could_start_a_slash_command(text: str, command: bool) -> None:
    """Such text never goes to a claude with slash commands on (stateless_reset = "clear")."""
    assert tui.starts_command(text) is command


def test_sanitize_after_an_image_keeps_a_leading_slash() -> None:
    # pasted after `[Image #1]`, a `/` or `!` no longer starts the input box
    assert tui.sanitize_prompt("/exit", at_start=False) == "/exit"
    assert tui.sanitize_prompt("@x", at_start=False) == "@\u200bx"


def test_paste_keys_bracket_and_submit() -> None:
    keys = tui.paste_keys("hi")
    assert keys == b"\x1b[200~hi\x1b[201~"  # Enter is written separately
    with pytest.raises(ValueError, match="unsanitised"):
        tui.paste_keys("a\x1bb")


def _row(text: str) -> Row:
    return Row(text, (), len(text))


@pytest.mark.parametrize(
    ("a", "b", "width", "joined"),
    [
        ("short line", "next", 20, "\nnext"),  # the model's own newline
        ("aaaa bbbb cccc dddd", "eeee", 20, " eeee"),  # word-wrapped
        ("x" * 20, "yyy", 20, "yyy"),  # hard-broken long word
        ("中文中文中文中文中文", "字符", 20, "字符"),  # CJK wraps without a space
        ("para", "", 20, "\n"),
        ("", "para", 20, "\npara"),
    ],
)
def test_join(a: str, b: str, width: int, joined: str) -> None:
    ra, rb = _row(a), _row(b)
    if a.startswith("中"):
        ra = Row(a, (), 2 * len(a))
    assert tui.join(ra, rb, width) == joined


def test_rows_text() -> None:
    rows = [_row("one two"), _row("three"), _row(""), _row("four")]
    assert tui.rows_text(rows, 9) == "one two three\n\nfour"


def test_assembler_holds_back_tables_and_finishes_exact() -> None:
    asm = tui.StreamAssembler(40)
    assert asm.update((_row("Intro."),)) == "Intro."
    assert asm.update((_row("Intro."), _row(""), _row("| a | b |"))) == "\n"
    final = (
        _row("Intro."),
        _row(""),
        _row("┌───┬───┐"),
        _row("│ a │ b │"),
        _row("├───┼───┤"),
        _row("│ 1 │ 2 │"),
        _row("└───┴───┘"),
        _row(""),
        _row("End."),
    )
    # the box-drawn table goes out as the pipe table it was drawn from
    assert asm.update(final) == "\n| a | b |\n|---|---|\n| 1 | 2 |\n\nEnd."
    assert asm.finish("Intro.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nEnd.") == ""


def test_assembler_diverged_stream_resumes_from_alignment() -> None:
    asm = tui.StreamAssembler(40)
    asm.update((_row("Heading"), _row(""), _row("Some bold text")))
    asm.update((_row("Changed"),))
    assert asm.diverged
    exact = "# Heading\n\nSome **bold** text\n\nThe rest."
    assert asm.finish(exact).endswith("The rest.")


def test_screen_keeps_zwj_sequences_and_scrollback() -> None:
    s = ScreenReader(20, 3)
    s.feed("fam 👨\u200d👩\u200d👧 ok".encode())
    assert s.snapshot().rows[0].text == "fam 👨\u200d👩\u200d👧 ok"
    s.mark()
    s.feed(b"\r\n1\r\n2\r\n3\r\n4")
    snap = s.snapshot()
    assert [r.text for r in snap.scrollback] == ["fam 👨\u200d👩\u200d👧 ok", "1"]
    assert [r.text for r in snap.rows] == ["2", "3", "4"]


def test_row_markdown_restores_markers() -> None:
    from claude_relay.pty_pool.screen import Span

    def span(
        a: int,
        b: int,
        *,
        bold: bool = False,
        it: bool = False,
        ul: bool = False,
        fg: str = "default",
    ) -> Span:
        return Span(a, b, bold, it, ul, fg)

    assert tui.row_markdown(Row("Title", (span(0, 5, bold=True, it=True, ul=True),))) == "# Title"
    assert tui.row_markdown(Row("Sub", (span(0, 3, bold=True),))) == "## Sub"
    row = Row(
        "a bold b it c code",
        (span(2, 6, bold=True), span(9, 11, it=True), span(14, 18, fg="afd7ff")),
    )
    assert tui.row_markdown(row) == "a **bold** b *it* c `code`"
    assert tui.row_markdown(Row("▎ quoted", (span(2, 8, it=True),))) == "> quoted"
    assert tui.row_markdown(Row("- item", (span(2, 6, bold=True),))) == "- **item**"


def _pastes(keys: bytes) -> list[str]:
    """The pastes and typed newlines (as "\n") in `keys`, in order."""
    parts = re.findall(r"\x1b\[200~(.*?)\x1b\[201~|(\n)", keys.decode(), re.S)
    return [p if p or not nl else "\n" for p, nl in parts]


@pytest.mark.parametrize(
    "text",
    ["a", "a\nb", "a\nb\nc\nd\ne", "\n\nx\n\n", "x" * 2000, "y\n" + "😀" * 500 + "\nz", "a\n" * 50],
)
def test_pastes_stay_within_what_claude_keeps_as_plain_text(text: str) -> None:
    """2.1.332 wraps a paste of more than 2 newlines or 800 UTF-16 units in <pasted_content>;
    the pieces stay within both and put the exact text back together."""
    assert tui.paste_sequence(text, wraps=False) == tui.paste_keys(text)
    pieces = _pastes(tui.paste_sequence(text, wraps=True))
    assert "".join(pieces) == text
    for p in pieces:
        assert p.count("\n") <= 2 and len(p.encode("utf-16-le")) // 2 <= 800


def test_mentions_are_defused_after_every_javascript_space() -> None:
    for space in (*attachments.JS_SPACES, "\u3002", "\u3001", "\uff1f", "\uff01"):
        out = tui.sanitize_prompt(f"x{space}@/etc/passwd")
        if space in "\v\f":  # controls: removed, and then `x@` starts no mention
            assert out == "x@/etc/passwd"
        else:
            kept = "\n" if space == "\r" else space
            assert out == f"x{kept}@\u200b/etc/passwd"
    assert tui.sanitize_prompt("x\x9b201~") == "x201~"  # 8-bit CSI
    assert tui.sanitize_prompt("# title") == " # title"


def _screen(*lines: str) -> ScreenReader:
    screen = ScreenReader(120, 12)
    screen.feed("\r\n".join(lines).encode())
    return screen


@pytest.mark.parametrize("label", ["", " api ──", " claude-relay ──"])
def test_input_box_with_a_session_name_in_its_rule(label: str) -> None:
    """`--name api` draws the name into the top rule (2.1.197 and 2.1.332): still the box."""
    rule = "─" * (118 - len(label)) + label
    st = tui.classify(
        _screen("● hello", "", rule, "❯\u00a0", "─" * 118, "  ? for shortcuts").snapshot()
    )
    assert st.input_box and st.ready and st.dialog is None


def test_model_text_that_looks_like_a_labelled_rule_is_no_box() -> None:
    st = tui.classify(
        _screen("● " + "─" * 30 + " a long sentence of model prose, not a label ──").snapshot()
    )
    assert not st.input_box


def test_an_input_taller_than_its_box_is_neither_gone_nor_empty() -> None:
    """A 300-line prompt scrolls the box (2.1.332, `bench.fuzz --seed 1 --case 1215`): the `❯`
    row is out of sight and the rows in sight may be blank. It is still the box, and not empty:
    taking it for an empty prompt pasted the prompt a second time."""
    st = tui.classify(
        _screen(
            "● earlier reply",
            "─── ↑ 282 more " + "─" * 100,
            "",
            "",
            "  ",
            "─" * 118,
            "  ⏵⏵ don't ask on (shift+tab to cycle)",
        ).snapshot()
    )
    assert st.input_box and st.input_text and not st.ready and not st.busy
