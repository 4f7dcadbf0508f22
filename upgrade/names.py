"""Every name the upgrade protocol puts on the wire or on disk, defined once.

Masters, workers, the Python clients and ``scripts/hotswap-upgrade.sh`` must agree on
these byte for byte; the shell script keeps its own copies (it cannot import Python), and
``tests/unit/test_protocol_names.py`` checks them against this module.
"""

from __future__ import annotations

from listeners.inherit import ENV_FDS  # noqa: F401  (re-exported: defined where it is parsed)
from pidfiles.pidfile import SUFFIX_FAILED, SUFFIX_OLDBIN  # noqa: F401  (re-exported, as below)
from pidfiles.procs import (  # noqa: F401  (re-exported: defined where identity is checked)
    ENV_PARENT_PID,
    TITLE_MASTER,
    TITLE_WORKER,
)

# -- environment passed from the old master to the new one ---------------------------
ENV_READY_FD = "HOTSWAP_READY_FD"
ENV_GENERATION = "HOTSWAP_GENERATION"
ENV_FOREIGN_FDS = "HOTSWAP_FOREIGN_FDS"  # sockets made by someone else: never unlinked
ENV_KEEPER_FD = "HOTSWAP_KEEPER_FD"  # write end to the keeper: "MASTER <pid>\n" (see hotswap.master.keeper)
ENV_HEALTH_URL = "HOTSWAP_HEALTH_URL"  # `hotswap upgrade --health-url`, for this upgrade only
ENV_SURGE = "HOTSWAP_SURGE"  # rolling handover: start this many workers, then one per old one gone

# -- the readiness pipe (new master -> old master), one line per message --------------
READY = "READY"  # "READY <pid>": booted, healthy, serving
FAILED = "FAILED"  # "FAILED <reason>": before READY, gave up; after it, asks for a rollback
BOOTED = "BOOTED"  # "BOOTED <n>" (rolling handover, after READY): n new workers serve

# -- files next to PIDFILE ------------------------------------------------------------
SUFFIX_STATE = ".upgrade"  # the running (or last) upgrade's state, one line, see below
SUFFIX_HISTORY = ".history"  # one JSON object per finished upgrade, appended
SUFFIX_REQUEST = ".upgrade-request"  # JSON options a client leaves for the next USR2

# -- the state file PIDFILE.upgrade ---------------------------------------------------
# One line, replaced atomically by the old master at every step:
#   id=<old pid>.<ms> state=<STATE> old=<pid> new=<pid|-> generation=<n|-> \
#   ready=<s|-> drain=<s|-> handover=<s|-> commit=<s|-> reason=<text to end of line>
# Keys always appear in this order; "-" means "not known (yet)"; seconds have 3 decimals.
STATE_KEYS = ("id", "state", "old", "new", "generation", "ready", "drain", "handover",
              "commit", "reason")
STATE_STARTING = "starting"  # USR2 taken, new master booting
STATE_READY = "ready"  # new generation booted and healthy
STATE_DRAINING = "draining"  # old workers parked: they finish what they hold
STATE_WATCHING = "watching"  # old generation no longer serves; watch window runs
STATE_COMMITTED = "committed"  # final: old master exits, the upgrade is done
STATE_ROLLED_BACK = "rolled-back"  # final: old generation serves its own code again
STATE_FAILED = "failed"  # final: the new master never became ready; nothing was disturbed
STATE_REFUSED = "refused"  # final: USR2 refused (another upgrade runs, stopping, ...)
FINAL_STATES = (STATE_COMMITTED, STATE_ROLLED_BACK, STATE_FAILED, STATE_REFUSED)

__all__ = [name for name in dir() if name.isupper()]
