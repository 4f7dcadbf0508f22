"""The new master's side of an upgrade: the health gate, then the watch.

Before READY the gate keeps a new generation off the shared sockets until it has
proved healthy (its workers boot parked and answer only on a private probe socket).
After READY, while the old master waits out its watch window, the watch reports
repeated worker crashes or a failing health URL as `FAILED <reason>`, which makes
the old master roll back to the code it still holds.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

from listeners import Listener, close_listener
from upgrade import Upgrader

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
    """While the old master can still roll back (its watch window): report what goes wrong
    here as `FAILED <reason>`, once. Ends when the old master commits (it exits and closes
    its end of the pipe) or when a rollback was asked for."""

    def __init__(self, up: Upgrader, health: HealthProbe | None, log: logging.Logger,
                 before_close: Callable[[], None]) -> None:
        self.up = up
        self.health = health
        self.log = log
        self.before_close = before_close
        self.crashes = 0
        self.over = False

    def fileno(self) -> int | None:
        """Becomes readable (an error) once the old master closed its end."""
        return None if self.over else self.up.lineage.ready_fd

    def check(self, now: float, stopping: bool) -> None:
        if self.over:
            return
        if not self.up.lineage.parent_alive():
            self.log.info("previous master %s committed the upgrade", self.up.lineage.parent_pid)
            self.end()
        elif self.health is not None and not stopping:
            failure = self.health.poll(now, WATCH_ATTEMPTS, WATCH_INTERVAL)
            if failure:
                self._ask_rollback(failure)

    def crashed(self, description: str) -> None:
        """One unexpected worker exit; a rollback is asked for once they repeat."""
        self.crashes += 1
        if not self.over and self.crashes >= CRASHES_FOR_ROLLBACK:
            self._ask_rollback(f"new workers keep crashing ({self.crashes} in the watch window; "
                               f"last: {description})")

    def end(self) -> None:
        """The old master committed (or is rolling back): the channel is of no more use."""
        if not self.over:
            self.over = True
            self.before_close()
            self.up.lineage.close()

    def _ask_rollback(self, reason: str) -> None:
        self.log.error("asking the previous master to roll back: %s", reason)
        self.over = True
        self.before_close()
        self.up.fail(reason)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
