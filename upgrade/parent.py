"""The old generation's side of an upgrade: one `Handover` from USR2 to the end.

    starting ─READY─> ready ─parking()─> draining ─drained()─> watching ─window─> committing
        │               │                    │                       │
        │               └────────────────────┴── FAILED, or the new master exits
        │                                              └──> rolling back ─exit─> rolled back
        └─ FAILED, exit or timeout: failed

The owner (hotswap's arbiter, or `Upgrader.upgrade()` for any other server) feeds it
what it sees: the readiness pipe being readable (`read`), the new master's exit status
(`exited`), the clock (`tick`); each returns an `Event` saying what the owner must do
with its own workers or sockets: stop serving on READY, serve again on ROLLBACK, leave on
COMMIT. Everything else the protocol requires (PIDFILE and .oldbin, the record next to
PIDFILE, signals to the new master, sd_notify) is done here, once, for every owner.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pidfiles import Pidfile, PidfileError

from . import names, notify
from .readiness import ReadinessReader
from .record import Recorder, UpgradeRecord

Phase = Literal["starting", "ready", "draining", "watching", "committing", "rolling back",
                "rolled back", "failed"]
KILL_AFTER = 10.0  # after TERM, a new master that will not leave gets SIGKILL


class Event(enum.Enum):
    READY = "ready"  # the new generation serves: stop serving here (then parking(), drained())
    FAILED = "failed"  # it never became ready; nothing was disturbed, the upgrade is over
    ROLLBACK = "rollback"  # it must not stay: serve again here, then call roll_back()
    COMMIT = "commit"  # the watch window passed: this generation may leave
    BOOTED = "booted"  # rolling handover: `new_booted` new workers serve; retire as many


@dataclass
class Handover:
    """One upgrade this process started; `pid` is the new master."""

    pid: int
    reader: ReadinessReader
    record: UpgradeRecord
    recorder: Recorder
    pidfile: Pidfile | None
    log: logging.Logger
    timeout: float
    watch_window: float
    manual: bool = False  # an operator drives it: WINCH parks, QUIT commits
    rolling: bool = False  # old workers leave one per new worker booted (BOOTED), not parked
    started: float = field(default_factory=time.monotonic)
    phase: Phase = "starting"
    failure: str = ""
    term_sent: float | None = None
    parked_at: float | None = None
    watch_until: float = 0.0
    gone: bool = False  # the new master exited (and was reaped)
    new_booted: int = 0  # rolling handover: new workers serving, as the new master last said
    before_close: Callable[[], None] | None = None  # lets an owner's selector forget the fd first

    # -- what the owner feeds in --------------------------------------------------------

    def fileno(self) -> int | None:
        """The readiness pipe while it is open: wait on it to call read()."""
        return None if self.reader.closed else self.reader.fileno()

    def read(self) -> Event | None:
        """The readiness pipe is readable: READY, a FAILED, or the new master's end closed."""
        if self.reader.closed:
            return None
        if self.phase == "starting":
            outcome = self.reader.read()
            if outcome is None:
                return None
            if outcome.kind == "ready":
                return self._became_ready()
            if outcome.kind == "booted":
                return None  # progress before READY means nothing yet
            self.failure = outcome.reason if outcome.kind == "failed" else self.failure
            self.close_reader()  # it gave up or died: exited() will say how
            return None
        outcome = self.reader.read_next()
        if outcome is None:
            return None
        if outcome.kind == "booted":
            self.new_booted = outcome.count
            return Event.BOOTED
        self.close_reader()
        if outcome.kind == "failed" and self.phase not in ("rolling back", "committing"):
            self.failure = outcome.reason
            return Event.ROLLBACK
        return None

    def exited(self, status: int) -> Event | None:
        """The new master is gone (the owner reaped it, with this wait status)."""
        said = self._last_words()
        self.close_reader()
        self.gone = True
        what = f"new master {self.pid} {describe_exit(status)}"
        if self.phase == "starting":
            self._fail(said or self.failure or f"{what} before it was ready")
            return Event.FAILED
        if self.phase == "rolling back":
            self.phase = "rolled back"
            self.log.warning("%s; master %d is current again", what, os.getpid())
            return None
        if self.phase == "committing":
            return None
        self.failure = f"{what}: {said}" if said else what
        return Event.ROLLBACK

    def tick(self, now: float) -> Event | None:
        """Deadlines: a new master not ready in time is stopped; a watch window ends."""
        if self.phase == "starting":
            if self.term_sent is None and now >= self.started + self.timeout:
                self.failure = f"new master {self.pid} was not ready within {self.timeout:g} s"
                self.log.error("%s; stopping it", self.failure)
                self.term_sent = now
                _signal(self.pid, signal.SIGTERM)
            elif self.term_sent is not None and now - self.term_sent > KILL_AFTER:
                _signal(self.pid, signal.SIGKILL)
        elif self.phase == "watching" and now >= self.watch_until:
            self.phase = "committing"
            return Event.COMMIT
        return None

    def next_deadline(self) -> float | None:
        """When tick() next has something to do (for the owner's wait timeout)."""
        if self.phase == "starting" and self.term_sent is None:
            return self.started + self.timeout
        if self.phase == "watching":
            return self.watch_until
        return None

    # -- what the owner reports it did --------------------------------------------------

    def parking(self) -> None:
        """The owner stopped accepting (parked its workers): they finish what they hold."""
        self.parked_at = time.monotonic()
        self._advance("draining", names.STATE_DRAINING)

    def unparked(self) -> None:
        """Manual mode: an operator brought the old workers back before QUIT."""
        self.parked_at = None
        self._advance("ready", names.STATE_READY)

    def drained(self) -> None:
        """The old generation no longer serves anything: the handover; the watch starts."""
        now = time.monotonic()
        rec = self.record
        rec.handover = now - self.started
        rec.drain = now - (self.parked_at or now)
        window = float("inf") if self.manual else self.watch_window
        self.watch_until = now + window
        self.log.info("old generation drained in %.2f s; handover %.2f s%s", rec.drain,
                      rec.handover, "" if self.manual else f"; watching for {window:g} s")
        self._advance("watching", names.STATE_WATCHING)

    def commit(self, why: str) -> None:
        """This generation leaves for good (watch window over, or QUIT in manual mode)."""
        self.phase = "committing"
        self.close_reader()
        self.log.info("upgrade to %d committed (%s); master %d exiting", self.pid, why,
                      os.getpid())

    def roll_back(self, reason: str | None = None) -> None:
        """The owner serves again: PIDFILE names us before the record says so; the new
        master stops gracefully (it serves the same sockets, so nothing it holds is lost)."""
        reason = reason or self.failure
        self.failure = reason
        self.close_reader()
        self.log.error("upgrade to %d rolled back: %s; master %d serves again", self.pid,
                       reason, os.getpid())
        self.phase = "rolled back" if self.gone else "rolling back"
        self._pidfile(lambda pf: pf.restore(os.getpid(), self.pid))
        self._pidfile(lambda pf: pf.remove_oldbin_if_ours(os.getpid()))
        self.recorder.update(self.record, names.STATE_ROLLED_BACK, reason)
        if not self.gone:
            _signal(self.pid, signal.SIGQUIT)
        notify.notify_ready(main_pid=os.getpid(), status=f"upgrade rolled back: {reason}")

    def abandon(self, reason: str) -> None:
        """The old master is stopping before the new one is ready: stop it too."""
        if self.phase == "starting" and self.term_sent is None:
            self.failure = reason
            self.term_sent = time.monotonic()  # tick() escalates to SIGKILL
            _signal(self.pid, signal.SIGTERM)

    def finish(self) -> None:
        """This generation exits while the new one serves: the record says committed."""
        if self.phase in ("starting", "rolling back", "rolled back", "failed"):
            return
        rec = self.record
        rec.commit = self.elapsed()
        if rec.handover is None:
            rec.handover = rec.commit
        self.recorder.update(rec, names.STATE_COMMITTED)

    # -- state --------------------------------------------------------------------------

    @property
    def new_serves(self) -> bool:
        """The new generation said READY and was not sent away."""
        return self.phase in ("ready", "draining", "watching", "committing")

    @property
    def over(self) -> bool:
        """Nothing left to follow: the owner can forget this upgrade."""
        return self.phase in ("failed", "rolled back")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close_reader(self) -> None:
        if not self.reader.closed:
            if self.before_close is not None:
                self.before_close()
            self.reader.close()

    # -- inside ---------------------------------------------------------------------------

    def _last_words(self) -> str:
        """A FAILED line still in the pipe when the exit is seen first (reaping can come
        before the select that would have read it): its reason is the real one."""
        if self.reader.closed:
            return ""
        outcome = self.reader.read() if self.phase == "starting" else self.reader.read_next()
        while outcome is not None and outcome.kind == "booted":
            outcome = self.reader.read_next()
        return outcome.reason if outcome is not None and outcome.kind == "failed" else ""

    def _became_ready(self) -> Event:
        self.record.ready = self.elapsed()
        self.log.info("new master %d is ready after %.2f s", self.pid, self.record.ready)
        self._advance("ready", names.STATE_READY)
        if self.manual:
            self.log.info("manual upgrade: WINCH parks this generation, QUIT commits, "
                          "HUP after WINCH brings it back")
        return Event.READY

    def _fail(self, reason: str) -> None:
        """Put back everything USR2 changed; this generation never stopped serving."""
        self.phase = "failed"
        self.failure = reason
        me = os.getpid()
        self.log.error("upgrade failed: %s; master %d keeps serving", reason, me)
        self._pidfile(lambda pf: pf.record_failure(me, reason))
        self._pidfile(lambda pf: pf.restore(me, self.pid))
        self._pidfile(lambda pf: pf.remove_oldbin_if_ours(me))
        self.recorder.update(self.record, names.STATE_FAILED, reason)
        notify.notify_ready(status=f"upgrade failed: {reason}")

    def _advance(self, phase: Phase, state: str) -> None:
        self.phase = phase
        self.recorder.update(self.record, state)

    def _pidfile(self, op: Callable[[Pidfile], object]) -> None:
        """Pidfile trouble is logged, never fatal: this generation serves either way."""
        if self.pidfile is None:
            return
        try:
            op(self.pidfile)
        except (PidfileError, OSError) as exc:
            self.log.error("pidfile: %s", exc)


def describe_exit(status: int) -> str:
    """`exited with status 3` / `killed by signal 9 (SIGKILL)`, for logs and records."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"killed by signal {sig} ({name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
