"""Attachment benchmark: what an image or a document adds to a request through the relay.

Run: `.venv/bin/python -m bench.bench_attachments [--n 15]` after `./dev.sh test` has installed the
pinned CLI. Against the fake upstream (instant answers), on a warm claude each time:
- plain: a one-line text request, for comparison;
- png: the same text with a small PNG (written to the turn's private directory, pasted by path,
  `[Image #N]` awaited, directory removed);
- 4 png: four small PNGs in one message;
- large png: a 1500×1500 noise PNG of about 6.7 MB, which claude resizes to JPEG itself;
- pdf: a 3-page PDF (text extracted by the relay, no file on disk);
- decode only: `decode_request` alone for a 100-page text PDF (pure-Python text extraction).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import struct
import time
import zlib
from typing import Any

import anthropic
import orjson

from bench.bench_core import fmt
from claude_relay.daemon.fake_upstream import FakeUpstream, Reply
from claude_relay.protocols.anthropic import decode_request
from tests.support import media
from tests.support.relay_proc import start_relay


def _noise_png(side: int) -> bytes:
    raw = b"".join(b"\x00" + os.urandom(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 1))
        + chunk(b"IEND", b"")
    )


def _image(data: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": encoded},
    }


def _pdf(data: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    source = {"type": "base64", "media_type": "application/pdf", "data": encoded}
    return {"type": "document", "source": source}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=15)
    args = parser.parse_args()
    text = {"type": "text", "text": "What is in the attachment?"}
    small = media.png(64, 48)
    large = _noise_png(1500)
    pdf3 = media.pdf("page one text", "page two text", "page three text")
    cases: dict[str, list[dict[str, Any]]] = {
        "plain": [text],
        "png": [text, _image(small)],
        "4 png": [text, *(_image(media.png(8 + i, 8)) for i in range(4))],
        f"large png ({len(large) / 1e6:.1f} MB)": [text, _image(large)],
        "pdf (3 pages)": [_pdf(pdf3), text],
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    async with (
        FakeUpstream() as up,
        start_relay(up, warm="2", max_attachment_bytes=str(16 * 1024 * 1024)) as relay,
    ):
        up.on("", lambda body: Reply(text="An answer."))
        async with anthropic.AsyncAnthropic(base_url=relay.url, api_key="x", max_retries=0) as c:
            for i in range(args.n + 1):
                for name, content in cases.items():
                    message: Any = {"role": "user", "content": content}
                    await relay.wait_warm(2)
                    t0 = time.perf_counter()
                    await c.messages.create(
                        model="default",
                        max_tokens=100,
                        messages=[message],
                    )
                    if i:  # the first round warms caches
                        times[name].append(time.perf_counter() - t0)
    big_pdf = media.pdf(*(f"page {n} " + "lorem ipsum dolor " * 200 for n in range(100)))
    body = orjson.dumps(
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [_pdf(big_pdf)]}]}
    )
    decode: list[float] = []
    for _ in range(5):
        t0 = time.perf_counter()
        decode_request(body)
        decode.append(time.perf_counter() - t0)
    print("attachments through claude-relay (fake upstream, pinned CLI, warm claude)")
    for name, values in times.items():
        print(f"  {name:<26} {fmt(values)}")
    print(f"  decode only: pdf of 100 pages ({len(big_pdf) / 1e3:.0f} kB)  {fmt(decode)}")


if __name__ == "__main__":
    asyncio.run(main())
