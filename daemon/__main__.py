"""`python -m daemon`: the same entry point as the `claude-relay` console script."""

from daemon.cli import main

raise SystemExit(main())
