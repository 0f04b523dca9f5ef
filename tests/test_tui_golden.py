"""Golden tests: `pty_pool.tui` over PTY byte streams recorded from the real claude CLI.

The recordings (tests/golden/<cli version>/*.jsonl, made by `./dev.sh record`) carry the CLI
version they came from; every test runs on the recordings of every tested version, so when claude
changes its screen the test id names the signal and the version that broke.
"""

from __future__ import annotations

import base64
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from claude_relay.pty_pool import attachments, tui, versions
from claude_relay.pty_pool.screen import ScreenReader, Snapshot

GOLDEN = Path(__file__).parent / "golden"
VERSIONS = pytest.mark.parametrize("version", versions.TESTED)


@dataclass
class Replay:
    header: dict[str, Any]
    snapshots: list[Snapshot]  # one after every recorded PTY read, from spawn on
    deltas: list[str]
    assembler: tui.StreamAssembler

    @property
    def final(self) -> Snapshot:
        return self.snapshots[-1]


def replay(version: str, name: str) -> Replay:
    lines = (GOLDEN / version / f"{name}.jsonl").read_text().splitlines()
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


def test_recordings_exist_for_every_tested_version_and_name_it() -> None:
    names = {p.name for p in (GOLDEN / versions.PINNED).glob("*.jsonl")}
    assert "prose.jsonl" in names
    for version in versions.TESTED:
        paths = sorted((GOLDEN / version).glob("*.jsonl"))
        assert {p.name for p in paths} == names, version
        for path in paths:
            header = json.loads(path.read_text().splitlines()[0])
            assert header["cli_version"] == version, path


@VERSIONS
def test_seeded_trust_means_no_dialog_at_startup(version: str) -> None:
    rp = replay(version, "prose")
    states = [tui.classify(s) for s in rp.snapshots[: rp.header["ready_chunk"]]]
    assert not any(st.dialog for st in states)
    assert states[-1].ready
    assert states[-1].title.startswith("✳")


@VERSIONS
def test_unseeded_trust_dialog_is_recognised_and_never_ready(version: str) -> None:
    rp = replay(version, "trust_dialog")
    states = [tui.classify(s) for s in rp.snapshots]
    assert any(st.dialog == "trust" for st in states)
    assert not any(st.ready for st in states)
    assert "trust" in rp.header["expect"]["start_error"]
    assert version in rp.header["expect"]["start_error"]


@VERSIONS
def test_no_model_text_is_ever_taken_for_a_dialog(version: str) -> None:
    for path in (GOLDEN / version).glob("*.jsonl"):
        if path.stem == "trust_dialog":
            continue
        rp = replay(version, path.stem)
        assert not any(tui.classify(s).dialog for s in rp.snapshots), path.stem


@VERSIONS
def test_busy_while_streaming_idle_after(version: str) -> None:
    rp = replay(version, "prose")
    turn = [tui.classify(s) for s in rp.snapshots[rp.header["ready_chunk"] :]]
    assert any(st.busy for st in turn)
    end = tui.classify(_until_turn_end(rp))
    assert end.ready and not end.busy
    assert tui.response(_until_turn_end(rp)).completed


@VERSIONS
def test_prose_streams_exactly_and_incrementally(version: str) -> None:
    rp = replay(version, "prose")
    text = rp.header["text"]
    assert len(rp.deltas) >= 4  # rows arrive while the model writes, not all at the end
    streamed = "".join(rp.deltas)
    assert text.startswith(streamed)
    assert streamed + rp.assembler.finish(text) == text


@VERSIONS
def test_markdown_stream_is_close_and_ends_exact(version: str) -> None:
    rp = replay(version, "markdown")
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


@VERSIONS
def test_unicode_rows_keep_wide_and_joined_characters(version: str) -> None:
    rp = replay(version, "unicode")
    rows = [r.text for r in tui.response(_until_turn_end(rp)).rows]
    assert rows[0] == "中文字符测试 日本語のテキスト 한국어"
    assert "👨\u200d👩\u200d👧" in rows[1]
    assert "👍🏽" in rows[1]
    assert rows[1].endswith("end.")


@VERSIONS
def test_thinking_summary_is_not_reply_text(version: str) -> None:
    rp = replay(version, "thinking")
    r = tui.response(_until_turn_end(rp))
    assert [row.text for row in r.rows] == ["After thought."]


@pytest.mark.parametrize(
    ("name", "needle"),
    [("error_500", "API Error: 500"), ("error_401", "Invalid API key")],
)
@VERSIONS
def test_errors_are_recognised(version: str, name: str, needle: str) -> None:
    rp = replay(version, name)
    r = tui.response(_until_turn_end(rp))
    assert r.error_text is not None and needle in r.error_text
    assert tui.classify(_until_turn_end(rp)).ready


@VERSIONS
def test_interrupt_is_recognised_and_prompt_returns(version: str) -> None:
    rp = replay(version, "interrupt")
    end = _until_turn_end(rp)
    assert tui.response(end).interrupted
    assert tui.classify(end).ready


@VERSIONS
def test_progress_key_changes_while_streaming(version: str) -> None:
    rp = replay(version, "prose")
    keys = {tui.response(s).progress for s in rp.snapshots[rp.header["ready_chunk"] :]}
    assert len(keys) > 5


@VERSIONS
def test_tool_rows_split_the_reply(version: str) -> None:
    """Parked in two MCP calls, claude shows `Calling api…`; resumed, the reply follows the
    `Called api 2 times` row. Text before the calls and after them are separate replies."""
    rp = replay(version, "tools")
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


@VERSIONS
def test_image_paste_shows_a_placeholder_and_stays_out_of_the_reply(version: str) -> None:
    """What `Session._attach_image` waits for: `[Image #N]` in the input box after the path
    paste (the path itself never shows), and the `⎿  [Image #1]` row is not reply text."""
    rp = replay(version, "image")
    inputs = [tui.classify(s).input_text for s in rp.snapshots[rp.header["ready_chunk"] :]]
    numbers = [attachments.newest_image(t) for t in inputs]
    assert "What is in [Image #1]" in inputs
    assert "What is in [Image #1] this picture?" in inputs
    assert not any(attachments.pasted_as_text(t, Path("/x/image-1.png")) for t in inputs)
    assert numbers.index(1) == inputs.index("What is in [Image #1]")
    rows = [r.text for r in tui.response(_until_turn_end(rp)).rows]
    assert rows == [rp.header["text"]]
    assert "".join(rp.deltas) + rp.assembler.finish(rp.header["text"]) == rp.header["text"]
