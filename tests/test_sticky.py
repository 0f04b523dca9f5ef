"""Sticky-session bookkeeping (pty_pool.sticky): extension checks and the persisted map."""

from __future__ import annotations

import stat
from pathlib import Path

from claude_relay.protocols.model import DocumentBlock, ImageBlock, Message, SpawnSpec, TextBlock
from claude_relay.pty_pool.sticky import Sticky, StickyStore, digest, message_digest, spec_digest


def msg(role: str, text: str) -> Message:
    return Message(role, (TextBlock(text),))  # type: ignore[arg-type]


def seen_after_first_turn() -> Sticky:
    s = Sticky(id="c", claude_id="u", spec=SpawnSpec())
    s.seen = [
        [digest("user", "hi")],
        sorted({digest("assistant", "Hello **x**"), digest("assistant", "Hello x")}),
    ]
    return s


def test_extension_accepts_exact_or_streamed_reply() -> None:
    s = seen_after_first_turn()
    for reply in ("Hello **x**", "Hello x"):
        assert (
            s.extended_by(
                (msg("user", "hi"), msg("assistant", reply), msg("user", "more")), SpawnSpec()
            )
            == 2
        )


def test_divergence_is_detected() -> None:
    s = seen_after_first_turn()
    spec = SpawnSpec()
    edited = (msg("user", "HI"), msg("assistant", "Hello x"), msg("user", "more"))
    regenerate = (msg("user", "hi"),)
    other_reply = (msg("user", "hi"), msg("assistant", "changed"), msg("user", "more"))
    ends_with_assistant = (msg("user", "hi"), msg("assistant", "Hello x"))
    for messages in (edited, regenerate, other_reply, ends_with_assistant):
        assert s.extended_by(messages, spec) is None
    ok = (msg("user", "hi"), msg("assistant", "Hello x"), msg("user", "more"))
    assert s.extended_by(ok, SpawnSpec(model="opus")) is None  # other spawn settings
    assert Sticky(id="n", claude_id="u", spec=spec).extended_by(ok, spec) is None  # nothing yet


def test_store_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    store = StickyStore(tmp_path / "state" / "sessions.json")
    s = seen_after_first_turn()
    spec = SpawnSpec(model="sonnet", system="be brief, SECRET-SYSTEM", system_mode="replace")
    s.set_spec(spec)
    s.owner = "tenant-tag"
    s.turns = 3
    store.save({"tenant-tag/c": s.to_json()})
    mode = stat.S_IMODE(store.path.stat().st_mode)
    assert mode == 0o600
    assert list(store.path.parent.iterdir()) == [store.path]  # no temp file left behind
    loaded = store.load()["tenant-tag/c"]
    assert (loaded.id, loaded.owner, loaded.claude_id, loaded.seen, loaded.turns) == (
        "c",
        "tenant-tag",
        "u",
        s.seen,
        3,
    )
    # digests only: no conversation text and no system prompt (it can hold secrets)
    text = store.path.read_text()
    assert "Hello" not in text and "SECRET" not in text and "brief" not in text
    assert loaded.spec.model == "sonnet" and loaded.spec.system is None
    # the next call carries the system prompt: its digest matches, so the conversation goes on
    more = (msg("user", "hi"), msg("assistant", "Hello x"), msg("user", "more"))
    assert loaded.extended_by(more, spec) == 2
    assert loaded.extended_by(more, SpawnSpec(model="sonnet", system="other")) is None


def test_state_files_with_plain_system_prompts_still_load(tmp_path: Path) -> None:
    store = StickyStore(tmp_path / "sessions.json")
    store.path.write_text(
        '{"version":1,"sessions":{"c":{"claude_id":"u","spec":{"model":null,'
        '"system":"be brief","system_mode":"append"},"seen":[["x"]]}}}'
    )
    loaded = store.load()["c"]
    assert loaded.id == "c" and loaded.owner is None
    assert loaded.spec_key == spec_digest(SpawnSpec(system="be brief"))


def test_store_tolerates_missing_and_corrupt_files(tmp_path: Path) -> None:
    store = StickyStore(tmp_path / "sessions.json")
    assert store.load() == {}
    store.path.write_text("{not json")
    assert store.load() == {}


def test_digest_covers_images_and_documents() -> None:
    text = message_digest("user", "look", (TextBlock("look"),))
    assert text == digest("user", "look")  # text-only digests are unchanged
    red = message_digest("user", "look", (TextBlock("look"), ImageBlock("image/png", b"red")))
    blue = message_digest("user", "look", (TextBlock("look"), ImageBlock("image/png", b"blue")))
    assert len({text, red, blue}) == 3
    doc_a = message_digest("user", "", (DocumentBlock("text/plain", text="a"),))
    doc_b = message_digest("user", "", (DocumentBlock("text/plain", text="b"),))
    assert doc_a != doc_b


def test_a_single_new_user_turn_continues_a_held_conversation() -> None:
    s = seen_after_first_turn()
    spec = SpawnSpec()
    assert s.continued_by((msg("user", "which number?"),), spec)
    # the same message again, too: the daemon holds the state, the client sends only the new turn
    assert s.continued_by((msg("user", "hi"),), spec)
    # not a continuation: a full history, a final assistant message, other spawn settings,
    # or an id that holds no conversation yet (the first turn of a new conversation)
    assert not s.continued_by((msg("user", "hi"), msg("assistant", "x"), msg("user", "y")), spec)
    assert not s.continued_by((msg("assistant", "x"),), spec)
    assert not s.continued_by((msg("user", "y"),), SpawnSpec(model="opus"))
    assert not Sticky(id="n", claude_id="u", spec=spec).continued_by((msg("user", "y"),), spec)


def test_output_and_thinking_limits_are_not_part_of_the_conversation() -> None:
    # another max_tokens bucket restarts claude (--resume), it does not start a new conversation
    assert spec_digest(SpawnSpec(max_output=8192, thinking=0)) == spec_digest(
        SpawnSpec(max_output=None, thinking=4096)
    )


def test_an_older_snapshot_never_overwrites_a_newer_one(tmp_path: Path) -> None:
    """Saves run in threads and can finish out of order: the newest map stays on disk."""
    store = StickyStore(tmp_path / "sessions.json")
    newer = Sticky(id="s", claude_id="c2", spec=SpawnSpec(), seen=[["x"]], turns=2)
    older = Sticky(id="s", claude_id="c1", spec=SpawnSpec(), seen=[["x"]], turns=1)
    assert store.save({"s": newer.to_json()}, 2)
    assert not store.save({"s": older.to_json()}, 1)
    assert store.load()["s"].claude_id == "c2"
    assert store.save({}, 3)
    assert store.load() == {}
