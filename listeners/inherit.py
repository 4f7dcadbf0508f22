"""Handing listening sockets to a new process and adopting them there.

Two inbound channels exist: our own ``HOTSWAP_FDS`` (set by the previous
generation on a live upgrade) and systemd socket activation (``LISTEN_FDS``).
Both are consumed and removed from the environment, so a worker or an app's
subprocess never mistakes them for its own.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence

from .sockets import Listener, ListenerError, adopt_fd, close_listener, open_listener
from .spec import BindSpec

ENV_FDS = "HOTSWAP_FDS"
_LISTEN_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
_SD_LISTEN_FDS_START = 3  # systemd always passes its sockets from fd 3 on


class InheritError(Exception):
    """Malformed inherited-socket variables; str() is one line naming the variable and value."""


def export_env(fds: Sequence[int]) -> dict[str, str]:
    """Environment telling the next generation which of its fds are its listeners.

    Always contains the key (possibly empty) so that updating a copied
    environment overrides a stale value. The fds themselves must cross exec
    with the same numbers (upgrade.reexec marks them inheritable in the child).
    """
    return {ENV_FDS: ",".join(str(int(fd)) for fd in fds)}


def adopt_from_env(environ: MutableMapping[str, str], pid: int | None = None) -> list[Listener]:
    """Adopt every listener named by HOTSWAP_FDS and (if meant for `pid`) LISTEN_FDS.

    The variables are removed from `environ` even on error. Either all fds are
    adopted or none is left owned (the ones already taken are detached, not closed).
    """
    own = environ.pop(ENV_FDS, None)
    listen = {name: environ.pop(name) for name in _LISTEN_VARS if name in environ}
    wanted: list[tuple[int, str]] = []
    if own is not None:
        label = f"{ENV_FDS}={own!r}"
        wanted.extend((fd, label) for fd in _parse_fd_list(own, label))
    wanted.extend(_systemd_fds(listen, os.getpid() if pid is None else pid))
    return _adopt_all(wanted)


def reconcile(
    adopted: list[Listener], wanted: Sequence[BindSpec], backlog: int = 2048,
    reuse_port: bool = False,
) -> tuple[list[Listener], list[Listener]]:
    """Decide which adopted sockets to keep serving, open what is missing.

    Returns (serving, unwanted); serving follows the order of `wanted`. With
    no `wanted` at all, everything adopted is served (socket activation
    without --bind). On failure the sockets opened here are closed and the
    adopted ones are left as they were. Adopted sockets keep their options (SO_REUSEPORT
    included): `reuse_port` applies to the ones opened here.
    """
    if not wanted:
        return list(adopted), []
    pool = list(adopted)
    serving: list[Listener] = []
    fresh: list[tuple[Listener, bool]] = []  # (listener, opened by us rather than lent via fd://)
    try:
        for spec in wanted:
            _serve_one(spec, pool, serving, fresh, backlog, reuse_port)
    except BaseException:
        _undo(fresh)
        raise
    return serving, pool


def _serve_one(
    spec: BindSpec,
    pool: list[Listener],
    serving: list[Listener],
    fresh: list[tuple[Listener, bool]],
    backlog: int,
    reuse_port: bool = False,
) -> None:
    if any(listener.matches(spec) for listener in serving):
        return  # the same address listed twice: one socket serves both
    for listener in pool:
        if listener.matches(spec):
            pool.remove(listener)
            serving.append(listener)
            return
    listener = open_listener(spec, backlog, reuse_port)
    fresh.append((listener, spec.kind != "fd"))
    serving.append(listener)


def _undo(fresh: list[tuple[Listener, bool]]) -> None:
    """Close what this call opened; give back (detach) fds that were only lent to us."""
    for listener, owned in fresh:
        if not owned:
            listener.sock.detach()
            continue
        try:
            close_listener(listener, unlink=True)
        except ListenerError:
            pass  # the error that made us undo is the one to report


def _parse_fd_list(value: str, label: str) -> list[int]:
    if value == "":
        return []
    fds: list[int] = []
    for item in value.split(","):
        fd = _parse_fd(item, label)
        if fd in fds:
            raise InheritError(f"{label}: fd {fd} is listed twice")
        fds.append(fd)
    return fds


def _parse_fd(item: str, label: str) -> int:
    if item.startswith("-") and item[1:].isascii() and item[1:].isdigit():
        raise InheritError(f"{label}: {item!r} is negative, not a file descriptor number")
    if not (item.isascii() and item.isdigit()):
        raise InheritError(f"{label}: {item!r} is not a file descriptor number")
    fd = int(item)
    if fd < 3:
        raise InheritError(f"{label}: fd {fd} is stdin, stdout or stderr, not a listener")
    return fd


def _systemd_fds(listen: dict[str, str], pid: int) -> list[tuple[int, str]]:
    """fds passed by systemd socket activation, if they are meant for `pid`."""
    pid_text = listen.get("LISTEN_PID")
    if pid_text is None:
        return []  # as sd_listen_fds(): without LISTEN_PID the sockets are not ours
    if not (pid_text.isascii() and pid_text.isdigit()) or int(pid_text) <= 0:
        raise InheritError(f"LISTEN_PID={pid_text!r} is not a process id")
    if int(pid_text) != pid:
        return []  # meant for another process (e.g. our parent); never adopt
    count_text = listen.get("LISTEN_FDS")
    if count_text is None:
        return []
    label = f"LISTEN_FDS={count_text!r}"
    count = _parse_count(count_text, label)
    _check_names(listen.get("LISTEN_FDNAMES"), count, label)
    return [(_SD_LISTEN_FDS_START + i, label) for i in range(count)]


def _parse_count(text: str, label: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise InheritError(f"{label} is not a number of file descriptors")
    count = int(text)
    limit = os.sysconf("SC_OPEN_MAX")
    if limit > 0 and count > limit - _SD_LISTEN_FDS_START:
        raise InheritError(f"{label} is more file descriptors than a process can have open")
    return count


def _check_names(names: str | None, count: int, label: str) -> None:
    if names is None:
        return
    given = len(names.split(":")) if names else 0
    if given != count:
        raise InheritError(
            f"LISTEN_FDNAMES={names!r} names {given} file descriptors but {label} passes {count}"
        )


def _adopt_all(wanted: list[tuple[int, str]]) -> list[Listener]:
    adopted: list[Listener] = []
    seen: set[int] = set()
    try:
        for fd, label in wanted:
            if fd in seen:
                continue  # passed both by systemd and by our previous generation
            seen.add(fd)
            try:
                adopted.append(adopt_fd(fd))
            except ListenerError as err:
                raise InheritError(f"{label}: {err}") from err
    except BaseException:
        for listener in adopted:
            listener.sock.detach()
        raise
    return adopted
