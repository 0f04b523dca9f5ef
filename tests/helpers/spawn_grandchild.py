"""Start a sleeper that ignores SIGTERM and SIGHUP in our own process group, print its pid, wait.

Only a SIGKILL to the whole process group gets rid of the grandchild.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

SLEEPER = str(Path(__file__).resolve().parent / "sleeper.py")


def main() -> None:
    grandchild = subprocess.Popen(
        [sys.executable, SLEEPER, "SIGTERM", "SIGHUP"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert grandchild.stdout is not None
    grandchild.stdout.readline()  # "ready <pid>": its signal dispositions are in place
    print(f"grandchild {grandchild.pid}", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
