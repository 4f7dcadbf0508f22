"""The master: owns listeners, pidfile and workers, and never serves a request itself.

The loop, top to bottom:

    wait on the self-pipe, the workers' pipes, the readiness pipe and a health probe (≤ 1 s)
    handle queued signals, in order
    reap dead children; kill workers silent for longer than --timeout
    move a running upgrade along; bring the worker count back to its target

Signal handlers only queue; each signal has one method here (`_on_<signal>`). The old
master's side of an upgrade is a `Handover` (handover.py) moved along by `_check_upgrade`;
the new master's health gate and watch are in gate.py.
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
from upgrade import names, notify
from upgrade.proctitle import set_title
from upgrade.readiness import ReadinessReader, announce_ready
from upgrade.record import UpgradeRecord
from upgrade.reexec import spawn_new_master

from .. import config as config_mod
from .. import paths
from ..config import Config
from ..errors import StartupError
from ..logs import Logs
from ..worker.process import BOOT_FAILED, WorkerSpec
from .boot import Lineage
from .gate import (
    GATE_ATTEMPTS,
    GATE_INTERVAL,
    WATCH_ATTEMPTS,
    WATCH_INTERVAL,
    HealthProbe,
    Watch,
)
from .handles import WorkerHandle, describe_exit, fork_worker
from .handover import Handover, RecordKeeper
from .keeper import announce_master
from .reaping import reaped
from .signals import SignalQueue

WAIT = 1.0
FAST_STOP_GRACE = 2.0
KILL_UPGRADE_AFTER = 10.0  # after TERM, a new master that will not leave gets SIGKILL


@dataclass
class PendingReload:
    """A HUP in progress: the new workers must all boot before the old ones retire."""

    old_cfg: Config
    old_epoch: int
    old_listeners: list[Listener]


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
        self.parked = False  # our workers stopped serving (WINCH or an upgrade's drain)
        self.ready = False
        self.ever_booted = False
        self.fatal: str | None = None
        self.boot_failures = 0
        self.next_spawn = 0.0
        self.reload: PendingReload | None = None
        self.upgrade: Handover | None = None  # an upgrade we (the old master) run
        self.records = RecordKeeper(pidfile.path if pidfile else None, self.log.error)
        health_url = os.environ.pop(names.ENV_HEALTH_URL, None) or cfg.health_url
        self.health = HealthProbe(health_url) if health_url else None
        self.gate_open = self.health is None  # workers serve the shared sockets
        self.watch: Watch | None = None  # set while the old master watches us
        self._probe_fd: int | None = None  # the running probe's fd, registered for wake-ups
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
            self._check_watch(now)
            if self.stopping:
                return self._stop_done(now)
            self._maintain(now)
            self._check_ready(now)
        except Exception:
            self.log.exception("internal error in the master loop")
            time.sleep(0.1)  # never spin on a repeating error
        return False

    def _wait(self) -> None:
        timeout = WAIT
        if self.next_spawn:
            timeout = min(timeout, self.next_spawn - time.monotonic())
        if self.health is not None and self.health.running is None and not self.stopping:
            timeout = min(timeout, self.health.next_at - time.monotonic())
        if self.upgrade is not None and self.upgrade.phase == "watching":
            timeout = min(timeout, self.upgrade.watch_until - time.monotonic())
        self._watch_probe_fd()
        for key, _ in self.selector.select(max(0.0, timeout)):
            if key.data == "upgrade":
                self._on_readiness()
            elif key.data == "parent":
                self._end_watch()
            elif isinstance(key.data, WorkerHandle):
                self._read_worker(key.data)

    def _watch_probe_fd(self) -> None:
        """Wake up when a running health probe answers."""
        fd = self.health.fileno() if self.health is not None else None
        registered = self._probe_fd
        if fd == registered:
            return
        if registered is not None:
            try:
                self.selector.unregister(registered)
            except (KeyError, ValueError):
                pass
        if fd is not None:
            self.selector.register(fd, selectors.EVENT_READ, "probe")
        self._probe_fd = fd

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

        Then QUIT is a step of the upgrade (commit it, or roll back by stopping the new
        master) and the service is not going down: dropping what our workers hold would
        break the promise for nothing, so they finish gracefully. A second QUIT: now.
        """
        if self.stopping == "fast":
            return
        self.quits += 1
        if self.upgrade is not None and self.upgrade.phase in ("ready", "draining", "watching"):
            self._commit("QUIT")
            return
        if self.quits == 1 and self.workers and self._other_generation_alive():
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
        upgrade = self.upgrade
        if upgrade is not None and not upgrade.new_serves:
            upgrade.failure = "the old master is stopping"
            self._signal(upgrade.pid, signal.SIGTERM)
        for handle in self.workers.values():
            if sig == signal.SIGTERM:
                self._retire(handle)
            else:
                self._signal(handle.pid, sig)

    def _on_hup(self) -> None:
        """Reload; with parked workers (WINCH, or an upgrade's drain), bring them back instead."""
        if self.stopping:
            return
        if self.parked:
            upgrade = self.upgrade
            if upgrade is not None and not upgrade.manual and upgrade.phase in ("draining",
                                                                                 "watching"):
                self._roll_back("rolled back by HUP to the old master")
            else:
                self.log.info("HUP: bringing the parked workers back")
                self._resume_all()
            return
        try:
            new_cfg = paths.resolve_config(config_mod.build(self.flags), self.start_dir)
            serving = self._listeners_for(new_cfg)
        except StartupError as exc:
            self.log.error("HUP: %s; keeping the running configuration", exc)
            return
        if self.reload is None:
            self.reload = PendingReload(self.cfg, self.epoch, self.listeners)
        self.listeners = serving
        self.cfg = new_cfg
        self.target = new_cfg.workers
        self.logs.error.setLevel(new_cfg.log_level.upper())
        self.epoch += 1
        self.boot_failures = 0
        self.next_spawn = 0.0
        self.log.info("HUP: reloading with %d new worker(s)", self.target)

    def _listeners_for(self, new_cfg: Config) -> list[Listener]:
        """The sockets the new configuration serves; nothing is closed until it booted."""
        if new_cfg.bind == self.cfg.bind or not new_cfg.bind:
            return self.listeners
        try:
            specs = [parse_bind(text) for text in new_cfg.bind]
            serving, _unwanted = reconcile(self.listeners, specs, new_cfg.backlog)
        except (ValueError, ListenerError) as exc:
            raise StartupError(str(exc)) from None
        return serving

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
        """Park all workers (they stop serving, keep the app) — never for a terminal resize."""
        upgrade = self.upgrade
        if upgrade is not None and upgrade.phase == "starting":
            self._on_readiness()  # a READY may be waiting in the pipe
        if upgrade is not None and not upgrade.manual:
            self.log.info("WINCH ignored: the upgrade to %d retires this generation by itself",
                          upgrade.pid)
            return
        if not ((upgrade is not None and upgrade.new_serves) or self.cfg.daemon):
            self.log.info("WINCH ignored: no newer generation is running and not daemonized")
            return
        self.log.info("WINCH: parking all workers (HUP brings them back)")
        self._park_all()
        if upgrade is not None:
            self._advance(upgrade, "draining", names.STATE_DRAINING)

    def _on_usr2(self) -> None:
        """Upgrade: start a new master from the code on disk, sharing our sockets."""
        refusal = self._upgrade_refusal()
        if refusal:
            self.log.warning("USR2 ignored: %s", refusal)
            self.records.refused(self.pid, refusal)
            return
        request = self.records.take_request()
        if self.pidfile is not None and not self._pidfile_op(self.pidfile.write_oldbin, self.pid):
            self.records.refused(self.pid, f"cannot write {self.pidfile.oldbin_path}")
            return
        notify.notify_reloading()
        rec = UpgradeRecord.begin(self.pid)
        rec.generation = self.lineage.generation + 1
        env = dict(os.environ)
        if request.get("health_url"):
            env[names.ENV_HEALTH_URL] = request["health_url"]
        try:
            spawned = spawn_new_master(self.argv, self.start_dir,
                                       [lst.fd for lst in self.listeners], rec.generation, env)
        except OSError as exc:
            self._upgrade_failed(None, f"cannot fork a new master: {exc.strerror}", rec)
            return
        reader = ReadinessReader(spawned.ready_fd)
        handover = Handover(spawned.pid, reader, rec, manual=self.cfg.upgrade_mode == "manual")
        handover.deadline = handover.started + self.cfg.upgrade_timeout
        rec.new = spawned.pid
        self.upgrade = handover
        self.records.update(rec, names.STATE_STARTING)
        self.selector.register(reader.fileno(), selectors.EVENT_READ, "upgrade")
        self.log.info("USR2: started new master %d (generation %d)", spawned.pid, rec.generation)

    def _upgrade_refusal(self) -> str:
        if self.stopping:
            return "the master is stopping"
        if self.upgrade is not None:
            return (f"an upgrade is already running (new master {self.upgrade.pid}, "
                    f"{self.upgrade.phase})")
        parent = self.lineage.parent_pid
        if parent is not None and os.getppid() == parent:
            return (f"this master ({self.pid}) is the new generation and the previous master "
                    f"{parent} has not exited yet (its watch window runs)")
        return ""

    # -- the upgrade, seen from the old master ------------------------------------------

    def _on_readiness(self) -> None:
        upgrade = self.upgrade
        if upgrade is None or upgrade.reader.closed:
            return
        if upgrade.phase == "starting":
            outcome = upgrade.reader.read()
            if outcome is None:
                return
            if outcome.kind == "ready":
                self._upgrade_ready(upgrade)
                self._on_readiness()  # a FAILED may follow at once
                return
            if outcome.kind == "failed":
                upgrade.failure = outcome.reason
            self._close_reader(upgrade)  # "eof": the new master died; reaping says how
            return
        outcome = upgrade.reader.read_next()
        if outcome is None:
            return
        self._close_reader(upgrade)
        if outcome.kind == "failed" and upgrade.phase != "rolling back":
            self._roll_back(outcome.reason)

    def _upgrade_ready(self, upgrade: Handover) -> None:
        upgrade.record.ready = upgrade.elapsed()
        self.log.info("new master %d is ready after %.2f s", upgrade.pid, upgrade.record.ready)
        if upgrade.manual:
            self._advance(upgrade, "ready", names.STATE_READY)
            self.log.info("manual upgrade: WINCH parks this generation, QUIT commits, "
                          "HUP after WINCH brings it back")
            return
        self.records.update(upgrade.record, names.STATE_READY)
        self._park_all()
        self._advance(upgrade, "draining", names.STATE_DRAINING)

    def _advance(self, upgrade: Handover, phase: Any, state: str) -> None:
        upgrade.phase = phase
        if phase == "draining":
            upgrade.parked_at = time.monotonic()
        self.records.update(upgrade.record, state)

    def _check_upgrade(self, now: float) -> None:
        upgrade = self.upgrade
        if upgrade is None:
            return
        if upgrade.phase == "starting":
            self._check_unready(upgrade, now)
        elif upgrade.phase == "draining" and self._drained():
            self._drain_done(upgrade, now)
        elif upgrade.phase == "watching" and now >= upgrade.watch_until:
            self._commit("watch window over")

    def _check_unready(self, upgrade: Handover, now: float) -> None:
        if upgrade.term_sent is None and now >= upgrade.deadline:
            upgrade.failure = (f"new master {upgrade.pid} was not ready within "
                               f"{self.cfg.upgrade_timeout:g} s")
            self.log.error("%s; stopping it", upgrade.failure)
            upgrade.term_sent = now
            self._signal(upgrade.pid, signal.SIGTERM)
        elif upgrade.term_sent is not None and now - upgrade.term_sent > KILL_UPGRADE_AFTER:
            self._signal(upgrade.pid, signal.SIGKILL)

    def _drained(self) -> bool:
        return all(h.parked_empty or h.killed for h in self.workers.values())

    def _drain_done(self, upgrade: Handover, now: float) -> None:
        rec = upgrade.record
        rec.handover = upgrade.elapsed()
        rec.drain = now - (upgrade.parked_at or now)
        upgrade.watch_until = now + (float("inf") if upgrade.manual else self.cfg.watch_window)
        self.log.info("old workers drained in %.2f s; handover %.2f s%s", rec.drain, rec.handover,
                      "" if upgrade.manual else f"; watching for {self.cfg.watch_window:g} s")
        self._advance(upgrade, "watching", names.STATE_WATCHING)

    def _commit(self, why: str) -> None:
        """The new generation stays: our parked workers hold nothing, so we can go."""
        upgrade = self.upgrade
        assert upgrade is not None
        self.log.info("upgrade to %d committed (%s); master %d exiting", upgrade.pid, why,
                      self.pid)
        self.parked = False
        self._begin_stop("graceful", self.cfg.graceful_timeout + 1.0, signal.SIGTERM)

    def _roll_back(self, reason: str) -> None:
        """Our parked workers still hold the old app: put them back, then stop the new master."""
        upgrade = self.upgrade
        assert upgrade is not None
        self.log.error("upgrade to %d rolled back: %s; master %d serves again", upgrade.pid,
                       reason, self.pid)
        self._resume_all()
        announce_master(self.pid)  # the keeper's signals come back to us at once
        upgrade.phase = "rolling back"
        if self.pidfile is not None:  # we serve again: PIDFILE says so before the record does
            self._pidfile_op(self.pidfile.restore, self.pid, upgrade.pid)
            self._pidfile_op(self.pidfile.remove_oldbin_if_ours, self.pid)
        self.records.update(upgrade.record, names.STATE_ROLLED_BACK, reason)
        self._signal(upgrade.pid, signal.SIGQUIT)  # graceful: we serve the same sockets
        notify.notify_ready(main_pid=self.pid, status=f"upgrade rolled back: {reason}")

    def _upgrade_child_exited(self, upgrade: Handover, status: int) -> None:
        if upgrade.phase == "starting" and not upgrade.reader.closed:
            outcome = upgrade.reader.read()
            if outcome is not None and outcome.kind == "ready":
                self._upgrade_ready(upgrade)  # said READY and died at once
            elif outcome is not None and outcome.kind == "failed":
                upgrade.failure = outcome.reason
        self._close_reader(upgrade)
        if upgrade.phase == "starting":
            reason = upgrade.failure or (f"new master {upgrade.pid} {describe_exit(status)} "
                                         "before it was ready")
            self._upgrade_failed(upgrade, reason, upgrade.record)
            return
        if upgrade.phase != "rolling back":
            self._roll_back(f"new master {upgrade.pid} {describe_exit(status)}")
        self._newer_exited(upgrade, status)

    def _upgrade_failed(self, upgrade: Handover | None, reason: str, rec: UpgradeRecord) -> None:
        """Put everything back as it was before USR2; we never stopped serving."""
        self.log.error("upgrade failed: %s; master %d keeps serving", reason, self.pid)
        if upgrade is not None:
            self._close_reader(upgrade)
        self.upgrade = None
        if self.pidfile is not None:
            self._pidfile_op(self.pidfile.record_failure, self.pid, reason)
            self._pidfile_op(self.pidfile.restore, self.pid, upgrade.pid if upgrade else None)
            self._pidfile_op(self.pidfile.remove_oldbin_if_ours, self.pid)
        self.records.update(rec, names.STATE_FAILED, reason)
        notify.notify_ready(status=f"upgrade failed: {reason}")

    def _newer_exited(self, upgrade: Handover, status: int) -> None:
        """The newer generation is gone after a rollback, which already put our workers,
        PIDFILE, the keeper and systemd back: the upgrade is over."""
        self.upgrade = None
        self.log.warning("newer master %d %s; master %d is current again", upgrade.pid,
                         describe_exit(status), self.pid)

    def _close_reader(self, upgrade: Handover) -> None:
        if not upgrade.reader.closed:
            try:
                self.selector.unregister(upgrade.reader.fileno())
            except (KeyError, ValueError):
                pass
            upgrade.reader.close()

    # -- the upgrade, seen from the new master ------------------------------------------

    def _check_watch(self, now: float) -> None:
        """While the old master can still come back, tell it when we are not fit to stay."""
        if self.lineage.ready_fd is None or not self.ready:
            return
        if os.getppid() != self.lineage.parent_pid:
            self.log.info("previous master %s committed the upgrade", self.lineage.parent_pid)
            self._end_watch()
            return
        if self.health is not None and not self.stopping:
            failure = self.health.poll(now, WATCH_ATTEMPTS, WATCH_INTERVAL)
            if failure:
                self._ask_rollback(failure)

    def _worker_crashed(self, description: str) -> None:
        if self.watch is not None and self.lineage.ready_fd is not None:
            reason = self.watch.crashed(description)
            if reason:
                self._ask_rollback(reason)

    def _ask_rollback(self, reason: str) -> None:
        self.log.error("asking the previous master to roll back: %s", reason)
        self._unwatch_parent()
        self.lineage.fail(reason)
        self._end_watch()

    def _end_watch(self) -> None:
        """The old master committed (or is rolling back): the channel is of no more use."""
        self._unwatch_parent()
        if self.lineage.ready_fd is not None:
            os.close(self.lineage.ready_fd)
            self.lineage.ready_fd = None
        self.watch = None

    def _unwatch_parent(self) -> None:
        if self.lineage.ready_fd is not None:
            try:
                self.selector.unregister(self.lineage.ready_fd)
            except (KeyError, ValueError):
                pass

    # -- workers ----------------------------------------------------------------------

    def _reap(self) -> None:
        for pid, status in reaped():
            if pid in self.workers:
                self._worker_exited(self.workers.pop(pid), status)
            elif self.upgrade is not None and pid == self.upgrade.pid:
                self._upgrade_child_exited(self.upgrade, status)

    def _worker_exited(self, handle: WorkerHandle, status: int) -> None:
        try:
            self.selector.unregister(handle.fd)
        except (KeyError, ValueError):
            pass
        os.close(handle.fd)
        if handle.retiring_since is not None or self.stopping or (self.parked and handle.booted):
            self.log.debug("worker %d %s", handle.pid, describe_exit(status))
            return
        if not handle.booted:
            self._boot_failed(handle, self._boot_failure_reason(handle, status))
            return
        what = f"worker {handle.pid} {describe_exit(status)}"
        if not self.ready and self.lineage.parent_pid is not None:
            self._give_up(f"{what} before the new generation was ready")
            return
        level = self.log.info if status == 0 else self.log.warning
        level("%s; replacing it", what)
        self._worker_crashed(what)

    def _boot_failure_reason(self, handle: WorkerHandle, status: int) -> str:
        if handle.boot_error:
            return handle.boot_error
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_FAILED:
            return f"worker {handle.pid} could not load the app"
        return f"worker {handle.pid} {describe_exit(status)} while booting"

    def _boot_failed(self, handle: WorkerHandle, reason: str) -> None:
        if self.reload is not None and handle.epoch == self.epoch:
            self._abort_reload(reason)
            return
        if not self.ever_booted:
            self._give_up(reason)
            return
        self._worker_crashed(reason)
        self.boot_failures += 1
        delay = min(0.25 * 2 ** (self.boot_failures - 1), 10.0)
        self.next_spawn = time.monotonic() + delay
        self.log.error("worker failed to boot: %s (retrying in %.1f s)", reason, delay)

    def _give_up(self, reason: str) -> None:
        """A generation that cannot serve at all: tell the old master (if any) and leave."""
        self.fatal = reason
        self.lineage.fail(reason)
        self._begin_stop("fast", FAST_STOP_GRACE, signal.SIGQUIT)

    def _abort_reload(self, reason: str) -> None:
        """A HUP whose new workers cannot boot: keep the old ones and sockets, as if HUP never came."""
        reload = self.reload
        assert reload is not None
        self.log.error("HUP: reload failed: %s; keeping the running workers", reason)
        for handle in self.workers.values():
            if handle.epoch == self.epoch:
                self._retire(handle)
        self._close_unused(self.listeners, reload.old_listeners)
        self.listeners = reload.old_listeners
        self.cfg = reload.old_cfg
        self.target = reload.old_cfg.workers
        self.epoch = reload.old_epoch
        self.reload = None

    def _close_unused(self, closing: list[Listener], keeping: list[Listener]) -> None:
        kept = {id(lst) for lst in keeping}
        for listener in closing:
            if id(listener) not in kept:
                try:
                    close_listener(listener, unlink=not self._other_generation_alive())
                except ListenerError as exc:
                    self.log.warning("%s", exc)

    def _check_workers(self, now: float) -> None:
        for handle in self.workers.values():
            if handle.killed:
                continue
            since = handle.retiring_since
            if since is None and handle.parked_since is not None and not handle.parked_empty:
                since = handle.parked_since
            if since is not None and now - since > self.cfg.graceful_timeout + 1.0:
                self.log.warning("worker %d still busy after the graceful timeout; killing it",
                                 handle.pid)
                self._kill(handle)
            elif since is None and now - handle.last_seen > self.cfg.timeout:
                what = "no heartbeat" if handle.booted else "still booting"
                self.log.error("worker %d timed out (%s for %.0f s); killing it", handle.pid,
                               what, now - handle.last_seen)
                self._kill(handle)

    def _maintain(self, now: float) -> None:
        if self.parked or self.fatal:
            return  # parked: a replacement would load the code on disk, not ours
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
        """Old-epoch workers (and sockets the new config dropped) go once every new one booted."""
        if self.reload is not None:
            if len(current) < self.target or not all(h.booted for h in current):
                return
            self.log.info("HUP: reload complete")
            self._close_unused(self.reload.old_listeners, self.listeners)
            self.reload = None
        for handle in self.workers.values():
            if handle.epoch != self.epoch and handle.retiring_since is None:
                self._retire(handle)

    def _spawn(self) -> None:
        parked = not self.gate_open
        probe = self.health.listener if self.health is not None else None

        def spec_for(status_fd: int) -> WorkerSpec:
            return WorkerSpec(self.cfg, self.listeners, status_fd, self.pid,
                              self.lineage.generation, self.logs, self.app, parked, probe)

        try:
            handle = fork_worker(spec_for, self.epoch, self._in_worker_child)
        except OSError as exc:
            self.log.error("cannot fork a worker: %s", exc.strerror)
            self.next_spawn = time.monotonic() + 1.0
            return
        if parked:
            handle.parked(time.monotonic())
            handle.parked_empty = True
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
        if self.health is not None and self.health.running is not None:
            os.close(self.health.running.fd)

    def _park_all(self) -> None:
        self.parked = True
        now = time.monotonic()
        for handle in self.workers.values():
            if handle.retiring_since is None and handle.parked_since is None:
                handle.parked(now)
                self._signal(handle.pid, signal.SIGWINCH)

    def _resume_all(self) -> None:
        self.parked = False
        for handle in self.workers.values():
            if handle.parked_since is not None:
                handle.resumed()
                self._signal(handle.pid, signal.SIGHUP)

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

    def _check_ready(self, now: float) -> None:
        if self.ready:
            return
        booted = [h for h in self.workers.values() if h.booted and h.epoch == self.epoch]
        if len(booted) < self.target or not self._gate_passed(now):
            return
        self.ready = True
        took = now - self.started
        if self.lineage.parent_pid is not None:
            self._announce_ready()
        else:
            notify.notify_ready(status=f"generation {self.lineage.generation}")
        announce_master(self.pid)
        self.log.info("ready: %d worker(s) booted in %.2f s", len(booted), took)

    def _gate_passed(self, now: float) -> bool:
        """With a health URL, our workers wait parked until one probe passes."""
        if self.gate_open:
            return True
        assert self.health is not None
        result = self.health.poll(now, GATE_ATTEMPTS, GATE_INTERVAL)
        if result is None:
            return False
        if result:
            self.log.error("new generation is not healthy: %s", result)
            self._give_up(result)
            return False
        self.log.info("health check passed: %s", self.health.url)
        self.gate_open = True
        self._resume_all()
        return True

    def _announce_ready(self) -> None:
        """READY to the old master first (it parks its workers on it), then PIDFILE."""
        if self.lineage.ready_fd is not None:
            if announce_ready(self.lineage.ready_fd, self.pid, keep_open=True):
                self.watch = Watch()
                # The write end reports an error once the old master closes its end (it
                # exits at the commit): wake up then instead of at the next tick.
                self.selector.register(self.lineage.ready_fd, selectors.EVENT_READ, "parent")
            else:
                self._end_watch()
        if self.pidfile is not None:
            self._pidfile_op(self.pidfile.write, self.pid)
        notify.notify_ready(main_pid=self.pid, status=f"generation {self.lineage.generation}")

    def _stop_done(self, now: float) -> bool:
        upgrade_running = self.upgrade is not None and not self.upgrade.new_serves
        if not self.workers and not upgrade_running:
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
        upgrade = self.upgrade
        return upgrade is not None and upgrade.new_serves and procs.is_alive(upgrade.pid)

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
        if self.health is not None:
            self.health.close()
        self._finish_record()
        self._release_pidfile()
        self.log.info("master %d exiting", self.pid)
        if self.fatal:
            raise StartupError(self.fatal)
        return 0

    def _finish_record(self) -> None:
        """Leaving while the new generation serves is the commit."""
        upgrade = self.upgrade
        if upgrade is None or upgrade.phase in ("starting", "rolling back"):
            return
        upgrade.record.commit = upgrade.elapsed()
        if upgrade.record.handover is None:
            upgrade.record.handover = upgrade.record.commit
        self.records.update(upgrade.record, names.STATE_COMMITTED)

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
