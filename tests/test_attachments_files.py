"""pty_pool.attachments: the private per-turn directory, its cleanup and the sweep, and claude's
image-paste rule (what to paste, what to defuse in user text, what the input box shows)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from blockbuster import blockbuster_ctx

from claude_relay.daemon.fake_upstream import turn_images
from claude_relay.pty_pool import attachments as files
from tests.support import media

ZWSP = "\u200b"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- the per-turn directory --------------------------------------------------------------------


def test_turn_files_are_private_and_named_by_the_relay(tmp_path: Path) -> None:
    root = tmp_path / "run" / "attachments"
    with files.TurnFiles.create(root) as turn:
        assert mode(root) == 0o700
        assert turn.path.parent == root
        assert turn.path.name.startswith(f"turn-{os.getpid()}-")
        assert mode(turn.path) == 0o700
        png = turn.add(media.png(), "image/png")
        pdf = turn.add(media.pdf("x"), "application/pdf")
        jpg = turn.add(media.jpeg_header(), "image/jpeg")
        assert [p.name for p in (png, pdf, jpg)] == ["image-1.png", "document-2.pdf", "image-3.jpg"]
        assert png.read_bytes() == media.png()
        assert all(mode(p) == 0o600 for p in (png, pdf, jpg))
        assert turn.files == [png, pdf, jpg]
        with pytest.raises(ValueError, match="image/bmp"):
            turn.add(b"BM", "image/bmp")
    assert not turn.path.exists()
    assert root.exists()  # only the turn's own directory goes
    turn.cleanup()  # idempotent
    with pytest.raises(RuntimeError):
        turn.add(b"x", "text/plain")


def test_turn_files_are_deleted_when_the_turn_fails(tmp_path: Path) -> None:
    def failing_turn() -> None:
        with files.TurnFiles.create(tmp_path) as turn:
            turn.add(media.png(), "image/png")
            raise KeyError("boom")

    with pytest.raises(KeyError):
        failing_turn()
    assert list(tmp_path.iterdir()) == []


def test_private_root_is_tightened_or_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert files.ensure_private_root(loose) == loose
    assert mode(loose) == 0o700

    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(PermissionError, match="not a directory"):
        files.ensure_private_root(link)

    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises((PermissionError, FileExistsError)):
        files.ensure_private_root(plain)


def test_private_root_under_a_parent_another_user_controls_is_refused(tmp_path: Path) -> None:
    """The /tmp fallback: another local user who made /tmp/claude-relay-<uid> first could swap
    our private directory inside it; such a parent is refused, a missing one is made 0700."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by everyone, no sticky bit
    with pytest.raises(PermissionError, match="writable by other users"):
        files.ensure_private_root(shared / "attachments")
    os.chmod(shared, 0o1777)  # like /tmp: the sticky bit keeps others from renaming our dir
    assert files.ensure_private_root(shared / "attachments").is_dir()
    if os.geteuid() == 0:  # only root can give a directory to another user
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, 12345, 12345)
        with pytest.raises(PermissionError, match="belongs to another user"):
            files.ensure_private_root(theirs / "attachments")
    fresh = tmp_path / "new-parent" / "deeper" / "attachments"
    files.ensure_private_root(fresh)
    assert mode(fresh.parent) == mode(fresh.parent.parent) == 0o700


async def test_turn_files_context_deletes_on_success_error_and_cancel(tmp_path: Path) -> None:
    async with files.turn_files(tmp_path) as turn:
        path = await turn.write(media.png(), "image/png")
        assert path.exists()
    assert not turn.path.exists()

    made: list[files.TurnFiles] = []

    async def failing_turn() -> None:
        async with files.turn_files(tmp_path) as t:
            made.append(t)
            await t.write(media.png(), "image/png")
            raise ValueError("client error")

    with pytest.raises(ValueError, match="client error"):
        await failing_turn()
    assert not made[0].path.exists()

    # A client that disconnects cancels the handler's task while the turn runs.
    entered = asyncio.Event()
    holder: list[files.TurnFiles] = []

    async def turn_task() -> None:
        async with files.turn_files(tmp_path) as t:
            holder.append(t)
            await t.write(media.png(), "image/png")
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(turn_task())
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while holder[0].path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not holder[0].path.exists()
    assert os.listdir(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


def test_sweep_removes_leftovers_only(tmp_path: Path) -> None:
    now = time.time()
    fresh = files.TurnFiles.create(tmp_path)  # a running turn of this daemon
    old = files.TurnFiles.create(tmp_path)
    old.add(media.png(), "image/png")
    os.utime(old.path, (now - 4000, now - 4000))
    crashed = tmp_path / f"turn-{_dead_pid()}-abcdef"  # a daemon that died mid-turn
    crashed.mkdir()
    (crashed / "image-1.png").write_bytes(media.png())
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    os.utime(unrelated, (now - 4000, now - 4000))
    outside = tmp_path.parent / f"{tmp_path.name}-target"
    outside.mkdir()
    link = tmp_path / f"turn-{os.getpid()}-link"
    link.symlink_to(outside)
    os.utime(link, (now - 4000, now - 4000), follow_symlinks=False)

    assert files.sweep(tmp_path, older_than=3600, now=now) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.path.name, "notes"])
    assert outside.exists()  # a symlink is removed, never followed
    assert files.sweep(tmp_path / "missing", older_than=0) == 0
    assert files.sweep(tmp_path, older_than=-1) == 1  # a leak of this daemon goes too
    fresh.cleanup()


# --- claude's image paste ----------------------------------------------------------------------


def test_image_paste_text_accepts_only_paths_claude_reads_as_given() -> None:
    ok = Path("/run/user/1000/claude-relay/attachments/turn-12-ab_cd/image-1.png")
    assert files.image_paste_text(ok) == str(ok)
    spaced = Path("/Users/me/Library/Application Support/claude-relay/x/image-2.JPEG")
    assert files.image_paste_text(spaced) == str(spaced)
    for bad in [
        "relative/image-1.png",  # not absolute
        "/tmp/x/document-1.pdf",  # not an image extension
        "/tmp/my /x/image-1.png",  # a space before `/` splits the paste
        "/tmp/a\\b/image-1.png",  # claude removes backslash escapes
        "/tmp/x\n/image-1.png",  # newlines split the paste
        "/tmp/x/image-1.png ",  # claude trims
    ]:
        with pytest.raises(ValueError, match="would not attach"):
            files.image_paste_text(Path(bad))


@pytest.mark.parametrize(
    ("text", "defused"),
    [
        ("/home/me/cat.png", f"/home/me/cat.png{ZWSP}"),
        ("what is wrong with /home/me/cat.png", f"what is wrong with /home/me/cat.png{ZWSP}"),
        ("a /x/1.png /x/2.GIF", f"a /x/1.png{ZWSP} /x/2.GIF{ZWSP}"),
        ("look\n/x/cat.jpeg\nthanks", f"look\n/x/cat.jpeg{ZWSP}\nthanks"),
        ("  '/x/cat.webp'  ", f"  '/x/cat.webp'{ZWSP}  "),
        ('"/x/cat.jpg"\t', f'"/x/cat.jpg"{ZWSP}\t'),
        ("/x/ca\\t.pn\\g", f"/x/ca\\t.pn\\g{ZWSP}"),  # unescaped: /x/cat.png
        ("/x/cat.png\u00a0", f"/x/cat.png{ZWSP}\u00a0"),  # JavaScript's trim drops NBSP
        ("cat.png", f"cat.png{ZWSP}"),  # a bare name can match a clipboard path
        # left alone: claude reads none of these
        ("/x/cat.png please", "/x/cat.png please"),
        ("please rename logo.png", "please rename logo.png"),
        ("see /x/cat.pngs", "see /x/cat.pngs"),
        ("/x/doc.pdf", "/x/doc.pdf"),
        ("", ""),
    ],
)
def test_defuse_image_paths(text: str, defused: str) -> None:
    assert files.defuse_image_paths(text) == defused
    assert files.defuse_image_paths(defused) == defused  # idempotent


def test_placeholders_and_failed_pastes() -> None:
    assert files.image_placeholders("") == 0
    assert files.image_placeholders("a [Image #1] b [Pasted text #2 +4 lines][Image #3]") == 2
    path = Path("/run/x/turn-1-abc/image-12.png")
    assert files.pasted_as_text("look /run/x/turn-1-abc/imag\ne-12.png", path)
    assert not files.pasted_as_text("look [Image #4]", path)
    assert files.newest_image("") == 0
    assert files.newest_image("a [Image #3] b [Image #12") == 3
    assert files.newest_image("a [Image #3] b [Image #1\n2]") == 12  # wrapped in the input box


# --- the fake upstream's view ------------------------------------------------------------------


def test_fake_upstream_turn_images() -> None:
    def image(data: bytes, media_type: str = "image/png") -> dict[str, object]:
        import base64

        encoded = base64.standard_b64encode(data).decode()
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": encoded},
        }

    old, a, b, c = media.png(1, 1), media.png(2, 2), media.GIF_1X1, media.png(3, 3)
    body = {
        "messages": [
            {"role": "user", "content": [image(old), {"type": "text", "text": "earlier"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": "<system-reminder>Called the Read tool</system-reminder>"},
            {
                "role": "user",
                "content": [image(a), {"type": "text", "text": "now"}, image(b, "image/gif")],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": [image(c)]}],
            },
        ]
    }
    assert turn_images(body) == [("image/png", a), ("image/gif", b), ("image/png", c)]
    assert turn_images({}) == []


async def test_turn_files_context_does_not_block_the_loop(tmp_path: Path) -> None:
    data = media.png(64, 64)
    with blockbuster_ctx():
        async with files.turn_files(tmp_path) as turn:
            await turn.write(data, "image/png")
            await turn.write(data, "image/png")
    assert os.listdir(tmp_path) == []
