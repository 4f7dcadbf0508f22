"""Client side of a live upgrade: send USR2, then follow what the old master reports.

The old master runs the whole upgrade (ready, health gate, drain, watch window, commit
or rollback) by itself, so this client owns nothing: killing it at any moment changes
nothing in the outcome. It checks that PIDFILE names a live hotswap master, leaves the
options of this upgrade (`--health-url`) in PIDFILE.upgrade-request, sends USR2, and
reads PIDFILE.upgrade until the upgrade it started reaches a final state.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from pidfiles import Pidfile, PidfileError, procs, write_atomic

from . import names, record
from .record import UpgradeRecord


@dataclass
class UpgradeReport:
    """The record of the upgrade we followed, or why there is none."""

    record: UpgradeRecord | None
    problem: str = ""  # set when we could not start or follow the upgrade

    @property
    def outcome(self) -> str:
        if self.record is None:
            return "failed"
        return "upgraded" if self.record.state == names.STATE_COMMITTED else self.record.result

    def line(self) -> str:
        if self.problem:
            return f"upgrade failed: {self.problem}" if self.record is None else self.problem
        assert self.record is not None
        return self.record.line()

    def as_json(self) -> str:
        data: dict[str, object] = self.record.as_dict() if self.record else {"result": "failed"}
        data["line"] = self.line()
        data["outcome"] = self.outcome
        if self.problem:
            data["problem"] = self.problem
        return json.dumps(data, sort_keys=True)


def run_upgrade(
    pidfile: str,
    timeout: float = 60.0,
    health_url: str | None = None,
    poll_interval: float = 0.02,
    on_step: Callable[[str], None] | None = None,
) -> UpgradeReport:
    """Trigger one upgrade of the master named by `pidfile` and follow it to its end.

    Never raises for an upgrade that goes wrong: the report says what happened.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    step = on_step or (lambda _message: None)
    path = os.fspath(pidfile)
    m1, problem = find_master(Pidfile(path))
    if m1 is None:
        return UpgradeReport(None, problem)
    before = record.read_state(path)
    if health_url:
        try:
            write_atomic(path + names.SUFFIX_REQUEST, json.dumps({"health_url": health_url}),
                         "upgrade request")
        except PidfileError as exc:
            return UpgradeReport(None, str(exc))
    try:
        os.kill(m1, signal.SIGUSR2)
    except ProcessLookupError:
        return UpgradeReport(None, f"master {m1} exited before USR2 reached it")
    except PermissionError:
        return UpgradeReport(None, f"not allowed to signal {m1}: run as the master's user")
    step(f"sent USR2 to master {m1}")
    return _follow(path, m1, before.id if before else None, timeout, poll_interval, step)


def find_master(pf: Pidfile) -> tuple[int | None, str]:
    """The live master PIDFILE names, or None and what was found instead (never signalled)."""
    found = pf.identify()
    if not found.is_master or found.pid is None:
        return None, f"no running master: {found.message}; nothing was signalled"
    return found.pid, ""


def _follow(path: str, m1: int, before_id: str | None, timeout: float, interval: float,
            step: Callable[[str], None]) -> UpgradeReport:
    deadline = time.monotonic() + timeout
    seen_state = ""
    while True:
        rec = record.read_state(path)
        if rec is not None and rec.id != before_id and rec.old == m1:
            if rec.state != seen_state:
                seen_state = rec.state
                step(rec.line())
            if rec.final:
                if rec.state == names.STATE_COMMITTED:
                    _wait_gone(m1, min(5.0, max(0.0, deadline - time.monotonic())), interval)
                return UpgradeReport(rec)
        elif not procs.is_alive(m1):
            return UpgradeReport(None, f"master {m1} exited before it reported the upgrade")
        if time.monotonic() >= deadline:
            return _timed_out(rec if rec is not None and rec.id != before_id else None, timeout)
        time.sleep(interval)


def _wait_gone(pid: int, timeout: float, interval: float) -> None:
    """The old master writes `committed` on its way out: returning only once it is gone
    lets the next upgrade start at once (the new master refuses USR2 while it lives)."""
    deadline = time.monotonic() + timeout
    while procs.is_alive(pid) and time.monotonic() < deadline:
        time.sleep(interval)


def _timed_out(rec: UpgradeRecord | None, timeout: float) -> UpgradeReport:
    where = f"it is {rec.state}" if rec else "the master did not report it"
    return UpgradeReport(rec, f"upgrade not finished after {timeout:g} s ({where}); it goes on "
                              "in the server, which finishes or rolls it back by itself")
