"""Golden tests: `pty_pool.tui` over PTY byte streams recorded from the real claude CLI.

The recordings (tests/golden/*.jsonl, made by `python -m tests.golden.record`) carry the CLI
version they came from; when claude changes its screen, these tests say which signal broke.
"""

from __future__ import annotations

import base64
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pty_pool import attachments, tui
from pty_pool.screen import ScreenReader, Snapshot

GOLDEN = Path(__file__).parent / "golden"


@dataclass
class Replay:
    header: dict[str, Any]
    snapshots: list[Snapshot]  # one after every recorded PTY read, from spawn on
    deltas: list[str]
    assembler: tui.StreamAssembler

    @property
    def final(self) -> Snapshot:
        return self.snapshots[-1]


def replay(name: str) -> Replay:
    lines = (GOLDEN / f"{name}.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    screen = ScreenReader(header["columns"], header["rows"])
    asm = tui.StreamAssembler(tui.text_width(header["columns"]))
    snaps: list[Snapshot] = []
    deltas: list[str] = []
    for i, line in enumerate(lines[1:]):
        screen.feed(base64.b64decode(json.loads(line)["b"]))
        if i + 1 == header["ready_chunk"]:
            screen.mark()  # as the session does when it pastes
        snap = screen.snapshot()
        snaps.append(snap)
        if i + 1 > header["ready_chunk"]:
            r = tui.response(snap)
            if r.rows and not r.error_text:
                d = asm.update(r.rows)
                if d:
                    deltas.append(d)
    return Replay(header, snaps, deltas, asm)


def _until_turn_end(rp: Replay) -> Snapshot:
    """The last snapshot before claude printed its exit message (the recorder closes claude)."""
    ready: int = rp.header["ready_chunk"]
    last = rp.snapshots[ready - 1]
    for snap in rp.snapshots[ready:]:
        if any("Resume this session" in r.text for r in snap.rows):
            break
        last = snap
    return last


def test_recordings_name_the_pinned_cli_version() -> None:
    pinned = (Path(__file__).parents[1] / "packaging" / "claude-cli-version").read_text().strip()
    for path in GOLDEN.glob("*.jsonl"):
        header = json.loads(path.read_text().splitlines()[0])
        assert header["cli_version"] == pinned == tui.CLI_VERSION_OBSERVED, path.name


def test_startup_trust_dialog_then_ready() -> None:
    rp = replay("prose")
    states = [tui.classify(s) for s in rp.snapshots[: rp.header["ready_chunk"]]]
    assert any(st.dialog == "trust" for st in states)
    assert not any(st.ready for st in states[: next(i for i, s in enumerate(states) if s.dialog)])
    assert states[-1].ready
    assert states[-1].title.startswith("✳")


def test_busy_while_streaming_idle_after() -> None:
    rp = replay("prose")
    turn = [tui.classify(s) for s in rp.snapshots[rp.header["ready_chunk"] :]]
    assert any(st.busy for st in turn)
    end = tui.classify(_until_turn_end(rp))
    assert end.ready and not end.busy
    assert tui.response(_until_turn_end(rp)).completed


def test_prose_streams_exactly_and_incrementally() -> None:
    rp = replay("prose")
    text = rp.header["text"]
    assert len(rp.deltas) >= 4  # rows arrive while the model writes, not all at the end
    streamed = "".join(rp.deltas)
    assert text.startswith(streamed)
    assert streamed + rp.assembler.finish(text) == text


def test_markdown_stream_is_close_and_ends_exact() -> None:
    rp = replay("markdown")
    text = rp.header["text"]
    streamed = "".join(rp.deltas)
    assert len(rp.deltas) >= 3
    assert "Heading One" in streamed
    assert "def double(x):" in streamed
    # markers put back from cell attributes; the table (held back until claude finished
    # redrawing it as a box) goes out as a pipe table
    assert "# Heading One\n" in streamed
    assert "Some **bold text**, *italic*, and `inline code` in a sentence." in streamed
    assert "| Col A | Col B |\n|---|---|\n| a1 | b1 |" in streamed
    assert "> a quote" in streamed
    assert difflib.SequenceMatcher(None, streamed, text, autojunk=False).ratio() > 0.9
    rest = rp.assembler.finish(text)
    # everything was shown before the end: nothing (or only the exact tail) remains to send
    assert (streamed + rest).endswith("https://example.com/x).")


def test_unicode_rows_keep_wide_and_joined_characters() -> None:
    rp = replay("unicode")
    rows = [r.text for r in tui.response(_until_turn_end(rp)).rows]
    assert rows[0] == "中文字符测试 日本語のテキスト 한국어"
    assert "👨\u200d👩\u200d👧" in rows[1]
    assert "👍🏽" in rows[1]
    assert rows[1].endswith("end.")


def test_thinking_summary_is_not_reply_text() -> None:
    rp = replay("thinking")
    r = tui.response(_until_turn_end(rp))
    assert [row.text for row in r.rows] == ["After thought."]


@pytest.mark.parametrize(
    ("name", "needle"),
    [("error_500", "API Error: 500"), ("error_401", "Invalid API key")],
)
def test_errors_are_recognised(name: str, needle: str) -> None:
    rp = replay(name)
    r = tui.response(_until_turn_end(rp))
    assert r.error_text is not None and needle in r.error_text
    assert tui.classify(_until_turn_end(rp)).ready


def test_interrupt_is_recognised_and_prompt_returns() -> None:
    rp = replay("interrupt")
    end = _until_turn_end(rp)
    assert tui.response(end).interrupted
    assert tui.classify(end).ready


def test_progress_key_changes_while_streaming() -> None:
    rp = replay("prose")
    keys = {tui.response(s).progress for s in rp.snapshots[rp.header["ready_chunk"] :]}
    assert len(keys) > 5


def test_tool_rows_split_the_reply() -> None:
    """Parked in two MCP calls, claude shows `Calling api…`; resumed, the reply follows the
    `Called api 2 times` row. Text before the calls and after them are separate replies."""
    rp = replay("tools")
    width = tui.text_width(rp.header["columns"])
    expect = rp.header["expect"]
    parked = rp.snapshots[rp.header["outcome"]["parked_at_chunk"] - 1]
    at_park = tui.response(parked)
    assert at_park.tool_rows == 1
    assert tui.rows_text(at_park.rows, width) == expect["before_tools"]
    assert tui.response(parked, after_tools=True).rows == ()
    end = _until_turn_end(rp)
    done = tui.response(end, after_tools=True)
    assert tui.rows_text(done.rows, width) == expect["after_tools"]
    assert tui.rows_text(tui.response(end).rows, width) == expect["before_tools"]
    assert done.completed
    # no tool row ever leaks into the streamed text
    assert all("Call" not in d for d in rp.deltas)


def test_image_paste_shows_a_placeholder_and_stays_out_of_the_reply() -> None:
    """What `Session._attach_image` waits for: `[Image #N]` in the input box after the path
    paste (the path itself never shows), and the `⎿  [Image #1]` row is not reply text."""
    rp = replay("image")
    inputs = [tui.classify(s).input_text for s in rp.snapshots[rp.header["ready_chunk"] :]]
    numbers = [attachments.newest_image(t) for t in inputs]
    assert "What is in [Image #1]" in inputs
    assert "What is in [Image #1] this picture?" in inputs
    assert not any(attachments.pasted_as_text(t, Path("/x/image-1.png")) for t in inputs)
    assert numbers.index(1) == inputs.index("What is in [Image #1]")
    rows = [r.text for r in tui.response(_until_turn_end(rp)).rows]
    assert rows == [rp.header["text"]]
    assert "".join(rp.deltas) + rp.assembler.finish(rp.header["text"]) == rp.header["text"]
