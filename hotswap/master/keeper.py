"""The keeper: one stable process for a supervisor (docker's PID 1, supervisord).

A live upgrade replaces the master: the old one exits once the new one serves. A
supervisor that watches the master's pid sees that exit as the service dying (docker
ends the container, supervisord respawns). The keeper is the process the supervisor
watches instead. It forks the first master and then only:

- reaps every child, orphans included (it is a child subreaper, and may be PID 1, where
  nobody else would reap zombies);
- forwards the README's signals (TERM, INT, QUIT, HUP, USR1, USR2, TTIN, TTOU, WINCH) to
  the *current* master, which keeps their meaning;
- follows the current master through upgrades: every master writes ``MASTER <pid>``
  on the fd named by HOTSWAP_KEEPER_FD when it becomes the serving master (after READY,
  and again after a rollback), and that fd crosses every re-exec;
- exits once no master is left, with the status of the last one.

Without a keeper, `announce_master` is a no-op, so masters need not know whether one runs.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable, MutableMapping

from pidfiles import procs
from upgrade.names import ENV_KEEPER_FD
from upgrade.proctitle import set_title

from . import daemonpipe
from .reaping import reaped

FORWARDED = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
    signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH,
)
PR_SET_CHILD_SUBREAPER = 36
POLL = 0.5  # s between liveness checks of a current master that is not our child
MESSAGE = b"MASTER"


def wanted(flag: bool | None, daemon: bool, environ: MutableMapping[str, str],
           in_upgrade: bool) -> bool:
    """Should `hotswap start` put a keeper in front of the master?

    Never for a master started by an upgrade (it already has one, or must not get one),
    never under systemd (it follows MAINPID itself) or with --daemon (nobody watches the
    pid); otherwise as forced by --keeper/--no-keeper, or automatically as PID 1 or
    under supervisord.
    """
    if in_upgrade or ENV_KEEPER_FD in environ:
        return False
    if flag is not None:
        return flag
    if daemon or environ.get("NOTIFY_SOCKET"):
        return False
    return os.getpid() == 1 or "SUPERVISOR_ENABLED" in environ


def announce_master(pid: int) -> None:
    """Tell the keeper (if any) that `pid` is the serving master now; tell a waiting
    `hotswap start --daemon` that the server is ready. Never raises: the master serves
    whether or not anyone listens."""
    daemonpipe.report_ready()
    raw = os.environ.get(ENV_KEEPER_FD, "")
    if not raw.isdigit():
        return
    try:
        os.write(int(raw), MESSAGE + b" %d\n" % pid)
    except OSError:
        pass


def run(serve: Callable[[], int], name: str | None = None) -> int:
    """Fork the first master (which runs `serve`), then keep; returns the service's status."""
    _become_subreaper()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(read_fd, False)
    keeper = Keeper(read_fd)
    keeper.install()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    pid = os.fork()
    if pid == 0:
        _run_master(serve, read_fd, write_fd, keeper, previous)  # never returns
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    os.close(write_fd)
    set_title("keeper", name)
    keeper.current = pid
    return keeper.loop()


def _run_master(serve: Callable[[], int], read_fd: int, write_fd: int, keeper: Keeper,
                previous: set[int]) -> None:
    code = 1
    try:
        os.close(read_fd)
        keeper.uninstall()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        os.set_inheritable(write_fd, True)  # it crosses every upgrade's exec
        os.environ[ENV_KEEPER_FD] = str(write_fd)
        code = serve()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a bug of ours: show it, as it would show without a keeper
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _become_subreaper() -> None:
    """Orphaned masters and workers are re-parented to us, not to init."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Keeper:
    """The keeper's state: the current master, masters seen, and the last exit status."""

    def __init__(self, read_fd: int) -> None:
        self.read_fd = read_fd
        self.current: int | None = None
        self.announced: list[int] = []  # newest last
        self.status = 0
        self.pending: list[int] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._partial = b""
        self.watching = [read_fd, self.wake_r]

    def install(self) -> None:
        for sig in (*FORWARDED, signal.SIGCHLD):
            signal.signal(sig, self._handler)
            signal.siginterrupt(sig, False)

    def uninstall(self) -> None:
        for sig in (*FORWARDED, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _handler(self, signum: int, frame: object) -> None:
        self.pending.append(signum)
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:
            pass

    def loop(self) -> int:
        """Until no master is left: read announcements, forward signals, reap."""
        while self.current is not None:
            ready, _, _ = select.select(self.watching, [], [], POLL)
            if self.read_fd in ready:
                self._read_pending_announcements()
            if self.wake_r in ready:
                _drain(self.wake_r)
            while self.pending:
                self._forward(self.pending.pop(0))
            self._reap()
            self._follow()
        return self.status

    def _read_announcements(self) -> bool:
        """Digest what masters wrote; False when nothing more is there now."""
        try:
            data = os.read(self.read_fd, 4096)
        except BlockingIOError:
            return False
        if not data:  # every master closed it: they are all gone or going
            self.watching = [self.wake_r]
            return False
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            word, _, rest = line.partition(b" ")
            if word == MESSAGE and rest.strip().isdigit():
                pid = int(rest)
                self.current = pid
                if pid in self.announced:
                    self.announced.remove(pid)
                self.announced.append(pid)
        return True

    def _forward(self, signum: int) -> None:
        if signum == signal.SIGCHLD or self.current is None:
            return
        try:
            os.kill(self.current, signum)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        for pid, status in reaped():
            if pid == self.current:
                self.status = os.waitstatus_to_exitcode(status)
                if self.status < 0:  # killed by a signal: report it as a shell would
                    self.status = 128 - self.status

    def _follow(self) -> None:
        """The current master is gone: follow the one that took over, or stop."""
        if self.current is None or procs.is_alive(self.current):
            return
        self._read_pending_announcements()
        if self.current is not None and procs.is_alive(self.current):
            return
        survivors = [pid for pid in self.announced if procs.is_alive(pid)]
        survivors += [pid for pid in _children_masters() if pid not in survivors]
        self.current = survivors[-1] if survivors else None

    def _read_pending_announcements(self) -> None:
        while self._read_announcements():
            pass

def _children_masters() -> list[int]:
    """Our children that are hotswap masters (orphaned new generations land here)."""
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in (b"Z", b"X") and int(fields[1]) == me and procs.is_hotswap_master(pid):
            found.append(pid)
    return found


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
