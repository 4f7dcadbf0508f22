"""--user, --group, --umask, --initgroups: workers run unprivileged, the master does not.

The master keeps the identity it was started with (root, typically): it must be able to
bind privileged ports again on HUP, signal and reap its workers, write the pidfile and
re-exec itself for an upgrade (the new master is root again, and its workers drop in
turn). A worker drops in the forked child, before it loads the app and before it asks
for PR_SET_PDEATHSIG (Linux clears that on a credentials change).

Files the workers must still use are handed over, as gunicorn does: the log files (a
worker reopens them by path on USR1) and the unix socket files the master created (so a
reverse proxy running as that user or group can connect). Listening sockets need nothing:
a worker accepts on the fds it inherited.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import StartupError


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    user: str | None  # the name, for initgroups
    initgroups: bool


def resolve(cfg: Any) -> Identity | None:
    """Who workers run as (None: as the master); an unknown name is a one-line error."""
    if cfg.user is None and cfg.group is None:
        return None
    uid, name, primary = _user(cfg.user)
    gid = _group(cfg.group) if cfg.group is not None else primary
    if os.geteuid() != 0 and (uid != os.geteuid() or gid != os.getegid()):
        raise StartupError(f"--user/--group need root: this process runs as uid {os.geteuid()} "
                           f"gid {os.getegid()}")
    return Identity(uid, gid, name, cfg.initgroups)


def _user(value: str | None) -> tuple[int, str | None, int]:
    """(uid, name, primary gid); without --user: the current user, unchanged."""
    if value is None:
        return os.geteuid(), None, os.getegid()
    try:
        entry = pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except KeyError:
        if value.isdigit():  # a uid with no passwd entry (containers): allowed, as gunicorn
            return int(value), None, os.getegid()
        raise StartupError(f"unknown user {value!r}") from None
    return entry.pw_uid, entry.pw_name, entry.pw_gid


def _group(value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise StartupError(f"unknown group {value!r}") from None


def apply_umask(cfg: Any) -> None:
    if cfg.umask is not None:
        os.umask(cfg.umask)


def enter_worker(cfg: Any) -> None:
    """In a new worker: the umask, then groups, gid, uid (in that order: after setuid
    nothing else may be changed). Without root (same user) it changes nothing."""
    apply_umask(cfg)
    who = resolve(cfg)
    if who is None or (who.uid == os.getuid() and who.gid == os.getgid() and os.getuid() != 0):
        return
    try:
        if who.initgroups and who.user is not None:
            os.initgroups(who.user, who.gid)
        else:
            os.setgroups([who.gid])  # never keep root's supplementary groups
        os.setgid(who.gid)
        os.setuid(who.uid)
    except OSError as exc:  # the fork's caller exits the child; say why first
        logging.getLogger("hotswap.error").error(
            "worker %d cannot switch to uid %d gid %d: %s", os.getpid(), who.uid, who.gid,
            exc.strerror)
        raise


def hand_over(cfg: Any, listeners: Iterable[Any], log: logging.Logger) -> None:
    """chown the log files and our unix socket files to the workers' user and group."""
    who = resolve(cfg)
    if who is None:
        return
    paths = [p for p in (cfg.error_log, cfg.access_log) if p and p != "-"]
    paths += [lst.spec.path for lst in listeners
              if lst.spec.kind == "unix" and lst.unix_identity is not None and lst.spec.path]
    for path in paths:
        try:
            os.chown(path, who.uid, who.gid)
        except OSError as exc:
            log.warning("cannot hand %s to uid %d gid %d: %s", path, who.uid, who.gid,
                        exc.strerror)
