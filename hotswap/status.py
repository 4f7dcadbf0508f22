"""What `hotswap status` shows, read from the pidfiles and /proc only.

No control socket: the pidfile pair and /proc already say which masters run, their
workers, generation and start time, and reading them cannot disturb a live master.
"""

from __future__ import annotations

from typing import Any

from pidfiles import Pidfile, PidfileError, procs


def describe_masters(pidfile: Pidfile) -> tuple[list[dict[str, Any]], bool]:
    """The live masters named by PIDFILE ("current") and PIDFILE.oldbin ("old"), and
    whether an upgrade is in progress (an old master is still alive)."""
    masters = []
    seen: set[int] = set()
    for role, reader in (("old", pidfile.read_oldbin), ("current", pidfile.read)):
        try:
            pid = reader()
        except PidfileError:
            pid = None
        if pid is None or pid in seen or not procs.is_hotswap_master(pid):
            continue
        seen.add(pid)
        masters.append(describe(pid, role))
    upgrading = any(m["role"] == "old" for m in masters)
    return masters, upgrading


def describe(pid: int, role: str) -> dict[str, Any]:
    env = procs.environ(pid) or {}
    generation = env.get("HOTSWAP_GENERATION", "1" if env else None)
    workers = procs.hotswap_workers(pid)
    return {
        "role": role,
        "pid": pid,
        "generation": int(generation) if generation and generation.isdigit() else None,
        "workers": workers,
        "started": procs.start_time(pid),
        "title": procs.cmdline(pid),
    }
