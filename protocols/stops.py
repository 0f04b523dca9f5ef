"""`stop_sequences`, applied by the relay because claude cannot pass them upstream.

Streaming text is scanned as it arrives; a tail as long as the longest stop sequence minus one is
held back so a sequence split across deltas is still caught. After a hit nothing more is sent;
the exact final text is cut at the first occurrence and the stop reason becomes `stop_sequence`,
as the API reports it. The model keeps writing upstream until its turn ends (claude has no way
to stop at a string); the usage reported is what claude actually spent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from claude_relay.protocols.model import TextBlock, TextDelta, TurnEvent, TurnResult


class StopScanner:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._text = ""
        self._sent = 0
        self.hit: str | None = None

    def feed(self, text: str) -> str:
        """Text that is safe to send now."""
        if self.hit is not None:
            return ""
        self._text += text
        start = max(0, self._sent - self._hold)
        found = _first(self._text, self.stops, start)
        if found is not None:
            at, stop = found
            self.hit = stop
            out = self._text[self._sent : at]
            self._sent = at
            return out
        upto = max(self._sent, len(self._text) - self._hold)
        out = self._text[self._sent : upto]
        self._sent = upto
        return out

    def flush(self) -> str:
        """What was held back, once the turn has ended without a hit."""
        if self.hit is not None:
            return ""
        out = self._text[self._sent :]
        self._sent = len(self._text)
        return out


def _first(text: str, stops: tuple[str, ...], start: int) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s, start)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def cut(result: TurnResult, stops: tuple[str, ...]) -> TurnResult:
    """The exact result cut at its first stop sequence (unchanged when none occurs)."""
    text = result.text
    found = _first(text, tuple(s for s in stops if s), 0)
    if found is None:
        return result
    at, stop = found
    # the thinking before the reply stays; tool calls after a stop are not made
    content = result.thinking + ((TextBlock(text[:at]),) if at else ())
    return replace(result, content=content, stop_reason="stop_sequence", stop_sequence=stop)


async def apply(
    events: AsyncIterator[TurnEvent], stops: tuple[str, ...]
) -> AsyncIterator[TurnEvent]:
    """Pass a turn's events through, enforcing `stops` on the deltas and the final result."""
    scanner = StopScanner(stops)
    async for ev in events:
        if not scanner.stops:
            yield ev
        elif isinstance(ev, TextDelta):
            out = scanner.feed(ev.text)
            if out:
                yield TextDelta(out)
        else:
            rest = scanner.flush()
            if rest:
                yield TextDelta(rest)
            yield cut(ev, scanner.stops)
