"""The master: owns listeners, pidfile and workers, and never serves a request itself.

The loop, top to bottom:

    wait on the self-pipe, the workers' pipes and the readiness pipe (at most 1 s)
    handle queued signals, in order
    reap dead children; kill workers silent for longer than --timeout
    watch a running upgrade; bring the worker count back to its target

Signal handlers only queue; each signal has one method here (`_on_<signal>`).
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from listeners import Listener, ListenerError, close_listener, parse_bind, reconcile
from pidfiles import Pidfile, PidfileError, procs
from upgrade import notify
from upgrade.readiness import ReadinessReader, announce_ready
from upgrade.reexec import spawn_new_master

from . import config as config_mod
from .boot import Lineage
from .config import Config
from .errors import StartupError
from .keeper import announce_master
from .logs import Logs
from .proctitle import set_title
from .signals import SignalQueue
from .worker import BOOT_FAILED, WorkerSpec
from .workers import WorkerHandle, describe_exit, fork_worker

WAIT = 1.0
FAST_STOP_GRACE = 2.0
KILL_UPGRADE_AFTER = 10.0  # after TERM, a new master that will not leave gets SIGKILL


@dataclass
class PendingUpgrade:
    """A new master we started that has not said READY yet."""

    pid: int
    reader: ReadinessReader
    started: float
    deadline: float
    failure: str = ""
    term_sent: float | None = None


@dataclass
class PendingReload:
    """A HUP in progress: the new workers must all boot before the old ones retire."""

    old_cfg: Config
    old_epoch: int


class Arbiter:
    def __init__(self, cfg: Config, flags: dict[str, Any], logs: Logs,
                 listeners: list[Listener], lineage: Lineage, pidfile: Pidfile | None,
                 app: Callable[..., Any] | None, start_dir: str, argv: list[str]) -> None:
        self.cfg = cfg
        self.flags = flags
        self.logs = logs
        self.log = logs.error
        self.listeners = listeners
        self.lineage = lineage
        self.pidfile = pidfile
        self.app = app
        self.start_dir = start_dir
        self.argv = argv
        self.pid = os.getpid()
        self.workers: dict[int, WorkerHandle] = {}
        self.epoch = 0
        self.target = cfg.workers
        self.stopping: str | None = None  # "graceful" or "fast"
        self.quits = 0  # QUITs received: the second one always means "now"
        self.stop_deadline = 0.0
        self.winched = False
        self.ready = False
        self.ever_booted = False
        self.fatal: str | None = None
        self.boot_failures = 0
        self.next_spawn = 0.0
        self.reload: PendingReload | None = None
        self.upgrade: PendingUpgrade | None = None
        self.newer_pid: int | None = None
        self.started = time.monotonic()
        self.signals = SignalQueue()
        self.selector = selectors.DefaultSelector()

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; returns the exit status (raises StartupError if no worker ever booted)."""
        self.signals.install()
        self.selector.register(self.signals.read_fd, selectors.EVENT_READ, "signals")
        set_title("master", self.cfg.name)
        self.log.info("master %d (generation %d) listening on %s", self.pid,
                      self.lineage.generation, ", ".join(lst.address() for lst in self.listeners))
        self._maintain(time.monotonic())
        while not self._turn():
            pass
        return self._shutdown()

    def _turn(self) -> bool:
        """One pass of the loop; True when the master should exit.

        A bug in one pass is logged and the loop goes on: a master that dies leaves its
        workers and the next generation without anyone to manage them.
        """
        try:
            self._wait()
            for signum in self.signals.drain():
                self._dispatch(signum)
            self._reap()
            now = time.monotonic()
            self._check_workers(now)
            self._check_upgrade(now)
            if self.stopping:
                return self._stop_done(now)
            self._maintain(now)
            self._check_ready()
        except Exception:
            self.log.exception("internal error in the master loop")
            time.sleep(0.1)  # never spin on a repeating error
        return False

    def _wait(self) -> None:
        timeout = WAIT
        if self.next_spawn:
            timeout = max(0.0, min(timeout, self.next_spawn - time.monotonic()))
        for key, _ in self.selector.select(timeout):
            if key.data == "signals":
                continue  # drained by the loop
            if key.data == "upgrade":
                self._on_readiness()
            else:
                self._read_worker(key.data)

    def _read_worker(self, handle: WorkerHandle) -> None:
        try:
            data = os.read(handle.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(handle.fd)
            return
        was_booted = handle.booted
        handle.feed(data, time.monotonic())
        if handle.booted and not was_booted:
            self.ever_booted = True
            self.boot_failures = 0

    # -- signals ----------------------------------------------------------------------

    def _dispatch(self, signum: int) -> None:
        handler = {
            signal.SIGTERM: self._on_term,
            signal.SIGINT: self._on_quit,
            signal.SIGQUIT: self._on_quit,
            signal.SIGHUP: self._on_hup,
            signal.SIGTTIN: self._on_ttin,
            signal.SIGTTOU: self._on_ttou,
            signal.SIGUSR1: self._on_usr1,
            signal.SIGUSR2: self._on_usr2,
            signal.SIGWINCH: self._on_winch,
        }.get(signum)
        if handler is not None:
            handler()

    def _on_term(self) -> None:
        """Graceful stop: workers finish what they hold, for up to --graceful-timeout."""
        if self.stopping:
            return
        self.log.info("TERM: graceful stop (up to %.1f s)", self.cfg.graceful_timeout)
        self._begin_stop("graceful", self.cfg.graceful_timeout + 1.0, signal.SIGTERM)

    def _on_quit(self) -> None:
        """Fast stop: workers exit now — unless another generation serves our sockets.

        Then QUIT is a step of the upgrade protocol (retire the old master, or roll back
        by stopping the new one) and the service is not going down: dropping what our
        workers hold would break the promise for nothing, so they finish gracefully.
        A second QUIT still means: now.
        """
        if self.stopping == "fast":
            return
        self.quits += 1
        if self.quits == 1 and self.workers and self._other_generation_alive():
            # Also when a TERM already started a graceful stop: a rollback tool's QUIT
            # must not turn that drain into dropped requests.
            if self.stopping is None:
                self.log.info("QUIT: another generation serves the same sockets; stopping "
                              "gracefully (up to %.1f s, QUIT again to stop now)",
                              self.cfg.graceful_timeout)
                self._begin_stop("graceful", self.cfg.graceful_timeout + 1.0, signal.SIGTERM)
            return
        self.log.info("fast stop")
        self._begin_stop("fast", FAST_STOP_GRACE, signal.SIGQUIT)

    def _begin_stop(self, how: str, grace: float, sig: int) -> None:
        self.stopping = how
        self.stop_deadline = time.monotonic() + grace
        if not self._other_generation_alive():
            notify.notify_stopping()
        if self.upgrade is not None:
            self.upgrade.failure = "the old master is stopping"
            self._signal(self.upgrade.pid, signal.SIGTERM)
        for handle in self.workers.values():
            if sig == signal.SIGTERM:
                self._retire(handle)
            else:
                self._signal(handle.pid, sig)

    def _on_hup(self) -> None:
        """Reload: re-read the configuration, start new workers, then retire the old ones."""
        if self.stopping:
            return
        try:
            new_cfg = config_mod.build(self.flags)
            self._rebind(new_cfg)
        except StartupError as exc:
            self.log.error("HUP: %s; keeping the running configuration", exc)
            return
        if self.winched:
            self.log.info("HUP: bringing workers back after WINCH")
            self.winched = False
        if self.reload is None:
            self.reload = PendingReload(self.cfg, self.epoch)
        self.cfg = new_cfg
        self.target = new_cfg.workers
        self.logs.error.setLevel(new_cfg.log_level.upper())
        self.epoch += 1
        self.boot_failures = 0
        self.next_spawn = 0.0
        self.log.info("HUP: reloading with %d new worker(s)", self.target)

    def _rebind(self, new_cfg: Config) -> None:
        if new_cfg.bind == self.cfg.bind or not new_cfg.bind:
            return
        try:
            specs = [parse_bind(text) for text in new_cfg.bind]
            serving, unwanted = reconcile(self.listeners, specs, new_cfg.backlog)
        except (ValueError, ListenerError) as exc:
            raise StartupError(str(exc)) from None
        for listener in unwanted:
            close_listener(listener, unlink=not self._other_generation_alive())
        self.listeners = serving

    def _on_ttin(self) -> None:
        self.target += 1
        self.log.info("TTIN: %d worker(s)", self.target)

    def _on_ttou(self) -> None:
        if self.target > 1:
            self.target -= 1
        self.log.info("TTOU: %d worker(s)", self.target)

    def _on_usr1(self) -> None:
        """Reopen log files here and in every worker (logrotate)."""
        self.logs.reopen()
        self.log.info("USR1: log files reopened")
        for handle in self.workers.values():
            self._signal(handle.pid, signal.SIGUSR1)

    def _on_winch(self) -> None:
        """Retire all workers without replacing them — only when it cannot be a terminal resize."""
        if self.upgrade is not None:
            # A tool that saw PIDFILE name the new master may signal us before our loop
            # read its READY line, which the new master writes first: read it now.
            self._on_readiness()
        if not (self._newer_alive() or self.cfg.daemon):
            self.log.info("WINCH ignored: no newer generation is running and not daemonized")
            return
        self.log.info("WINCH: retiring all workers (HUP brings them back)")
        self.winched = True
        self.reload = None
        for handle in self.workers.values():
            self._retire(handle)

    def _on_usr2(self) -> None:
        """Upgrade: start a new master from the code on disk, sharing our sockets."""
        refusal = self._upgrade_refusal()
        if refusal:
            self.log.warning("USR2 ignored: %s", refusal)
            return
        if self.pidfile is not None and not self._pidfile_op(self.pidfile.write_oldbin, self.pid):
            return
        notify.notify_reloading()
        generation = self.lineage.generation + 1
        try:
            spawned = spawn_new_master(self.argv, self.start_dir,
                                       [lst.fd for lst in self.listeners], generation)
        except OSError as exc:
            self._upgrade_failed(None, f"cannot fork a new master: {exc.strerror}")
            return
        now = time.monotonic()
        reader = ReadinessReader(spawned.ready_fd)
        self.upgrade = PendingUpgrade(spawned.pid, reader, now, now + self.cfg.upgrade_timeout)
        self.selector.register(reader.fileno(), selectors.EVENT_READ, "upgrade")
        self.log.info("USR2: started new master %d (generation %d)", spawned.pid, generation)

    def _upgrade_refusal(self) -> str:
        if self.stopping:
            return "stopping"
        if self.upgrade is not None:
            return f"an upgrade is already running (new master {self.upgrade.pid})"
        if self._newer_alive():
            return f"a newer generation (master {self.newer_pid}) is already running"
        parent = self.lineage.parent_pid
        if parent is not None and os.getppid() == parent:
            return (f"this master is the new generation and the old master {parent} "
                    "has not been retired yet")
        return ""

    # -- the upgrade, seen from the old master ------------------------------------------

    def _on_readiness(self) -> None:
        upgrade = self.upgrade
        if upgrade is None:
            return
        outcome = upgrade.reader.read()
        if outcome is None:
            return
        self._close_reader(upgrade)
        if outcome.kind == "ready":
            self._upgrade_ready(upgrade)
        elif outcome.kind == "failed":
            upgrade.failure = outcome.reason
        # "eof": the new master died; reaping it says how.

    def _upgrade_ready(self, upgrade: PendingUpgrade) -> None:
        self.newer_pid = upgrade.pid
        self.upgrade = None
        self.log.info("new master %d is ready after %.2f s; WINCH then QUIT retire this one (%d)",
                      upgrade.pid, time.monotonic() - upgrade.started, self.pid)

    def _check_upgrade(self, now: float) -> None:
        upgrade = self.upgrade
        if upgrade is None:
            return
        if upgrade.term_sent is None and now >= upgrade.deadline:
            upgrade.failure = (f"new master {upgrade.pid} was not ready within "
                               f"{self.cfg.upgrade_timeout:g} s")
            self.log.error("%s; stopping it", upgrade.failure)
            upgrade.term_sent = now
            self._signal(upgrade.pid, signal.SIGTERM)
        elif upgrade.term_sent is not None and now - upgrade.term_sent > KILL_UPGRADE_AFTER:
            self._signal(upgrade.pid, signal.SIGKILL)

    def _upgrade_child_exited(self, status: int) -> None:
        upgrade = self.upgrade
        assert upgrade is not None
        outcome = None if upgrade.reader.closed else upgrade.reader.read()
        if outcome is not None and outcome.kind == "ready":
            # It said READY and died at once: treat it as a newer generation that exited.
            self._upgrade_ready(upgrade)
            self._newer_exited(status)
            return
        if outcome is not None and outcome.kind == "failed":
            upgrade.failure = outcome.reason
        reason = upgrade.failure or (f"new master {upgrade.pid} {describe_exit(status)} "
                                     "before it was ready")
        self._upgrade_failed(upgrade, reason)

    def _upgrade_failed(self, upgrade: PendingUpgrade | None, reason: str) -> None:
        """Put everything back as it was before USR2; we never stopped serving."""
        self.log.error("upgrade failed: %s; master %d keeps serving", reason, self.pid)
        if upgrade is not None:
            self._close_reader(upgrade)
        self.upgrade = None
        if self.pidfile is not None:
            self._pidfile_op(self.pidfile.record_failure, self.pid, reason)
            self._pidfile_op(self.pidfile.restore, self.pid, upgrade.pid if upgrade else None)
            self._pidfile_op(self.pidfile.remove_oldbin_if_ours, self.pid)
        notify.notify_ready(status=f"upgrade failed: {reason}")

    def _newer_exited(self, status: int) -> None:
        """The newer generation is gone (rollback or crash): we are the current master again."""
        pid = self.newer_pid
        self.newer_pid = None
        self.log.warning("newer master %s %s; master %d is current again", pid,
                         describe_exit(status), self.pid)
        if self.pidfile is not None:
            self._pidfile_op(self.pidfile.restore, self.pid, pid)
            self._pidfile_op(self.pidfile.remove_oldbin_if_ours, self.pid)
        announce_master(self.pid)
        if self.stopping is None:
            notify.notify_ready(main_pid=self.pid)
        if self.winched:
            self.log.info("bringing workers back")
            self.winched = False

    def _close_reader(self, upgrade: PendingUpgrade) -> None:
        if not upgrade.reader.closed:
            try:
                self.selector.unregister(upgrade.reader.fileno())
            except (KeyError, ValueError):
                pass
            upgrade.reader.close()

    # -- workers ----------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.workers:
                self._worker_exited(self.workers.pop(pid), status)
            elif self.upgrade is not None and pid == self.upgrade.pid:
                self._upgrade_child_exited(status)
            elif pid == self.newer_pid:
                self._newer_exited(status)

    def _worker_exited(self, handle: WorkerHandle, status: int) -> None:
        try:
            self.selector.unregister(handle.fd)
        except (KeyError, ValueError):
            pass
        os.close(handle.fd)
        if handle.retiring_since is not None or self.stopping:
            self.log.debug("worker %d %s", handle.pid, describe_exit(status))
            return
        if handle.booted:
            level = self.log.info if status == 0 else self.log.warning
            level("worker %d %s; replacing it", handle.pid, describe_exit(status))
            return
        reason = handle.boot_error or f"worker {handle.pid} {describe_exit(status)} while booting"
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_FAILED and not handle.boot_error:
            reason = f"worker {handle.pid} could not load the app"
        self._boot_failed(handle, reason)

    def _boot_failed(self, handle: WorkerHandle, reason: str) -> None:
        if self.reload is not None and handle.epoch == self.epoch:
            self._abort_reload(reason)
            return
        if not self.ever_booted:
            self.fatal = reason
            self.lineage.fail(reason)
            self._begin_stop("fast", FAST_STOP_GRACE, signal.SIGQUIT)
            return
        self.boot_failures += 1
        delay = min(0.25 * 2 ** (self.boot_failures - 1), 10.0)
        self.next_spawn = time.monotonic() + delay
        self.log.error("worker failed to boot: %s (retrying in %.1f s)", reason, delay)

    def _abort_reload(self, reason: str) -> None:
        """A HUP whose new workers cannot boot: keep the old ones, as if HUP never came."""
        reload = self.reload
        assert reload is not None
        self.log.error("HUP: reload failed: %s; keeping the running workers", reason)
        for handle in self.workers.values():
            if handle.epoch == self.epoch:
                self._retire(handle)
        self.cfg = reload.old_cfg
        self.target = reload.old_cfg.workers
        self.epoch = reload.old_epoch
        self.reload = None

    def _check_workers(self, now: float) -> None:
        for handle in self.workers.values():
            if handle.killed:
                continue
            if handle.retiring_since is not None:
                if now - handle.retiring_since > self.cfg.graceful_timeout + 1.0:
                    self.log.warning("worker %d still busy after the graceful timeout; killing it",
                                     handle.pid)
                    self._kill(handle)
            elif now - handle.last_seen > self.cfg.timeout:
                what = "no heartbeat" if handle.booted else "still booting"
                self.log.error("worker %d timed out (%s for %.0f s); killing it", handle.pid,
                               what, now - handle.last_seen)
                self._kill(handle)

    def _maintain(self, now: float) -> None:
        if self.winched or self.fatal:
            return
        current = [h for h in self.workers.values()
                   if h.epoch == self.epoch and h.retiring_since is None]
        if len(current) < self.target and now >= self.next_spawn:
            count = 1 if self.boot_failures else self.target - len(current)
            for _ in range(count):
                self._spawn()
            self.next_spawn = 0.0
        elif len(current) > self.target:
            for handle in sorted(current, key=lambda h: h.started)[: len(current) - self.target]:
                self._retire(handle)
        self._finish_reload(current)

    def _finish_reload(self, current: list[WorkerHandle]) -> None:
        """Old-epoch workers retire once every new one has booted."""
        if self.reload is not None:
            if len(current) < self.target or not all(h.booted for h in current):
                return
            self.log.info("HUP: reload complete")
            self.reload = None
        for handle in self.workers.values():
            if handle.epoch != self.epoch and handle.retiring_since is None:
                self._retire(handle)

    def _spawn(self) -> None:
        def spec_for(status_fd: int) -> WorkerSpec:
            return WorkerSpec(self.cfg, self.listeners, status_fd, self.pid,
                              self.lineage.generation, self.logs, self.app)

        try:
            handle = fork_worker(spec_for, self.epoch, self._in_worker_child)
        except OSError as exc:
            self.log.error("cannot fork a worker: %s", exc.strerror)
            self.next_spawn = time.monotonic() + 1.0
            return
        self.workers[handle.pid] = handle
        self.selector.register(handle.fd, selectors.EVENT_READ, handle)

    def _in_worker_child(self) -> None:
        """In a fresh worker: drop what belongs to the master alone."""
        self.selector.close()
        self.signals.close_in_child()
        for handle in self.workers.values():
            os.close(handle.fd)
        if self.upgrade is not None and not self.upgrade.reader.closed:
            os.close(self.upgrade.reader.fileno())
        if self.lineage.ready_fd is not None:
            os.close(self.lineage.ready_fd)

    def _retire(self, handle: WorkerHandle) -> None:
        if handle.retiring_since is None:
            handle.retiring_since = time.monotonic()
            self._signal(handle.pid, signal.SIGTERM)

    def _kill(self, handle: WorkerHandle) -> None:
        handle.killed = True
        self._signal(handle.pid, signal.SIGKILL)

    def _signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    # -- readiness and stopping ---------------------------------------------------------

    def _check_ready(self) -> None:
        if self.ready:
            return
        booted = [h for h in self.workers.values() if h.booted and h.epoch == self.epoch]
        if len(booted) < self.target:
            return
        self.ready = True
        took = time.monotonic() - self.started
        if self.lineage.parent_pid is not None:
            # The old master must hold READY before PIDFILE names us: upgrade tools send
            # it WINCH as soon as they see PIDFILE change (see _on_winch).
            if self.lineage.ready_fd is not None:
                announce_ready(self.lineage.ready_fd, self.pid)
                self.lineage.ready_fd = None
            if self.pidfile is not None:
                self._pidfile_op(self.pidfile.write, self.pid)
            notify.notify_ready(main_pid=self.pid, status=f"generation {self.lineage.generation}")
        else:
            notify.notify_ready(status=f"generation {self.lineage.generation}")
        announce_master(self.pid)
        self.log.info("ready: %d worker(s) booted in %.2f s", len(booted), took)

    def _stop_done(self, now: float) -> bool:
        if not self.workers and self.upgrade is None:
            return True
        if now < self.stop_deadline:
            return False
        alive = [h for h in self.workers.values() if not h.killed]
        if alive:
            self.log.warning("killing %d worker(s) that did not stop in time", len(alive))
            for handle in alive:
                self._kill(handle)
            self.stop_deadline = now + FAST_STOP_GRACE
            return False
        return True

    def _newer_alive(self) -> bool:
        return self.newer_pid is not None and procs.is_alive(self.newer_pid)

    def _other_generation_alive(self) -> bool:
        """Is another master serving our sockets? Then we must not unlink or hand off."""
        parent = self.lineage.parent_pid
        return self._newer_alive() or (parent is not None and os.getppid() == parent)

    def _shutdown(self) -> int:
        other = self._other_generation_alive()
        for listener in self.listeners:
            try:
                close_listener(listener, unlink=not other)
            except ListenerError as exc:
                self.log.warning("%s", exc)
        self._release_pidfile()
        self.log.info("master %d exiting", self.pid)
        if self.fatal:
            raise StartupError(self.fatal)
        return 0

    def _release_pidfile(self) -> None:
        """Remove only what names us; a new generation being rolled back hands PIDFILE back."""
        pidfile = self.pidfile
        if pidfile is None:
            return
        parent = self.lineage.parent_pid
        if parent is not None and os.getppid() == parent and self._pidfile_read() == self.pid:
            self._pidfile_op(pidfile.write, parent)
        else:
            self._pidfile_op(pidfile.remove_if_ours, self.pid)
        self._pidfile_op(pidfile.remove_oldbin_if_ours, self.pid)
        self._pidfile_op(pidfile.remove_failure_if_ours, self.pid)

    def _pidfile_read(self) -> int | None:
        assert self.pidfile is not None
        try:
            return self.pidfile.read()
        except PidfileError:
            return None

    def _pidfile_op(self, op: Callable[..., Any], *args: Any) -> bool:
        """Pidfile trouble is logged, never fatal: the master keeps serving either way."""
        try:
            op(*args)
            return True
        except (PidfileError, OSError) as exc:
            self.log.error("pidfile: %s", exc)
            return False
