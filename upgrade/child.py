"""The new generation's side of the protocol: where it stands, and the sockets it inherits.

A process started by an upgrade finds in its environment the previous master's pid,
the write end of the readiness pipe and its generation number, plus the listening
sockets (HOTSWAP_FDS, or systemd's LISTEN_FDS for the first generation). All of it is
taken out of the environment at once, so nothing started later (workers, an app's
subprocesses) believes it owns them; anything malformed is a one-line UpgradeError,
after which the previous generation, told FAILED, keeps serving.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence
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

from .errors import UpgradeError
from .names import ENV_FOREIGN_FDS, ENV_GENERATION, ENV_PARENT_PID
from .readiness import (
    ReadinessError,
    announce_booted,
    announce_failure,
    announce_ready,
    ready_fd_from_env,
)


@dataclass
class Lineage:
    """First of its line, or the new generation of a running upgrade."""

    parent_pid: int | None  # the previous master, while the upgrade that started us runs
    ready_fd: int | None  # our end of the readiness pipe to it
    generation: int

    def fail(self, reason: str) -> None:
        """Tell the previous master why we give up (before READY) or why it should roll
        back (during its watch window). Harmless once it is gone."""
        if self.ready_fd is not None:
            announce_failure(self.ready_fd, reason)
            self.ready_fd = None

    def announce(self, pid: int) -> bool:
        """Say READY, keeping the pipe for the watch window; False if nobody listens."""
        if self.ready_fd is None:
            return False
        if announce_ready(self.ready_fd, pid, keep_open=True):
            return True
        self.close()
        return False

    def booted(self, count: int) -> None:
        """Rolling handover: tell the previous master how many of our workers serve."""
        if self.ready_fd is not None and not announce_booted(self.ready_fd, count):
            self.close()

    def parent_alive(self) -> bool:
        """The previous master still runs (it is our parent until it exits)."""
        return self.parent_pid is not None and os.getppid() == self.parent_pid

    def close(self) -> None:
        """The previous master committed: the pipe is of no more use."""
        if self.ready_fd is not None:
            os.close(self.ready_fd)
            self.ready_fd = None


def read_lineage(environ: MutableMapping[str, str]) -> Lineage:
    """Take (and remove) the upgrade variables; anything malformed is a one-line error."""
    try:
        ready_fd = ready_fd_from_env(environ)
    except ReadinessError as exc:
        raise UpgradeError(str(exc)) from None
    lineage = Lineage(None, ready_fd, 1)
    raw_parent = environ.pop(ENV_PARENT_PID, None)
    if raw_parent is not None:
        # 1 is a valid parent: a master running as PID 1 in a container upgrades too.
        if not raw_parent.isdigit() or int(raw_parent) < 1:
            raise _fail(lineage, f"{ENV_PARENT_PID}={raw_parent!r} is not a process id")
        lineage.parent_pid = int(raw_parent)
    raw_generation = environ.get(ENV_GENERATION)
    if raw_generation is not None:
        if not raw_generation.isdigit() or int(raw_generation) < 1:
            raise _fail(lineage, f"{ENV_GENERATION}={raw_generation!r} is not a generation number")
        lineage.generation = int(raw_generation)
    environ[ENV_GENERATION] = str(lineage.generation)
    return lineage


class Inherited:
    """The listening sockets handed to this process, until it says which it serves.

    Sockets made by someone else (systemd's, `fd://N` binds, and those an earlier
    generation already knew to be foreign) are marked so that no generation ever
    unlinks their unix path.
    """

    def __init__(self, environ: MutableMapping[str, str], lineage: Lineage) -> None:
        self.environ = environ
        self.lineage = lineage
        self.foreign = _foreign_fds(environ)
        try:
            self.pool: list[Listener] = adopt_from_env(environ)
        except InheritError as exc:
            raise _fail(lineage, str(exc)) from None

    def take(self, binds: Sequence[str], backlog: int, reuse_port: bool = False) -> list[Listener]:
        """Serve `binds`: the inherited socket matching each, else a new one; all or none.

        With no binds at all, every inherited socket is served as it is (an upgrade of a
        server that kept its defaults, or systemd socket activation)."""
        try:
            specs = [parse_bind(text) for text in binds]
        except BindError as exc:
            raise _fail(self.lineage, str(exc)) from None
        if not specs:
            taken, self.pool = self.pool, []
            return self._mark(taken, [])
        try:
            taken, self.pool = reconcile(self.pool, specs, backlog, reuse_port)
        except ListenerError as exc:
            raise _fail(self.lineage, str(exc)) from None
        return self._mark(taken, specs)

    def close_unused(self) -> None:
        """Inherited sockets nobody asked for: closed, never unlinked (the previous
        generation may still serve them)."""
        for listener in self.pool:
            close_listener(listener, unlink=False)
        self.pool = []

    def _mark(self, taken: list[Listener], specs: list[BindSpec]) -> list[Listener]:
        foreign = self.foreign | {s.fd for s in specs if s.kind == "fd" and s.fd is not None}
        for listener in taken:
            if listener.fd in foreign:
                listener.unix_identity = None  # not ours to unlink
                self.foreign.add(listener.fd)
        return taken

    def export(self, serving: Sequence[Listener]) -> None:
        """Tell the next generation which of the sockets it inherits are not ours."""
        kept = {lst.fd for lst in serving} & self.foreign
        if kept:
            self.environ[ENV_FOREIGN_FDS] = ",".join(map(str, sorted(kept)))
        else:
            self.environ.pop(ENV_FOREIGN_FDS, None)


def _foreign_fds(environ: MutableMapping[str, str]) -> set[int]:
    """Read before adoption, which removes the LISTEN_* variables."""
    inherited = environ.get(ENV_FOREIGN_FDS, "")
    fds = {int(part) for part in inherited.split(",") if part.isdigit()}
    count = environ.get("LISTEN_FDS", "")
    if environ.get("LISTEN_PID") == str(os.getpid()) and count.isdigit():
        fds.update(range(3, 3 + int(count)))
    return fds


def _fail(lineage: Lineage, message: str) -> UpgradeError:
    lineage.fail(message)
    return UpgradeError(message)
