"""The master's workers as a pool: how many there should be, which are parked, retiring
or overdue, and the signals that move them.

The pool does not decide what a worker's exit means (a crash to replace, a boot failure
that fails an upgrade, a reload to abort): the arbiter does, from its lifecycle.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

from ..worker.process import WorkerSpec
from .handles import WorkerHandle, fork_worker
from .wakeups import Wakeups

FAST_STOP_GRACE = 2.0
ABORT_GRACE = 1.0  # a timed-out worker sent SIGABRT (for worker_abort) gets this long to go
SpecFor = Callable[[int, bool], WorkerSpec]  # (status fd, born parked) -> what the worker serves


class WorkerPool:
    def __init__(self, target: int, spec_for: SpecFor, wakeups: Wakeups,
                 log: logging.Logger, in_child: Callable[[], None]) -> None:
        self.target = target
        self.spec_for = spec_for
        self.wakeups = wakeups
        self.log = log
        self.in_child = in_child
        self.handles: dict[int, WorkerHandle] = {}
        self.epoch = 0  # bumped by each reload (HUP): older workers retire once it booted
        self.parked = False  # our workers stopped serving (WINCH, an upgrade's drain, the gate)
        self.boot_failures = 0
        self.next_spawn = 0.0
        self.ever_booted = False
        self.stop_deadline = 0.0
        self.before_fork: Callable[[], None] = lambda: None  # the pre_fork hook
        self.abort_on_timeout: Callable[[], bool] = lambda: False  # a worker_abort hook exists

    # -- reading ------------------------------------------------------------------------

    def current(self) -> list[WorkerHandle]:
        """This epoch's workers that are not on their way out."""
        return [h for h in self.handles.values()
                if h.epoch == self.epoch and h.retiring_since is None]

    def booted(self) -> list[WorkerHandle]:
        return [h for h in self.handles.values() if h.booted and h.epoch == self.epoch]

    def drained(self) -> bool:
        """Every parked worker says it holds nothing (or was killed)."""
        return all(h.parked_empty or h.killed for h in self.handles.values())

    def read(self, handle: WorkerHandle) -> None:
        """The worker's status pipe is readable."""
        try:
            data = os.read(handle.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.wakeups.remove(handle.fd)
            return
        was_booted = handle.booted
        handle.feed(data, time.monotonic())
        if handle.booted and not was_booted:
            self.ever_booted = True
            self.boot_failures = 0

    def remove(self, pid: int) -> WorkerHandle | None:
        """A reaped child: its handle if it was one of ours, its pipe closed."""
        handle = self.handles.pop(pid, None)
        if handle is not None:
            self.wakeups.remove(handle.fd)
            _last_words(handle)
            os.close(handle.fd)
        return handle

    # -- changing -----------------------------------------------------------------------

    def maintain(self, now: float) -> None:
        """Spawn up to the target (one at a time after boot failures), retire the excess."""
        current = self.current()
        if len(current) < self.target and now >= self.next_spawn:
            count = 1 if self.boot_failures else self.target - len(current)
            for _ in range(count):
                self.spawn()
            self.next_spawn = 0.0
        elif len(current) > self.target:
            for handle in sorted(current, key=lambda h: h.started)[: len(current) - self.target]:
                self.retire(handle)

    def spawn(self) -> None:
        parked = self.parked
        self.before_fork()
        try:
            handle = fork_worker(lambda fd: self.spec_for(fd, parked), self.epoch, self.in_child)
        except OSError as exc:
            self.log.error("cannot fork a worker: %s", exc.strerror)
            self.next_spawn = time.monotonic() + 1.0
            return
        if parked:
            handle.parked(time.monotonic())
            handle.parked_empty = True
        self.handles[handle.pid] = handle
        self.wakeups.add(handle.fd, handle)

    def boot_failed(self) -> float:
        """Back off before the next spawn; the delay."""
        self.boot_failures += 1
        delay = min(0.25 * 2 ** (self.boot_failures - 1), 10.0)
        self.next_spawn = time.monotonic() + delay
        return delay

    def park_all(self) -> None:
        self.parked = True
        now = time.monotonic()
        for handle in self.handles.values():
            if handle.retiring_since is None and handle.parked_since is None:
                handle.parked(now)
                _signal(handle.pid, signal.SIGWINCH)

    def resume_all(self) -> None:
        self.parked = False
        for handle in self.handles.values():
            if handle.parked_since is not None:
                handle.resumed()
                _signal(handle.pid, signal.SIGHUP)

    def retire_epochs_before(self, epoch: int) -> None:
        for handle in self.handles.values():
            if handle.epoch != epoch and handle.retiring_since is None:
                self.retire(handle)

    def retire(self, handle: WorkerHandle) -> None:
        if handle.retiring_since is None:
            handle.retiring_since = time.monotonic()
            _signal(handle.pid, signal.SIGTERM)

    def kill(self, handle: WorkerHandle) -> None:
        handle.killed = True
        _signal(handle.pid, signal.SIGKILL)

    def signal_all(self, sig: int) -> None:
        for handle in self.handles.values():
            _signal(handle.pid, sig)

    def check_deadlines(self, now: float, timeout: float, graceful_timeout: float) -> None:
        """Kill workers silent for longer than --timeout, or still busy past the graceful
        timeout after being retired or parked."""
        for handle in self.handles.values():
            if handle.killed:
                continue
            since = handle.retiring_since
            if since is None and handle.parked_since is not None and not handle.parked_empty:
                since = handle.parked_since
            if since is not None and now - since > graceful_timeout + 1.0:
                self.log.warning("worker %d still busy after the graceful timeout; killing it",
                                 handle.pid)
                self.kill(handle)
            elif since is None and now - handle.last_seen > timeout:
                if handle.aborted_at is not None and now - handle.aborted_at < ABORT_GRACE:
                    continue
                what = "no heartbeat" if handle.booted else "still booting"
                abort = self.abort_on_timeout() and handle.aborted_at is None
                self.log.error("worker %d timed out (%s for %.0f s); %s", handle.pid, what,
                               now - handle.last_seen, "aborting it" if abort else "killing it")
                if abort:
                    handle.aborted_at = now
                    _signal(handle.pid, signal.SIGABRT)  # its worker_abort hook runs, then it exits
                else:
                    self.kill(handle)

    def stop(self, graceful: bool, grace: float) -> None:
        """Graceful: every worker retires (finishes what it holds, up to `grace`); else
        QUIT, and FAST_STOP_GRACE before who is left is killed."""
        self.stop_deadline = time.monotonic() + (grace if graceful else FAST_STOP_GRACE)
        for handle in list(self.handles.values()):
            if graceful:
                self.retire(handle)
            else:
                _signal(handle.pid, signal.SIGQUIT)

    def stopped(self, now: float) -> bool:
        """Every worker is gone, or the stop deadline passed and the last were killed."""
        if not self.handles:
            return True
        if now < self.stop_deadline:
            return False
        alive = [h for h in self.handles.values() if not h.killed]
        if not alive:
            return True
        self.log.warning("killing %d worker(s) that did not stop in time", len(alive))
        for handle in alive:
            self.kill(handle)
        self.stop_deadline = now + FAST_STOP_GRACE
        return False

    def close_in_child(self) -> None:
        for handle in self.handles.values():
            os.close(handle.fd)


def _last_words(handle: WorkerHandle) -> None:
    """What an exited worker wrote that the loop has not read yet: reaping can come first,
    and a boot error's line (`E<reason>`) is the reason an upgrade or a start reports."""
    while True:
        try:
            data = os.read(handle.fd, 4096)
        except OSError:  # BlockingIOError: a grandchild still holds the write end
            return
        if not data:
            return
        handle.feed(data, time.monotonic())


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
