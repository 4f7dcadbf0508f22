"""The new master's side of an upgrade: the health gate, then the watch.

Before READY the gate keeps a new generation off the shared sockets until it has
proved healthy (its workers boot parked and answer only on a private probe socket).
After READY, while the old master waits out its watch window, the watch reports
repeated worker crashes or a failing health URL as `FAILED <reason>`, which makes
the old master roll back to the code it still holds.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from listeners import Listener, close_listener

from .probe import PROBE_TIMEOUT, RunningProbe, open_probe_listener, read_answer, start_probe

GATE_ATTEMPTS = 5  # consecutive failed probes before a new generation is refused
GATE_INTERVAL = 0.2
WATCH_ATTEMPTS = 3  # consecutive failed probes during the watch window before a rollback
WATCH_INTERVAL = 1.0
CRASHES_FOR_ROLLBACK = 2  # unexpected worker exits during the watch window


class HealthProbe:
    """Probes the health URL through this generation's private socket, one child at a time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.listener: Listener = open_probe_listener()
        self.running: RunningProbe | None = None
        self.failures = 0
        self.last_failure = ""
        self.next_at = 0.0
        self.before_close: Callable[[], None] | None = None  # the owner's selector forgets the fd

    def poll(self, now: float, attempts: int, interval: float) -> str | None:
        """None while undecided; "" once a probe passed; the reason after `attempts` failures."""
        if self.running is None:
            if now >= self.next_at:
                self.running = start_probe(self.listener, self.url)
            return None
        answer = read_answer(self.running)
        if answer is None:
            if now - self.running.started <= PROBE_TIMEOUT + 1.0:
                return None
            answer = f"health check {self.url}: no answer within {PROBE_TIMEOUT:g} s"
            _kill(self.running.pid)
        self._close_running()
        self.next_at = now + interval
        if answer == "":
            self.failures = 0
            return ""
        self.failures += 1
        self.last_failure = answer
        return answer if self.failures >= attempts else None

    def fileno(self) -> int | None:
        return self.running.fd if self.running is not None else None

    def close(self) -> None:
        if self.running is not None:
            _kill(self.running.pid)
            self._close_running()
        close_listener(self.listener, unlink=False)

    def _close_running(self) -> None:
        assert self.running is not None
        if self.before_close is not None:
            self.before_close()
        os.close(self.running.fd)
        self.running = None


class Watch:
    """Counts what goes wrong in the new generation while the old one can still come back."""

    def __init__(self) -> None:
        self.crashes = 0
        self.last_crash = ""

    def crashed(self, description: str) -> str | None:
        """Record one unexpected worker exit; the rollback reason once they repeat."""
        self.crashes += 1
        self.last_crash = description
        if self.crashes >= CRASHES_FOR_ROLLBACK:
            return (f"new workers keep crashing ({self.crashes} in the watch window; "
                    f"last: {description})")
        return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
