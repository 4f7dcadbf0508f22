"""The upgrade record: what the old master says about the upgrade it runs, on disk.

The old master owns the upgrade, so clients (`hotswap upgrade`, the shell script,
`hotswap status`, a deploy tool) only need to read. Two files sit next to PIDFILE:

- ``PIDFILE.upgrade``: the running (or last) upgrade, one line of ``key=value`` fields
  in a fixed order (`names.STATE_KEYS`), ``reason`` last because it may hold spaces.
  Replaced atomically at every step, so a reader never sees half a line and a POSIX
  shell can parse it with ``sed``.
- ``PIDFILE.history``: one JSON object per finished upgrade, appended (the same object
  `hotswap upgrade --json` prints).

Both are best effort: a master that cannot write them logs it and goes on serving.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

from pidfiles import PidfileError, write_atomic

from . import names

_last_ms = 0  # the newest record id's milliseconds: ids never repeat within a master
REQUEST_MAX_AGE = 60.0  # a request file older than this was left by a client long gone
HISTORY_MAX_BYTES = 256 * 1024  # past this, the older half of the history is dropped
_RESULTS = {
    names.STATE_COMMITTED: "upgraded",
    names.STATE_ROLLED_BACK: "rolled back",
    names.STATE_FAILED: "failed",
    names.STATE_REFUSED: "refused",
}


@dataclass
class UpgradeRecord:
    """One upgrade as the old master saw it; times are seconds since USR2."""

    id: str
    old: int
    state: str = names.STATE_STARTING
    new: int | None = None
    generation: int | None = None
    ready: float | None = None
    drain: float | None = None
    handover: float | None = None
    commit: float | None = None
    reason: str = ""
    started: float = field(default_factory=time.time)  # unix time of USR2

    @classmethod
    def begin(cls, old_pid: int) -> UpgradeRecord:
        """A new record whose id differs from every earlier one of this master, so a client
        can tell its own upgrade (or refusal) from the one before."""
        global _last_ms
        _last_ms = max(time.time_ns() // 1_000_000, _last_ms + 1)
        return cls(id=f"{old_pid}.{_last_ms}", old=old_pid)

    @property
    def final(self) -> bool:
        return self.state in names.FINAL_STATES

    @property
    def result(self) -> str:
        """What a person calls the outcome: upgraded, rolled back, failed, refused, running."""
        return _RESULTS.get(self.state, "running")

    def state_line(self) -> str:
        values = {
            "id": self.id, "state": self.state, "old": str(self.old), "new": _opt(self.new),
            "generation": _opt(self.generation), "ready": _secs(self.ready),
            "drain": _secs(self.drain), "handover": _secs(self.handover),
            "commit": _secs(self.commit), "reason": " ".join(self.reason.split()),
        }
        return " ".join(f"{key}={values[key]}" for key in names.STATE_KEYS) + "\n"

    def as_dict(self) -> dict[str, object]:
        """The history entry; the field names are the ones `hotswap upgrade --json` prints."""
        return {
            "id": self.id, "old_pid": self.old, "new_pid": self.new,
            "generation": self.generation, "result": self.result, "state": self.state,
            "reason": self.reason, "started": round(self.started, 3),
            "ready_seconds": self.ready, "drain_seconds": self.drain,
            "handover_seconds": self.handover, "commit_seconds": self.commit,
        }

    def line(self) -> str:
        """The one human line for any state, worded the same by every client."""
        if self.state == names.STATE_COMMITTED:
            return (f"upgraded: {self.old} -> {self.new} (generation {_opt(self.generation, '?')}), "
                    f"ready in {_human(self.ready)}, drained in {_human(self.drain)}, "
                    f"handover {_human(self.handover)}, committed after {_human(self.commit)}")
        if self.state == names.STATE_ROLLED_BACK:
            return f"upgrade rolled back, old master {self.old} still serving: {self.reason}"
        if self.state == names.STATE_FAILED:
            return f"upgrade failed, old master {self.old} still serving: {self.reason}"
        if self.state == names.STATE_REFUSED:
            return f"upgrade refused: {self.reason}"
        return self._progress()

    def _progress(self) -> str:
        """Where a running upgrade stands, as `hotswap upgrade` prints each step."""
        if self.state == names.STATE_STARTING:
            return f"new master {self.new} (generation {self.generation}) starting"
        if self.state == names.STATE_READY:
            return f"new master {self.new} ready in {self.ready or 0:.2f} s"
        if self.state == names.STATE_DRAINING:
            return f"old workers of {self.old} stopped accepting; finishing what they hold"
        if self.state == names.STATE_WATCHING:
            return f"handover done in {self.handover or 0:.2f} s; watch window runs"
        return f"upgrade {self.id} is {self.state}"


def parse_state_line(text: str) -> UpgradeRecord | None:
    """The record in a PIDFILE.upgrade line; None for anything malformed (a stranger's file)."""
    fields: dict[str, str] = {}
    rest = text.strip()
    for key in names.STATE_KEYS:
        prefix = f"{key}="
        if not rest.startswith(prefix):
            return None
        rest = rest[len(prefix):]
        if key == "reason":
            fields[key] = rest
            break
        value, _, rest = rest.partition(" ")
        fields[key] = value
    try:
        return UpgradeRecord(
            id=fields["id"], old=int(fields["old"]), state=fields["state"],
            new=_int(fields["new"]), generation=_int(fields["generation"]),
            ready=_float(fields["ready"]), drain=_float(fields["drain"]),
            handover=_float(fields["handover"]), commit=_float(fields["commit"]),
            reason=fields["reason"], started=0.0)
    except (KeyError, ValueError):
        return None


def state_path(pidfile: str) -> str:
    return pidfile + names.SUFFIX_STATE


def history_path(pidfile: str) -> str:
    return pidfile + names.SUFFIX_HISTORY


def read_state(pidfile: str) -> UpgradeRecord | None:
    try:
        with open(state_path(pidfile), encoding="utf-8", errors="replace") as fh:
            return parse_state_line(fh.read(8192))
    except OSError:
        return None


def write_state(pidfile: str, record: UpgradeRecord) -> None:
    """Replace PIDFILE.upgrade atomically (raises PidfileError; the caller logs it)."""
    write_atomic(state_path(pidfile), record.state_line(), "upgrade record")


def append_history(pidfile: str, record: UpgradeRecord) -> None:
    """Add the finished upgrade to PIDFILE.history (raises OSError or PidfileError; the
    caller logs it)."""
    path = history_path(pidfile)
    line = json.dumps(record.as_dict(), sort_keys=True) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        size = fh.tell()
    if size > HISTORY_MAX_BYTES:
        _trim(path)


def read_history(pidfile: str, last: int = 10) -> list[dict[str, object]]:
    """The newest `last` entries, oldest first; unreadable lines are skipped."""
    try:
        with open(history_path(pidfile), encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return []
    entries = []
    for text in lines[-last:] if last else lines:
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _trim(path: str) -> None:
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.readlines()
    write_atomic(path, "".join(lines[len(lines) // 2:]), "upgrade history")


def _opt(value: int | None, missing: str = "-") -> str:
    return missing if value is None else str(value)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _human(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} s"


def _int(text: str) -> int | None:
    return None if text == "-" else int(text)


def _float(text: str) -> float | None:
    return None if text == "-" else float(text)


class Recorder:
    """Writes the record next to PIDFILE for the old master; trouble is logged, never fatal."""

    def __init__(self, pidfile: str | None, log: logging.Logger) -> None:
        self.pidfile = pidfile
        self.log = log

    def update(self, rec: UpgradeRecord, state: str, reason: str | None = None) -> None:
        rec.state = state
        if reason is not None:
            rec.reason = reason
        if self.pidfile is None:
            return
        try:
            write_state(self.pidfile, rec)
            if rec.final:
                append_history(self.pidfile, rec)
        except PidfileError as exc:
            self.log.error("upgrade record: %s", exc)
        except OSError as exc:
            self.log.error("upgrade record: cannot write next to %s: %s", self.pidfile,
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
