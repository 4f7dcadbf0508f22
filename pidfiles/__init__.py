"""Pidfiles for a prefork server: race-free creation, stale detection, ``.oldbin``
rotation for live upgrades, rollback, and removal of only what is ours.

Standalone: imports nothing from the rest of hotswap.
"""

from . import procs
from .pidfile import AlreadyRunning, Pidfile, PidfileError

__all__ = ["AlreadyRunning", "Pidfile", "PidfileError", "procs"]
