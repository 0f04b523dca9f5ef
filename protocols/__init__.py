"""Pure wire-format translation for claude-relay: no I/O, no imports of daemon or pty_pool.

Requests are decoded into the neutral turn model (`protocols.model`), events coming back from the
pool are encoded into Anthropic or OpenAI JSON bodies and SSE frames.
"""
