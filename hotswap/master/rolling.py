"""The rolling handover (`--upgrade-surge K`), seen from the new generation.

A plain upgrade holds both generations' workers at once: twice the memory, for a moment.
With a surge of K, the old master passes HOTSWAP_SURGE=K; the new master boots only K
workers, says READY, and then grows one worker at a time as the old generation's workers
leave, so that both together never hold more than workers + K. After READY it tells the
old master `BOOTED <n>` each time the number of its booted workers changes; the old
master keeps only `workers - n` of its own (the oldest retire first). The old side is a
pool target in the arbiter; everything else (gate, watch window, rollback) is unchanged.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from pidfiles import procs
from upgrade import Upgrader, names

from .pool import WorkerPool


class Rolling:
    def __init__(self, surge: int, pool: WorkerPool) -> None:
        self.surge = surge
        self.pool = pool
        self.announced = 0

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str], workers: int,
                 pool: WorkerPool) -> Rolling | None:
        """The old master asked for a rolling handover: boot only K workers before READY."""
        raw = environ.pop(names.ENV_SURGE, "")
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            return None
        rolling = cls(int(raw), pool)
        pool.target = min(rolling.surge, workers)
        return rolling

    def grow(self, up: Upgrader, workers: int) -> Rolling | None:
        """After READY, each turn: report our booted workers, start more where the old ones
        left room. None once we are complete (the rolling handover is over for us)."""
        booted = len(self.pool.booted())
        if booted != self.announced:
            up.lineage.booted(booted)
            self.announced = booted
        if self.pool.target >= workers:
            return None if booted >= workers else self
        lineage = up.lineage
        old = len(procs.hotswap_workers(lineage.parent_pid)) \
            if lineage.parent_pid is not None and lineage.parent_alive() else 0
        room = workers + self.surge - len(self.pool.handles) - old
        if room > 0:
            self.pool.target = min(workers, self.pool.target + room)
        return self
