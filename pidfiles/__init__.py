"""Pidfiles for a prefork server: race-free creation, stale detection, ``.oldbin``
rotation for live upgrades, rollback, and removal of only what is ours.

A pidfile holds a bare pid (so ``kill $(cat P)`` works); who it names is judged by
``Pidfile.identify()``: a hotswap master is recognised by its exact process title and by
having started before the file was written, never by a substring of its command line.

Standalone: imports nothing of hotswap, upgrade or listeners.
"""

from . import procs
from .pidfile import (
    DEAD,
    MASTER,
    MISSING,
    REUSED,
    SAME,
    STRANGER,
    UNREADABLE,
    AlreadyRunning,
    Finding,
    Pidfile,
    PidfileError,
    write_atomic,
)

__all__ = ["DEAD", "MASTER", "MISSING", "REUSED", "SAME", "STRANGER", "UNREADABLE",
           "AlreadyRunning", "Finding", "Pidfile", "PidfileError", "procs",
           "write_atomic"]
