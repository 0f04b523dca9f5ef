"""A fake `claude`: draws just enough of the TUI to look ready to `pty_pool.tui.classify`.

The idle screen of Claude Code v2.1.197 ends with a rule of `─`, the prompt row `❯\u00a0`, another
rule and the footer `  ? for shortcuts`. This program draws that, then holds its tty in raw mode
(as the real TUI does) and reads and ignores every key: a pasted prompt is never answered, so a
turn on it stays busy until the relay gives up. Knobs, from the environment:

  FAKE_CLAUDE_READY_DELAY=<seconds>  show only a banner this long before drawing the prompt
  FAKE_CLAUDE_EXIT=<code>            show a banner and exit at once with this status
  FAKE_CLAUDE_EXIT_ON=<flag>         ...only when started with this flag (e.g. a system prompt)
"""

from __future__ import annotations

import os
import sys
import time
import tty


def out(text: str) -> None:
    os.write(1, text.encode())


def main() -> None:
    tty.setraw(0)
    cols = os.get_terminal_size(1).columns
    out("\x1b[2J\x1b[H fake claude\r\n\r\n")
    code = os.environ.get("FAKE_CLAUDE_EXIT")
    only_on = os.environ.get("FAKE_CLAUDE_EXIT_ON")
    if code is not None and (only_on is None or only_on in sys.argv):
        out("fake claude: failing on purpose\r\n")
        sys.exit(int(code))
    time.sleep(float(os.environ.get("FAKE_CLAUDE_READY_DELAY", "0")))
    rule = "─" * max(40, cols - 2)
    out(f"{rule}\r\n❯\u00a0\r\n{rule}\r\n  ? for shortcuts\r\n")
    while True:
        try:
            if not os.read(0, 1 << 16):
                return
        except OSError:  # EIO: the relay closed the PTY
            return


if __name__ == "__main__":
    main()
