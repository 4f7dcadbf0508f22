"""Memory of each generation: RSS (what `ps` and most dashboards show) and anonymous PSS.

RSS counts a page shared by the master and its forked workers once in every process, so
RSS summed over workers overstates. Plain PSS would split shared pages fairly, but the
file-backed ones (libpython, extension modules) are shared with every other Python
process on the machine, so it moves with whatever else runs. Anonymous PSS (the heap,
split only between a master and the workers forked from it) adds up to what the server
itself costs, whatever else runs.
"""

from __future__ import annotations

import proctree
from servers import Server


def snapshot(server: Server) -> dict:
    master = server.master_pid()
    if master is None:
        return {"error": "no master"}
    workers = sorted(server.workers_of(master))
    return {
        "master": {"pid": master, "rss_kb": proctree.status_kb(master, "VmRSS"),
                   "anon_pss_kb": proctree.pss_kb(master, "Pss_Anon"), "fds": proctree.fd_count(master)},
        "workers": [{"pid": w, "rss_kb": proctree.status_kb(w, "VmRSS"),
                     "anon_pss_kb": proctree.pss_kb(w, "Pss_Anon")} for w in workers],
    }


def total_anon_kb(snap: dict) -> int | None:
    """Heap of master and workers together, shared pages counted once."""
    parts = [snap.get("master", {}).get("anon_pss_kb"),
             *(w.get("anon_pss_kb") for w in snap.get("workers", []))]
    return sum(p for p in parts if p is not None) if parts and all(p is not None for p in parts) else None
