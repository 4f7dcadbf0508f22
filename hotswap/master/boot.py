"""What a master finds when it starts: its place in an upgrade, and its listening sockets.

Everything here either succeeds or raises StartupError with one line, before a single
worker exists, so a malformed HOTSWAP_* or LISTEN_* variable can never leave a
half-started master behind, and the old generation (our parent, if any) keeps serving.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass

from listeners import (
    BindError,
    BindSpec,
    InheritError,
    Listener,
    ListenerError,
    adopt_from_env,
    close_listener,
    parse_bind,
    reconcile,
)
from upgrade.names import ENV_FOREIGN_FDS, ENV_GENERATION, ENV_PARENT_PID
from upgrade.readiness import ReadinessError, announce_failure, ready_fd_from_env

from ..errors import StartupError

DEFAULT_BIND = "127.0.0.1:8000"


@dataclass
class Lineage:
    """Where this master stands: first of its line, or the new generation of an upgrade."""

    parent_pid: int | None  # the old master that started us, while an upgrade runs
    ready_fd: int | None  # where to say READY to that old master
    generation: int

    def fail(self, reason: str) -> None:
        """Tell the old master why we give up, so it can log and report it."""
        if self.ready_fd is not None:
            announce_failure(self.ready_fd, reason)
            self.ready_fd = None


def read_lineage(environ: MutableMapping[str, str]) -> Lineage:
    """Take (and remove) the upgrade variables; anything malformed is a one-line error."""
    try:
        ready_fd = ready_fd_from_env(environ)
    except ReadinessError as exc:
        raise StartupError(str(exc)) from None
    lineage = Lineage(None, ready_fd, 1)
    raw_parent = environ.pop(ENV_PARENT_PID, None)
    if raw_parent is not None:
        # 1 is a valid parent: a master running as PID 1 in a container upgrades too.
        if not raw_parent.isdigit() or int(raw_parent) < 1:
            lineage.fail(f"{ENV_PARENT_PID}={raw_parent!r} is not a process id")
            raise StartupError(f"{ENV_PARENT_PID}={raw_parent!r} is not a process id")
        lineage.parent_pid = int(raw_parent)
    raw_generation = environ.get(ENV_GENERATION)
    if raw_generation is not None:
        if not raw_generation.isdigit() or int(raw_generation) < 1:
            message = f"{ENV_GENERATION}={raw_generation!r} is not a generation number"
            lineage.fail(message)
            raise StartupError(message)
        lineage.generation = int(raw_generation)
    environ[ENV_GENERATION] = str(lineage.generation)
    return lineage


def open_listeners(binds: list[str], backlog: int, environ: MutableMapping[str, str],
                   lineage: Lineage) -> list[Listener]:
    """Adopt inherited sockets (ours or systemd's), keep those still wanted, open the rest."""
    try:
        specs = [parse_bind(text) for text in binds]
    except BindError as exc:
        raise _fail(lineage, str(exc)) from None
    foreign = _foreign_fds(environ, specs)
    try:
        adopted = adopt_from_env(environ)
    except InheritError as exc:
        raise _fail(lineage, str(exc)) from None
    if not specs and not adopted:
        specs = [parse_bind(DEFAULT_BIND)]
    try:
        serving, unwanted = reconcile(adopted, specs, backlog)
    except ListenerError as exc:
        raise _fail(lineage, str(exc)) from None
    for listener in unwanted:
        close_listener(listener, unlink=False)  # another generation may still serve it
    kept = {lst.fd for lst in serving} & foreign
    for listener in serving:
        if listener.fd in kept:
            listener.unix_identity = None  # not ours to unlink
    if kept:
        environ[ENV_FOREIGN_FDS] = ",".join(map(str, sorted(kept)))
    else:
        environ.pop(ENV_FOREIGN_FDS, None)
    return serving


def _foreign_fds(environ: MutableMapping[str, str], specs: list[BindSpec]) -> set[int]:
    """fds of sockets we did not create: systemd's (LISTEN_FDS for us), fd://N binds, and
    those an earlier generation already knew to be foreign. Read before adoption, which
    removes the LISTEN_* variables."""
    fds = {spec.fd for spec in specs if spec.kind == "fd" and spec.fd is not None}
    inherited = environ.get(ENV_FOREIGN_FDS, "")
    fds.update(int(part) for part in inherited.split(",") if part.isdigit())
    count = environ.get("LISTEN_FDS", "")
    if environ.get("LISTEN_PID") == str(os.getpid()) and count.isdigit():
        fds.update(range(3, 3 + int(count)))
    return fds


def _fail(lineage: Lineage, message: str) -> StartupError:
    lineage.fail(message)
    return StartupError(message)
