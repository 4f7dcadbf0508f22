"""What the benchmark needs to know about processes, read straight from /proc.

Every number here (RSS, fds, zombies, leftovers) is about processes this benchmark
started, so the harness makes itself a child subreaper: a master retired by an upgrade
is re-parented to us rather than to pid 1 (which, in a container, may never reap it),
and anything left behind stays visible under our own pid.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass

PR_SET_CHILD_SUBREAPER = 36


@dataclass
class ProcInfo:
    pid: int
    ppid: int
    state: str
    pgrp: int
    title: str


def become_subreaper() -> bool:
    """Adopt orphaned descendants; False when the kernel refuses (we then see fewer leftovers)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def info(pid: int) -> ProcInfo | None:
    """Parse /proc/<pid>/stat; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("latin-1")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    return ProcInfo(pid, int(rest[1]), rest[0], int(rest[2]), cmdline(pid))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (/proc/<pid>/stat); None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("latin-1")
    except OSError:
        return None
    rest = raw[raw.rindex(")") + 2:].split()  # rest[0] is field 3 (state): utime, stime are 14, 15
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> dict[int, float]:
    """CPU time of `root` and of every live process below it, by pid."""
    pids = [root, *(p.pid for p in descendants(root) if p.state not in ("Z", "X"))]
    return {pid: cpu_seconds(pid) or 0.0 for pid in pids}


def tree_cpu_seconds(root: int) -> float:
    """CPU time of `root` and every live process below it: what a server spent, all workers included."""
    return sum(tree_cpu(root).values())


def cmdline(pid: int) -> str:
    """The title a process shows (setproctitle rewrites it), '' when gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("latin-1").strip()
    except OSError:
        return ""


def all_procs() -> list[ProcInfo]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            pinfo = info(int(name))
            if pinfo is not None:
                found.append(pinfo)
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie: a dead master waiting to be reaped has finished its handover."""
    pinfo = info(pid)
    return pinfo is not None and pinfo.state not in ("Z", "X")


def children(pid: int, table: list[ProcInfo] | None = None) -> list[ProcInfo]:
    return [p for p in (table if table is not None else all_procs()) if p.ppid == pid]


def descendants(root: int, table: list[ProcInfo] | None = None) -> list[ProcInfo]:
    """Every process below `root`, zombies included."""
    table = table if table is not None else all_procs()
    by_parent: dict[int, list[ProcInfo]] = {}
    for p in table:
        by_parent.setdefault(p.ppid, []).append(p)
    found: list[ProcInfo] = []
    todo = [root]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def _kb_field(path: str, field: str) -> int | None:
    """The kB value of `field:` in a /proc file of `name: value kB` lines; None when gone."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def status_kb(pid: int, field: str) -> int | None:
    """A kB field of /proc/<pid>/status (VmRSS, ...); None when gone."""
    return _kb_field(f"/proc/{pid}/status", field)


def pss_kb(pid: int, field: str = "Pss") -> int | None:
    """Proportional set size (or Pss_Anon, ...): shared pages split between their sharers."""
    return _kb_field(f"/proc/{pid}/smaps_rollup", field)


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def reap_orphans(keep: set[int]) -> int:
    """Reap zombie children of ours that no Popen object owns (retired masters); returns how many."""
    reaped = 0
    for child in children(os.getpid()):
        if child.state == "Z" and child.pid not in keep:
            try:
                pid, _status = os.waitpid(child.pid, os.WNOHANG)
            except ChildProcessError:
                continue
            reaped += pid == child.pid
    return reaped


def wait_until(condition, timeout: float, interval: float = 0.01) -> bool:
    """Poll `condition` until true or `timeout` seconds pass; every wait in the bench is bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def kill_tree(pids: list[int], grace: float = 5.0) -> None:
    """TERM these processes (ours, by pid), then KILL whatever of them or below them is left."""
    targets: set[int] = set()
    table = all_procs()
    for pid in pids:
        targets.add(pid)
        targets.update(p.pid for p in descendants(pid, table))
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    wait_until(lambda: not any(alive(pid) for pid in targets), grace, 0.05)
    for pid in targets:
        if alive(pid):
            _signal(pid, signal.SIGKILL)
    wait_until(lambda: not any(alive(pid) for pid in targets), grace, 0.05)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
