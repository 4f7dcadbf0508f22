"""HUP: all-or-nothing reloads of the configuration, sockets included.

The new workers must all boot before the old ones retire; a socket the new
configuration drops is closed (and unlinked) only then, and an aborted reload closes
the sockets it opened instead, as if the HUP never came.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from listeners import Listener, ListenerError, close_listener, parse_bind, reconcile
from upgrade import Upgrader

from .. import config as config_mod
from .. import paths
from ..config import Config
from ..errors import StartupError
from ..tls import context_for
from .pool import WorkerPool


@dataclass
class Reload:
    """A HUP in progress, and what to go back to if its workers cannot boot."""

    old_cfg: Config
    old_epoch: int
    old_listeners: list[Listener]


class Reloader:
    """Applies HUPs to the pool and the Upgrader's sockets; `cfg` is the one in force."""

    def __init__(self, cfg: Config, flags: dict, up: Upgrader, pool: WorkerPool,
                 log: logging.Logger) -> None:
        self.cfg = cfg
        self.flags = flags
        self.up = up
        self.pool = pool
        self.log = log
        self.pending: Reload | None = None

    def begin(self) -> bool:
        """Read the configuration again and start its workers; False if it is unusable."""
        try:
            new_cfg = paths.resolve_config(config_mod.build(self.flags), self.up.start_dir)
            context_for(new_cfg)  # new certificate files that cannot load: keep the running ones
            serving = _listeners_for(self.up.listeners, self.cfg, new_cfg)
        except StartupError as exc:
            self.log.error("HUP: %s; keeping the running configuration", exc)
            return False
        if self.pending is None:
            self.pending = Reload(self.cfg, self.pool.epoch, self.up.listeners)
        self.up.listeners = serving
        self.cfg = new_cfg
        self.log.setLevel(new_cfg.log_level.upper())
        self.pool.target = new_cfg.workers
        self.pool.epoch += 1
        self.pool.boot_failures = 0
        self.pool.next_spawn = 0.0
        self.log.info("HUP: reloading with %d new worker(s)", self.pool.target)
        return True

    def finish(self) -> None:
        """Old-epoch workers (and sockets the new config dropped) go once every new one booted."""
        if self.pending is not None:
            current = self.pool.current()
            if len(current) < self.pool.target or not all(h.booted for h in current):
                return
            self.log.info("HUP: reload complete")
            self._close_unused(self.pending.old_listeners, self.up.listeners)
            self.pending = None
        self.pool.retire_epochs_before(self.pool.epoch)

    def abort(self, reason: str) -> None:
        """Its new workers cannot boot: keep the old ones and sockets, as if HUP never came."""
        pending = self.pending
        assert pending is not None
        self.log.error("HUP: reload failed: %s; keeping the running workers", reason)
        for handle in self.pool.current():
            self.pool.retire(handle)
        self._close_unused(self.up.listeners, pending.old_listeners)
        self.up.listeners = pending.old_listeners
        self.cfg = pending.old_cfg
        self.pool.target = pending.old_cfg.workers
        self.pool.epoch = pending.old_epoch
        self.pending = None

    def _close_unused(self, closing: list[Listener], keeping: list[Listener]) -> None:
        kept = {id(lst) for lst in keeping}
        unlink = not self.up.other_generation_alive()
        for listener in closing:
            if id(listener) not in kept:
                try:
                    close_listener(listener, unlink=unlink)
                except ListenerError as exc:
                    self.log.warning("%s", exc)


def _listeners_for(serving: list[Listener], old: Config, new: Config) -> list[Listener]:
    """The sockets the new configuration serves; nothing is closed yet."""
    if new.bind == old.bind or not new.bind:
        return serving
    try:
        specs = [parse_bind(text) for text in new.bind]
        wanted, _unwanted = reconcile(serving, specs, new.backlog, new.reuse_port)
    except (ValueError, ListenerError) as exc:
        raise StartupError(str(exc)) from None
    return wanted
