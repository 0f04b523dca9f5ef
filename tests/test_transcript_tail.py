"""TranscriptTail under concurrent reads: a turn cancelled while its read runs in a thread leaves
that thread running, so two reads can overlap; each line must still be returned exactly once
(a line returned twice doubled a reply's text)."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson

from claude_relay.pty_pool.transcript import TranscriptTail


def test_overlapping_reads_return_each_line_once(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b"")
    tail = TranscriptTail(path=path)
    seen: list[int] = []
    seen_lock = threading.Lock()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            got = tail.read()
            with seen_lock:
                seen.extend(int(e["n"]) for e in got)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with path.open("ab") as f:
            for n in range(2000):
                f.write(orjson.dumps({"type": "user", "n": n}) + b"\n")
                f.flush()
    finally:
        stop.set()
        for t in threads:
            t.join()
    seen.extend(int(e["n"]) for e in tail.read())
    assert sorted(seen) == list(range(2000))
