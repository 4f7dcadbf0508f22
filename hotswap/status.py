"""What `hotswap status` shows, read from the pidfiles, the upgrade's files and /proc only.

No control socket: PIDFILE and PIDFILE.oldbin name the masters, /proc says which of them
really are hotswap masters (pidfiles.Pidfile.identify), their workers, a new master still
booting, generation and start time; PIDFILE.upgrade is the running upgrade's state and
PIDFILE.history its predecessors. Reading them cannot disturb a live master.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pidfiles import DEAD, MASTER, MISSING, REUSED, SAME, STRANGER, UNREADABLE, Finding, Pidfile, procs
from upgrade import record
from upgrade.names import ENV_GENERATION
from upgrade.record import UpgradeRecord

HISTORY_SHOWN = 5

# Verdicts on PIDFILE that must stop a command: something is there, and it is not ours.
SUSPECT = (STRANGER, REUSED, UNREADABLE)


def gather(pidfile: Pidfile) -> dict[str, Any]:
    """Everything `hotswap status` prints, as one JSON-ready dict."""
    current = pidfile.identify()
    oldbin = pidfile.identify_oldbin(current)
    masters: list[dict[str, Any]] = []
    if oldbin.is_master:
        masters.append(describe(oldbin.pid, "old"))  # type: ignore[arg-type]
    if current.is_master:
        masters.append(describe(current.pid, "current"))  # type: ignore[arg-type]
    listed = {m["pid"] for m in masters}
    for parent in list(listed):
        for child in procs.new_masters_of(parent):
            if child not in listed:
                masters.append(describe(child, "new"))
                listed.add(child)
    state = record.read_state(pidfile.path)
    running = state is not None and state_is_running(state, record.state_path(pidfile.path))
    upgrading = running or any(m["role"] in ("old", "new") for m in masters)
    return {
        "pidfile": pidfile.path,
        "masters": masters,
        "upgrade_in_progress": upgrading,
        "upgrade": _state_dict(state),
        "upgrade_line": _state_line(state, running),
        "history": record.read_history(pidfile.path, HISTORY_SHOWN),
        "findings": _findings(current, oldbin, upgrading),
        "pidfile_verdict": current.verdict,
        "pidfile_message": current.message,
    }


def _findings(current: Finding, oldbin: Finding, upgrading: bool) -> list[str]:
    """What the operator should know about files that name no master (ignored, not fatal)."""
    notes = []
    if current.verdict not in (MISSING, MASTER):
        notes.append(current.message)
    if oldbin.verdict == SAME and upgrading:
        pass  # the old master has not handed over yet: .oldbin and PIDFILE both name it
    elif oldbin.verdict not in (MISSING, MASTER):
        notes.append(f"{oldbin.message} (stale, ignored)")
    return notes


def describe(pid: int, role: str) -> dict[str, Any]:
    """One master: role (old/current/new), pid, generation, workers, start time, title."""
    env = procs.environ(pid) or {}
    generation = env.get(ENV_GENERATION, "1" if env else None)
    return {
        "role": role,
        "pid": pid,
        "generation": int(generation) if generation and generation.isdigit() else None,
        "workers": procs.hotswap_workers(pid),
        "started": procs.start_time(pid),
        "title": procs.cmdline(pid),
        "booting": role == "new",  # not yet named by PIDFILE: it has not said READY
    }


def state_is_running(rec: UpgradeRecord, path: str) -> bool:
    """True if the state is not final and its old master is alive and wrote the file.

    A state left by an old master that was killed (or whose pid now belongs to someone
    else) is not a running upgrade, whatever it says.
    """
    if rec.final:
        return False
    try:
        written = os.stat(path).st_mtime
    except OSError:
        return False
    return procs.is_hotswap_master(rec.old, written)


def _state_dict(rec: UpgradeRecord | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    found = rec.as_dict()
    found.pop("started", None)  # not in the state file: the record only knows it in memory
    return found


# -- text -------------------------------------------------------------------------------


def render(status: dict[str, Any]) -> list[str]:
    """The lines `hotswap status` prints."""
    lines = [_master_line(m) for m in status["masters"]]
    if not status["masters"]:
        lines.append(f"not running (pidfile {status['pidfile']})")
    if status["upgrade_line"]:
        lines.append(status["upgrade_line"])
    elif status["upgrade_in_progress"]:
        lines.append("upgrade in progress")
    lines.extend(f"note: {note}" for note in status["findings"])
    if status["history"]:
        lines.append(f"history (last {len(status['history'])}):")
        lines.extend(f"  {history_line(r)}" for r in status["history"])
    return lines


def _master_line(m: dict[str, Any]) -> str:
    started = _when(m["started"])
    what = "master, booting" if m["booting"] else "master"
    return (f"{m['role']}: {what} {m['pid']}, generation {m['generation'] or '?'}, "
            f"{len(m['workers'])} worker(s) {m['workers']}, started {started}")


def _when(moment: Any) -> str:
    if not isinstance(moment, (int, float)):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment))


def _seconds(label: str, value: Any) -> str | None:
    if not isinstance(value, (int, float)):
        return None
    return f"{label} {value:.2f} s"


def _state_line(rec: UpgradeRecord | None, running: bool) -> str | None:
    """The running upgrade's step, or how the last one ended, in the clients' words."""
    if rec is None:
        return None
    if rec.final:
        return f"last upgrade ({rec.id}): {rec.line()}"
    if not running:
        return (f"upgrade {rec.id} stopped at {rec.state}: its old master {rec.old} is gone "
                f"(stale, ignored)")
    parts = [f"upgrade in progress ({rec.id}): {rec.state}, {rec.old} -> {_opt(rec.new)} "
             f"(generation {_opt(rec.generation)})"]
    for label, value in (("ready in", rec.ready), ("drained in", rec.drain),
                         ("handover", rec.handover)):
        if value is not None:
            parts.append(f"{label} {value:.2f} s")
    return ", ".join(parts)


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)


def history_line(entry: dict[str, Any]) -> str:
    """One PIDFILE.history entry as a line."""
    parts = [f"{_when(entry.get('started'))} {entry.get('old_pid', '?')} -> "
             f"{entry.get('new_pid', '?')} (generation {entry.get('generation', '?')}): "
             f"{entry.get('result', '?')}"]
    for label, key in (("ready in", "ready_seconds"), ("drained in", "drain_seconds"),
                       ("handover", "handover_seconds"), ("committed after", "commit_seconds")):
        shown = _seconds(label, entry.get(key))
        if shown:
            parts.append(shown)
    text = ", ".join(parts)
    reason = entry.get("reason")
    return f"{text}: {reason}" if reason not in (None, "", "-") else text


def not_running_message(pidfile: Pidfile, current: Finding) -> str:
    """Why no master was found, in the words `stop` and `reload` have always used."""
    base = f"no running master found through {pidfile.path}"
    return f"{base}: {current.message}" if current.verdict == DEAD else base
