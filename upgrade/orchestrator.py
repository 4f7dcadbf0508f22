"""Client side of a live upgrade: USR2 -> ready -> (health) -> WINCH -> QUIT, with rollback.

The masters do the real work; this module only sends signals and watches the pidfiles
and /proc, because those are the only channels an operator's process shares with a
running master. Every wait polls a condition against its own deadline, so a wedged
master makes the upgrade fail with a reason instead of hanging a deploy forever, and
every failure after the new master became ready is undone so the old generation keeps
serving.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, TypeVar

from pidfiles import Pidfile, procs

Outcome = Literal["upgraded", "rolled back", "failed"]
T = TypeVar("T")

# A stopped master gets this long to exit on QUIT before SIGKILL. Module level so that
# tests (and impatient operators) can shorten it without touching the step deadlines.
KILL_GRACE = 5.0
# A master's title may carry its generation (see _generation for why it has to).
_GENERATION_IN_TITLE = re.compile(r"\bgen(?:eration)?[ =:#]?(\d+)\b")


class UpgradeError(Exception):
    """One step of the upgrade went wrong; str() is the single line an operator reads.

    `outcome` says whether something had to be undone ("rolled back") or the old
    generation was never disturbed ("failed").
    """

    def __init__(self, reason: str, outcome: Outcome = "failed") -> None:
        super().__init__(reason)
        self.outcome: Outcome = outcome


@dataclass
class UpgradeReport:
    """What happened, in numbers a deploy log or a dashboard can keep."""

    old_pid: int | None = None
    new_pid: int | None = None
    generation: int | None = None
    ready_seconds: float | None = None
    drain_seconds: float | None = None
    handover_seconds: float | None = None
    outcome: Outcome = "failed"
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    old_alive: bool = True

    def line(self) -> str:
        """One human line, the same wording whichever tool drove the upgrade."""
        if self.outcome == "upgraded":
            text = (
                f"upgraded: {self.old_pid} -> {self.new_pid} "
                f"(generation {_or_unknown(self.generation)}), "
                f"ready in {_secs(self.ready_seconds)}, drained in {_secs(self.drain_seconds)}, "
                f"handover {_secs(self.handover_seconds)}"
            )
        elif self.outcome == "rolled back":
            text = f"upgrade rolled back, old master {self.old_pid} still serving: {self.reason}"
        elif self.old_pid is not None and self.old_alive:
            text = f"upgrade failed, old master {self.old_pid} still serving: {self.reason}"
        else:
            text = f"upgrade failed: {self.reason}"
        return "; ".join([text, *(f"note: {note}" for note in self.notes)])

    def as_json(self) -> str:
        """Machine-readable report; includes line() so a log reader needs no formatting."""
        data = asdict(self)
        data["line"] = self.line()
        return json.dumps(data, sort_keys=True)


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} s"


def _or_unknown(value: int | None) -> str:
    return "?" if value is None else str(value)


def run_upgrade(
    pidfile: str,
    timeout: float = 60.0,
    health_url: str | None = None,
    poll_interval: float = 0.01,
    on_step: Callable[[str], None] | None = None,
) -> UpgradeReport:
    """Drive one live upgrade of the master named by `pidfile` and report how it went.

    Never raises for an upgrade that goes wrong: the report's outcome and reason say
    what happened, because a deploy tool wants the numbers in every case.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
    upgrade = _Upgrade(Pidfile(pidfile), timeout, poll_interval, on_step or _ignore)
    return upgrade.execute(health_url)


def _ignore(_message: str) -> None:
    return None


class _Upgrade:
    """One run of the steps; holds the report so every step can fill in its part."""

    def __init__(
        self, pf: Pidfile, timeout: float, poll_interval: float, on_step: Callable[[str], None]
    ) -> None:
        self.pf = pf
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.on_step = on_step
        self.report = UpgradeReport()
        self.t0 = 0.0

    # -- the steps -------------------------------------------------------------------

    def execute(self, health_url: str | None) -> UpgradeReport:
        try:
            m1 = self._find_old_master()
            m2 = self._start_new_master(m1)
            if health_url:
                self._check_health(m1, m2, health_url)
            self._drain(m1, m2)
            self._retire(m1, m2)
        except UpgradeError as exc:
            self.report.outcome = exc.outcome
            self.report.reason = str(exc)
        else:
            self.report.outcome = "upgraded"
        self.on_step(self.report.line())
        return self.report

    def _find_old_master(self) -> int:
        """Step 1: refuse early, before any signal, when the starting point is wrong."""
        m1 = self._read_pid()
        if m1 is None:
            raise UpgradeError(f"no running master: {self.pf.path} is missing or unreadable")
        if not procs.is_alive(m1):
            raise UpgradeError(f"no running master: {self.pf.path} names {m1}, which is not alive")
        if not procs.is_hotswap_master(m1):
            raise UpgradeError(
                f"no running master: {self.pf.path} names {m1}, which is not a hotswap master"
            )
        self.report.old_pid = m1
        busy = _quiet(self.pf.read_oldbin)
        if busy is not None and procs.is_alive(busy):
            raise UpgradeError(
                f"an upgrade is already in progress: {self.pf.oldbin_path} names {busy}"
            )
        self.on_step(f"old master {m1} (from {self.pf.path})")
        return m1

    def _start_new_master(self, m1: int) -> int:
        """Steps 2-3: USR2, then wait until the pidfile names a new live master."""
        before = _quiet(self.pf.read_failure)
        self._signal(m1, signal.SIGUSR2, "USR2")
        self.t0 = time.monotonic()
        self.on_step(f"sent USR2 to {m1}; waiting for the new master to be ready")
        m2 = self._wait_ready(m1, before)
        self.report.new_pid = m2
        self.report.ready_seconds = time.monotonic() - self.t0
        self.report.generation = _generation(m2)
        self.on_step(
            f"new master {m2} ready in {_secs(self.report.ready_seconds)} "
            f"(generation {_or_unknown(self.report.generation)})"
        )
        return m2

    def _wait_ready(self, m1: int, failure_before: str | None) -> int:
        deadline = self._deadline()
        while True:
            pid = self._read_pid()
            if pid is not None and pid != m1 and procs.is_alive(pid):
                return pid
            failure = _new_failure(_quiet(self.pf.read_failure), failure_before, m1)
            if failure is not None:
                self._wait_oldbin_released(m1)
                raise UpgradeError(f"new master failed: {failure}")
            if not procs.is_alive(m1):
                self.report.old_alive = False
                raise UpgradeError(f"old master {m1} died before the new master was ready")
            if time.monotonic() >= deadline:
                self._abort_unready(m1)
            time.sleep(self.poll_interval)

    def _abort_unready(self, m1: int) -> None:
        """The new master is late: stop it so M1 rolls back by itself (nothing to undo)."""
        reason = f"new master not ready within {self.timeout:g} s"
        candidates = _new_master_candidates(m1)
        if not candidates:
            raise UpgradeError(f"{reason} (no new master process found)")
        for pid in candidates:
            self.on_step(f"{reason}; stopping {pid}")
            self._stop(pid)
        if not self._wait_until(lambda: self._read_pid() == m1):
            raise UpgradeError(
                f"{reason}; stopped {_pids(candidates)} but {self.pf.path} "
                f"does not name {m1} again"
            )
        self._wait_oldbin_released(m1)
        raise UpgradeError(f"{reason}; stopped {_pids(candidates)}")

    def _check_health(self, m1: int, m2: int, url: str) -> None:
        """Step 4: a bad build that boots but answers 5xx must not replace a good one."""
        self.on_step(f"checking {url}")
        from upgrade.health import wait_healthy  # an HTTP client only when asked for one

        failure = wait_healthy(url, self.timeout, self.poll_interval)
        if failure is None:
            self.on_step(f"health check passed: {url}")
            return
        self._roll_back_before_winch(m1, m2, f"health check failed: {failure}")

    def _roll_back_before_winch(self, m1: int, m2: int, reason: str) -> None:
        self.on_step(f"rolling back: {reason}")
        self._stop(m2)
        if not self._wait_until(lambda: self._read_pid() == m1 and not procs.is_alive(m2)):
            reason += f" (rollback incomplete: {self.pf.path} does not name {m1} again)"
        raise UpgradeError(reason, outcome="rolled back")

    def _drain(self, m1: int, m2: int) -> None:
        """Step 5: WINCH M1 and wait until only M2 is left among its children."""
        self._signal(m1, signal.SIGWINCH, "WINCH")
        started = time.monotonic()
        self.on_step(f"sent WINCH to {m1}; waiting for its workers to finish")
        deadline = self._deadline()
        while True:
            if not procs.is_alive(m2):
                self._roll_back_after_winch(m1, m2, f"new master {m2} exited during the drain")
            if not procs.is_alive(m1):
                self.report.notes.append(f"old master {m1} exited by itself during the drain")
                break
            if not _workers(m1, m2):
                break
            if time.monotonic() >= deadline:
                self._roll_back_after_winch(
                    m1, m2, f"old workers did not finish within {self.timeout:g} s"
                )
            time.sleep(self.poll_interval)
        self.report.drain_seconds = time.monotonic() - started
        self.on_step(f"old workers drained in {_secs(self.report.drain_seconds)}")

    def _roll_back_after_winch(self, m1: int, m2: int, reason: str) -> None:
        """HUP before QUIT so M1's workers are back before M2 stops accepting."""
        self.on_step(f"rolling back: {reason}")
        if not self._signal(m1, signal.SIGHUP, "HUP"):
            self.report.old_alive = False
            raise UpgradeError(f"{reason}; old master {m1} is gone, cannot roll back")
        if procs.is_alive(m2):
            self._stop(m2)
        if not self._wait_until(
            lambda: self._read_pid() == m1 and not procs.is_alive(m2) and bool(_workers(m1, m2))
        ):
            reason += f" (rollback incomplete: {m1} has no workers or {self.pf.path} names another)"
        raise UpgradeError(reason, outcome="rolled back")

    def _retire(self, m1: int, m2: int) -> None:
        """Step 6: QUIT M1; its workers are gone, so even SIGKILL loses nothing."""
        # Only M1 removes its .oldbin, on its way out; if it did not leave through our
        # QUIT (killed, or died on its own) there is nobody left to wait for.
        oldbin_wait = 0.0
        if procs.is_alive(m1):
            if not procs.is_alive(m2):
                self._roll_back_after_winch(m1, m2, f"new master {m2} exited before QUIT")
            self._signal(m1, signal.SIGQUIT, "QUIT")
            self.on_step(f"sent QUIT to {m1}; waiting for it to exit")
            oldbin_wait = self.timeout
            if not self._wait_until(lambda: not procs.is_alive(m1)):
                self.report.notes.append(
                    f"old master {m1} ignored QUIT for {self.timeout:g} s and was killed"
                )
                self._kill(m1)
                oldbin_wait = 0.0
        self.report.handover_seconds = time.monotonic() - self.t0
        self.on_step(f"old master {m1} gone; handover {_secs(self.report.handover_seconds)}")
        if not self._wait_until(lambda: _quiet(self.pf.read_oldbin) != m1, oldbin_wait):
            self.report.notes.append(f"{self.pf.oldbin_path} still names the old master {m1}")

    # -- helpers ----------------------------------------------------------------------

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def _wait_until(self, condition: Callable[[], bool], timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not condition():
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll_interval)
        return True

    def _read_pid(self) -> int | None:
        return _quiet(self.pf.read)

    def _wait_oldbin_released(self, m1: int) -> None:
        """M1 removes .oldbin last when it gives up; wait so a retry is not refused."""
        if not self._wait_until(lambda: _quiet(self.pf.read_oldbin) != m1):
            self.report.notes.append(f"{self.pf.oldbin_path} still names {m1}")

    def _signal(self, pid: int, sig: signal.Signals, name: str) -> bool:
        """False when the process is already gone; a permission problem stops the run."""
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            raise UpgradeError(
                f"not allowed to send {name} to {pid}: run as the master's user"
            ) from None
        return True

    def _stop(self, pid: int) -> None:
        """QUIT, then SIGKILL when the step's deadline passes: a new master that hangs must
        not block. A serving new master drains on QUIT (its workers finish their requests,
        idle keep-alive clients up to --keepalive), so it gets the whole step, not a few
        seconds that would cut requests short."""
        grace = max(KILL_GRACE, self.timeout)
        self._signal(pid, signal.SIGQUIT, "QUIT")
        if not self._wait_until(lambda: not procs.is_alive(pid), grace):
            self.on_step(f"{pid} ignored QUIT for {grace:g} s; sending SIGKILL")
            self._kill(pid)

    def _kill(self, pid: int) -> None:
        self._signal(pid, signal.SIGKILL, "KILL")
        self._wait_until(lambda: not procs.is_alive(pid), KILL_GRACE)


def _quiet(read: Callable[[], T]) -> T | None:
    """Pidfile reads race with masters rewriting them; a bad read is just "not yet"."""
    try:
        return read()
    except (OSError, ValueError):
        return None


def _new_failure(now: str | None, before: str | None, m1: int) -> str | None:
    """The reason from a failure record written since USR2 by M1, else None."""
    if now is None or now == before:
        return None
    parts = now.strip().split(None, 2)
    if not parts or parts[0] != str(m1):
        return None
    return parts[2] if len(parts) == 3 else "no reason given"


def _workers(m1: int, m2: int) -> list[int]:
    """M1's live children other than M2: zombies are already-finished workers."""
    return [pid for pid in procs.children(m1) if pid != m2 and procs.is_alive(pid)]


def _new_master_candidates(m1: int) -> list[int]:
    """Which child of M1 is the late new master.

    The environment is the surest sign (M1 sets HOTSWAP_PARENT_PID before exec); the
    process title is the fallback for a child that has not exec'd yet.
    """
    children = [pid for pid in procs.children(m1) if procs.is_alive(pid)]
    by_env = [
        pid for pid in children if (procs.environ(pid) or {}).get("HOTSWAP_PARENT_PID") == str(m1)
    ]
    if by_env:
        return by_env
    return [pid for pid in children if not procs.is_hotswap_worker(pid)]


def _generation(pid: int) -> int | None:
    """The new master's generation, None when it cannot be told.

    HOTSWAP_GENERATION is read from /proc/<pid>/environ, absent meaning 1. But
    setproctitle reuses the memory /proc shows as the environment, so a master that has
    set its title shows no variables at all: then only a "generation N" in its title can
    tell, and an empty environment must not be mistaken for "absent, so 1".
    """
    env = procs.environ(pid)
    if env:
        value = env.get("HOTSWAP_GENERATION")
        if value is None:
            return 1
        return int(value) if value.isdigit() else None
    match = _GENERATION_IN_TITLE.search(procs.cmdline(pid) or "")
    return int(match.group(1)) if match else None


def _pids(pids: list[int]) -> str:
    return ", ".join(str(pid) for pid in pids)
