"""`Upgrader`: live upgrades for any Python server, in one object per generation.

    up = Upgrader(pidfile="/run/app.pid")
    sock = up.listen("127.0.0.1:8080")   # inherited from the previous generation, else bound
    ...serve on sock...
    up.ready()                            # the previous generation may now leave
    up.install_signals()                  # USR2: start the next generation from the code on disk
    up.exit.wait()                        # a newer generation serves: stop accepting, drain
    up.close()

The same object is both sides of the protocol. As the new generation it adopts the
sockets and the readiness pipe its parent passed, and says READY. As the old generation
it starts the next one (`upgrade()`, blocking, or `upgrade_async()`), follows it through
a `Handover` and rolls back on any failure. hotswap's own master drives the same
`Handover` from its event loop (`start_upgrade()`), which adds parking its workers and a
watch window.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from listeners import BindError, Listener, ListenerError, close_listener, parse_bind
from pidfiles import AlreadyRunning, Pidfile, PidfileError, procs

from . import names, notify, proctitle
from .child import Inherited, Lineage, read_lineage
from .errors import UpgradeError, UpgradeRefused
from .flag import Flag
from .parent import KILL_AFTER, Event, Handover
from .readiness import ReadinessReader
from .record import Recorder, UpgradeRecord
from .reexec import original_argv, spawn_new_master, start_directory

POLL = 0.05  # how often the blocking face looks at the new master besides its pipe


@dataclass
class UpgradeResult:
    """What `upgrade()` returns: ok once the new generation is ready, else why not."""

    ok: bool
    pid: int | None  # the new master, if one was started
    reason: str = ""
    record: UpgradeRecord | None = None


class Upgrader:
    """One generation of a server that upgrades in place; see the module docstring."""

    def __init__(self, pidfile: str | os.PathLike[str] | None = None, *,
                 upgrade_timeout: float = 60.0, watch_window: float = 0.0,
                 manual: bool = False, name: str | None = None,
                 argv: Sequence[str] | None = None, start_dir: str | None = None,
                 environ: MutableMapping[str, str] | None = None,
                 log: logging.Logger | None = None) -> None:
        self.environ = os.environ if environ is None else environ
        self.lineage: Lineage = read_lineage(self.environ)
        self.start_dir = start_dir or start_directory()
        self.argv = list(argv) if argv else original_argv()
        self.pidfile = Pidfile(pidfile) if pidfile else None
        self.upgrade_timeout = upgrade_timeout
        self.watch_window = watch_window
        self.manual = manual
        self.log = log or logging.getLogger("upgrade")
        self.recorder = Recorder(self.pidfile.path if self.pidfile else None, self.log)
        self.listeners: list[Listener] = []  # what this generation serves and passes on
        self.handover: Handover | None = None  # the upgrade this generation started last
        self.exit = Flag()  # set when a newer generation serves: stop accepting and drain
        self._settled = Flag()  # the last upgrade committed or rolled back
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[UpgradeResult]] = set()
        self._claimed = False
        proctitle.set_title("master", name)
        try:
            if self.lineage.parent_pid is None:
                self._refuse_if_running()
            self._inherited = Inherited(self.environ, self.lineage)
        except UpgradeError as exc:
            self.lineage.fail(str(exc))
            raise

    # -- this generation ------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self.lineage.generation

    @property
    def parent_pid(self) -> int | None:
        """The previous master while it still runs (its watch window), else None."""
        return self.lineage.parent_pid if self.lineage.parent_alive() else None

    def listen(self, address: str, backlog: int = 2048) -> socket.socket:
        """A listening socket for `address` ("host:port", "[::1]:port", "unix:/path",
        "fd://3"): the one the previous generation passed, else a new one."""
        try:
            spec = parse_bind(address)
        except BindError as exc:
            raise UpgradeError(str(exc)) from None
        for listener in self.listeners:
            if listener.matches(spec) or str(listener.spec) == str(spec):
                return listener.sock
        listener = self._inherited.take([address], backlog)[0]
        self.listeners.append(listener)
        return listener.sock

    def listen_all(self, binds: Sequence[str], backlog: int = 2048,
                   default: str | None = None, reuse_port: bool = False) -> list[Listener]:
        """Serve exactly `binds` (all or none); with none, whatever was inherited, else
        `default`. Inherited sockets left over are closed at once (never unlinked).
        `reuse_port`: SO_REUSEPORT on the TCP sockets opened here (inherited ones pass
        as they are, options included)."""
        if not binds and not self._inherited.pool and default:
            binds = [default]
        self.listeners = self._inherited.take(binds, backlog, reuse_port)
        self._inherited.close_unused()
        return self.listeners

    def claim(self) -> str | None:
        """First generation: make PIDFILE name us, or refuse if a master runs. Called by
        ready() if not before (hotswap claims after daemonizing). Returns a warning when
        a stale PIDFILE was replaced."""
        if self._claimed or self.pidfile is None or self.lineage.parent_pid is not None:
            return None
        try:
            warning = self.pidfile.claim(os.getpid())
        except (AlreadyRunning, PidfileError) as exc:
            raise UpgradeError(str(exc)) from None
        self._claimed = True
        if warning:
            self.log.warning("%s", warning)
        return warning

    def ready(self, status: str | None = None) -> None:
        """We serve: the previous generation is told READY and PIDFILE names us.

        The readiness pipe stays open for the previous generation's watch window: fail()
        then asks it to roll back."""
        self._inherited.close_unused()
        status = status or f"generation {self.generation}"
        if self.lineage.parent_pid is None:
            self.claim()
            notify.notify_ready(status=status)
            return
        self.lineage.announce(os.getpid())
        self._pidfile_op(lambda pf: pf.write(os.getpid()))
        notify.notify_ready(main_pid=os.getpid(), status=status)

    def fail(self, reason: str) -> None:
        """Before ready(): we give up, the previous generation keeps serving. After it,
        during the previous generation's watch window: please roll back."""
        self.lineage.fail(reason)

    # -- starting the next generation -----------------------------------------------------

    def refusal(self) -> str:
        """Why an upgrade cannot start now ("" if it can)."""
        upgrade = self.handover
        if upgrade is not None and not upgrade.over:
            return f"an upgrade is already running (new master {upgrade.pid}, {upgrade.phase})"
        parent = self.lineage.parent_pid
        if self.lineage.parent_alive():
            return (f"this master ({os.getpid()}) is the new generation and the previous master "
                    f"{parent} has not exited yet")
        return ""

    def refuse(self, reason: str) -> UpgradeRefused:
        """Record a refused upgrade (clients following PIDFILE.upgrade report it at once)."""
        self.log.warning("USR2 ignored: %s", reason)
        self.recorder.refused(os.getpid(), reason)
        return UpgradeRefused(reason)

    def start_upgrade(self, env: Mapping[str, str] | None = None) -> Handover:
        """Start the next generation and return at once; the caller drives the Handover.

        Raises UpgradeRefused (nothing changed) or UpgradeError (it could not start;
        everything was put back)."""
        reason = self.refusal()
        if reason:
            raise self.refuse(reason)
        me = os.getpid()
        if not self._pidfile_op(lambda pf: pf.write_oldbin(me)):
            assert self.pidfile is not None
            raise self.refuse(f"cannot write {self.pidfile.oldbin_path}")
        notify.notify_reloading()
        rec = UpgradeRecord.begin(me)
        rec.generation = self.generation + 1
        self._inherited.export(self.listeners)
        child_env = {**self.environ, **(env or {})}
        try:
            spawned = spawn_new_master(self.argv, self.start_dir, [lst.fd for lst in self.listeners],
                                       rec.generation, child_env)
        except OSError as exc:
            reason = f"cannot fork a new master: {exc.strerror}"
            self._undo_start(rec, reason)
            raise UpgradeError(reason) from None
        rec.new = spawned.pid
        self.handover = Handover(spawned.pid, ReadinessReader(spawned.ready_fd), rec,
                                 self.recorder, self.pidfile, self.log, self.upgrade_timeout,
                                 self.watch_window, self.manual)
        self._settled.clear()
        self.recorder.update(rec, names.STATE_STARTING)
        self.log.info("started new master %d (generation %d)", spawned.pid, rec.generation)
        return self.handover

    def upgrade(self) -> UpgradeResult:
        """Start the next generation and block until it is ready (ok) or has failed.

        On ok, `exit` is set: stop accepting, finish what you hold, close(). With a watch
        window, wait_commit() says whether the new generation stayed."""
        if not self._lock.acquire(blocking=False):
            reason = self.refusal() or "an upgrade is already running"
            self.refuse(reason)  # recorded: a client following PIDFILE.upgrade learns it at once
            return UpgradeResult(False, None, reason)
        try:
            try:
                upgrade = self.start_upgrade()
            except UpgradeError as exc:
                return UpgradeResult(False, None, str(exc))
            event = self._follow(upgrade, stop_at=(Event.READY, Event.FAILED))
            if event is not Event.READY:
                self._settled.set()
                return UpgradeResult(False, upgrade.pid, upgrade.failure, upgrade.record)
            upgrade.parking()
            upgrade.drained()
            self.exit.set()
            threading.Thread(target=self._watch, args=(upgrade,), daemon=True,
                             name="upgrade-watch").start()
            return UpgradeResult(True, upgrade.pid, "", upgrade.record)
        finally:
            self._lock.release()

    async def upgrade_async(self) -> UpgradeResult:
        """upgrade() without blocking the running loop."""
        return await asyncio.to_thread(self.upgrade)

    async def wait_exit(self) -> None:
        """Until a newer generation serves (or a stop signal came, see install_signals)."""
        await self.exit.wait_async()

    def wait_commit(self, timeout: float | None = None) -> bool:
        """After exit: True once the newer generation stays (at once without a watch
        window); False if it was rolled back, and this generation must serve again."""
        self._settled.wait(timeout)
        upgrade = self.handover
        return upgrade is not None and upgrade.phase == "committing"

    def install_signals(self) -> None:
        """USR2 runs upgrade(); TERM, INT and QUIT set `exit` (stop and drain).

        In a running asyncio loop the handlers go through the loop; otherwise USR2
        starts the upgrade in a thread, so the signal handler itself never blocks."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        stops = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
        if loop is not None:
            loop.add_signal_handler(signal.SIGUSR2, self._upgrade_task, loop)
            for signum in stops:
                loop.add_signal_handler(signum, self.exit.set)
            return
        signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(
            target=self.upgrade, daemon=True, name="upgrade").start())
        for signum in stops:
            signal.signal(signum, lambda *_: self.exit.set())

    def _upgrade_task(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self.upgrade_async())
        self._tasks.add(task)  # the loop keeps only a weak reference to its tasks
        task.add_done_callback(self._tasks.discard)

    # -- leaving ----------------------------------------------------------------------------

    def other_generation_alive(self) -> bool:
        """Another master serves our sockets: never unlink them or hand PIDFILE away."""
        upgrade = self.handover
        newer = upgrade is not None and upgrade.new_serves and procs.is_alive(upgrade.pid)
        return newer or self.lineage.parent_alive()

    def close(self) -> None:
        """Leave: the record says committed if a newer generation took over, PIDFILE and
        the unix socket paths go only if they are ours and nobody else serves them.

        A new generation upgrade() is still waiting for is stopped first (TERM, KILL 10 s
        later) and recorded as failed: it must not live on, orphaned, on our sockets."""
        upgrade = self.handover
        if upgrade is not None and upgrade.phase == "starting" and self._lock.locked():
            upgrade.abandon("the old generation is stopping")
            self._settled.wait(KILL_AFTER + 2)  # upgrade() reaps it and records "failed"
        if self.handover is not None:
            self.handover.finish()
        other = self.other_generation_alive()
        for listener in self.listeners:
            try:
                close_listener(listener, unlink=not other)
            except ListenerError as exc:
                self.log.warning("%s", exc)
        self.listeners = []
        self._release_pidfile()
        self.lineage.close()

    def __enter__(self) -> Upgrader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- inside -------------------------------------------------------------------------------

    def _follow(self, upgrade: Handover, stop_at: tuple[Event, ...]) -> Event | None:
        """Drive the handover alone (no event loop of ours) until one of `stop_at`."""
        while True:
            fd = upgrade.fileno()
            if fd is not None:
                select.select([fd], [], [], POLL)
            else:
                time.sleep(POLL)  # only the exit is left to see
            for event in (upgrade.read(), self._reap(upgrade), upgrade.tick(time.monotonic())):
                if event is Event.ROLLBACK:
                    self.exit.clear()
                    upgrade.roll_back()
                if event in stop_at:
                    return event
            if upgrade.over:
                return None

    def _reap(self, upgrade: Handover) -> Event | None:
        if upgrade.gone:
            return None
        try:
            pid, status = os.waitpid(upgrade.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        return upgrade.exited(status) if pid else None

    def _watch(self, upgrade: Handover) -> None:
        """The watch window, in a thread: commit, or roll back and serve again."""
        event = self._follow(upgrade, stop_at=(Event.COMMIT, Event.ROLLBACK))
        if event is Event.COMMIT:
            upgrade.commit("watch window over")
        self._settled.set()
        if event is Event.ROLLBACK:
            self._follow(upgrade, stop_at=())  # reap the new master once it has left

    def _refuse_if_running(self) -> None:
        if self.pidfile is None:
            return
        try:
            pid = self.pidfile.read()
        except PidfileError as exc:
            raise UpgradeError(str(exc)) from None
        if pid is not None and pid != os.getpid() and self.pidfile.identify().is_master:
            raise UpgradeError(f"already running as pid {pid} (pidfile {self.pidfile.path})")

    def _undo_start(self, rec: UpgradeRecord, reason: str) -> None:
        me = os.getpid()
        self.log.error("upgrade failed: %s; master %d keeps serving", reason, me)
        self._pidfile_op(lambda pf: pf.record_failure(me, reason))
        self._pidfile_op(lambda pf: pf.remove_oldbin_if_ours(me))
        self.recorder.update(rec, names.STATE_FAILED, reason)
        notify.notify_ready(status=f"upgrade failed: {reason}")

    def _release_pidfile(self) -> None:
        """Remove only what names us; a new generation being rolled back hands PIDFILE back."""
        pidfile = self.pidfile
        if pidfile is None:
            return
        me, parent = os.getpid(), self.lineage.parent_pid
        if parent is not None and self.lineage.parent_alive() and self._read_pidfile() == me:
            self._pidfile_op(lambda pf: pf.write(parent))
        else:
            self._pidfile_op(lambda pf: pf.remove_if_ours(me))
        self._pidfile_op(lambda pf: pf.remove_oldbin_if_ours(me))
        self._pidfile_op(lambda pf: pf.remove_failure_if_ours(me))

    def _read_pidfile(self) -> int | None:
        try:
            return self.pidfile.read() if self.pidfile else None
        except PidfileError:
            return None

    def _pidfile_op(self, op: Callable[[Pidfile], object]) -> bool:
        """Pidfile trouble is logged, never fatal: the server keeps serving either way."""
        if self.pidfile is None:
            return True
        try:
            op(self.pidfile)
            return True
        except (PidfileError, OSError) as exc:
            self.log.error("pidfile: %s", exc)
            return False


def report_startup_failure(reason: str, environ: MutableMapping[str, str] | None = None) -> None:
    """For a server that fails before it could build its Upgrader (bad configuration):
    tell a waiting previous generation why, so the upgrade fails at once with the reason."""
    try:
        read_lineage(os.environ if environ is None else environ).fail(reason)
    except UpgradeError:
        pass
