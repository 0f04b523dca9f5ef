"""`pty_pool.ax` (the `--ax-screen-reader` prototype, issue 14): unit tests on built screens, and
golden tests over PTY streams recorded from the real CLI in that mode.

The recordings (tests/golden/ax/<cli version>/*.jsonl, made by `python -m bench.bench_stream
--record tests/golden/ax --claude <binary>`) hold every PTY read with its time, the paste's
chunk index and the model's exact text; each test runs on every tested version.
"""

from __future__ import annotations

import base64
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from claude_relay.pty_pool import ax, versions
from claude_relay.pty_pool.screen import Row, ScreenReader, Snapshot

GOLDEN = Path(__file__).parent / "golden" / "ax"
VERSIONS = pytest.mark.parametrize("version", versions.TESTED)
NAMES = (
    "prose20",
    "prose60",
    "markdown",
    "tools",
    "thinking",
    "error_500",
    "interrupt",
    "paste",
    "trust_dialog",
    "spoof",
)
WIDTH = 100


def screen(*lines: str, scrollback: tuple[str, ...] = (), title: str = "") -> Snapshot:
    rows = tuple(Row(t, (), len(t)) for t in lines)
    back = tuple(Row(t, (), len(t)) for t in scrollback)
    return Snapshot(scrollback=back, rows=rows, title=title, seq=0)


BUSY = "don't ask on (shift+tab to cycle)  ·  esc to interrupt"
IDLE = "don't ask on (shift+tab to cycle)"


# --- OSC 133 marks -----------------------------------------------------------------------------
def test_marks_are_found_across_chunk_boundaries() -> None:
    stream = b"x\x1b]133;A;redraw=0\x07you: hi\r\n\x1b]133;C\x07\x1b]133;D\x1b\\tail"
    for cut in range(len(stream) + 1):
        sc = ax.MarkScanner()
        marks = sc.feed(stream[:cut]) + sc.feed(stream[cut:])
        assert [(m.kind, m.params) for m in marks] == [("A", ";redraw=0"), ("C", ""), ("D", "")]


def test_other_osc_sequences_are_not_marks() -> None:
    sc = ax.MarkScanner()
    assert sc.feed(b"\x1b]0;\xe2\x9c\xb3 Claude Code\x07\x1b]7501;?\x07\x1b[c") == []
    assert sc.feed(b"\x1b]133") == []
    assert [m.kind for m in sc.feed(b";D\x07")] == ["D"]


# --- screen state ------------------------------------------------------------------------------
def test_idle_prompt_is_ready_on_both_layouts() -> None:
    # 2.1.332: `$` input row; 2.1.197: bare input row under the effort and session-name rows
    new = screen("Claude Code v2.1.332", IDLE, "effort: medium · /effort", "$")
    old = screen("Claude Code v2.1.197", IDLE, "● high · /effort", " api-00000000", "")
    for snap in (new, old):
        st = ax.classify(snap)
        assert st.ready, st
        assert st.input_text == ""


def test_busy_and_typed_input_are_not_ready() -> None:
    assert not ax.classify(screen("you: hi", "Simmering…", BUSY, "$")).ready
    typed = ax.classify(screen(IDLE, "$\u00a0 Say eighty words"))
    assert typed.input_text == "Say eighty words"
    assert not typed.ready
    assert not ax.classify(screen(IDLE, "$")).busy
    assert ax.classify(screen(IDLE, "$", title="◐ Claude Code")).busy


def test_a_one_word_input_after_a_space_is_input_on_2_1_197() -> None:
    """` /clear` (a caller's text behind the space `sanitize_prompt` adds) in 2.1.197's bare
    input row is typed input, not the session-name row: read as empty, the prompt was pasted
    a second time while claude was slow to take it (`/clear /clear` upstream, once in CI)."""
    st = ax.classify(screen(IDLE, "● high · /effort", " api-0a1b2c3d", " /clear"))
    assert st.input_text == "/clear"
    assert not st.ready


def test_a_multi_line_input_is_seen_under_its_hint() -> None:
    # 2.1.332 while the relay's split paste sits in the input box (before Enter)
    st = ax.classify(screen("ctrl+g to edit in Vim", "$\u00a0 line one", "line two"))
    assert st.input_text == "line one\nline two"
    assert not st.ready


def test_an_attached_image_is_part_of_the_input() -> None:
    # 2.1.332: the placeholder sits below the `$` row, after a blank row
    snap = screen(
        "don't ask on (shift+tab to cycle)", "$\u00a0 What colour is this?", "", "[Image #1]"
    )
    assert ax.screen_state(snap).input_text == "What colour is this?\n\n[Image #1]"


def test_a_dialog_is_named_and_never_ready() -> None:
    st = ax.classify(
        screen(
            "Permission Required: Accessing workspace:",
            "/tmp/ws",
            "y. Yes, I trust this folder",
            "n. No, exit",
            "Enter y/n:",
            "Enter to confirm · Esc to cancel",
        )
    )
    assert st.dialog == "trust"
    assert not st.ready


# --- the reply ---------------------------------------------------------------------------------
def test_reply_rows_sit_between_the_echo_and_the_status_rows() -> None:
    snap = screen(
        "you: earlier",
        "claude: old answer",
        "you: Say it",
        "claude: first row of the reply that is long enough",
        "Well…",  # model text that reads like a spinner, followed by more text
        "last row",
        "Simmering…",
        BUSY,
        "$",
    )
    assert ax.echo_count(screen("you: earlier", "claude: old answer", IDLE, "$")) == 1
    r = ax.reply(snap, echoes=1)
    assert [row.text for row in r.rows] == [
        "first row of the reply that is long enough",
        "Well…",
        "last row",
    ]
    assert r.live
    assert r.status == "Simmering…"
    assert not r.completed


def test_a_model_written_echo_is_not_taken_for_the_prompt() -> None:
    snap = screen("you: Q", "claude: answer", "you: not a prompt", "more", IDLE, "$")
    assert [row.text for row in ax.reply(snap, echoes=0).rows] == [
        "answer",
        "you: not a prompt",
        "more",
    ]


def test_completion_error_and_interrupt_rows() -> None:
    done = ax.reply(screen("you: Q", "claude: A.", "Worked for 8s · done 1:02 PM", IDLE, "$"))
    assert done.completed
    assert not done.live
    err = ax.reply(
        screen(
            "you: Q",
            "error: API Error: 500 Internal server error. This is a server-side issue, usually",
            "temporary",
            "Sautéed for 1s",
            IDLE,
        )
    )
    assert err.rows == ()
    assert err.error_text is not None
    assert err.error_text.startswith("API Error: 500")
    cut = ax.reply(
        screen("you: Q", "claude: partial", "Interrupted  · What should Claude do instead?", IDLE)
    )
    assert cut.interrupted
    assert [r.text for r in cut.rows] == ["partial"]


def test_tool_rows_split_the_reply_and_thinking_is_skipped() -> None:
    snap = screen(
        "you: weather?",
        "tool: Thinking for 2s… (ctrl+o to expand)",
        "Deep thought Deep thought",
        "claude: Let me check.",
        "Called api 2 times (ctrl+o to expand)",
        "claude: Both sunny.",
        "Cogitated for 1s",
        IDLE,
    )
    before = ax.reply(snap)
    after = ax.reply(snap, after_tools=True)
    assert [r.text for r in before.rows] == ["Let me check."]
    assert not before.live
    assert [r.text for r in after.rows] == ["Both sunny."]
    assert after.tool_rows == 1


# --- the stream --------------------------------------------------------------------------------
def _frames(stream: ax.AxStream, *bodies: tuple[str, ...], done: bool = False) -> list[str]:
    out = []
    for i, body in enumerate(bodies):
        last = done and i == len(bodies) - 1
        tail = ("Worked for 1s",) if last else ("Simmering…",)
        r = ax.reply(screen("you: Q", "claude: " + body[0], *body[1:], *tail, BUSY, "$"))
        out.append(stream.update(r))
    return out


def test_words_stream_as_they_are_drawn_and_wraps_become_spaces() -> None:
    row1 = " ".join(f"word{i:02d}" for i in range(13))  # 8 + 90 columns: the next word wraps
    st = ax.AxStream(WIDTH, "eager")
    deltas = _frames(st, ("word00 wo",), (row1,), (row1, "word13 wo"), (row1, "word13 word14"))
    assert deltas == ["word00 wo", row1[len("word00 wo") :], " word13 wo", "rd14"]
    assert st.sent == row1 + " word13 word14"


def test_a_new_line_into_the_live_row_is_a_paragraph_and_stays_one() -> None:
    st = ax.AxStream(WIDTH)
    # "Sec" would have fitted after "One." -> a hard break; claude draws the new paragraph
    # without its blank row until the paragraph is complete
    deltas = _frames(
        st,
        ("One.", "Sec"),
        ("One.", "Second paragraph"),
        ("One.", "", "Second paragraph here."),
        done=True,
    )
    assert "".join(deltas) == "One.\n\nSecond paragraph here."
    assert st.finish("One.\n\nSecond paragraph here.") == ""


def test_a_paragraph_first_seen_in_a_frame_jump_keeps_its_break() -> None:
    # guarded holds "Each frame" (it could be a heading); the next frame already shows the
    # paragraph's second row, so the break above it is decided as a paragraph, not a newline
    long = "Each frame arrives about a tenth of a second after the last, so a reader sees " + (
        "it grow as it comes"
    )
    assert len(long) == 97  # "happens" does not fit after it: a wrap
    st = ax.AxStream(WIDTH, "guarded")
    frames = (("Para one.",), ("Para one.", "Each frame"), ("Para one.", long, "happens"))
    assert "".join(_frames(st, *frames)) == "Para one.\n\n" + long + " happens"


def test_the_live_row_is_held_at_a_markdown_marker() -> None:
    # 2.1.332 drew `Here is some **bold text` as `Here is some *bold text`, then the finished
    # block as `Here is some bold text, and more`: an extension of what was sent without the
    # marker, which eager sends; guarded stops at the first sign and `finish` sends the rest
    eager = ax.AxStream(WIDTH, "eager")
    frames = (("Here is some *bold text",), ("Here is some bold text, and more",))
    assert _frames(eager, *frames) == ["Here is some", " bold text, and more"]
    guarded = ax.AxStream(WIDTH, "guarded")
    assert _frames(guarded, *frames) == ["Here is some", ""]
    assert guarded.held
    exact = "Here is some **bold text**, and more"
    assert guarded.sent + guarded.finish(exact) == exact


def test_guarded_holds_what_may_be_a_heading() -> None:
    st = ax.AxStream(WIDTH, "guarded")
    deltas = _frames(st, ("Setup",), ("Setup", "Install the daemon"), ("Setup", "", "Install the"))
    assert deltas == ["", "", ""]
    assert st.held  # a short block without punctuation, followed by another: a heading
    prose = ax.AxStream(WIDTH, "guarded")
    assert _frames(prose, ("Yes",), ("Yes, this works",)) == ["", "Yes, this works"]


def test_a_vanished_frame_holds_and_streaming_resumes() -> None:
    st = ax.AxStream(WIDTH, "eager")
    first = st.update(ax.reply(screen("you: Q", "claude: Hello wor", "Levitating…", BUSY)))
    blank = st.update(ax.reply(screen("you: Q", "Levitating…   ( 0s  ·  10 tokens )", BUSY)))
    again = st.update(ax.reply(screen("you: Q", "claude: Hello world again", "Levitating…", BUSY)))
    assert (first, blank, again) == ("Hello wor", "", "ld again")


def test_finish_sends_only_what_is_missing() -> None:
    st = ax.AxStream(WIDTH, "eager")
    _frames(st, ("Heading",), ("Heading", "", "Some bold text"), done=True)
    exact = "# Heading\n\nSome **bold** text and the rest."
    final = st.sent + st.finish(exact)
    assert final.endswith(" text and the rest.")
    assert difflib.SequenceMatcher(None, final, exact).ratio() > 0.8


# --- golden recordings -------------------------------------------------------------------------
@dataclass
class Replay:
    header: dict[str, Any]
    snapshots: list[Snapshot] = field(default_factory=list)  # after every read from the paste on
    deltas: dict[str, list[str]] = field(default_factory=dict)  # per policy
    streams: dict[str, ax.AxStream] = field(default_factory=dict)
    marks: list[str] = field(default_factory=list)  # OSC 133 kinds after the paste
    ready: Snapshot | None = None
    echoes: int = 0

    @property
    def final(self) -> Snapshot:
        return self.snapshots[-1]

    def text(self, policy: ax.Policy = "guarded") -> str:
        return "".join(self.deltas[policy])


def replay(version: str, name: str, *, after_tools: bool = False) -> Replay:
    lines = (GOLDEN / version / f"{name}.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    reader = ScreenReader(header["columns"], header["rows"])
    scanner = ax.MarkScanner()
    width = ax.text_width(header["columns"])
    rp = Replay(header)
    rp.streams = {p: ax.AxStream(width, p) for p in ("guarded", "eager")}
    rp.deltas = {p: [] for p in rp.streams}
    ready: int = header["ready_chunk"]
    for i, line in enumerate(lines[1:]):
        if i == ready:
            reader.mark()  # as the session does when it pastes
            rp.ready = reader.snapshot()
            rp.echoes = ax.echo_count(rp.ready)
        data = base64.b64decode(json.loads(line)["b"])
        reader.feed(data)
        marks = scanner.feed(data)
        if i < ready:
            continue
        rp.marks += [m.kind for m in marks]
        snap = reader.snapshot()
        rp.snapshots.append(snap)
        r = ax.reply(snap, rp.echoes, after_tools=after_tools)
        for p, st in rp.streams.items():
            d = st.update(r)
            if d:
                rp.deltas[p].append(d)
    return rp


def _until_exit(rp: Replay) -> Snapshot:
    """The last snapshot before claude printed its exit message (the recorder closes claude)."""
    last = rp.snapshots[0]
    for snap in rp.snapshots:
        if any("Resume this session" in r.text for r in snap.all_rows):
            break
        last = snap
    return last


def test_recordings_exist_for_every_tested_version() -> None:
    for version in versions.TESTED:
        for name in NAMES:
            path = GOLDEN / version / f"{name}.jsonl"
            assert path.exists(), path
            assert json.loads(path.read_text().splitlines()[0])["cli_version"] == version


@VERSIONS
@pytest.mark.parametrize("name", ["prose20", "prose60"])
def test_prose_streams_word_by_word_and_byte_exact(version: str, name: str) -> None:
    rp = replay(version, name)
    exact = rp.header["exact"]
    assert rp.ready is not None
    assert ax.classify(rp.ready).ready
    for policy in ("guarded", "eager"):
        assert rp.text(policy) == exact, policy  # from the screen alone, before any transcript
        assert rp.streams[policy].finish(exact) == ""
    # word level: more deltas than rows, and pieces that end inside a row: the partial last
    # row was streamed (how many depends on claude's frame rate on the recording machine)
    rows = len(ax.reply(_until_exit(rp), rp.echoes).rows)
    assert len(rp.deltas["guarded"]) > rows
    assert any(not d.endswith((".", "\n")) for d in rp.deltas["guarded"][:-1])
    assert rp.marks[:1] == ["A"]
    assert rp.marks[-2:] == ["C", "D"]


@VERSIONS
def test_turn_state_follows_the_turn(version: str) -> None:
    rp = replay(version, "prose60")
    states = [ax.classify(s) for s in rp.snapshots]
    assert any(s.busy for s in states)
    end = _until_exit(rp)
    assert ax.classify(end).ready
    r = ax.reply(end, rp.echoes)
    assert r.completed
    assert not r.live


@VERSIONS
def test_markdown_is_drawn_without_markers_so_guarded_holds_it(version: str) -> None:
    rp = replay(version, "markdown")
    exact = rp.header["exact"]
    drawn = "\n".join(r.text for r in ax.reply(_until_exit(rp), rp.echoes).rows)
    # no attributes in this mode (only dim), and the markers are gone from the text
    for marker in ("```", "**", "## ", "> ", "](http"):
        assert marker not in drawn, marker
    assert "the docs (https://example.com/docs)" in drawn
    if version == versions.OLDEST:
        assert "┌" in drawn  # 2.1.197 draws the table with box characters
    else:
        assert "Name: Ann. Role: lead." in drawn  # 2.1.332 reads a table row as a sentence
    guarded = rp.streams["guarded"]
    assert guarded.held
    final = guarded.sent + guarded.finish(exact)
    assert difflib.SequenceMatcher(None, final, exact, autojunk=False).ratio() >= 0.99
    eager = rp.streams["eager"]
    lossy = eager.sent + eager.finish(exact)
    assert lossy != exact


@VERSIONS
def test_tools_split_the_reply(version: str) -> None:
    expect = replay(version, "tools").header["expect"]
    end = _until_exit(replay(version, "tools"))
    echoes = replay(version, "tools").echoes
    before = ax.reply(end, echoes)
    after = ax.reply(end, echoes, after_tools=True)
    assert before.text(WIDTH) == expect["before_tools"]
    assert after.text(WIDTH) == expect["after_tools"]
    assert after.tool_rows >= 1


@VERSIONS
def test_thinking_is_not_reply_text(version: str) -> None:
    rp = replay(version, "thinking")
    assert rp.text() == "After thought."
    assert "Deep thought" not in "".join(rp.deltas["eager"])


@VERSIONS
def test_an_api_error_shows_as_error_not_text(version: str) -> None:
    rp = replay(version, "error_500")
    r = ax.reply(_until_exit(rp), rp.echoes)
    assert r.error_text is not None
    assert r.error_text.startswith(rp.header["expect"]["error"])
    assert rp.text() == ""
    assert rp.marks[-2:] == ["C", "D"]


@VERSIONS
def test_an_interrupted_reply_is_a_prefix_and_marked(version: str) -> None:
    rp = replay(version, "interrupt")
    r = ax.reply(_until_exit(rp), rp.echoes)
    assert r.interrupted
    source = rp.header["requests"][0]["text"]
    assert rp.text()
    assert source.startswith(rp.text())
    assert rp.marks[-2:] == ["C", "D"]


@VERSIONS
def test_a_multi_line_paste_is_echoed_and_bracketed_paste_works(version: str) -> None:
    rp = replay(version, "paste")
    end = _until_exit(rp)
    rows = [r.text for r in end.all_rows]
    i = rows.index("you: line one")
    assert rows[i : i + 4] == ["you: line one", "line two", "line three", "line four"]
    assert ax.reply(end, rp.echoes).text(WIDTH) == "Got the four lines."
    assert len(rp.header["requests"]) == 1  # one prompt, however often Enter had to be sent


@VERSIONS
def test_the_trust_dialog_is_recognised(version: str) -> None:
    rp = replay(version, "trust_dialog")
    assert ax.classify(rp.snapshots[-1] if rp.snapshots else _first(version)).dialog == "trust"


def _first(version: str) -> Snapshot:
    lines = (GOLDEN / version / "trust_dialog.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    reader = ScreenReader(header["columns"], header["rows"])
    for line in lines[1:]:
        reader.feed(base64.b64decode(json.loads(line)["b"]))
    return reader.snapshot()


@VERSIONS
def test_model_text_cannot_fake_marks_or_move_the_reply(version: str) -> None:
    rp = replay(version, "spoof")
    # claude strips ESC and BEL from model text: the only marks are claude's own
    assert rp.marks == ["A", "C", "D"]
    end = _until_exit(rp)
    assert ax.classify(end).ready  # the bottom-most mode line is claude's
    rows = [r.text for r in ax.reply(end, rp.echoes).rows]
    assert rows[0] == rp.header["expect"]["first_row"]
    assert "you: injected prompt" in rows  # a `you:` written by the model stays reply text
    assert rows[-1] == "Last."
