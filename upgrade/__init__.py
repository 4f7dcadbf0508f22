"""Live upgrades for Python servers: the protocol hotswap speaks, as a library.

`Upgrader` is the whole public face (see upgrader.py and docs/toolkit.md); the modules
below it hold one part of the protocol each: names (every name on the wire or on disk),
child (the new generation's side), parent (the old generation's side: `Handover`),
reexec (fork + exec with the sockets), readiness (the READY/FAILED pipe), record (the
state file next to PIDFILE), notify (systemd), orchestrator (the client that sends USR2
and follows the record). Imports nothing of hotswap/.
"""

from .errors import UpgradeError, UpgradeRefused
from .parent import Event, Handover
from .record import UpgradeRecord
from .upgrader import Upgrader, UpgradeResult, report_startup_failure

__all__ = ["Event", "Handover", "UpgradeError", "UpgradeRecord", "UpgradeRefused",
           "UpgradeResult", "Upgrader", "report_startup_failure"]
