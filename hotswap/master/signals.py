"""The master's signal queue: handlers only record the signal and poke a self-pipe.

All real work happens in the master loop, in arrival order, so a handler can never run
in the middle of a fork, a pidfile write or another handler.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from typing import Any

MASTER_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
    signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCHLD,
)


class SignalQueue:
    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        for sig in MASTER_SIGNALS:
            signal.signal(sig, self._handler)
        # Restart interrupted system calls where the OS can: the loop polls the pipe anyway.
        for sig in MASTER_SIGNALS:
            signal.siginterrupt(sig, False)

    def _handler(self, signum: int, frame: Any) -> None:
        self.pending.append(signum)
        self.poke()

    def poke(self) -> None:
        try:
            os.write(self.write_fd, b"!")
        except BlockingIOError:
            pass

    def drain(self) -> list[int]:
        """Empty the pipe and hand back the queued signals, oldest first."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        taken = []
        while self.pending:
            taken.append(self.pending.popleft())
        return taken

    def close_in_child(self) -> None:
        """A forked worker must not keep the master's pipe or handlers."""
        for sig in MASTER_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self.read_fd)
        os.close(self.write_fd)
