"""`python -m claude_relay`: the same entry point as the `claude-relay` console script."""

from claude_relay.daemon.cli import main

raise SystemExit(main())
