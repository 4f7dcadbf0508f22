"""Soak: many consecutive hotswap upgrades under light load, watching for slow leaks.

A leak in the upgrade path does not show in one upgrade: an fd inherited by mistake is
one more per generation, an unreaped child is one more zombie each time. So the current
master is examined before the first upgrade, every few upgrades, and after the last,
and after the final stop the folder and the process tree are checked for leftovers.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import proctree
from continuity import Load
from servers import HOTSWAP_T2, WATCH_WINDOW, Server
from summary import median

from upgrade import names


def fd_kinds(pid: int) -> dict[str, int]:
    """What the fds of `pid` point at (socket, pipe, anon_inode, file), to name a leak."""
    kinds: Counter[str] = Counter()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        kinds[target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "file"] += 1
    return dict(sorted(kinds.items()))


def state(server: Server, load_pid: int | None) -> dict:
    """The current master and everything around it that could have leaked."""
    proctree.reap_orphans(set())
    master = server.master_pid()
    table = proctree.all_procs()
    mine = proctree.descendants(os.getpid(), table)
    workers = set(server.workers_of(master)) if master else set()
    expected = {master, load_pid, *workers}
    return {
        "master": master,
        "master_fds": proctree.fd_count(master) if master else None,
        "master_fd_kinds": fd_kinds(master) if master else {},
        "master_rss_kb": proctree.status_kb(master, "VmRSS") if master else None,
        "workers": len(workers),
        "worker_rss_kb": [proctree.status_kb(w, "VmRSS") for w in sorted(workers)],
        "zombies": sum(1 for p in mine if p.state == "Z"),
        "leftover_processes": [f"{p.pid} {p.state} {p.title[:60]}" for p in mine
                               if p.pid not in expected and p.state != "Z"],
        "files": sorted(p.name for p in server.folder.iterdir() if p.name != "server.log"),
    }


def run(folder: Path, upgrades: int, every: int, threads: int, interval: float, gap: float,
        log: Callable[[str], None], watch_window: float = WATCH_WINDOW) -> dict:
    """`upgrades` upgrades, `gap` s apart after each commit; each one waits out `watch_window`."""
    server = Server(HOTSWAP_T2, folder, workers=2, tcp=True, unix=True, watch_window=watch_window)
    server.start()
    ups = []
    series = []
    load = None
    try:
        load = Load(server.target(False), folder.parent / "soak-load.json", threads, False, interval,
                    max_seconds=3600)
        begin = state(server, load.proc.pid)
        series.append({"upgrade": 0, **_brief(begin)})
        for i in range(1, upgrades + 1):
            up = server.upgrade()
            ups.append(up)
            if not up.ok:
                log(f"soak upgrade {i} failed: {up.reason}")
                if not (server.master_pid() and proctree.alive(server.master_pid() or 0)):
                    break
            if i % every == 0 or i == upgrades:
                snap = state(server, load.proc.pid)
                series.append({"upgrade": i, **_brief(snap)})
                log(f"soak {i}/{upgrades}: master fds {snap['master_fds']}, "
                    f"RSS {snap['master_rss_kb']} kB, zombies {snap['zombies']}, "
                    f"leftovers {len(snap['leftover_processes'])}")
            time.sleep(gap)
        end = state(server, load.proc.pid)
        rows = load.stop()
        load = None
    finally:
        if load is not None:
            load.stop()
        server.stop()
    time.sleep(0.2)
    records = upgrade_records(server.pidfile)
    after = {
        "files": sorted(p.name for p in folder.iterdir() if p.name not in ("server.log", *records)),
        "records": sorted(p.name for p in folder.iterdir() if p.name in records),
        "processes": [f"{p.pid} {p.state} {p.title[:60]}"
                      for p in proctree.descendants(os.getpid())],
    }
    failures = Counter(k for k in rows["kind"] if k != "ok")
    good = [u for u in ups if u.ok]
    return {
        "upgrades": len(ups),
        "upgrades_ok": sum(1 for u in ups if u.ok),
        "upgrade_failures": [u.reason for u in ups if not u.ok][:10],
        "requests": len(rows["kind"]),
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "watch_window": watch_window,
        "handover_median": median([u.handover_s for u in good]),
        "handover_max": max((u.handover_s for u in good if u.handover_s is not None), default=None),
        "commit_median": median([u.commit_s for u in good]),
        "commit_max": max((u.commit_s for u in good if u.commit_s is not None), default=None),
        "start": begin,
        "end": end,
        "series": series,
        "after_stop": after,
    }


def upgrade_records(pidfile: Path) -> set[str]:
    """Files the master keeps on purpose after a stop, like its log: the last upgrade's
    state (PIDFILE.upgrade) and the history of finished ones (PIDFILE.history)."""
    return {pidfile.name + names.SUFFIX_STATE, pidfile.name + names.SUFFIX_HISTORY}


def _brief(snap: dict) -> dict:
    return {k: snap[k] for k in ("master", "master_fds", "master_rss_kb", "zombies")} | {
        "leftovers": len(snap["leftover_processes"])}
