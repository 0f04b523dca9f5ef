"""Put the tty in raw mode, say `ready`, read exactly N bytes, print their SHA-256 and exit 0.

Raw mode matters: in canonical mode a PTY line holds at most 4096 bytes and control bytes act
as keys. Usage: count_stdin.py N
"""

from __future__ import annotations

import hashlib
import os
import sys
import tty


def main() -> None:
    want = int(sys.argv[1])
    tty.setraw(0)  # TCSAFLUSH: anything typed before this is dropped, hence the `ready`
    os.write(1, b"ready\r\n")
    digest = hashlib.sha256()
    got = 0
    while got < want:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        got += len(chunk)
        digest.update(chunk)
    os.write(1, f"got {got} {digest.hexdigest()}\r\n".encode())


if __name__ == "__main__":
    main()
