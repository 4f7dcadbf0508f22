"""The old master's side of an upgrade, as explicit state.

From USR2 to the end, one `Handover` says where the upgrade stands:

    starting ──READY──> ready ──park──> draining ──all parked──> watching ──window──> commit
        │                 │                │                        │
        └─ new master     └────────────────┴──── FAILED / new master exits ──> rolling back
           fails: failed

`ready` only lasts while an operator drives the upgrade by hand (`--upgrade-mode
manual`); the automatic mode parks the old workers at once. Parked workers keep the
old app loaded until the commit, which is what lets a rollback serve the old code.
The record (PIDFILE.upgrade, PIDFILE.history) follows every transition, so clients
only ever read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pidfiles import PidfileError
from upgrade import names, record
from upgrade.readiness import ReadinessReader
from upgrade.record import UpgradeRecord

Phase = Literal["starting", "ready", "draining", "watching", "rolling back"]
REQUEST_MAX_AGE = 60.0  # a request file older than this was left by a client long gone


@dataclass
class Handover:
    """One upgrade this master started."""

    pid: int  # the new master
    reader: ReadinessReader
    record: UpgradeRecord
    manual: bool
    started: float = field(default_factory=time.monotonic)
    deadline: float = 0.0  # the new master must be ready by then
    phase: Phase = "starting"
    failure: str = ""
    term_sent: float | None = None
    parked_at: float | None = None
    watch_until: float = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def new_serves(self) -> bool:
        """The new generation said READY: both may serve, and stopping us loses nothing."""
        return self.phase != "starting"


class RecordKeeper:
    """Writes the record next to PIDFILE; trouble is logged, never fatal."""

    def __init__(self, pidfile: str | None, log_error: Callable[..., None]) -> None:
        self.pidfile = pidfile
        self.log_error = log_error

    def update(self, rec: UpgradeRecord, state: str, reason: str | None = None) -> None:
        rec.state = state
        if reason is not None:
            rec.reason = reason
        if self.pidfile is None:
            return
        try:
            record.write_state(self.pidfile, rec)
            if rec.final:
                record.append_history(self.pidfile, rec)
        except PidfileError as exc:
            self.log_error("upgrade record: %s", exc)
        except OSError as exc:
            self.log_error("upgrade record: cannot write next to %s: %s", self.pidfile,
                           exc.strerror or exc)

    def refused(self, pid: int, reason: str) -> None:
        self.update(UpgradeRecord.begin(pid), names.STATE_REFUSED, reason)

    def take_request(self) -> dict[str, str]:
        """Options a client left for this upgrade (`hotswap upgrade --health-url`), consumed."""
        if self.pidfile is None:
            return {}
        path = self.pidfile + names.SUFFIX_REQUEST
        try:
            age = time.time() - os.stat(path).st_mtime
            with open(path, encoding="utf-8") as fh:
                data = json.loads(fh.read(8192))
            os.unlink(path)
        except (OSError, ValueError):
            return {}
        if age > REQUEST_MAX_AGE or not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}
