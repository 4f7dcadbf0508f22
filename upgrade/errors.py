"""The toolkit's two exceptions; str() of either is one line meant for an operator."""

from __future__ import annotations


class UpgradeError(Exception):
    """Something an operator must fix: a malformed variable, a socket, a pidfile."""


class UpgradeRefused(UpgradeError):
    """An upgrade was asked for at a moment it cannot run (one is running, the previous
    generation is still alive, the server is stopping); nothing was changed."""
