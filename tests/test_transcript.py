"""The transcript reader: resume-order repair and claude's synthetic entries.

Golden: tests/golden/transcripts/user-after-reply.jsonl is what claude v2.1.197 left on disk when
the daemon was SIGKILLed right after a sticky turn (the `user` entry written after the reply, no
`last-prompt` line); `claude --resume` on it sent "No response requested." instead of the reply.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson

from claude_relay.protocols.model import TextBlock, ThinkingBlock
from claude_relay.pty_pool.transcript import TurnLog, parent_first, records_clear, repair_order

GOLDEN = Path(__file__).parent / "golden" / "transcripts" / "user-after-reply.jsonl"


def _kinds(lines: list[bytes]) -> list[str]:
    out = []
    for line in lines:
        e = orjson.loads(line)
        out.append(str(e.get("subtype") or e["type"]))
    return out


def test_golden_order_is_repaired() -> None:
    lines = GOLDEN.read_bytes().splitlines()
    assert _kinds(lines)[3:] == ["assistant", "turn_duration", "file-history-snapshot", "user"]
    fixed = parent_first(lines)
    assert fixed is not None
    assert sorted(fixed) == sorted(lines)  # nothing changed, added or dropped
    assert _kinds(fixed)[3:] == ["file-history-snapshot", "user", "assistant", "turn_duration"]
    assert parent_first(fixed) is None  # already in order: nothing to do


def test_parent_first_keeps_unrelated_lines_and_chains() -> None:
    def e(uid: str, parent: str | None) -> bytes:
        return orjson.dumps({"type": "user", "uuid": uid, "parentUuid": parent})

    lines = [b"{not json", e("c", "b"), b'{"type":"mode"}', e("d", "c"), e("a", None), e("b", "a")]
    fixed = parent_first(lines)
    expected = [b"{not json", b'{"type":"mode"}', e("a", None), e("b", "a"), e("c", "b")]
    assert fixed == [*expected, e("d", "c")]
    # a parent that is not in the file at all does not move anything
    assert parent_first([e("x", "missing"), e("y", "x")]) is None


def test_repair_order_rewrites_privately_and_keeps_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(GOLDEN.read_bytes() + b'{"type":"user","tor')
    os.chmod(path, 0o600)
    assert repair_order(path)
    data = path.read_bytes()
    assert data.endswith(b'\n{"type":"user","tor')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not repair_order(path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.jsonl"]
    assert not repair_order(tmp_path / "absent.jsonl")
    assert not repair_order(None)


def test_turn_log_skips_claudes_filler_but_not_api_errors() -> None:
    log = TurnLog()
    filler = {
        "type": "assistant",
        "timestamp": "2026-11-21T22:18:22.246Z",
        "message": {
            "model": "<synthetic>",
            "content": [{"type": "text", "text": "No response requested."}],
        },
    }
    reply = {
        "type": "assistant",
        "timestamp": "2026-11-21T22:18:22.897Z",
        "message": {
            "id": "msg_1",
            "model": "claude-opus-4-8",
            "content": [{"type": "text", "text": "echo: which number?"}],
            "usage": {"input_tokens": 3, "output_tokens": 4},
        },
    }
    log.add([filler, reply])
    assert log.result().text == "echo: which number?"
    error = {
        "type": "assistant",
        "isApiErrorMessage": True,
        "error": "rate_limit",
        "message": {"model": "<synthetic>", "content": [{"type": "text", "text": "limit"}]},
    }
    log.add([error])
    assert log.error() is not None


def test_thinking_blocks_come_first_with_their_signatures() -> None:
    # claude (2.1.197, 2.1.332) writes one entry per content block of a message
    def entry(ts: str, block: dict[str, object]) -> dict[str, object]:
        message = {"id": "msg_1", "model": "m", "content": [block], "usage": {"output_tokens": 9}}
        return {"type": "assistant", "timestamp": ts, "message": message}

    log = TurnLog()
    log.add(
        [
            entry(
                "2026-11-21T22:18:22.100Z",
                {"type": "thinking", "thinking": "Hm.", "signature": "s1"},
            ),
            entry("2026-11-21T22:18:22.200Z", {"type": "text", "text": "Answer."}),
        ]
    )
    result = log.result()
    assert result.content == (ThinkingBlock("Hm.", "s1"), TextBlock("Answer."))
    assert result.usage.output_tokens == 9  # one message: its usage counted once


def test_parked_calls_missing_from_the_transcript_become_tool_use_blocks() -> None:
    """A call claude made over MCP but never wrote to its transcript (seen once in ~500 on a
    loaded machine) is answered from the call itself: its id, name and exact arguments."""
    import asyncio

    from claude_relay.protocols.model import TextBlock, ToolUseBlock, TurnResult, Usage
    from claude_relay.pty_pool.broker import ParkedCall
    from claude_relay.pty_pool.session import _with_calls

    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        known = ToolUseBlock(id="toolu_1", name="a", input={})
        calls = (
            ParkedCall("toolu_1", "a", {}, future),
            ParkedCall("toolu_2", "lookup", {"key": "k"}, future),
        )
        result = TurnResult((TextBlock("Let me look."), known), "end_turn", Usage())
        out = _with_calls(result, calls)
    finally:
        loop.close()
    assert out.stop_reason == "tool_use"
    assert out.text == "Let me look."
    assert out.tool_uses == (known, ToolUseBlock(id="toolu_2", name="lookup", input={"key": "k"}))


def test_only_a_transcript_that_records_clear_is_a_new_conversation(tmp_path: Path) -> None:
    """A reset adopts the new file only if `/clear` wrote it; 2.1.197 also re-creates the file of
    the conversation a claude was started with (its title line) after every `/clear`."""
    cleared = tmp_path / "new.jsonl"
    cleared.write_text(
        '{"type":"user","message":{"role":"user","content":'
        '"<command-name>/clear</command-name>\\n<command-message>clear</command-message>"}}\n'
    )
    title = tmp_path / "old.jsonl"
    title.write_text('{"type":"custom-title","customTitle":"api-74421590","sessionId":"x"}\n')
    assert records_clear(cleared)
    assert not records_clear(title)
    assert not records_clear(tmp_path / "missing.jsonl")
