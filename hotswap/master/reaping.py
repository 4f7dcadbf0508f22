"""Collecting exited children without blocking, for the master and the keeper alike."""

from __future__ import annotations

import os
from collections.abc import Iterator


def reaped() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of every child that has exited by now; never blocks."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status
