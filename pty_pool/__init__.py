"""Processes and screens: the warm pool of interactive claude TUIs.

driver (PTY, the only ptyprocess import) → screen (pyte, the only pyte import) → tui (pure screen
interpretation) → session (one claude's state machine) → pool (warm sessions, capacity, turns).
Talks to the rest of the relay only in the neutral types of `protocols.model`.
"""
