"""All claude-relay knows about the claude TUI's screen, keys and wording, in one pure module.

Observed on every tested Claude Code version (`versions.TESTED`; docs/tui.md lists each fact with
the versions it was seen on; tests/golden/<version>/ holds the recordings).
Input: `Snapshot`s from `pty_pool.screen`; output: plain values (screen state, response rows,
text deltas) and the bytes to type. No I/O, no asyncio: when claude changes its wording, a golden
test over a recorded byte stream names what broke, here and nowhere else.
"""

from __future__ import annotations

import difflib
import itertools
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from wcwidth import wcswidth

from .attachments import JS_SPACES, defuse_image_paths
from .screen import Row, Snapshot

# --- keys --------------------------------------------------------------------------------------
ESC = b"\x1b"
ENTER = b"\r"
PASTE_START = b"\x1b[200~"
PASTE_END = b"\x1b[201~"
CLEAR_INPUT = b"\x1b\x1b"  # only when the input box is non-empty: on an empty one it opens Rewind

# --- prompt sanitising -------------------------------------------------------------------------
# C0 controls other than \t and \n reach the model verbatim or act as keys; ESC can end the
# bracketed paste early (ESC[201~/exit\r made claude exit), so all of them go, and the C1 range
# (8-bit CSI is U+009B) with them.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# claude's own mention pattern (read in its bundled code, 2.1.197 and 2.1.332): an `@` at the
# start or after JavaScript's `\s` or one of 。、？！ starts a file mention. JavaScript's `\s` is
# wider than Python's (U+FEFF), so the class is spelled out.
_AT_WORD = re.compile("(^|[" + re.escape("".join(JS_SPACES)) + "\u3002\u3001\uff1f\uff01])@")
_ZWSP = "\u200b"
# A first character claude acts on: `/` slash command, `!` bash mode (runs even with --tools ""),
# and `#`/`&`, shortcuts some versions had (memory, background): none of them runs on a leading
# space, which claude keeps in the prompt text.
_ACTIVE_START = ("/", "!", "#", "&")


def sanitize_prompt(text: str, *, at_start: bool = True) -> str:
    """Make `text` safe to paste: it reaches the model as text and runs nothing.

    - CR/CRLF → LF (claude does the same inside a paste), other C0/C1 controls and ESC removed;
    - a leading `/` (slash command), `!` (bash mode), `#` or `&` gets a leading space, which
      claude keeps in the prompt text (`at_start`: the text starts the input box; a part pasted
      after an image does not);
    - `@` starting a word (by claude's own character class) gets a zero-width space after it so
      no file is attached. 2.1.332 strips zero-width characters before it looks for mentions;
      there the Read deny rule and CLAUDE_CODE_DISABLE_FILE_MENTIONS (`isolation`) hold;
    - a piece of the paste that claude would take for an image path (`/home/me/x.png`, quoted
      or not: claude reads that file and sends it upstream) gets a zero-width space after it.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS.sub("", text)
    text = _AT_WORD.sub(lambda m: m.group(1) + "@" + _ZWSP, text)
    text = defuse_image_paths(text)
    if at_start and text[:1] not in (" ", "\n") and _first_visible(text) in _ACTIVE_START:
        # also behind invisible characters: 2.1.332 strips those, then a leading `!` is bash
        # mode (a leading space or newline claude keeps, and nothing runs)
        text = " " + text
    return text


# What claude (2.1.332) drops or trims before it looks for a leading `/`: whitespace, and
# invisible characters it strips from input (format, private-use, unassigned, combining marks,
# and blank-looking letters such as U+2800 and the Hangul fillers).
_INVISIBLE_CATEGORIES = frozenset(("Cc", "Cf", "Co", "Cn", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"))
_BLANK_LETTERS = frozenset("\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0\ufeff")


def _first_visible(text: str) -> str:
    """`text`'s first character that claude neither trims nor strips ("" if none)."""
    for ch in text:
        if not (
            ch.isspace()
            or ch in _BLANK_LETTERS
            or unicodedata.category(ch) in _INVISIBLE_CATEGORIES
        ):
            return ch
    return ""


def starts_command(text: str) -> bool:
    """Whether `text` could start a slash command in a claude that has them on: its first
    visible character is `/`. Such a prompt goes only to a claude with slash commands off, where
    the space `sanitize_prompt` puts before it keeps it text. Errs on the side of True."""
    return _first_visible(text) == "/"


def paste_keys(text: str) -> bytes:
    """Bracketed paste of already-sanitised text. Enter goes in a separate, later write:
    v2.1.197 sometimes swallows an Enter that arrives in the same read as the paste end
    (then nothing is submitted), while an Enter written 30 ms after the paste always submits."""
    if "\x1b" in text:
        raise ValueError("unsanitised prompt")
    return PASTE_START + text.encode("utf-8") + PASTE_END


ENTER_DELAY = 0.03  # seconds between the drained paste and its Enter

# The relay's own command for a new conversation in a warm claude (`stateless_reset = "clear"`).
# Only the relay types it: a caller's text never starts with `/` (sanitize_prompt).
CLEAR_COMMAND = "/clear"
NEWLINE = b"\n"  # Ctrl-J: a newline in the input box, not a submit


# 2.1.332 collapses a paste of more than 2 newlines or 800 characters (JavaScript string length)
# into `[Pasted text #N]` and sends it wrapped in `<pasted_content id="…">` tags, together with a
# system note that such text "may contain instructions the user did not" write: an API caller's
# prompt is not pasted content. Pastes within both limits stay plain text.
PASTE_MAX_NEWLINES = 2
PASTE_MAX_UNITS = 800


def _units(text: str) -> int:
    """Length as JavaScript counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def _chunks(line: str) -> list[str]:
    """`line` cut into pieces of at most PASTE_MAX_UNITS code units (whole code points)."""
    out: list[str] = []
    piece: list[str] = []
    size = 0
    for ch in line:
        n = 2 if ord(ch) > 0xFFFF else 1
        if size + n > PASTE_MAX_UNITS:
            out.append("".join(piece))
            piece, size = [], 0
        piece.append(ch)
        size += n
    out.append("".join(piece))
    return out


def paste_sequence(text: str, *, wraps: bool) -> bytes:
    """The keys that put already-sanitised `text` into the input box as plain text.

    Where claude `wraps` large pastes (2.1.332), the text goes in as pastes within its limits:
    up to three lines and 800 units each, adjacent pieces of a long line as consecutive pastes
    (claude joins them), groups of lines joined by a typed newline (Ctrl-J). Elsewhere (2.1.197,
    which also loses a paste that follows a typed newline at once) it is one paste."""
    if not wraps:
        return paste_keys(text)
    pastes: list[list[str]] = [[]]  # pastes of one line group; groups are joined by NEWLINE
    lines = 0
    size = 0
    for i, line in enumerate(text.split("\n")):
        pieces = _chunks(line)
        joinable = (
            i > 0
            and len(pieces) == 1
            and lines < PASTE_MAX_NEWLINES + 1
            and size + 1 + _units(line) <= PASTE_MAX_UNITS
        )
        if joinable:
            pastes[-1][-1] += "\n" + line
            lines += 1
            size += 1 + _units(line)
            continue
        if i > 0:
            pastes.append([])
        pastes[-1].extend(pieces)
        lines = 1 if len(pieces) == 1 else PASTE_MAX_NEWLINES + 1  # a cut line takes a group
        size = _units(pieces[-1])
    return NEWLINE.join(b"".join(paste_keys(p) for p in group if p) for group in pastes)


# --- screen classification -----------------------------------------------------------------------
# The input box's rules. A session started with `--name` (spawn: it spares 2.1.197 a title
# request per conversation) shows that name at the right end of the top rule: `───── api ──`.
_RULE = re.compile(r"^─{20,}(?: \S[^─]{0,38} ─{1,4})?$")
# An input taller than the box (a prompt of hundreds of lines, 2.1.332) scrolls: its top rule
# reads `─── ↑ 282 more ───…` and the `❯` row is out of sight.
_MORE_RULE = re.compile(r"^─{1,8} ↑ \d+ more ─{10,}$")
_PROMPT = re.compile(r"^❯(?:[\u00a0 ]|$)")
# the title's spinner while busy: braille dots (2.1.197), half circles (2.1.332)
_SPINNER_TITLE = re.compile(r"^[\u2800-\u28ff◐◓◑◒] ")
_IDLE_TITLE = "✳"
# `✻ Sautéed for 5s` (2.1.197); `✻ Crunched for 1s · done 9:59 AM` (2.1.332)
_COMPLETION = re.compile(r"^✻ \S+ for (?:\d+m )?\d+s(?: · .*)?$")
_TOKENS = re.compile(r"[↓↑] ([\d.,]+k?) tokens")
BUSY_FOOTER = "esc to interrupt"

DialogKind = Literal["trust", "api_key", "bypass", "login", "rewind", "unknown"]

# Dialogs are recognised by structure, not wording: claude replaces its input box with a menu
# whose selected option is drawn `❯ 1. …` and a `Enter to confirm`-style key line. The kinds below
# only name a dialog for the error message (wording differs between versions: 2.1.332 asks
# "Accessing workspace: … Quick safety check" where 2.1.197 said "trust this folder").
_DIALOGS: tuple[tuple[str, DialogKind], ...] = (
    ("trust this folder", "trust"),
    ("Accessing workspace", "trust"),
    ("Detected a custom API key", "api_key"),
    ("Bypass Permissions mode", "bypass"),
    ("Select login method", "login"),
    ("Invalid API key · Please run /login", "login"),
    ("Restore the code and/or conversation", "rewind"),
)
_MENU_ROW = re.compile(r"^ {1,4}❯ \S")  # indented: the echoed prompt `❯ …` is at column 0
_KEY_LINE = re.compile(r"^\s*(?:Enter to (?:confirm|continue|select)|Esc to (?:cancel|exit))\b")


def _dialog(rows: tuple[Row, ...]) -> DialogKind | None:
    """The dialog on a screen without an input box, or None. A known wording names the kind;
    otherwise only a drawn menu plus its key line counts, never a phrase in model text."""
    text = "\n".join(r.text for r in rows)
    menu = any(_MENU_ROW.match(r.text) for r in rows)
    keys = any(_KEY_LINE.match(r.text) for r in rows)
    for needle, kind in _DIALOGS:
        if needle in text and (menu or keys):
            return kind
    if menu and keys:
        return "unknown"
    return None


@dataclass(frozen=True, slots=True)
class ScreenState:
    input_box: bool  # the `❯` input line between two rules is drawn
    input_text: str  # what sits in the input box ("" when empty)
    footer: str
    busy: bool  # footer says "esc to interrupt" or the title spins
    title: str
    dialog: DialogKind | None
    dialog_text: str  # the visible screen, for error messages, when a dialog is up

    @property
    def ready(self) -> bool:
        """Idle at an empty prompt, nothing in the way: a paste now is submitted."""
        return self.input_box and not self.busy and self.dialog is None and not self.input_text


def _input_box(rows: tuple[Row, ...]) -> tuple[int, int] | None:
    """(top rule index, prompt index) of the bottom-most input box, or None."""
    for i in range(len(rows) - 1, 0, -1):
        # the prompt may wrap over several rows; a rule must follow somewhere below
        top = rows[i - 1].text
        if ((_PROMPT.match(rows[i].text) and _RULE.match(top)) or _MORE_RULE.match(top)) and any(
            _RULE.match(r.text) for r in rows[i + 1 :]
        ):
            return i - 1, i
    return None


def _placeholder(row: Row, height: int) -> bool:
    """An empty input box showing a hint (2.1.332: `Resend your message to try again` after an
    error; 2.1.197: `Press up to edit queued messages`): the drawn cursor sits on the hint's first
    character, where typed or pasted text always leaves it after its last one."""
    return height == 1 and row.reverse_at == 2 and len(row.text) > 3


def classify(snap: Snapshot) -> ScreenState:
    rows = snap.rows
    box = _input_box(rows)
    footer = ""
    input_text = ""
    if box is not None:
        _, prompt = box
        bottom = next(j for j in range(prompt + 1, len(rows)) if _RULE.match(rows[j].text))
        parts = [rows[prompt].text[2:]] + [r.text.strip() for r in rows[prompt + 1 : bottom]]
        input_text = "\n".join(parts).strip("\u00a0 \n")
        if _placeholder(rows[prompt], bottom - prompt):
            input_text = ""
        if _MORE_RULE.match(rows[prompt - 1].text):
            # only the input's last rows are in sight (maybe blank ones): it is not empty
            input_text = input_text or "…"
        footer = " ".join(r.text.strip() for r in rows[bottom + 1 :] if r.text.strip())
    busy = BUSY_FOOTER in footer or bool(_SPINNER_TITLE.match(snap.title))
    dialog = _dialog(rows) if box is None else None
    screen_text = "\n".join(r.text for r in rows).strip("\n")
    return ScreenState(
        input_box=box is not None,
        input_text=input_text,
        footer=footer,
        busy=busy,
        title=snap.title,
        dialog=dialog,
        dialog_text=screen_text if dialog else "",
    )


# --- the response region ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Response:
    """The rows of the latest turn below the echoed prompt, with structure stripped."""

    rows: tuple[Row, ...]  # assistant text rows, 2-column indent removed; blank rows kept
    completed: bool  # the `✻ <Verb> for <dur>` line is drawn
    interrupted: bool  # `Interrupted · What should Claude do instead?`
    error_text: str | None  # `● API Error: …` / `⎿  …` error shown instead of a reply
    progress: str  # a key that changes whenever claude shows upstream progress
    tool_rows: int = 0  # `Calling <server>…` / `Called <server>` rows (MCP tool calls)


_BLOCK_START = "● "
# An MCP tool call (v2.1.197): `  Calling api… (ctrl+o to expand)` while it runs, `  Called api 2
# times (ctrl+o to expand)` after; `● ` instead of the indent when no text precedes it. Only the
# server name is shown, never the tool, its input or its result.
# 2.1.332 drops the hint when all went well and adds ` · 1 failed` when a call failed.
_TOOL_ROW = re.compile(
    r"^(?:● |  )Call(?:ing|ed) \S+(?: \d+ times)?(?: · \d+ failed)?…?(?: \(ctrl\+o to expand\))?$"
)
_INDENT = "  "
_ERROR_PREFIXES = ("API Error:",)
_ERROR_HINTS = (
    "Invalid API key",
    "Prompt is too long",
    "Request timed out",
    "Credit balance is too low",
    "usage limit",
    "Please run /login",
    "OAuth token",
)


def _strip_row(row: Row, n: int) -> Row:
    spans = tuple(
        type(s)(max(0, s.start - n), s.end - n, s.bold, s.italics, s.underscore, s.fg)
        for s in row.spans
        if s.end > n
    )
    return Row(row.text[n:], spans, max(0, row.width - n))


NO_RESPONSE = Response((), False, False, None, "")


def echo_count(snap: Snapshot) -> int:
    """How many prompts claude has echoed (`❯ text` at column 0) in scrollback and screen."""
    box = _input_box(snap.rows)
    rows = snap.all_rows
    end = len(snap.scrollback) + box[1] if box is not None else len(rows)
    return sum(1 for r in rows[:end] if _PROMPT.match(r.text) and r.text.strip("❯\u00a0 "))


def _before_status_row(rows: tuple[Row, ...], end: int) -> int:
    """`end`, moved above a right-aligned status row drawn just over the input box (2.1.332:
    `◐ medium · /effort` at the right edge). Model rows are indented by two columns only; a row
    that starts past the middle of the screen is claude's own."""
    j = end
    while j > 0 and not rows[j - 1].text.strip():
        j -= 1
    if j > 0:
        t = rows[j - 1].text
        lead = len(t) - len(t.lstrip(" "))
        if lead >= 20 and lead * 2 >= len(t):
            return j - 1
    return end


def response(snap: Snapshot, *, after_tools: bool = False) -> Response:
    """Find the reply to the most recent prompt in scrollback + screen.

    Layout (v2.1.197): the prompt is echoed at column 0 as `❯ text`; every model-authored row
    is indented by two columns, the first row of a block starts with `● `; structure at column
    0 is claude's own (spinner, `✻` completion line, rules, the input box).

    Tool calls split a reply: `rows` is the text before the first tool row, or with
    `after_tools` (a turn resumed with tool results) the text after the last one.
    """
    rows = snap.all_rows
    box = _input_box(snap.rows)
    end = len(snap.scrollback) + box[0] if box is not None else len(rows)
    end = _before_status_row(rows, end)
    echo = -1
    for i in range(end - 1, -1, -1):
        if _PROMPT.match(rows[i].text) and rows[i].text.strip("❯\u00a0 "):
            echo = i
            break
    body = rows[echo + 1 : end]
    out: list[Row] = []
    started = False
    completed = False
    interrupted = False
    error_text: str | None = None
    spinner = ""
    tool_rows = 0
    before_tools: list[Row] | None = None
    for row in body:
        t = row.text
        if _TOOL_ROW.match(t):
            tool_rows += 1
            if before_tools is None:
                before_tools = out
            out = []
            started = False
            continue
        if t.startswith(_BLOCK_START):
            stripped = t[2:]
            if any(stripped.startswith(p) for p in _ERROR_PREFIXES):
                error_text = stripped
                continue
            if started and out:
                out.append(Row(""))  # a second block (e.g. after thinking) starts a paragraph
            started = True
            out.append(_strip_row(row, 2))
        elif t.startswith(_INDENT) or t == "":
            inner = t.strip()
            if inner.startswith("⎿"):
                msg = inner.lstrip("⎿").strip()
                if msg.startswith("Interrupted"):
                    interrupted = True
                elif any(h in msg for h in _ERROR_HINTS):
                    error_text = msg
                continue
            if not started:
                continue  # echo continuation rows, thinking summaries before the text
            if t.startswith("    ") and not out:
                continue
            out.append(_strip_row(row, 2) if t else Row(""))
        elif _COMPLETION.match(t):
            completed = True
            started = False
        else:
            # spinner / thinking / retry status line at column 0: progress, not text
            spinner = t
            if started:
                started = False
    if before_tools is not None and not after_tools:
        out = before_tools
    while out and not out[-1].text:
        out.pop()
    tokens = _TOKENS.search(spinner)
    progress = (
        f"{len(out)}|{out[-1].text if out else ''}|{tokens.group(1) if tokens else ''}|{tool_rows}"
    )
    return Response(tuple(out), completed, interrupted, error_text, progress, tool_rows)


# --- rows → text -------------------------------------------------------------------------------
def text_width(columns: int) -> int:
    """Columns claude's reply text wraps at: 2 for the `● `/indent gutter, and Ink keeps the last
    column free (a 111-column row plus a 6-letter word wrapped at 120 columns, v2.1.197)."""
    return columns - 3


def _first_word(text: str) -> str:
    return text.split(" ", 1)[0]


def _is_wide(ch: str) -> bool:
    o = ord(ch)
    return o >= 0x1100 and (
        o <= 0x115F
        or 0x2E80 <= o <= 0xA4CF
        or 0xAC00 <= o <= 0xD7A3
        or 0xF900 <= o <= 0xFAFF
        or 0xFF00 <= o <= 0xFF60
        or 0x20000 <= o <= 0x3FFFD
    )


def join(a: Row, b: Row, width: int) -> str:
    """The text between the end of row `a` and the end of row `b` in the model's text.

    claude (Ink) word-wraps at `width` columns and drops the space at the break. A row is taken as
    wrapped when the next row's first word would not have fitted after it; otherwise the break was
    the model's own newline. A wrapped continuation loses its layout indent; a full row without a
    space is a hard-broken long word; CJK text wraps between characters without a space.
    """
    if not a.text or not b.text:
        return "\n" + b.text
    rest = b.text.lstrip(" ")
    word = rest.split(" ", 1)[0]
    if a.width + 1 + max(wcswidth(word), len(word)) <= width:
        return "\n" + b.text
    if _is_wide(a.text[-1]) or _is_wide(rest[0]):
        return rest
    if a.width >= width and " " not in a.text.strip():
        return rest
    return " " + rest


def rows_text(rows: tuple[Row, ...] | list[Row], width: int) -> str:
    if not rows:
        return ""
    parts = [rows[0].text]
    for a, b in itertools.pairwise(rows):
        parts.append(join(a, b, width))
    return "".join(parts)


_TABLE_CHARS = ("|", "┌", "│", "├", "└")
_BOX = ("┌", "│", "├", "└")
_INLINE_CODE_FG = "afd7ff"  # colour 153, claude's inline `code` (v2.1.197)
_QUOTE = "▎ "


def _marker(bold: bool, italics: bool, fg: str) -> str:
    if fg == _INLINE_CODE_FG and not bold and not italics:
        return "`"
    return ("**" if bold else "") + ("*" if italics else "")


def row_markdown(row: Row) -> str:
    """Put back the markdown markers claude's renderer turned into cell attributes.

    Headings are drawn bold+italic+underlined (`#`) or bold (`##` and deeper, which cannot be
    told apart); **bold**, *italic* and `code` are spans; `> quote` is a `▎` bar with italics.
    Fenced code loses its fences and language (its colours are syntax highlighting), links are
    shown as `text (url)`: those stay as drawn.
    """
    text = row.text
    quote = text.lstrip().startswith(_QUOTE)
    spans = [s for s in row.spans if s.start < s.end]
    if spans and len(spans) == 1 and spans[0].start == len(text) - len(text.lstrip()):
        s = spans[0]
        if s.end == len(text) and s.bold and not text.lstrip().startswith(("-", "*")):
            prefix = "# " if (s.italics and s.underscore) else "## "
            return text[: s.start] + prefix + text[s.start :]
    out: list[str] = []
    pos = 0
    for s in spans:
        if quote and s.italics and not s.bold:
            continue  # a quote's italics are the quote style, not markup
        mark = _marker(s.bold, s.italics, s.fg)
        if not mark:
            continue
        out.append(text[pos : s.start])
        body = text[s.start : s.end]
        stripped = body.rstrip()
        out.append(mark + stripped + mark[::-1] + body[len(stripped) :])
        pos = s.end
    out.append(text[pos:])
    md = "".join(out)
    if quote:
        i = md.index(_QUOTE)
        md = md[:i] + "> " + md[i + len(_QUOTE) :]
    return md


def box_table_markdown(rows: list[Row]) -> list[Row]:
    """A box-drawn table back to a pipe table (alignment is not recoverable)."""
    out: list[Row] = []
    header_done = False
    for row in rows:
        t = row.text.strip()
        if t.startswith(("┌", "└")):
            continue
        if t.startswith("├"):
            if not header_done:
                cols = t.count("┼") + 1
                out.append(Row("|" + "---|" * cols, (), row.width))
                header_done = True
            continue
        if t.startswith("│"):
            cells = [c.strip() for c in t.strip("│").split("│")]
            out.append(Row("| " + " | ".join(cells) + " |", (), row.width))
        else:
            out.append(Row(row_markdown(row), (), row.width))
    return out


def _markdown_rows(rows: tuple[Row, ...]) -> list[Row]:
    out: list[Row] = []
    i = 0
    while i < len(rows):
        if rows[i].text.lstrip()[:1] in _BOX:
            j = i
            while j < len(rows) and rows[j].text.lstrip()[:1] in _BOX:
                j += 1
            out.extend(box_table_markdown(list(rows[i:j])))
            i = j
            continue
        out.append(Row(row_markdown(rows[i]), (), rows[i].width))
        i += 1
    return out


def _is_table_row(row: Row) -> bool:
    return row.text.lstrip()[:1] in _TABLE_CHARS


class StreamAssembler:
    """Turns successive response snapshots into append-only text deltas.

    Rows are emitted once drawn (claude draws only completed rows). Rows of a markdown table are
    held back until a blank row closes the table, because claude redraws a streaming table as a
    box-drawn one and then fills its cells in. Emitted text can never be taken back, so at turn
    end `finish` aligns what was sent with the exact transcript text and returns the rest.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self._rows: list[Row] = []  # as drawn, to notice redraws
        self._last_md: Row | None = None  # the last row as sent, with markdown markers restored
        self.sent = ""
        self.diverged = False

    def update(self, rows: tuple[Row, ...]) -> str:
        if self.diverged:
            return ""
        n = len(self._rows)
        # 2.1.332 can draw a row before it is complete (`-`, then `- bullet two`)
        grown = self._grow_last_row(rows[n - 1]) if n and len(rows) >= n else ""
        if [r.text for r in rows[:n]] != [r.text for r in self._rows]:
            # Something already sent was redrawn differently (a table, an error replacing the
            # reply): stop streaming from the screen; `finish` reconciles.
            self.diverged = True
            return grown
        stable = len(rows)
        # hold back a trailing table block until a blank row follows it
        j = stable
        while j > n and _is_table_row(rows[j - 1]):
            j -= 1
        stable = min(stable, j)
        new = rows[n:stable]
        if not new:
            return grown
        out: list[str] = []
        prev = self._last_md
        for row in _markdown_rows(new):
            out.append(row.text if prev is None else join(prev, row, self.width))
            prev = row
        self._last_md = prev
        self._rows.extend(new)
        delta = "".join(out)
        self.sent += delta
        return grown + delta

    def _grow_last_row(self, row: Row) -> str:
        """The text `row` adds at the end of the last sent row ("" if it is not such a row).

        Only an append is taken: the sent text cannot be taken back, so any other change to a
        sent row still stops screen streaming (`finish` reconciles)."""
        last = self._rows[-1]
        if row.text == last.text or not last.text or not row.text.startswith(last.text):
            return ""
        old = self._last_md
        new = _markdown_rows((row,))[0]
        if old is None or not new.text.startswith(old.text):
            return ""
        delta = new.text[len(old.text) :]
        self._rows[-1] = row
        self._last_md = new
        self.sent += delta
        return delta

    def finish(self, exact: str) -> str:
        """The text still to send so the stream ends with the exact reply as far as possible."""
        sent = self.sent
        if exact.startswith(sent):
            return exact[len(sent) :]
        if not sent:
            return exact
        return exact[_align_end(sent, exact) :]


def _align_end(sent: str, exact: str) -> int:
    """Index in `exact` that corresponds to the end of `sent` (which is a rendering of a prefix).

    Only the tail of `sent` is aligned, so the cost stays bounded for long replies.
    """
    tail = sent[-2000:]
    lo = max(0, len(sent) - 4000)
    window = exact[lo : lo + len(tail) + 6000] if len(sent) > 2000 else exact[: len(tail) + 6000]
    base = lo if len(sent) > 2000 else 0
    sm = difflib.SequenceMatcher(None, tail, window, autojunk=False)
    blocks = [b for b in sm.get_matching_blocks() if b.size]
    if not blocks:
        return min(len(exact), len(sent))
    last = blocks[-1]
    pos = base + last.b + last.size + (len(tail) - (last.a + last.size))
    # never cut a line in two: continue from the next line start if the match ended mid-line
    return max(0, min(len(exact), pos))
