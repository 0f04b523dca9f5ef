"""Put the tty in raw mode, say `ready`, and never read: whatever is typed piles up in the PTY."""

from __future__ import annotations

import os
import signal
import tty


def main() -> None:
    tty.setraw(0)
    os.write(1, b"ready\r\n")
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
