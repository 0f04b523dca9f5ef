"""claude's screen-reader rendering (`--ax-screen-reader`) read as word-level reply text.

Used by the session when the relay runs with `screen_mode = "ax"`. Place in the pipeline: PTY
bytes → `screen.ScreenReader` (pyte) → `Snapshot` → `reply` → `AxStream.update` → text deltas;
the same bytes also go through `MarkScanner`, because pyte drops the OSC 133 turn marks claude
writes only in this mode. Pure: no I/O, no asyncio.

Observed on claude 2.1.197 and 2.1.332 (docs/ax-mode-notes.md has each fact with the command
that showed it; tests/golden/ax/<version>/ holds the recordings). In this mode claude draws flat
text without colours or other attributes, so a markdown marker it strips cannot be restored from
the screen: only text that cannot have lost one is streamed with confidence (`AxStream`).

Over the usual size: it holds the marks, the screen reading and the stream side by side, the ax
counterpart of `tui` (the row mode's reading); they would part along those lines.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Final, Literal

from . import tui
from .screen import Row, Snapshot

FLAG: Final = "--ax-screen-reader"

# --- OSC 133 (semantic prompt) marks, from the raw byte stream --------------------------------
# `ESC]133;A;redraw=0 BEL` when a prompt is submitted, `ESC]133;C BEL ESC]133;D BEL` when the
# turn is over (normal, error and interrupted turns alike; 2.1.197 and 2.1.332). The D mark comes
# 20-340 ms before the frame that draws the reply's last row and the completion line.
_OSC133 = re.compile(rb"\x1b\]133;([A-Za-z])((?:;[^\x07\x1b]*)?)(?:\x07|\x1b\\)")
_OSC133_START = b"\x1b]133;"
_MAX_PENDING = 256  # a started mark longer than this is not one of claude's


@dataclass(frozen=True, slots=True)
class Mark:
    kind: str  # "A" prompt submitted, "C" output done, "D" command (turn) finished
    params: str = ""  # e.g. ";redraw=0"


class MarkScanner:
    """Finds OSC 133 marks in PTY output read in arbitrary chunks (a mark may be split)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[Mark]:
        buf = self._pending + data
        marks: list[Mark] = []
        end = 0
        for m in _OSC133.finditer(buf):
            marks.append(Mark(m.group(1).decode(), m.group(2).decode(errors="replace")))
            end = m.end()
        # keep an unterminated mark, or what may be the start of one, for the next chunk
        self._pending = b""
        start = buf.rfind(b"\x1b]", end)
        if start >= 0:
            tail = buf[start:]
            open_ = b"\x07" not in tail and b"\x1b\\" not in tail
            ours = tail.startswith(_OSC133_START) or _OSC133_START.startswith(tail)
            if open_ and ours and len(tail) < _MAX_PENDING:
                self._pending = tail
        elif buf.endswith(b"\x1b"):
            self._pending = b"\x1b"
        return marks


# --- rows --------------------------------------------------------------------------------------
# Every row is flat text from column 0; which rows are claude's own is told by wording and by
# position (status rows sit right above the mode line, chrome below it).
_ECHO = re.compile(r"^you:(?: |$)")  # `you: <prompt>`; `you:` alone when the prompt wraps at once
_REPLY = "claude: "
_ERROR = "error: "
# the permission-mode line (the relay runs `--permission-mode dontAsk`: `don't ask on (shift+tab
# to cycle)`), busy: `…  ·  esc to interrupt`; `don't ask on` alone after a collapsed paste
# (2.1.332); replaced by `paste again to expand` after a collapsed paste and by `ctrl+g to edit in
# Vim` while the input holds several lines (2.1.332), and by the Ctrl-C warning
_MODE_LINE = re.compile(
    r"^don't ask on\b|\(shift\+tab to cycle\)|esc to interrupt|^paste again to expand$"
    r"|^ctrl\+g to edit in Vim$|Ctrl-C again to exit"
)
BUSY_MODE = "esc to interrupt"
# `Simmering…` (2.1.332), `Levitating…   ( 0s  ·  1 tokens )`, `Fluttering…   ( 0s  ·  thinking )`
# (2.1.197)
_SPINNER = re.compile(r"^\S+…(?:\s+\(.*\))?$")
# `Worked for 8s · done 1:02 PM` (2.1.332), `Cogitated for 8s` (2.1.197): no glyph in this mode
_COMPLETION = re.compile(r"^\S+ for (?:\d+m )?\d+s(?: · .*)?$")
# `500 Internal server error · retrying in 1s · attempt 1/1` (2.1.332, `Retrying` in 2.1.197)
_RETRY = re.compile(r"· [Rr]etrying in \d+s · attempt \d+/\d+$")
# one space before the dot in 2.1.332, two in 2.1.197
_INTERRUPTED = re.compile(r"^Interrupted\s+· What should Claude do instead\?$")
# MCP calls and thinking: `tool: Calling api… (ctrl+o to expand)` while running, `Called api 2
# times (ctrl+o to expand)`, `Thought for 2s (ctrl+o to expand)` after; 2.1.197 also draws
# `tool: Thinking for 2s… (ctrl+o to expand)` followed by the thinking text, unprefixed
_TOOL = re.compile(r"^(?:tool: .*|\S.*) \(ctrl\+o to expand\)$")
_THOUGHT = re.compile(r"^(?:tool: )?(?:Thought|Thinking) for ")
# below the mode line: `effort: medium · /effort` (2.1.332), `● high · /effort` (2.1.197), the
# session name (` api-1234abcd`, 2.1.197 with --name), `Resend your message to try again`
# (2.1.332 after an error), then the input row: `$` + NBSP + text (2.1.332), bare text (2.1.197)
_INPUT_2_1_332 = re.compile(r"^\$(?:[\u00a0 ]+(.*))?$")
# The session name row is matched exactly (`spawn.build_argv` names claudes `api-<8 hex>`): a
# looser ` word` pattern also matched an input row holding one word after a space (` /clear`,
# as `sanitize_prompt` writes it), read it as empty, and a prompt claude was slow to take was
# pasted a second time.
_CHROME_BELOW = re.compile(r"/effort$|^ api-[0-9a-f]{8}$|^Resend your message")
# dialogs: `Permission Required: Accessing workspace:` … `y. Yes, I trust this folder` …
# `Enter y/n:` / `Enter selection [1-3], or Escape to cancel:` … `Enter to confirm · Esc to cancel`
_DIALOG_TITLE = re.compile(r"^Permission Required: (.*)$")
_DIALOG_KEYS = re.compile(r"^(?:Enter (?:y/n|selection \[[^]]*\])\b|Enter to confirm\b)")
# the title's spinner while busy: braille dots (2.1.197), half circles (2.1.332); as in `tui`
_SPINNER_TITLE = re.compile(r"^[\u2800-\u28ff◐◓◑◒] ")

DialogKind = Literal["trust", "permission", "unknown"]


def _mode_line(rows: tuple[Row, ...]) -> int:
    """Index of the bottom-most mode line, or -1."""
    for i in range(len(rows) - 1, -1, -1):
        if _MODE_LINE.search(rows[i].text):
            return i
    return -1


@dataclass(frozen=True, slots=True)
class AxState:
    """What the screen says about claude's state (the counterpart of `tui.ScreenState`)."""

    mode_line: str  # "" when none is drawn
    input_text: str | None  # None: no input row found
    busy: bool  # `esc to interrupt` on the mode line, or the title spins
    title: str
    dialog: DialogKind | None
    dialog_text: str

    @property
    def ready(self) -> bool:
        """Idle with an empty input row and nothing in the way: a paste now is submitted."""
        return (
            bool(self.mode_line)
            and not self.busy
            and self.dialog is None
            and self.input_text is not None
            and not self.input_text
        )


def _input_text(rows: tuple[Row, ...], mode: int) -> str | None:
    below = [r.text for r in rows[mode + 1 :]]
    for i, t in enumerate(below):
        m = _INPUT_2_1_332.match(t)
        if m:
            # the rest of a multi-line input, and attached images (`[Image #1]` after a blank
            # row, 2.1.332), follow the `$` row
            text = "\n".join([m.group(1) or "", *below[i + 1 :]]).strip("\n")
            return text.strip("\u00a0 ")
    # 2.1.197: the input row has no prompt character; it is the row after the chrome rows
    rest = [t for t in below if not _CHROME_BELOW.search(t)]
    text = "\n".join(rest).strip("\n")
    return text.strip("\u00a0 ")


def _dialog(rows: tuple[Row, ...]) -> tuple[DialogKind | None, str]:
    title = next((m for r in rows if (m := _DIALOG_TITLE.match(r.text))), None)
    keys = any(_DIALOG_KEYS.match(r.text) for r in rows)
    if title is None and not keys:
        return None, ""
    text = "\n".join(r.text for r in rows).strip("\n")
    if title is not None and "workspace" in title.group(1).lower():
        return "trust", text
    if title is not None:
        return "permission", text
    return "unknown", text


def classify(snap: Snapshot) -> AxState:
    rows = snap.rows
    mode = _mode_line(rows)
    dialog, dialog_text = _dialog(rows) if mode < 0 else (None, "")
    mode_text = rows[mode].text if mode >= 0 else ""
    return AxState(
        mode_line=mode_text,
        input_text=_input_text(rows, mode) if mode >= 0 else None,
        busy=BUSY_MODE in mode_text or bool(_SPINNER_TITLE.match(snap.title)),
        title=snap.title,
        dialog=dialog,
        dialog_text=dialog_text,
    )


def screen_state(snap: Snapshot) -> tui.ScreenState:
    """`classify` in the row mode's terms, so the session sequences both modes alike."""
    st = classify(snap)
    return tui.ScreenState(
        input_box=st.input_text is not None,
        input_text=st.input_text or "",
        footer=st.mode_line,
        busy=st.busy,
        title=st.title,
        dialog="trust" if st.dialog == "trust" else ("unknown" if st.dialog else None),
        dialog_text=st.dialog_text,
    )


# claude's DA1 query (`ESC[c`): sent once its terminal setup is done. A paste written before it
# was taken late on 2.1.197 and its Enter sometimes lost.
TERMINAL_QUERY: Final = b"\x1b[c"


def echo_count(snap: Snapshot) -> int:
    """How many prompts claude has echoed (`you: …`) in scrollback and on screen. Counted before a
    paste: the reply to that paste follows the next echo, never a `you:` the model wrote later."""
    rows = snap.all_rows
    end = len(snap.scrollback) + _mode_line(snap.rows)
    if end < len(snap.scrollback):
        end = len(rows)
    return sum(1 for r in rows[:end] if _ECHO.match(r.text))


# --- the reply ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AxReply:
    """The reply to one prompt as drawn now."""

    rows: tuple[Row, ...]  # text rows, `claude: ` removed (widths keep it); "" rows between blocks
    live: bool  # the last row is still being written (the partial last line)
    completed: bool  # the completion line (`Worked for 8s`) is drawn
    interrupted: bool
    error_text: str | None  # `error: API Error: …` drawn instead of a reply
    status: str  # the spinner / retry row, "" when none
    tool_rows: int = 0

    def text(self, width: int) -> str:
        return tui.rows_text(self.rows, width)

    def response(self) -> tui.Response:
        """This reply in the row mode's terms (the stream itself goes through `AxStream`).
        Progress: the status row (2.1.197 counts tokens there), the text, the tool rows."""
        last = self.rows[-1].text if self.rows else ""
        progress = f"{len(self.rows)}|{last}|{self.status}|{self.tool_rows}"
        return tui.Response(
            self.rows, self.completed, self.interrupted, self.error_text, progress, self.tool_rows
        )


NO_REPLY = AxReply((), False, False, False, None, "")


def _strip_prefix(row: Row, prefix: str) -> Row:
    # text loses the prefix; width (columns used) keeps it, which is what wrapping depends on
    return Row(row.text[len(prefix) :], (), row.width, row.reverse_at)


def _status_start(body: tuple[Row, ...]) -> tuple[int, str, bool, bool]:
    """Where claude's status rows start at the bottom of `body` (the rows above the mode line),
    and (status text, completed, interrupted). Only rows in that position count, so a reply line
    that reads like a spinner (`Well…`) is text once another row follows it."""
    i = len(body)
    status = ""
    completed = interrupted = False
    while i > 0:
        t = body[i - 1].text
        if not t:
            pass
        elif not (completed or interrupted) and _COMPLETION.match(t):
            completed = True
        elif not (completed or interrupted) and _INTERRUPTED.match(t):
            interrupted = True
        elif not (completed or interrupted or status) and (_RETRY.search(t) or _SPINNER.match(t)):
            status = t
        else:
            break
        i -= 1
    return i, status, completed, interrupted


def reply(snap: Snapshot, echoes: int = 0, *, after_tools: bool = False) -> AxReply:
    """The reply below the (`echoes` + 1)-th echoed prompt, or NO_REPLY before that echo.

    Tool calls split a reply: `rows` is the text before the first tool row, or with
    `after_tools` (a turn resumed with tool results) the text after the last one.
    """
    rows = snap.all_rows
    mode = _mode_line(snap.rows)
    end = len(snap.scrollback) + mode if mode >= 0 else len(rows)
    seen = 0
    start = -1
    for i in range(end):
        if _ECHO.match(rows[i].text):
            if seen == echoes:
                start = i + 1
                break
            seen += 1
    if start < 0:
        return NO_REPLY
    body = rows[start:end]
    cut, status, completed, interrupted = _status_start(body)
    error_text: str | None = None
    out: list[Row] = []
    before_tools: list[Row] | None = None
    tool_rows = 0
    in_text = False
    error_rows: list[str] = []
    for row in body[:cut]:
        t = row.text
        if t.startswith(_REPLY):
            if out:
                out.append(Row(""))  # a new block after thinking: a paragraph break
            out.append(_strip_prefix(row, _REPLY))
            in_text = True
            error_rows = []
        elif _THOUGHT.match(t):
            in_text = False  # thinking (and, on 2.1.197, its text below) is not the reply
        elif _TOOL.match(t):
            tool_rows += 1
            if before_tools is None:
                before_tools = out
            out = []
            in_text = False
        elif t.startswith(_ERROR) and not in_text:
            error_rows = [t[len(_ERROR) :]]
        elif error_rows and t:
            error_rows.append(t)
        elif in_text:
            out.append(row)
    if error_rows:
        error_text = " ".join(error_rows)
    if before_tools is not None and not after_tools:
        out = before_tools
    live = bool(out) and not completed and not interrupted and error_text is None
    if before_tools is not None and not after_tools:
        live = False  # the text before a tool row is finished
    while out and not out[-1].text:
        out.pop()
    return AxReply(tuple(out), live, completed, interrupted, error_text, status, tool_rows)


# --- rows → deltas -----------------------------------------------------------------------------
# The terminal is at least this wide in this mode. While a paragraph is live claude draws the
# next one right below it, without the blank row between (it comes one paragraph later), so a
# paragraph that ended on a nearly full row looks like a wrap: the fewer wraps, the fewer such
# guesses. Nothing here is drawn to the full width (no rules, no boxes but tables), and the
# screen's cost follows its text, not its width (`screen._Screen`).
MIN_COLUMNS: Final = 500


def columns(configured: int) -> int:
    return max(configured, MIN_COLUMNS)


def text_width(columns: int) -> int:
    """Columns this mode's reply text wraps at: the full width, no gutter (a 100-character
    unbroken paste wraps into rows of exactly 100 at 100 columns, 2.1.197 and 2.1.332)."""
    return columns


# Characters the markdown renderer consumes or rewrites. In the live (last) row they may be a
# marker whose closing half has not arrived (`Some *bold text` is drawn before `Some bold text,`,
# 2.1.332), so the live row is only streamed up to the first of them.
_RISKY_CHARS = frozenset("*_`[]<>~|\\#")
# Row starts where the renderer changes the line itself: headings, quotes, list items (`*` → `-`,
# nested numbers → letters), tables, indented code.
_RISKY_START = re.compile(r"^(?:#|>|[-*+] |\d+[.)] |[a-z][.)] |\||    |```|~~~)")
# Drawn structure that only markdown produces: box tables (2.1.197), table rows as sentences
# (`Col A: a1. Col B: b1.`, 2.1.332), links as `text (url)`, list items, nested lettered items.
_MARKDOWN_DRAWN = re.compile(
    r"[┌┬┐├┼┤└┴┘│─]|\(https?://[^)\s]*\)|^\s*(?:[-+] |\d+\. |[a-z]\. )"
    r"|^(?:[^.:]{1,40}: [^.]*\.(?: |$)){2,}$"
)

Policy = Literal["eager", "guarded"]
PARAGRAPH = "\n\n"


def _split_blank(rows: tuple[Row, ...]) -> tuple[list[Row], list[bool]]:
    """Non-blank rows, and whether a blank row precedes each."""
    out: list[Row] = []
    blank: list[bool] = []
    gap = False
    for row in rows:
        if not row.text:
            gap = bool(out)
            continue
        out.append(row)
        blank.append(gap)
        gap = False
    return out, blank


class AxStream:
    """Successive replies in, append-only text deltas out.

    Rows are joined as the model wrote them: a blank row is a paragraph break, a row whose first
    word would have fitted on the row above starts a new line, otherwise it is a wrap (a space).
    While a paragraph is being written claude draws it right below the previous one, without the
    blank row it gets once complete (2.1.197, 2.1.332), so a new line that starts the live row
    is taken for a paragraph break (what a model writes between paragraphs; a single newline in
    prose is rare). Each such decision is kept once made, so the stream stays consistent while
    the live row's first word grows past the width of the row above.

    A delta is sent only when the newest text extends what was sent; when it does not (claude
    redraws a block: a markdown element completed, a 2.1.197 frame without the text), nothing is
    sent until it does again, and `finish` reconciles with the exact transcript text. The live
    row is streamed up to its first markdown-sensitive character.

    `policy`: "eager" streams every drawn row (word-level, but markdown arrives as claude drew
    it: no `#`, `**`, fences, `>`); "guarded" stops at the first sign of markdown and leaves
    the rest to `finish`, so a markdown reply streams until its first element and then arrives
    exactly at turn end.
    """

    def __init__(self, width: int, policy: Policy = "guarded") -> None:
        self.width = width
        self.policy: Policy = policy
        self.sent = ""
        self.held = False  # guarded: markdown seen, the rest comes from `finish`
        self.stalls = 0  # updates whose text did not extend what was sent
        self._seps: list[str] = []  # decided separators between sent non-blank rows

    def _separator(self, i: int, a: Row, b: Row, blank: bool, trailing: bool) -> str:
        """How row i+1 joins row i: decided once, when first seen, then kept."""
        if i < len(self._seps):
            return self._seps[i]
        if blank:
            return PARAGRAPH
        joined = tui.join(a, b, self.width)
        if not joined.startswith("\n"):
            return joined[: len(joined) - len(b.text.lstrip(" "))]  # " " or "" (wide/hard wrap)
        # A new line with no blank row above: inside a finished block (rows above the last
        # blank row, whose blocks are drawn complete) it is the model's single newline; in the
        # trailing rows it may be where the live paragraph starts, drawn without its blank row.
        return PARAGRAPH if trailing else "\n"

    def _compose(self, r: AxReply) -> str:
        """The reply's text as far as it is stable (separators decided here are kept)."""
        rows, blank = _split_blank(r.rows)
        if not rows:
            return ""
        seps = [
            self._separator(i - 1, rows[i - 1], rows[i], blank[i], not any(blank[i + 1 :]))
            for i in range(1, len(rows))
        ]
        if len(seps) > len(self._seps):
            self._seps = seps
        parts = [rows[0].text]
        bodies = [rows[0].text]
        for i in range(1, len(rows)):
            sep = seps[i - 1]
            bodies.append(rows[i].text.lstrip(" ") if sep in (" ", "") else rows[i].text)
            parts.append(sep + bodies[-1])
        if r.live:
            body = bodies[-1]
            keep = _stable_prefix(body)
            first_of_block = len(rows) == 1 or seps[-1] in ("\n", PARAGRAPH)
            if self.policy == "guarded" and first_of_block and _maybe_heading(body):
                keep = 0
            if keep == 0 and len(rows) > 1:
                parts[-1] = ""  # not even the separator: it belongs to what is held
            else:
                parts[-1] = parts[-1][: len(parts[-1]) - len(body) + keep]
        return "".join(parts)

    def update(self, r: AxReply) -> str:
        if self.held or not r.rows:
            return ""
        text = self._compose(r)
        if self.policy == "guarded":
            risky = _first_markdown_sign(r, self.width)
            if risky is not None:
                self.held = True
                text = text[: min(len(text), risky)]
        if not text.startswith(self.sent):
            self.stalls += 1
            return ""
        delta = text[len(self.sent) :]
        self.sent = text
        return delta

    def finish(self, exact: str) -> str:
        """The text still to send so the stream ends with the exact reply as far as possible."""
        if exact.startswith(self.sent):
            return exact[len(self.sent) :]
        return exact[_resume_at(self.sent, exact) :]


def _maybe_heading(text: str) -> bool:
    """A block's first row still short enough to be a heading in the making: held (guarded)
    until it has four words or a punctuation mark."""
    return len(text.split()) < 4 and not any(c in ".!?:;," for c in text)


def _stable_prefix(text: str) -> int:
    """How much of the live row can be sent: up to its first risky character (or nothing when
    the row starts like a markdown block), never ending inside a run of spaces."""
    if _RISKY_START.match(text):
        return 0
    for i, ch in enumerate(text):
        if ch in _RISKY_CHARS:
            return len(text[:i].rstrip(" "))
    return len(text)


_SENTENCE_END = (".", "!", "?", ":", ";", ",", ")", "…", '"', "'")


def _heading_like(text: str) -> bool:
    """A block of one short row without closing punctuation: how a heading looks once claude
    has dropped its `#` (and how few prose blocks look)."""
    return len(text) <= 60 and not text.rstrip().endswith(_SENTENCE_END)


def _first_markdown_sign(r: AxReply, width: int) -> int | None:
    """Offset in the reply text where markdown first shows (guarded policy), or None. The
    offsets count the rows as joined by `tui.join`; a sign is reported at its row's start."""
    pos = 0
    rows = r.rows
    block_start = True
    for i, row in enumerate(rows):
        t = row.text
        if not t:
            block_start = True
            pos += 1
            continue
        piece = tui.join(rows[i - 1], row, width) if i else t
        if i and rows[i - 1].text and not piece.startswith("\n"):
            block_start = False  # a wrapped continuation
        elif i:
            block_start = True
        if _MARKDOWN_DRAWN.search(t) or _RISKY_START.match(t):
            return pos
        for j, ch in enumerate(piece):
            if ch in _RISKY_CHARS:
                return pos + j
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        ends_block = nxt is not None and (
            not nxt.text or tui.join(row, nxt, width).startswith("\n")
        )
        if block_start and ends_block and _heading_like(t):
            return pos
        pos += len(piece)
    return None


def _resume_at(sent: str, exact: str) -> int:
    """Index in `exact` that corresponds to the end of `sent` (a rendering of a prefix of it).
    The same alignment as `tui.StreamAssembler.finish`; only the tail is compared, so the cost
    stays bounded for long replies."""
    tail = sent[-2000:]
    base = max(0, len(sent) - 4000)
    window = exact[base : base + len(tail) + 6000]
    sm = difflib.SequenceMatcher(None, tail, window, autojunk=False)
    blocks = [b for b in sm.get_matching_blocks() if b.size]
    if not blocks:
        return min(len(exact), len(sent))
    last = blocks[-1]
    return max(0, min(len(exact), base + last.b + last.size + (len(tail) - (last.a + last.size))))
