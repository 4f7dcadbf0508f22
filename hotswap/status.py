"""What `hotswap status` shows, read from the pidfiles, the upgrade's files and /proc only.

No control socket: PIDFILE and PIDFILE.oldbin name the masters, /proc says which of them
really are hotswap masters (pidfiles.Pidfile.identify), their workers, a new master still
booting, generation and start time; PIDFILE.upgrade is the running upgrade's state and
PIDFILE.history its predecessors. Reading them cannot disturb a live master.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pidfiles import DEAD, MASTER, MISSING, REUSED, SAME, STRANGER, UNREADABLE, Finding, Pidfile, procs
from upgrade.names import (
    ENV_GENERATION,
    FINAL_STATES,
    STATE_KEYS,
    SUFFIX_HISTORY,
    SUFFIX_STATE,
    TITLE_MASTER,
)

HISTORY_SHOWN = 5
_HISTORY_TAIL = 64 * 1024  # the history grows forever; only its end is read
_STATE_LIMIT = 4096

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
    state = read_state(pidfile.path + SUFFIX_STATE)
    running = state is not None and state_is_running(state, pidfile.path + SUFFIX_STATE)
    upgrading = running or any(m["role"] in ("old", "new") for m in masters)
    return {
        "pidfile": pidfile.path,
        "masters": masters,
        "upgrade_in_progress": upgrading,
        "upgrade": state,
        "history": read_history(pidfile.path + SUFFIX_HISTORY),
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
    title = procs.title(pid)
    return {
        "role": role,
        "pid": pid,
        "generation": int(generation) if generation and generation.isdigit() else None,
        "workers": procs.hotswap_workers(pid),
        "started": procs.start_time(pid),
        "title": procs.cmdline(pid),
        "booting": role == "new" and not (title or "").startswith(TITLE_MASTER),
    }


def parse_state(line: str) -> dict[str, str] | None:
    """One PIDFILE.upgrade line as {key: value}; None unless every key is there in order.

    The reason is last and runs to the end of the line, so it may hold spaces and "=".
    """
    fields: dict[str, str] = {}
    rest = line.strip()
    for key in STATE_KEYS:
        prefix = f"{key}="
        if not rest.startswith(prefix):
            return None
        if key == STATE_KEYS[-1]:
            fields[key] = rest[len(prefix):]
            break
        value, _, rest = rest[len(prefix):].partition(" ")
        fields[key] = value
    return fields


def read_state(path: str) -> dict[str, str] | None:
    """The upgrade state file's fields, or None when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_STATE_LIMIT)
    except OSError:
        return None
    line = raw.decode("utf-8", "replace").partition("\n")[0]
    return parse_state(line)


def state_is_running(state: dict[str, str], path: str) -> bool:
    """True if the state is not final and its old master is alive and wrote the file.

    A state left by an old master that was killed (or whose pid now belongs to someone
    else) is not a running upgrade, whatever it says.
    """
    if state.get("state") in FINAL_STATES:
        return False
    old = state.get("old", "")
    try:
        written = os.stat(path).st_mtime
    except OSError:
        return False
    return old.isdigit() and procs.is_hotswap_master(int(old), written)


def read_history(path: str, count: int = HISTORY_SHOWN) -> list[dict[str, Any]]:
    """The last ``count`` JSON records of PIDFILE.history; garbled lines are skipped."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - _HISTORY_TAIL))
            raw = f.read()
    except OSError:
        return []
    lines = raw.decode("utf-8", "replace").splitlines()
    if len(raw) == _HISTORY_TAIL:
        lines = lines[1:]  # the first one is probably cut
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records[-count:]


# -- text -------------------------------------------------------------------------------


def render(status: dict[str, Any]) -> list[str]:
    """The lines `hotswap status` prints."""
    lines = [_master_line(m) for m in status["masters"]]
    if not status["masters"]:
        lines.append(f"not running (pidfile {status['pidfile']})")
    state = status["upgrade"]
    if state is not None and (status["upgrade_in_progress"] or state["state"] in FINAL_STATES):
        label = "upgrade in progress" if status["upgrade_in_progress"] else "last upgrade"
        lines.append(f"{label}: {state_line(state)}")
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
    if value in (None, "-", ""):
        return None
    try:
        return f"{label} {float(value):.3f} s"
    except (TypeError, ValueError):
        return None


def state_line(state: dict[str, str]) -> str:
    """``<state>, <old> -> <new> (generation G), ready in X s, ...[: reason]`` from PIDFILE.upgrade."""
    parts = [f"{state['state']}, {state['old']} -> {state['new']} "
             f"(generation {state['generation']}, id {state['id']})"]
    for label, key in (("ready in", "ready"), ("drained in", "drain"), ("handover", "handover"),
                       ("commit after", "commit")):
        shown = _seconds(label, state.get(key))
        if shown:
            parts.append(shown)
    text = ", ".join(parts)
    reason = state.get("reason", "-")
    return f"{text}: {reason}" if reason not in ("", "-") else text


def history_line(record: dict[str, Any]) -> str:
    """One PIDFILE.history record as a line."""
    parts = [f"{_when(record.get('started'))} {record.get('old_pid', '?')} -> "
             f"{record.get('new_pid', '?')} (generation {record.get('generation', '?')}): "
             f"{record.get('result', '?')}"]
    for label, key in (("ready in", "ready_seconds"), ("drained in", "drain_seconds"),
                       ("handover", "handover_seconds"), ("commit after", "commit_seconds")):
        shown = _seconds(label, record.get(key))
        if shown:
            parts.append(shown)
    text = ", ".join(parts)
    reason = record.get("reason")
    return f"{text}: {reason}" if reason not in (None, "", "-") else text


def not_running_message(pidfile: Pidfile, current: Finding) -> str:
    """Why no master was found, in the words `stop` and `reload` have always used."""
    base = f"no running master found through {pidfile.path}"
    return f"{base}: {current.message}" if current.verdict == DEAD else base
