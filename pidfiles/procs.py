"""Small readers of Linux ``/proc`` about other processes.

A pidfile only holds a number; these helpers answer the questions that turn
that number into a decision (is it still alive, is it really a hotswap master,
which workers does it have). Every helper answers ``None`` (or ``False`` /
``[]``) instead of raising when the process is gone, because a process can
exit between any two lines of the caller and that is never an error here.
"""

from __future__ import annotations

import os

# Defined here, where they are checked; upgrade.names re-exports them with the rest of the
# protocol's names.
TITLE_MASTER = "hotswap: master"  # exact title of a master, optionally followed by " [NAME]"
TITLE_WORKER = "hotswap: worker"
ENV_PARENT_PID = "HOTSWAP_PARENT_PID"  # in a booting new master's environment: the old master

_PROC = "/proc"


def _read_bytes(path: str) -> bytes | None:
    """Return a /proc file's bytes, or None when the process (or /proc) is gone."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        # ENOENT/ESRCH: the process exited; EACCES: another user's process
        # with hidepid. Either way there is nothing trustworthy to report.
        return None


def _status(pid: int) -> dict[str, str] | None:
    """Parse /proc/<pid>/status into {key: value}; None when the process is gone."""
    raw = _read_bytes(f"{_PROC}/{pid}/status")
    if raw is None:
        return None
    fields: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def _is_zombie(status: dict[str, str]) -> bool:
    """Zombies (Z) and dead (X) entries hold a pid but run nothing."""
    return status.get("State", "")[:1] in ("Z", "X")


def _proc_mounted() -> bool:
    return os.path.exists(f"{_PROC}/self/status")


def is_alive(pid: int) -> bool:
    """True if ``pid`` is a running process.

    ``kill(pid, 0)`` alone is not enough: a zombie still answers it, yet a
    master that has exited but not been reaped by its parent holds no
    sockets and serves nothing, so a pidfile naming it is stale. A process
    we may not signal (EPERM) does exist, so it counts as alive.
    """
    if pid <= 0:
        # kill(0, ...) and kill(-n, ...) address process groups, never one process.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OverflowError:
        return False
    status = _status(pid)
    if status is None:
        # Gone since the kill(), unless /proc is simply not there to ask.
        return not _proc_mounted()
    return not _is_zombie(status)


def cmdline(pid: int) -> str | None:
    """The process's command line as one string, or None if it is gone.

    Arguments are joined with spaces (lossy, but enough to recognise a
    program, and setproctitle titles read naturally). Kernel threads and
    zombies have an empty command line and give ``""``.
    """
    raw = _read_bytes(f"{_PROC}/{pid}/cmdline")
    if raw is None:
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def title(pid: int) -> str | None:
    """The process title exactly as set, or None when it is not one single argument.

    setproctitle writes the title over the argument area and pads it with NULs, so
    /proc/PID/cmdline reads ``title\\0\\0...``. A NUL *inside* means several arguments:
    ``["hotswap: mast", "er"]`` is no title, although joined with spaces or with the
    NULs dropped (as a shell does) it would read like one.
    """
    raw = _read_bytes(f"{_PROC}/{pid}/cmdline")
    if raw is None:
        return None
    text = raw.rstrip(b"\0")
    if not text or b"\0" in text:
        return None
    return text.decode("utf-8", "replace")


def _has_title(pid: int, role_title: str) -> bool:
    """True if ``pid`` is titled exactly ``role_title`` or ``role_title [NAME]``."""
    found = title(pid)
    if found is None:
        return False
    return found == role_title or (found.startswith(role_title + " [") and found.endswith("]"))


def started_by(pid: int, moment: float) -> bool:
    """True if ``pid`` started no later than ``moment`` (a Unix time, e.g. a file's mtime).

    A master always starts before it writes its pidfile; a process that got the pid
    after the master died started after. start_time() is rounded down (boot time is
    truncated to the second, ticks to 1/100 s), so a real master is never judged to
    have started late; a stranger that started less than a second after the write
    would slip through, which pid reuse practically never produces.
    """
    started = start_time(pid)
    return started is not None and started <= moment


def is_hotswap_master(pid: int, written_at: float | None = None) -> bool:
    """True if ``pid`` is a live hotswap master (that wrote a file at ``written_at``).

    Pids are reused: after a crash or reboot the number in a pidfile may belong to
    another program, even one whose command line mentions "hotswap" or that titled
    itself like a master. So a master is recognised by its exact title
    (``hotswap: master`` or ``hotswap: master [NAME]``) and, when the caller knows when
    the pidfile was written (its mtime), by having started before that.
    """
    if not is_alive(pid) or not _has_title(pid, TITLE_MASTER):
        return False
    return written_at is None or started_by(pid, written_at)


def is_hotswap_worker(pid: int) -> bool:
    """True if ``pid`` is titled exactly like a worker (``hotswap: worker[ [NAME]]``)."""
    return is_alive(pid) and _has_title(pid, TITLE_WORKER)


def hotswap_workers(pid: int) -> list[int]:
    """The live children of master ``pid`` that are workers (not a new master it forked)."""
    return [child for child in children(pid) if is_hotswap_worker(child)]


def is_new_master_of(pid: int, parent: int) -> bool:
    """True if ``pid`` is a new master forked by master ``parent`` for an upgrade.

    Before it sets its title, a booting new master is only recognisable this way: a
    child of the old master whose exec-time environment names that parent. Both facts
    together cannot hold for a stranger.
    """
    if parent_pid(pid) != parent or not is_alive(pid):
        return False
    return (environ(pid) or {}).get(ENV_PARENT_PID) == str(parent)


def new_masters_of(parent: int) -> list[int]:
    """The new masters ``parent`` forked (booting or ready) that are still its children."""
    return [child for child in children(parent) if is_new_master_of(child, parent)]


def parent_pid(pid: int) -> int | None:
    """The parent's pid (PPid), or None if the process is gone."""
    status = _status(pid)
    if status is None:
        return None
    try:
        return int(status["PPid"])
    except (KeyError, ValueError):
        return None


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid``, sorted; zombies are left out.

    Scanning /proc is the only way to see another process's children
    without being its parent; a zombie child has already stopped working,
    so it is not reported as one of a master's workers.
    """
    listed = _children_files(pid)
    if listed is not None:
        alive = []
        for child in listed:
            status = _status(child)
            if status is not None and not _is_zombie(status) and status.get("PPid") == str(pid):
                alive.append(child)
        return sorted(alive)
    found: list[int] = []
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        status = _status(int(name))
        if status is None or _is_zombie(status):
            continue
        if status.get("PPid") == str(pid):
            found.append(int(name))
    found.sort()
    return found


def _children_files(pid: int) -> list[int] | None:
    """Children from /proc/PID/task/*/children (CONFIG_PROC_CHILDREN): a few small reads
    instead of a scan of every process, which matters to an upgrade client that polls a
    master's children every few milliseconds. None when the kernel does not offer it."""
    try:
        tasks = os.listdir(f"{_PROC}/{pid}/task")
    except FileNotFoundError:
        return []  # the process is gone, and so are its children's ties to it
    except OSError:
        return None
    pids: list[int] = []
    for tid in tasks:
        raw = _read_bytes(f"{_PROC}/{pid}/task/{tid}/children")
        if raw is None:
            if os.path.exists(f"{_PROC}/{pid}/task/{tid}"):
                return None  # the thread is there but the file is not: no such feature
            continue  # the thread ended while we looked
        pids.extend(int(part) for part in raw.split())
    return pids


def _boot_time() -> float | None:
    raw = _read_bytes(f"{_PROC}/stat")
    if raw is None:
        return None
    for line in raw.decode("ascii", "replace").splitlines():
        if line.startswith("btime "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def start_time(pid: int) -> float | None:
    """Unix time at which ``pid`` started, or None if it is gone.

    A pid plus its start time identifies one process even across pid
    reuse. Field 2 of /proc/<pid>/stat is the command name in parentheses
    and may itself contain spaces and ')', so fields are counted only
    after the last ')'.
    """
    raw = _read_bytes(f"{_PROC}/{pid}/stat")
    boot = _boot_time()
    if raw is None or boot is None:
        return None
    _, sep, rest = raw.rpartition(b")")
    if not sep:
        return None
    # rest starts at field 3 (state), so field N is at index N - 3.
    fields = rest.split()
    try:
        ticks = int(fields[22 - 3])
    except (IndexError, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def open_fd_count(pid: int) -> int | None:
    """How many file descriptors ``pid`` holds; None if gone or not ours to see."""
    try:
        return len(os.listdir(f"{_PROC}/{pid}/fd"))
    except OSError:
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes (VmRSS).

    None when the process is gone, and also for zombies and kernel threads,
    which have no VmRSS line: they have no memory of their own to report.
    """
    status = _status(pid)
    if status is None:
        return None
    value = status.get("VmRSS")
    if not value:
        return None
    parts = value.split()
    try:
        amount = int(parts[0])
    except (IndexError, ValueError):
        return None
    unit = parts[1].lower() if len(parts) > 1 else "kb"
    scale = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}.get(unit, 1024)
    return amount * scale


def environ(pid: int) -> dict[str, str] | None:
    """The environment `pid` was exec'd with (not later changes), or None if unreadable."""
    raw = _read_bytes(f"{_PROC}/{pid}/environ")
    if raw is None:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env
