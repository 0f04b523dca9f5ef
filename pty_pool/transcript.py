"""claude's transcript JSONL: the exact text, stop reason and usage of a turn.

claude (v2.1.197) appends one JSON object per line to
`<config dir>/projects/<cwd, non-alphanumerics → '-'>/<session-uuid>.jsonl`: the user prompt,
one `assistant` entry per content block (sharing `message.id`, each carrying the final usage),
a synthetic assistant entry (`isApiErrorMessage`) for API errors, and a `system`/`turn_duration`
entry when a turn ends. Parsing is pure; `TranscriptTail` only remembers a file offset.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from claude_relay.protocols import errors
from claude_relay.protocols.model import (
    ContentBlock,
    StopReason,
    TextBlock,
    ThinkingBlock,
    ToolUseBlock,
    TurnResult,
    Usage,
)

from .broker import caller_name
from .files import write_private

_STOP_REASONS: frozenset[str] = frozenset(
    {"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"}
)
INTERRUPTED_MARK = "[Request interrupted by user"
SYNTHETIC_MODEL = "<synthetic>"  # the `model` of entries claude writes itself


def find_transcript(cfg: Path, session_id: str) -> Path | None:
    projects = cfg / "projects"
    try:
        for sub in projects.iterdir():
            p = sub / f"{session_id}.jsonl"
            if p.exists():
                return p
    except FileNotFoundError:
        return None
    return None


def transcript_ids(directory: Path) -> set[str]:
    """The session ids of the transcripts in one project directory. Blocking: a listing."""
    try:
        return {p.name.removesuffix(".jsonl") for p in directory.iterdir() if p.suffix == ".jsonl"}
    except FileNotFoundError:
        return set()


# The entry claude writes into the new conversation's transcript when `/clear` runs.
CLEAR_ENTRY = b"<command-name>/clear</command-name>"


def records_clear(path: Path) -> bool:
    """Whether the transcript at `path` holds a `/clear` command entry. Blocking: a read."""
    try:
        with path.open("rb") as f:
            return CLEAR_ENTRY in f.read(256 * 1024)
    except OSError:
        return False


def parent_first(lines: list[bytes]) -> list[bytes] | None:
    """The transcript's lines with every entry after its parent, or None when already so.

    claude (v2.1.197) can write a prompt's `user` entry after the reply's `assistant` entry (its
    writes are queued). `claude --resume` without a `last-prompt` pointer takes the *last message
    in file order* as the conversation's end, so such a file resumes at the prompt and the reply
    is lost: claude sends the synthetic "No response requested." in its place (seen after a
    SIGKILL of the daemon, about 1 restart in 10). Moving each entry after its parent restores
    the order claude meant; no line is changed, added or dropped.
    """
    parsed: list[tuple[str | None, str | None]] = []
    index: dict[str, int] = {}
    for i, line in enumerate(lines):
        uid: str | None = None
        parent: str | None = None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("uuid"), str):
            uid = obj["uuid"]
            parent = obj.get("parentUuid") if isinstance(obj.get("parentUuid"), str) else None
            index.setdefault(uid, i)
        parsed.append((uid, parent))
    # each entry waits until its parent (when the file has it) is out, then follows it
    waiting: dict[str, list[int]] = {}
    emitted: set[str] = set()
    out: list[bytes] = []

    def emit(first: int) -> None:
        stack = [first]  # iterative: a long chain of waiting entries must not hit recursion limits
        while stack:
            i = stack.pop()
            out.append(lines[i])
            uid = parsed[i][0]
            if uid is not None:
                emitted.add(uid)
                stack.extend(reversed(waiting.pop(uid, [])))

    for i, (_, parent) in enumerate(parsed):
        if parent is not None and parent in index and parent not in emitted:
            waiting.setdefault(parent, []).append(i)
        else:
            emit(i)
    for rest in waiting.values():  # a parent cycle (claude reports those too): keep the lines
        out.extend(lines[i] for i in rest)
    return None if out == lines else out


def repair_order(path: Path | None) -> bool:
    """Rewrite `path` (atomically, 0600) so that each entry follows its parent; see
    `parent_first`. Call only while no claude has the session open. Blocking: use a thread."""
    if path is None:
        return False
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" after a final newline, else a torn last line, which stays last
    fixed = parent_first(lines)
    if fixed is None:
        return False
    body = b"".join(line + b"\n" for line in fixed) + tail
    write_private(path, body)
    return True


@dataclass
class TranscriptTail:
    """Reads complete lines appended since the last call. Blocking file I/O: call in a thread."""

    path: Path | None = None
    offset: int = 0
    _partial: bytes = b""

    # A turn cancelled while its `to_thread(read)` runs leaves that thread running; the next
    # turn's read must not start from the same offset, or it returns the same lines again (a
    # reply's text counted twice).
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def read(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._read()

    def _read(self) -> list[dict[str, Any]]:
        if self.path is None:
            return []
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out: list[dict[str, Any]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


@dataclass
class TurnLog:
    """Accumulates the transcript entries of one turn."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    prompt_seen: bool = False
    done: bool = False
    interrupted: bool = False
    # entries up to this timestamp belong to a tool exchange already answered inside the turn (a
    # refused call): only their usage counts toward the reply
    boundary: str = ""

    def add(self, items: list[dict[str, Any]]) -> None:
        for e in items:
            kind = e.get("type")
            if kind == "user":
                content = e.get("message", {}).get("content")
                text = content if isinstance(content, str) else _join_text(content)
                if INTERRUPTED_MARK in text:
                    self.interrupted = True
                    self.done = True
                elif "toolUseResult" in e or any(
                    isinstance(b, dict) and b.get("type") == "tool_result"
                    for b in (content if isinstance(content, list) else ())
                ):
                    self.boundary = max(self.boundary, str(e.get("timestamp") or ""))
                elif not e.get("isMeta"):
                    self.prompt_seen = True
            elif kind == "assistant":
                if e.get("message", {}).get("model") == SYNTHETIC_MODEL and not e.get(
                    "isApiErrorMessage"
                ):
                    # claude's own filler ("No response requested." after a resume that lost
                    # a reply), never the model's words
                    continue
                self.entries.append(e)
                if e.get("isApiErrorMessage"):
                    # the turn's last entry: 2.1.332 writes no turn_duration after it
                    self.done = True
            elif kind == "system" and e.get("subtype") == "turn_duration":
                self.done = True

    @property
    def tool_use_ids(self) -> set[str]:
        """Ids of the tool_use blocks written so far (claude writes a message's blocks together,
        when the upstream message is complete)."""
        return {
            str(b.get("id"))
            for e in self.entries
            for b in _content(e)
            if b.get("type") == "tool_use"
        }

    def error(self) -> errors.RelayError | None:
        for e in reversed(self.entries):
            if e.get("isApiErrorMessage"):
                return map_api_error(str(e.get("error") or ""), _join_text(_content(e)))
        return None

    def result(self) -> TurnResult:
        """The turn's reply: its text, the last stop reason, and the usage of every request.

        Usually one assistant message. When the model stops at `max_tokens`, claude (v2.1.197)
        itself sends "Output token limit hit. Resume directly…" and the model continues in a
        second message; the client asked one question, so the texts are joined into one reply and
        the usage is summed over the requests claude made for it.
        """
        # claude (v2.1.197) may write a message's entries after a later message's (seen with a
        # tool call answered inside the turn), but their timestamps keep the true order
        msgs = sorted(
            (e for e in self.entries if not e.get("isApiErrorMessage")),
            key=lambda e: str(e.get("timestamp") or ""),
        )
        if not msgs:
            return TurnResult((), "end_turn", Usage())
        text = ""
        tools: list[ToolUseBlock] = []
        thoughts: list[ThinkingBlock] = []
        usage = Usage()
        seen_ids: set[str] = set()
        last_msg: dict[str, Any] = {}
        for e in msgs:
            msg = e.get("message", {})
            mid = str(msg.get("id"))
            in_segment = not self.boundary or str(e.get("timestamp") or "") > self.boundary
            for block in _content(e) if in_segment else ():
                if block.get("type") == "text":
                    text += str(block.get("text", ""))
                elif block.get("type") == "thinking":
                    # claude keeps each thinking block with its signature (2.1.197, 2.1.332)
                    thoughts.append(
                        ThinkingBlock(
                            str(block.get("thinking") or ""), str(block.get("signature") or "")
                        )
                    )
                elif block.get("type") == "tool_use":
                    raw_input = block.get("input")
                    tools.append(
                        ToolUseBlock(
                            id=str(block.get("id")),
                            name=caller_name(str(block.get("name"))),
                            input=raw_input if isinstance(raw_input, dict) else {},
                        )
                    )
            last_msg = msg
            if mid not in seen_ids:  # every entry of one message repeats the final usage
                seen_ids.add(mid)
                u = msg.get("usage") or {}
                usage = usage + Usage(
                    input_tokens=int(u.get("input_tokens") or 0),
                    output_tokens=int(u.get("output_tokens") or 0),
                    cache_creation_input_tokens=int(u.get("cache_creation_input_tokens") or 0),
                    cache_read_input_tokens=int(u.get("cache_read_input_tokens") or 0),
                )
        stop = str(last_msg.get("stop_reason") or "end_turn")
        stop_reason: StopReason = stop if stop in _STOP_REASONS else "end_turn"  # type: ignore[assignment]
        if self.interrupted:
            stop_reason = "end_turn"
        content: tuple[ContentBlock, ...] = (TextBlock(text),) if text else ()
        return TurnResult(
            content=(*thoughts, *content, *tools),
            stop_reason=stop_reason,
            usage=usage,
            model=last_msg.get("model"),
            stop_sequence=last_msg.get("stop_sequence"),
            upstream_message_id=last_msg.get("id"),
        )


def _content(e: dict[str, Any]) -> list[dict[str, Any]]:
    c = e.get("message", {}).get("content")
    if isinstance(c, list):
        return [b for b in c if isinstance(b, dict)]
    if isinstance(c, str):
        return [{"type": "text", "text": c}]
    return []


def _join_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(b.get("text", "")) for b in content if isinstance(b, dict) and "text" in b
        )
    return ""


def map_api_error(kind: str, text: str) -> errors.RelayError:
    """claude's synthetic error entry → the relay error a direct API client would have seen."""
    msg = text.removeprefix("API Error: ").strip() or "upstream error"
    if kind == "authentication_failed" or "Invalid API key" in text or "/login" in text:
        return errors.AuthenticationError(
            f"claude could not authenticate upstream: {msg}. Log in with `claude` "
            "(run `/login` there) or fix ANTHROPIC_API_KEY, then retry."
        )
    if kind == "rate_limit" or "429" in text:
        return errors.RateLimitError(f"upstream rate limit: {msg}", retry_after=30)
    if "Overloaded" in text or "529" in text:
        return errors.OverloadedError(f"upstream overloaded: {msg}", retry_after=10)
    if kind == "invalid_request" or "Prompt is too long" in text:
        return errors.InvalidRequestError(msg)
    if "timed out" in text:
        return errors.TimeoutError_(f"upstream timed out: {msg}")
    return errors.ApiError(f"upstream error: {msg}")
