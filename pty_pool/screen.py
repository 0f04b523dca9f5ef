"""Virtual screen: claude's PTY bytes in, plain snapshots out. The only module importing pyte.

A pyte screen keeps the visible rows; rows that scroll off the top are rendered once into a
scrollback list (claude commits finished output with newlines, so a long reply scrolls). The TUI
interpretation (`pty_pool.tui`) only ever sees `Snapshot`s: plain text rows plus style spans.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import pyte
from pyte.screens import Margins
from wcwidth import wcwidth

# Only the attributes the TUI interpretation uses to restore markdown markers.
_DEFAULT_FG = "default"


@dataclass(frozen=True, slots=True)
class Span:
    """A run of equally styled characters within a row: [start, end) in string indices."""

    start: int
    end: int
    bold: bool
    italics: bool
    underscore: bool
    fg: str


@dataclass(frozen=True, slots=True)
class Row:
    text: str  # right-stripped, wide-character stubs removed
    spans: tuple[Span, ...] = ()  # only non-default styles
    width: int = 0  # columns up to the last non-blank cell (wide characters count 2)
    reverse_at: int = -1  # string index of the first reverse-video cell (a drawn cursor), or -1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the screen showed at one instant.

    `scrollback` holds rows that scrolled off since the reader's `mark` (see ScreenReader.mark);
    `rows` is the visible screen. Rows are plain text: `tui` never touches pyte objects.
    """

    scrollback: tuple[Row, ...]
    rows: tuple[Row, ...]
    title: str
    seq: int  # increases with every feed; equal seq means an identical screen

    @property
    def all_rows(self) -> tuple[Row, ...]:
        return self.scrollback + self.rows


def render_row(line: Any, columns: int) -> Row:
    """Render one pyte buffer line. Never use pyte's `display` (IndexError on wide-char stubs)."""
    chars: list[str] = []
    spans: list[Span] = []
    cur: tuple[bool, bool, bool, str] | None = None
    start = 0
    pos = 0
    width = 0
    reverse_at = -1
    # only up to the last cell ever written: erased cells are not stored (`_Screen`), so a
    # wide screen costs what its text costs, not its width
    end = min(columns, max(line, default=-1) + 1)
    for x in range(end):
        cell = line[x]
        data = cell.data
        if not data:
            continue  # stub cell right of a wide character
        if reverse_at < 0 and cell.reverse:
            reverse_at = pos
        if not data.isspace():
            width = x + (2 if x + 1 < columns and line[x + 1].data == "" else 1)
        style = (bool(cell.bold), bool(cell.italics), bool(cell.underscore), str(cell.fg))
        if style != cur:
            if cur is not None and cur != (False, False, False, _DEFAULT_FG):
                spans.append(Span(start, pos, *cur))
            cur = style
            start = pos
        chars.append(data)
        pos += len(data)
    if cur is not None and cur != (False, False, False, _DEFAULT_FG):
        spans.append(Span(start, pos, *cur))
    text = "".join(chars).rstrip()
    n = len(text)
    trimmed = tuple(
        Span(s.start, min(s.end, n), s.bold, s.italics, s.underscore, s.fg)
        for s in spans
        if s.start < n
    )
    return Row(text, trimmed, width, reverse_at)


_ZWJ = "\u200d"
# The kitty keyboard protocol's push/pop/query (`CSI > 1 u`, `CSI < u`, `CSI ? u`; 2.1.332 pops
# at exit): pyte does not know the private prefix and draws the final `u` as text.
_KITTY_KEYBOARD = re.compile(rb"\x1b\[[<>=?][0-9;]*u")


def _joins_previous(ch: str) -> bool:
    """Characters a terminal shows inside the previous cell's grapheme, which pyte drops.

    pyte 0.8.2 stops drawing the rest of a run at a zero-width non-combining character (ZWJ,
    VS16), which loses text after emoji sequences; skin-tone modifiers and the second regional
    indicator of a flag would take cells of their own and shift claude's layout.
    """
    if 0x1F3FB <= ord(ch) <= 0x1F3FF:  # emoji skin-tone modifiers
        return True
    w = wcwidth(ch)
    return w == 0 and not unicodedata.combining(ch)


class _Screen(pyte.Screen):
    """pyte.Screen that renders each row scrolling off the top into `scrolled`."""

    def __init__(self, columns: int, lines: int) -> None:
        super().__init__(columns, lines)
        self.scrolled: list[Row] = []

    def draw(self, data: str) -> None:
        start = 0
        i = 0
        n = len(data)
        while i < n:
            ch = data[i]
            regional_pair = (
                0x1F1E6 <= ord(ch) <= 0x1F1FF
                and self._prev_cell_is_regional()
                and i == start  # only when this is the first char after a flush/attach
            )
            if _joins_previous(ch) or regional_pair:
                super().draw(data[start:i])
                extra = ch
                i += 1
                if ch == _ZWJ and i < n:
                    extra += data[i]
                    i += 1
                self._attach(extra)
                start = i
            else:
                i += 1
        if start < n:
            super().draw(data[start:])

    def _prev_cell_is_regional(self) -> bool:
        x = self.cursor.x - 1
        line = self.buffer[self.cursor.y]
        if x >= 0 and line[x].data == "":
            x -= 1
        if x < 0:
            return False
        d = line[x].data
        return len(d) == 1 and 0x1F1E6 <= ord(d) <= 0x1F1FF

    def _attach(self, extra: str) -> None:
        line = self.buffer[self.cursor.y]
        x = self.cursor.x - 1
        if x >= 0 and line[x].data == "":
            x -= 1  # the previous character is wide; attach to its first cell
        if x >= 0:
            line[x] = line[x]._replace(data=line[x].data + extra)

    def erase_in_line(self, how: int = 0, private: bool = False) -> None:
        # Erasing with default attributes removes the cells instead of storing blanks: a missing
        # cell reads as the default one, and `render_row` then stops at the line's last text.
        if self.cursor.attrs != self.default_char:
            super().erase_in_line(how, private)
            return
        self.dirty.add(self.cursor.y)
        line = self.buffer[self.cursor.y]
        x = self.cursor.x
        if how == 2:
            line.clear()
        else:
            for k in [k for k in line if (k >= x if how == 0 else k <= x)]:
                del line[k]

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        if self.cursor.attrs != self.default_char:
            super().erase_in_display(how, *args, **kwargs)
            return
        if how == 0:
            ys = range(self.cursor.y + 1, self.lines)
        elif how == 1:
            ys = range(self.cursor.y)
        else:
            ys = range(self.lines)
        self.dirty.update(ys)
        for y in ys:
            self.buffer[y].clear()
        if how in (0, 1):
            self.erase_in_line(how)

    def index(self) -> None:
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y == bottom and top == 0:
            self.scrolled.append(render_row(self.buffer[top], self.columns))
        super().index()


class ScreenReader:
    """Feeds PTY bytes to a pyte screen and hands out immutable snapshots."""

    def __init__(self, columns: int, lines: int, *, max_scrollback: int = 20000) -> None:
        self.columns = columns
        self.lines = lines
        self._screen = _Screen(columns, lines)
        self._stream = pyte.ByteStream(self._screen)
        self._max_scrollback = max_scrollback
        self._mark = 0  # index into _screen.scrolled where snapshots start
        self._last: Snapshot | None = None  # reused while nothing was fed (idle polls)
        self.seq = 0
        self.bytes_fed = 0

    def feed(self, data: bytes) -> None:
        if b"u" in data:
            data = _KITTY_KEYBOARD.sub(b"", data)
        self._stream.feed(data)
        self.seq += 1
        self.bytes_fed += len(data)
        scrolled = self._screen.scrolled
        if len(scrolled) > self._max_scrollback:
            drop = len(scrolled) - self._max_scrollback
            del scrolled[:drop]
            self._mark = max(0, self._mark - drop)
        self._last = None

    def mark(self) -> None:
        """Forget scrollback so far: later snapshots start with rows scrolled after this call."""
        self._mark = len(self._screen.scrolled)
        self._last = None

    def snapshot(self) -> Snapshot:
        """The current screen; the same object again while no bytes arrived and no mark moved,
        so the ~100 ms idle polls of a waiting turn do not re-render 50 unchanged rows."""
        last = self._last
        if last is not None and last.seq == self.seq:
            return last
        screen = self._screen
        rows = tuple(render_row(screen.buffer[y], self.columns) for y in range(self.lines))
        self._last = Snapshot(
            scrollback=tuple(screen.scrolled[self._mark :]),
            rows=rows,
            title=str(screen.title or ""),
            seq=self.seq,
        )
        return self._last
