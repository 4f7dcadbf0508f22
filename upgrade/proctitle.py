"""Process titles (`hotswap: master [name]`): how `ps`, the pidfile checks and the clients
tell a master from its workers and from a stranger that got a reused pid.

SPT_NOENV keeps setproctitle from reusing the environment block for longer titles:
`hotswap status` and the upgrade client read a master's generation from
/proc/PID/environ, which must stay intact.
"""

from __future__ import annotations

import os

os.environ.setdefault("SPT_NOENV", "1")

import setproctitle  # noqa: E402  (must come after SPT_NOENV is set)


def title(role: str, name: str | None) -> str:
    """`hotswap: master`, `hotswap: worker [api]`: names.TITLE_* plus an optional name."""
    return f"hotswap: {role} [{name}]" if name else f"hotswap: {role}"


def set_title(role: str, name: str | None) -> None:
    setproctitle.setproctitle(title(role, name))
