"""Ignore the signals named on the command line, say `ready <pid>`, then wait to be killed.

A stdin line `quit` makes it exit with status 7 (the "polite" way out). End of input does not
end it: a sleeper must outlive its PTY master when the test is about something else killing it.

Usage: sleeper.py [SIGNAME ...]
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    for name in sys.argv[1:]:
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    print(f"ready {os.getpid()}", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "quit":
                sys.exit(7)
    except OSError:  # EIO once the PTY master is gone
        pass
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
