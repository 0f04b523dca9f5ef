"""claude-relay's one installed namespace.

The code lives in the top-level folders `daemon/`, `pty_pool/` and `protocols/` (the project's
layout); this package links them in as `claude_relay.daemon`, `claude_relay.pty_pool` and
`claude_relay.protocols`, so that an install puts a single name in site-packages. A bare `daemon`
there would be the import name of `python-daemon`, and installing both would break both.
"""
