"""stop_sequences enforced by the relay (protocols.stops)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from claude_relay.protocols.model import TextBlock, TextDelta, TurnEvent, TurnResult, Usage
from claude_relay.protocols.stops import StopScanner, apply, cut


def test_scanner_catches_a_sequence_split_across_deltas() -> None:
    sc = StopScanner(("STOP",))
    out = sc.feed("hello ST") + sc.feed("OP and more") + sc.feed("ignored")
    assert out == "hello "
    assert sc.hit == "STOP"
    assert sc.flush() == ""


def test_scanner_without_hit_sends_everything() -> None:
    sc = StopScanner(("\n\nHuman:",))
    out = sc.feed("a\n\nHum") + sc.feed("ble end")
    assert out + sc.flush() == "a\n\nHumble end"
    assert sc.hit is None


def test_cut_uses_the_earliest_sequence() -> None:
    r = TurnResult((TextBlock("one, two; three"),), "end_turn", Usage(1, 2))
    c = cut(r, (";", ","))
    assert c.text == "one"
    assert (c.stop_reason, c.stop_sequence) == ("stop_sequence", ",")
    assert c.usage == Usage(1, 2)
    assert cut(r, ("zzz",)) is r


async def test_apply_streams_up_to_the_stop_and_cuts_the_result() -> None:
    async def events() -> AsyncIterator[TurnEvent]:
        yield TextDelta("Answer: 4")
        yield TextDelta("2.\nObservation: x")
        yield TurnResult((TextBlock("Answer: 42.\nObservation: x"),), "end_turn", Usage())

    out = [ev async for ev in apply(events(), ("Observation:",))]
    text = "".join(ev.text for ev in out if isinstance(ev, TextDelta))
    assert text == "Answer: 42.\n"
    final = out[-1]
    assert isinstance(final, TurnResult)
    assert final.text == "Answer: 42.\n"
    assert final.stop_sequence == "Observation:"
