"""The pidfile of a master, its ``.oldbin`` twin and the upgrade failure record.

Rules this module enforces (see DESIGN.md, "Pidfiles"):

* Every write goes to a temporary file in the same folder and is renamed
  into place, so a reader sees the old content or the new, never a torn or
  empty file; that is what lets ``PIDFILE`` name a live master at every
  moment of an upgrade.
* A process only ever removes a file that names itself, so an exiting old
  master cannot delete the pidfile its successor has just written.
* Content we cannot parse is reported as "no pid" (``None``), never as an
  exception: a pidfile is often hand-edited, truncated by a full disk, or
  left behind by another program.

Only I/O trouble (missing folder, permissions, a directory where the file
should be) raises, as a :class:`PidfileError` whose message is one line.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import procs

_MAX_PID = 2**31 - 1  # larger values make os.kill raise OverflowError
_READ_LIMIT = 4096  # a pidfile is a few bytes; never slurp a huge stray file
_CLAIM_ATTEMPTS = 5
_REMOVE_ATTEMPTS = 3
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}

_PIDFILE = "pidfile"
_FAILURE = "upgrade failure record"


SUFFIX_OLDBIN = ".oldbin"  # names the old master while an upgrade runs
SUFFIX_FAILED = ".upgrade-failed"  # "<pid> <unix time> <reason>" of the last failed upgrade


class PidfileError(Exception):
    """A pidfile operation failed; str() is one line meant for an operator."""


class AlreadyRunning(PidfileError):
    """The pidfile names a live master other than the one starting."""

    def __init__(self, pid: int, path: str) -> None:
        super().__init__(f"already running as pid {pid} (pidfile {path})")
        self.pid = pid
        self.path = path


# Verdicts of Pidfile.identify() / identify_oldbin().
MISSING = "missing"  # no such file
UNREADABLE = "unreadable"  # empty, half-written, garbage, or not a readable file
DEAD = "dead"  # names a pid that runs nothing (gone, or a zombie)
STRANGER = "stranger"  # names a live process that is not titled like a hotswap master
REUSED = "reused"  # titled like a master, but started after the file was written
SAME = "same"  # .oldbin naming the very master PIDFILE names: no upgrade is told by it
MASTER = "master"  # names the hotswap master that wrote it


@dataclass(frozen=True)
class Finding:
    """What one pidfile names, judged: a verdict and one line an operator can act on.

    Only a MASTER finding may ever lead to a signal; every other verdict is a file to
    ignore (and mention), never a reason to refuse forever.
    """

    path: str
    verdict: str
    pid: int | None
    message: str

    @property
    def is_master(self) -> bool:
        return self.verdict == MASTER


def _printable(text: str, limit: int = 120) -> str:
    """``text`` folded to one short printable line, for quoting a foreign command line."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _judge(path: str, text: str, written_at: float) -> Finding:
    """The verdict on a pidfile holding ``text``, last written at ``written_at``."""
    pid = _parse_pid(text)
    if pid is None:
        shown = text.strip()
        why = f"holds no pid: {_printable(shown, 40)!r}" if shown else "it is empty"
        return Finding(path, UNREADABLE, None, f"{path} is unreadable: {why}")
    if not procs.is_alive(pid):
        return Finding(path, DEAD, pid, f"{path} names {pid}, which is not running")
    if procs.is_hotswap_master(pid, written_at):
        return Finding(path, MASTER, pid, f"{path} names master {pid}")
    if procs.is_hotswap_master(pid):
        return Finding(path, REUSED, pid,
                       f"{path} names {pid}, titled like a hotswap master but started after "
                       f"the file was written (the pid was reused)")
    cmd = _printable(procs.cmdline(pid) or "")
    return Finding(path, STRANGER, pid,
                   f"{path} names {pid}, which is not a hotswap master (cmdline: {cmd})")


def _parse_pid(text: str) -> int | None:
    """The pid in a pidfile's text, or None for anything that is not one."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    pid = int(text)
    if pid <= 0 or pid > _MAX_PID:
        # 0 and negatives would address process groups if ever signalled.
        return None
    return pid


def _failure_owner(text: str) -> int | None:
    """The pid that wrote a failure record: its first word."""
    words = text.split(maxsplit=1)
    return _parse_pid(words[0]) if words else None


def _one_line(reason: str) -> str:
    """Fold a reason to one line, so ``read`` in sh gets all of it."""
    folded = " ".join(reason.splitlines()).strip()
    return folded or "unknown reason"


def _strerror(err: OSError) -> str:
    return err.strerror or str(err)


def _snapshot(path: str, label: str) -> tuple[str, os.stat_result] | None:
    """Read a small file and the identity (inode) of what was read.

    None when it does not exist. The stat result lets a caller notice that
    the file was replaced after it was read.
    """
    try:
        # O_NONBLOCK: a FIFO left at the path must not hang us.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise PidfileError(f"cannot read {label} {path}: {_strerror(err)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PidfileError(f"cannot read {label} {path}: not a regular file")
        data = os.read(fd, _READ_LIMIT)
    except OSError as err:
        raise PidfileError(f"cannot read {label} {path}: {_strerror(err)}") from None
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace"), st


def _write_error(target: str, label: str, err: OSError) -> PidfileError:
    folder = os.path.dirname(target)
    if isinstance(err, FileNotFoundError) and not os.path.isdir(folder):
        return PidfileError(f"cannot write {label} {target}: folder {folder} does not exist")
    return PidfileError(f"cannot write {label} {target}: {_strerror(err)}")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _make_tmp(target: str, content: str, label: str) -> str:
    """Write ``content`` to a fresh temporary file next to ``target``.

    Same folder, so the later rename or link stays on one filesystem and is
    atomic. The name starts with a dot and carries our pid, so a stray one
    is both hidden and traceable to its writer.
    """
    folder, base = os.path.split(target)
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise _write_error(target, label, err) from None
    try:
        data = content.encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(fd, data) :]
    except OSError as err:
        os.close(fd)
        _unlink_quietly(tmp)
        raise _write_error(target, label, err) from None
    # No fsync: after a crash every pidfile is stale anyway, and an empty
    # file reads as "no pid", which is handled.
    os.close(fd)
    return tmp


def _replace(tmp: str, target: str, label: str) -> None:
    """Rename ``tmp`` over ``target``; on failure remove ``tmp``."""
    try:
        os.replace(tmp, target)
    except OSError as err:
        _unlink_quietly(tmp)
        raise _write_error(target, label, err) from None


def write_atomic(target: str, content: str, label: str = "file") -> None:
    """Replace ``target`` with ``content`` so that a reader never sees half of it.

    Raises PidfileError naming ``label`` and ``target``.
    """
    _replace(_make_tmp(target, content, label), target, label)


def _remove_if_owned(
    path: str, pid: int, label: str, owner_of: Callable[[str], int | None]
) -> bool:
    """Unlink ``path`` only if it names ``pid``.

    POSIX has no "unlink if content is X", so the file is read, then its
    inode is compared just before unlinking: since every writer replaces
    the file (new inode), a write that lands after our read is noticed and
    the file is left alone. What remains is the window between that stat
    and the unlink, a few microseconds.
    """
    for _ in range(_REMOVE_ATTEMPTS):
        snap = _snapshot(path, label)
        if snap is None:
            return False
        text, seen = snap
        if owner_of(text) != pid:
            return False
        try:
            now = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as err:
            raise PidfileError(f"cannot remove {label} {path}: {_strerror(err)}") from None
        if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
            continue  # replaced since we read it; look again
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise PidfileError(f"cannot remove {label} {path}: {_strerror(err)}") from None
        return True
    return False


def _stale_warning(path: str, text: str, pid: int | None) -> str:
    """One line telling the operator what was thrown away, and why."""
    if pid is None:
        shown = text.strip()
        if not shown:
            return f"removed stale pidfile {path}, which was empty"
        return f"removed stale pidfile {path} holding no pid: {shown[:40]!r}"
    if not procs.is_alive(pid):
        return f"removed stale pidfile {path} naming dead pid {pid}"
    cmd = _printable(procs.cmdline(pid) or "")
    return (f"removed stale pidfile {path} naming pid {pid}, a live process that is not a "
            f"master (cmdline: {cmd})")


def _live(is_live_master: Callable[[int], bool] | None, pid: int, written_at: float) -> bool:
    """The caller's liveness test, or by default the identity check against the mtime."""
    if is_live_master is not None:
        return is_live_master(pid)
    return procs.is_hotswap_master(pid, written_at)


class Pidfile:
    """A master's pidfile, its ``.oldbin`` twin and its upgrade failure record.

    The path is made absolute once, here, because a master changes
    directory (daemonizing, or following a ``current`` symlink on upgrade)
    and must keep writing and removing the same file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: str = os.path.abspath(os.fsdecode(path))
        self.oldbin_path: str = self.path + SUFFIX_OLDBIN
        self.failed_path: str = self.path + SUFFIX_FAILED

    def __repr__(self) -> str:
        return f"Pidfile({self.path!r})"

    # -- reading -----------------------------------------------------------

    def read(self) -> int | None:
        """The pid in PIDFILE; None when missing, empty or not a pid.

        Raises PidfileError only when the file exists but cannot be read
        (permissions, a directory in its place): answering "not running"
        then would be a lie.
        """
        snap = _snapshot(self.path, _PIDFILE)
        return None if snap is None else _parse_pid(snap[0])

    def read_oldbin(self) -> int | None:
        """The pid in PIDFILE.oldbin (the old master during an upgrade), like read()."""
        snap = _snapshot(self.oldbin_path, _PIDFILE)
        return None if snap is None else _parse_pid(snap[0])

    def identify(self) -> Finding:
        """What PIDFILE names: a master, or why it is to be ignored. Never raises."""
        return self._identify(self.path)

    def identify_oldbin(self, current: Finding | None = None) -> Finding:
        """What PIDFILE.oldbin names. Given PIDFILE's finding ``current``, an .oldbin naming
        that same master is SAME: left by an upgrade that could not remove it (or one
        still booting its new master), it tells of no old generation."""
        found = self._identify(self.oldbin_path)
        if found.is_master and current is not None and current.is_master \
                and current.pid == found.pid:
            return Finding(found.path, SAME, found.pid,
                           f"{found.path} names {found.pid}, the master {self.path} names too")
        return found

    def _identify(self, path: str) -> Finding:
        try:
            snap = _snapshot(path, _PIDFILE)
        except PidfileError as err:
            return Finding(path, UNREADABLE, None, str(err))
        if snap is None:
            return Finding(path, MISSING, None, f"{path} does not exist")
        text, st = snap
        return _judge(path, text, st.st_mtime)

    # -- starting ----------------------------------------------------------

    def claim(
        self, pid: int, is_live_master: Callable[[int], bool] | None = None
    ) -> str | None:
        """Make PIDFILE name ``pid`` at start; refuse if another master runs.

        ``is_live_master`` defaults to the identity check of procs.is_hotswap_master
        against the file's mtime (a master started before it wrote its pidfile).

        Returns None when the file was created (or already named ``pid``),
        or a one-line warning when a stale file (dead pid, a pid reused by
        another program, garbage) was replaced. Raises AlreadyRunning when
        the file names a live master other than ``pid``.

        Creation is race-free: the content is written to a temporary file
        which is then hard-linked to PIDFILE, and link() fails with EEXIST
        if another starter got there first, so of two starters racing on a
        missing pidfile exactly one wins and the other sees the winner.

        The remaining race, stated honestly: replacing a *stale* file is
        check-then-rename. Two starters that both find the same stale file
        may both replace it; each re-reads the file afterwards and backs off
        (AlreadyRunning) if it then names the other live master, but if the
        second rename lands after the first starter's re-read, both run and
        PIDFILE names the second. Closing that would need a separate lock
        file held with flock() for the master's whole life, which this
        design does not use. On a filesystem without hard links creation
        also falls back to check-then-rename.

        A new master started by an upgrade must not call this (PIDFILE
        still names its parent, a live master); it calls write() when ready.
        """
        tmp = _make_tmp(self.path, f"{pid}\n", _PIDFILE)
        try:
            return self._claim_from(tmp, pid, is_live_master)
        finally:
            # After a successful link, tmp is a second name for PIDFILE.
            _unlink_quietly(tmp)

    def _claim_from(
        self, tmp: str, pid: int, is_live_master: Callable[[int], bool] | None
    ) -> str | None:
        for _ in range(_CLAIM_ATTEMPTS):
            if self._link_if_absent(tmp):
                return None
            snap = _snapshot(self.path, _PIDFILE)
            if snap is None:
                continue  # removed between our link and our read: try again
            text, st = snap
            current = _parse_pid(text)
            if current == pid:
                return None
            if current is not None and _live(is_live_master, current, st.st_mtime):
                raise AlreadyRunning(current, self.path)
            warning = _stale_warning(self.path, text, current)
            _replace(tmp, self.path, _PIDFILE)
            self._check_not_overtaken(pid, is_live_master)
            return warning
        raise PidfileError(f"cannot claim pidfile {self.path}: it keeps appearing and vanishing")

    def _link_if_absent(self, tmp: str) -> bool:
        """Publish ``tmp`` as PIDFILE only if no PIDFILE exists; True if we did."""
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in _NO_HARDLINKS:
                raise _write_error(self.path, _PIDFILE, err) from None
        # No hard links here: the best left is check-then-rename.
        if os.path.lexists(self.path):
            return False
        _replace(tmp, self.path, _PIDFILE)
        return True

    def _check_not_overtaken(
        self, pid: int, is_live_master: Callable[[int], bool] | None
    ) -> None:
        """After replacing a stale file, back off if a rival starter replaced it too."""
        current, written_at = self._read_with_mtime()
        if current is not None and current != pid and _live(is_live_master, current, written_at):
            raise AlreadyRunning(current, self.path)

    def _read_with_mtime(self) -> tuple[int | None, float]:
        snap = _snapshot(self.path, _PIDFILE)
        if snap is None:
            return None, 0.0
        return _parse_pid(snap[0]), snap[1].st_mtime

    # -- writing -----------------------------------------------------------

    def write(self, pid: int) -> None:
        """Atomically make PIDFILE name ``pid`` (a new master when ready, or a rollback)."""
        write_atomic(self.path, f"{pid}\n", _PIDFILE)

    def write_oldbin(self, pid: int) -> None:
        """Atomically make PIDFILE.oldbin name ``pid`` (the old master, at USR2)."""
        write_atomic(self.oldbin_path, f"{pid}\n", _PIDFILE)

    def restore(
        self,
        pid: int,
        other: int | None,
        is_live_master: Callable[[int], bool] | None = None,
    ) -> bool:
        """Rollback: make PIDFILE name ``pid`` again after new master ``other`` failed.

        Written when PIDFILE is missing or unparsable, names ``other``, or
        names a process that is not a live master. Left alone when it
        already names ``pid`` or names some other live master (someone else
        took over; clobbering it would orphan them). Returns True if written.
        Check-then-rename: a write landing between the two is overwritten.
        """
        current, written_at = self._read_with_mtime()
        if current == pid:
            return False
        if current is not None and current != other \
                and _live(is_live_master, current, written_at):
            return False
        self.write(pid)
        return True

    # -- removing ----------------------------------------------------------

    def remove_if_ours(self, pid: int) -> bool:
        """Unlink PIDFILE only if it names ``pid``; True if removed."""
        return _remove_if_owned(self.path, pid, _PIDFILE, _parse_pid)

    def remove_oldbin_if_ours(self, pid: int) -> bool:
        """Unlink PIDFILE.oldbin only if it names ``pid``; True if removed."""
        return _remove_if_owned(self.oldbin_path, pid, _PIDFILE, _parse_pid)

    # -- upgrade failure record --------------------------------------------

    def record_failure(self, pid: int, reason: str) -> None:
        """Atomically write ``<pid> <unix time> <reason>`` to PIDFILE.upgrade-failed.

        The upgrade client (Python or sh) reads it before and after sending
        USR2 and reports the reason when the content changed; the time makes
        two identical failures distinguishable. The reason is folded to one
        line so a shell ``read`` gets all of it.
        """
        line = f"{pid} {time.time():.6f} {_one_line(reason)}\n"
        write_atomic(self.failed_path, line, _FAILURE)

    def read_failure(self) -> str | None:
        """The failure record exactly as written, or None if there is none."""
        snap = _snapshot(self.failed_path, _FAILURE)
        return None if snap is None else snap[0]

    def remove_failure_if_ours(self, pid: int) -> bool:
        """Unlink the failure record only if ``pid`` wrote it; True if removed."""
        return _remove_if_owned(self.failed_path, pid, _FAILURE, _failure_owner)
