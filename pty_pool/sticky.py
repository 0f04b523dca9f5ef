"""Sticky sessions: one claude conversation per client-chosen id, surviving daemon restarts.

A sticky entry maps the client's id to a claude session UUID and remembers, as digests, the
messages claude's conversation already holds, so a call can be checked to *extend* it (then only
the new turn is pasted) or found to diverge (edited history, regenerate: a fresh claude gets the
whole history rendered). The map is persisted atomically (0600) so that after a restart, even a
SIGKILL, the next call resumes the conversation with `claude --resume <uuid>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from claude_relay.protocols.model import (
    ContentBlock,
    DocumentBlock,
    ImageBlock,
    Message,
    SpawnSpec,
    SystemMode,
    ToolResultBlock,
    ToolUseBlock,
    TurnResult,
)

from .files import write_private
from .session import Session


def digest(role: str, text: str) -> str:
    """Messages are remembered by digest only: the state file holds no conversation text."""
    return hashlib.sha256(f"{role}\0{text}".encode()).hexdigest()[:32]


def _attachment_key(block: ImageBlock | DocumentBlock) -> str:
    if isinstance(block, ImageBlock):
        return "\0image\0" + hashlib.sha256(block.data).hexdigest()
    body = block.text.encode() if block.text is not None else block.data
    return f"\0document\0{block.title}\0{block.context}\0" + hashlib.sha256(body).hexdigest()


def _block_key(block: ContentBlock) -> str:
    if isinstance(block, ToolUseBlock):
        return "\0use\0" + block.id + "\0" + block.name + "\0" + orjson.dumps(block.input).decode()
    if isinstance(block, ToolResultBlock):
        inner = "".join(
            _attachment_key(b) for b in block.content if isinstance(b, ImageBlock | DocumentBlock)
        )
        return f"\0result\0{block.tool_use_id}\0{block.is_error}\0{block.text}{inner}"
    if isinstance(block, ImageBlock | DocumentBlock):
        return _attachment_key(block)
    return ""


def message_digest(role: str, text: str, blocks: tuple[ContentBlock, ...] = ()) -> str:
    """A message's digest: its text, tool calls or results, images and documents (plain text:
    `digest`). Attachments count by content hash, so a changed image is a changed history."""
    return digest(role, text + "".join(_block_key(b) for b in blocks))


def held_after(messages: tuple[Message, ...], reply: TurnResult, streamed: str) -> list[list[str]]:
    """What claude holds after answering `messages` with `reply`: one digest per message, and for
    the reply both the exact text and the text a streaming client assembled (`streamed`)."""
    seen = [[message_digest(m.role, m.text, m.content)] for m in messages]
    exact = message_digest("assistant", reply.text, reply.content)
    seen.append(sorted({exact, message_digest("assistant", streamed, reply.content)}))
    return seen


def spec_digest(spec: SpawnSpec) -> str:
    """Spawn settings by digest: the state file names no system prompt (it can hold secrets)."""
    return digest("spec", orjson.dumps([spec.model, spec.system, spec.system_mode]).decode())


@dataclass
class Sticky:
    id: str
    claude_id: str
    # What claude was started with. After a restart the system prompt is not known (only its
    # digest, `spec_key`, is stored): the next call, which carries it, completes the spec.
    spec: SpawnSpec
    owner: str | None = None  # the API key (by tag) that made this id; others cannot see it
    spec_key: str = ""
    # one entry per message claude's conversation holds; an assistant entry accepts several
    # digests (the exact reply, and the text a streaming client assembled)
    seen: list[list[str]] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    turns: int = 0
    session: Session | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queued: int = 0  # calls waiting for `lock` (bounded by max_sticky_queue)

    def __post_init__(self) -> None:
        self.spec_key = self.spec_key or spec_digest(self.spec)

    def set_spec(self, spec: SpawnSpec) -> None:
        self.spec = spec
        self.spec_key = spec_digest(spec)

    def extended_by(self, messages: tuple[Message, ...], spec: SpawnSpec) -> int | None:
        """How many leading `messages` claude already has, if the call extends the session."""
        n = len(self.seen)
        if not n or spec_digest(spec) != self.spec_key:
            return None
        if len(messages) <= n or messages[-1].role != "user":
            return None
        for accepted, msg in zip(self.seen, messages, strict=False):
            if message_digest(msg.role, msg.text, msg.content) not in accepted:
                return None
        return n

    def continued_by(self, messages: tuple[Message, ...], spec: SpawnSpec) -> bool:
        """True when the call sends only its new user turn and claude holds a conversation.

        The reference daemon's sticky contract: the daemon keeps the state, so a client may send
        just the new message. A full-history call always has more than one message once claude
        holds one exchange (a user turn and its reply), so one user message on an id with a
        conversation cannot be a full history; on a new id it is simply the first turn."""
        return (
            bool(self.seen)
            and len(messages) == 1
            and messages[0].role == "user"
            and spec_digest(spec) == self.spec_key
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "claude_id": self.claude_id,
            # the model is shown by GET /v1/sessions; the system prompt only as a digest
            "spec": {"model": self.spec.model, "system_mode": self.spec.system_mode},
            "spec_key": self.spec_key,
            "owner": self.owner,
            "seen": self.seen,
            "created": self.created,
            "last_used": self.last_used,
            "turns": self.turns,
        }

    @classmethod
    def from_json(cls, sid: str, d: dict[str, Any]) -> Sticky:
        spec = d.get("spec") or {}
        mode: SystemMode = "replace" if spec.get("system_mode") == "replace" else "append"
        owner = d.get("owner")
        return cls(
            id=str(d.get("id") or sid),
            claude_id=str(d["claude_id"]),
            # "system" only in files written before digests: read, and not written again
            spec=SpawnSpec(model=spec.get("model"), system=spec.get("system"), system_mode=mode),
            spec_key=str(d.get("spec_key") or ""),
            owner=str(owner) if owner is not None else None,
            seen=[list(x) for x in d.get("seen", [])],
            created=float(d.get("created", time.time())),
            last_used=float(d.get("last_used", time.time())),
            turns=int(d.get("turns", 0)),
        )


class StickyStore:
    """The persisted id → claude session map. Blocking file I/O: call through a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Saves run in threads and may finish out of order (or outlive a cancelled caller): each
        # carries the version of the map it was taken from, and an older one never overwrites a
        # newer one already written.
        self._lock = threading.Lock()
        self._written = -1

    def load(self) -> dict[str, Sticky]:
        try:
            raw = orjson.loads(self.path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}
        out: dict[str, Sticky] = {}
        for sid, d in (raw.get("sessions") or {}).items():
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out[sid] = Sticky.from_json(sid, d)
        return out

    def save(self, entries: dict[str, dict[str, Any]], version: int = 0) -> bool:
        """Write atomically: a crash leaves the old file or the new one, never half of one.
        `version` orders the snapshots (see __init__); returns False when a newer one is on disk."""
        with self._lock:
            if version < self._written:
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(self.path, orjson.dumps({"version": 1, "sessions": entries}))
            self._written = version
            return True
