"""Attachment files for one turn, and the paste text that makes claude attach an image.

A request's images are written to a private per-turn directory (0700, files 0600, generated
names) under the daemon's runtime directory, pasted into claude by path, and deleted when the turn
ends; `sweep` removes what a crash left behind. What claude v2.1.197 does with a pasted path
(observed against the fake upstream; docs/attachments.md):

- A bracketed paste is split at newlines and at every space that precedes `/`. Each piece that,
  trimmed, unquoted and with backslash escapes removed, is an absolute path ending in `.png`,
  `.jpg`, `.jpeg`, `.gif` or `.webp` (any case) is read from disk at once. The input box shows
  `[Image #N]` in its place and the upstream request gets an `image` block: the whole prompt text
  (with the placeholders) comes first, then the images in order, then one `[Image: source:
  <path>]` text block per image. Images larger than 2000×2000 px or 5 MiB of base64 are resized.
- A piece claude cannot decode is inserted as plain text (the path), silently.
- Text around such a path in the same paste is moved after the image, so each image path must be
  pasted on its own, and user text must be defused (`defuse_image_paths`) so that a path a client
  wrote is never read from the daemon's disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Final, Self

__all__ = [
    "DIR_PREFIX",
    "EXTENSIONS",
    "JS_SPACES",
    "TurnFiles",
    "defuse_image_paths",
    "ensure_private_root",
    "image_paste_text",
    "image_placeholders",
    "newest_image",
    "pasted_as_text",
    "sweep",
    "turn_files",
]

EXTENSIONS: Final = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
}
DIR_PREFIX: Final = "turn-"  # turn-<daemon pid>-<random>
_DIR_NAME: Final = re.compile(r"turn-(\d+)-")


# --- the per-turn directory --------------------------------------------------------------------


def _check_ancestors(root: Path) -> None:
    """Every directory above `root` must be one no other user can swap out from under it.

    The /tmp fallback (`/tmp/claude-relay-<uid>/attachments`) is the case: another local user
    can create `/tmp/claude-relay-<uid>` first and then rename our private directory inside it
    or replace it with a symlink. An ancestor owned by another user (root excepted), or writable
    by others without the sticky bit (/tmp has it), is refused."""
    for parent in root.parents:
        st = os.lstat(parent)
        if st.st_uid not in (0, os.geteuid()):
            raise PermissionError(f"attachment directory {root}: {parent} belongs to another user")
        # group-writable is fine for root's own directories (a system group), not for ours
        loose = stat.S_IWOTH if st.st_uid == 0 else stat.S_IWOTH | stat.S_IWGRP
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & loose and not st.st_mode & stat.S_ISVTX:
            raise PermissionError(
                f"attachment directory {root}: {parent} is writable by other users"
            )


def ensure_private_root(root: Path) -> Path:
    """Create `root` (0700, and any missing parent 0700 too) or check an existing one: a real
    directory, ours, not group/world accessible (a looser mode of our own directory is
    tightened), under parents no other user controls. Raises PermissionError."""
    for parent in reversed(root.parents):
        if not parent.exists():
            parent.mkdir(mode=0o700, exist_ok=True)
    root.mkdir(mode=0o700, exist_ok=True)
    _check_ancestors(root)
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"attachment directory {root} is not a directory")
    if st.st_uid != os.geteuid():
        raise PermissionError(f"attachment directory {root} belongs to another user")
    if st.st_mode & 0o077:
        os.chmod(root, 0o700)
    return root


class TurnFiles:
    """One turn's private directory. Blocking I/O: call from a thread (see `turn_files`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: list[Path] = []
        self.closed = False

    @classmethod
    def create(cls, root: Path) -> TurnFiles:
        ensure_private_root(root)
        # mkdtemp creates the directory with mode 0700 and a name nobody else can predict
        return cls(Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=root)))

    def add(self, data: bytes, media_type: str) -> Path:
        """Write one attachment as `image-<n>.<ext>` / `document-<n>.<ext>` (mode 0600)."""
        if self.closed:
            raise RuntimeError("TurnFiles is closed")
        ext = EXTENSIONS.get(media_type)
        if ext is None:
            raise ValueError(f"no file type for {media_type!r}")
        kind = "image" if media_type.startswith("image/") else "document"
        path = self.path / f"{kind}-{len(self.files) + 1}{ext}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        self.files.append(path)  # before writing: a failed write is still cleaned up
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    async def write(self, data: bytes, media_type: str) -> Path:
        return await asyncio.to_thread(self.add, data, media_type)

    def cleanup(self) -> None:
        """Delete the directory and everything in it; idempotent, never raises."""
        self.closed = True
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


@contextlib.asynccontextmanager
async def turn_files(root: Path) -> AsyncIterator[TurnFiles]:
    """A fresh private directory under `root` for one turn, deleted on every way out (success,
    error, cancellation by a client disconnect)."""
    files = await asyncio.to_thread(TurnFiles.create, root)
    try:
        yield files
    finally:
        # The deletion runs in a thread that finishes even if this task is cancelled meanwhile.
        await asyncio.shield(asyncio.to_thread(files.cleanup))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(root: Path, older_than: float, *, now: float | None = None) -> int:
    """Delete turn directories left behind by crashes; returns how many were removed.

    A directory goes when its daemon (the pid in its name) is gone, or when it was last changed
    more than `older_than` seconds ago, which must exceed the longest turn. Anything else under
    `root` is left alone.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        match = _DIR_NAME.match(entry.name)
        if match is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        pid = int(match.group(1))
        dead = pid != os.getpid() and not _pid_alive(pid)
        if not dead and now - st.st_mtime <= older_than:
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        removed += 1
    return removed


# --- claude's image paste (v2.1.197) -----------------------------------------------------------

# The paste is split at newlines and at a space before `/` (or before a Windows drive); each piece
# is trimmed (JavaScript's String.prototype.trim), unquoted when one quote character opens and
# closes it, and unescaped (`\x` → `x`, `\\` → `\`), then tested against the image extensions.
_PIECE_SEPARATOR: Final = re.compile(r" (?=/|[A-Za-z]:\\)|\n")
_IMAGE_PATH: Final = re.compile(r"\.(?:png|jpe?g|gif|webp)$", re.IGNORECASE)
# JavaScript's `\s` (and String.prototype.trim): wider than Python's (U+FEFF)
JS_SPACES: Final = (
    *"\t\n\v\f\r \u00a0\u1680",
    *(chr(c) for c in range(0x2000, 0x200B)),
    *"\u2028\u2029\u202f\u205f\u3000\ufeff",
)
_JS_SPACE: Final = "".join(JS_SPACES)
_ESCAPE: Final = re.compile(r"\\([^\n\r\u2028\u2029])")  # JavaScript's `.`
_ZWSP: Final = "\u200b"
# What the input box shows for an attached image; the number counts pastes in the session.
_PLACEHOLDER: Final = re.compile(r"\[Image #\d+\]")
_PLACEHOLDER_NUMBER: Final = re.compile(r"\[Image #(\d+)\]")


def _pieces(text: str) -> list[tuple[int, int]]:
    """(start, end) of each piece claude tests as a possible image path."""
    spans: list[tuple[int, int]] = []
    start = 0
    for sep in _PIECE_SEPARATOR.finditer(text):
        spans.append((start, sep.start()))
        start = sep.end()
    spans.append((start, len(text)))
    return spans


def _as_path(piece: str) -> str:
    """The path claude would read for `piece` (trimmed, unquoted, unescaped)."""
    t = piece.strip(_JS_SPACE)
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        t = t[1:-1]
    parts = t.split("\\\\")  # an escaped backslash stays one backslash
    return "\\".join(_ESCAPE.sub(r"\1", p) for p in parts)


def _may_be_read(path: str) -> bool:
    # Absolute paths are read as they are. A bare name is read when it equals the base name of a
    # path on the clipboard (claude asks xclip / wl-paste), which a daemon rarely has, but cheap
    # to rule out. A relative path with a space never is, so prose ending in `logo.png` stays.
    if not _IMAGE_PATH.search(path):
        return False
    return path.startswith("/") or not any(c in _JS_SPACE for c in path)


def defuse_image_paths(text: str) -> str:
    """Insert U+200B after every piece of a paste that claude would read as an image path, so
    the text reaches the model as typed and no file is read (`/home/me/cat.png`, quoted or
    not, alone or on a line of its own, or after a space)."""
    out: list[str] = []
    last = 0
    for start, end in _pieces(text):
        piece = text[start:end]
        if _may_be_read(_as_path(piece)):
            cut = start + len(piece.rstrip(_JS_SPACE))
            out.append(text[last:cut] + _ZWSP)
            last = cut
    out.append(text[last:])
    return "".join(out)


def image_paste_text(path: Path) -> str:
    """The text to paste, alone, so that claude attaches the image at `path`.

    Raises ValueError for a path claude would not read as given (relative, not an image
    extension, or containing a newline, a space before `/`, a backslash or enclosing quotes).
    """
    text = str(path)
    spans = _pieces(text)
    if (
        not path.is_absolute()
        or len(spans) != 1
        or _as_path(text) != text
        or text != text.strip(_JS_SPACE)
        or not _IMAGE_PATH.search(text)
    ):
        raise ValueError(f"claude would not attach {text!r} as an image")
    return text


def newest_image(input_text: str) -> int:
    """The highest N of the `[Image #N]` placeholders in the input box (0: none). N grows with
    every paste of the session, so a new image is a higher N even when earlier rows scrolled."""
    numbers = _PLACEHOLDER_NUMBER.findall(input_text.replace("\n", ""))
    return max((int(n) for n in numbers), default=0)


def image_placeholders(input_text: str) -> int:
    """How many `[Image #N]` placeholders the input box shows."""
    return len(_PLACEHOLDER.findall(input_text))


def pasted_as_text(input_text: str, path: Path) -> bool:
    """Whether claude inserted the pasted image path as text (it could not decode the image).
    The input box wraps long lines, so the row breaks are ignored."""
    return path.name in input_text.replace("\n", "")
