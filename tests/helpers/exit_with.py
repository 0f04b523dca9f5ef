"""Print `text`, then exit with a code (`3`) or die of a signal (`SIGUSR1`).

Usage: exit_with.py CODE|SIGNAME [TEXT]
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> None:
    how = sys.argv[1]
    text = sys.argv[2] if len(sys.argv) > 2 else ""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    if how.startswith("SIG"):
        os.kill(os.getpid(), getattr(signal, how))
        signal.pause()  # the signal is on its way
    sys.exit(int(how))


if __name__ == "__main__":
    main()
