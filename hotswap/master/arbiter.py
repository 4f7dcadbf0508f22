"""The master: owns its workers and never serves a request itself.

The loop, top to bottom:

    wait on the self-pipe, the workers' pipes, the readiness pipe and a health probe (≤ 1 s)
    handle queued signals, in order
    reap dead children; kill workers silent for longer than --timeout
    move a running upgrade along; bring the worker count back to its target

Signal handlers only queue; each signal has one method here (`_on_<signal>`). The
lifecycle is one explicit state: booting → serving ⇄ parked → stopping. Sockets,
PIDFILE and both sides of an upgrade belong to the `Upgrader` (upgrade/), the same
object any other server embeds; the arbiter adds what only a prefork server has:
parking its workers when the new generation is READY, resuming them on a rollback.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any, Literal

from upgrade import Event, Handover, UpgradeError, Upgrader, names, notify
from upgrade.parent import describe_exit

from ..config import Config
from ..errors import StartupError
from ..logs import Logs
from ..worker.process import WorkerSpec
from .gate import GATE_ATTEMPTS, GATE_INTERVAL, HealthProbe, Watch
from .handles import WorkerHandle
from .keeper import announce_master
from .pool import WorkerPool
from .reaping import reaped
from .reload import Reloader
from .rolling import Rolling
from .signals import SignalQueue
from .wakeups import Wakeups

WAIT = 1.0
ROLLING_POLL = 0.05
State = Literal["booting", "serving", "parked", "stopping"]


class Arbiter:
    def __init__(self, cfg: Config, flags: dict[str, Any], logs: Logs, up: Upgrader,
                 app: Callable[..., Any] | None) -> None:
        self.logs = logs
        self.log = logs.error
        self.up = up
        self.app = app
        self.pid = os.getpid()
        self.state: State = "booting"
        self.stop_how = ""  # "graceful" or "fast" once stopping
        self.quits = 0  # QUITs received: the second one always means "now"
        self.fatal: str | None = None
        health_url = os.environ.pop(names.ENV_HEALTH_URL, None) or cfg.health_url
        self.health = HealthProbe(health_url) if health_url else None
        self.watch: Watch | None = None  # set while the old master watches us
        self.started = time.monotonic()
        self.signals = SignalQueue()
        self.wakeups = Wakeups()
        self.pool = WorkerPool(cfg.workers, self._spec_for, self.wakeups, self.log,
                               self._in_worker_child)
        self.pool.parked = self.health is not None  # the gate: born parked until healthy
        self.reloader = Reloader(cfg, flags, up, self.pool, self.log)
        self.rolling = Rolling.from_env(os.environ, cfg.workers, self.pool)  # new side, if asked
        if self.health is not None:
            self.health.before_close = lambda: self.wakeups.forget("probe")

    @property
    def cfg(self) -> Config:
        """The configuration in force (a HUP replaces it once its workers booted)."""
        return self.reloader.cfg

    @property
    def upgrade(self) -> Handover | None:
        """The upgrade this master started, while it is not over."""
        handover = self.up.handover
        return handover if handover is not None and not handover.over else None

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; returns the exit status (raises StartupError if no worker ever booted)."""
        self.signals.install()
        self.wakeups.add(self.signals.read_fd, "signals")
        self.log.info("master %d (generation %d) listening on %s", self.pid, self.up.generation,
                      ", ".join(lst.address() for lst in self.up.listeners))
        self.pool.maintain(time.monotonic())
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
            self.pool.check_deadlines(now, self.cfg.timeout, self.cfg.graceful_timeout)
            self._check_upgrade(now)
            if self.watch is not None:
                self.watch.check(now, self.state == "stopping")
            if self.state == "stopping":
                return self._stop_done(now)
            if self.state != "parked" and not self.fatal:
                self.pool.maintain(now)  # parked: a replacement would load the code on disk
                self.reloader.finish()
            self._check_ready(now)
            if self.rolling is not None and self.state == "serving":
                self.rolling = self.rolling.grow(self.up, self.cfg.workers)
        except Exception:
            self.log.exception("internal error in the master loop")
            time.sleep(0.1)  # never spin on a repeating error
        return False

    def _wait(self) -> None:
        deadlines = [time.monotonic() + WAIT, self.pool.next_spawn or float("inf")]
        if self.health is not None and self.health.running is None and self.state != "stopping":
            deadlines.append(self.health.next_at)
        if self.upgrade is not None:
            deadlines.append(self.upgrade.next_deadline() or float("inf"))
        if self.rolling is not None:
            deadlines.append(time.monotonic() + ROLLING_POLL)  # old workers leave unannounced
        upgrade = self.upgrade
        self.wakeups.sync({
            "upgrade": upgrade.fileno() if upgrade is not None else None,
            "parent": self.watch.fileno() if self.watch is not None else None,
            "probe": self.health.fileno() if self.health is not None else None,
        })
        for data in self.wakeups.wait(min(deadlines) - time.monotonic()):
            if data == "upgrade":
                self._on_readiness()
            elif data == "parent" and self.watch is not None:
                self.watch.end()
            elif isinstance(data, WorkerHandle):
                self.pool.read(data)

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
        if self.state == "stopping":
            return
        self.log.info("TERM: graceful stop (up to %.1f s)", self.cfg.graceful_timeout)
        self._begin_stop("graceful")

    def _on_quit(self) -> None:
        """Fast stop: workers exit now — unless another generation serves our sockets.

        Then QUIT is a step of the upgrade (commit it, or roll back by stopping the new
        master) and the service is not going down: dropping what our workers hold would
        break the promise for nothing, so they finish gracefully. A second QUIT: now.
        """
        if self.stop_how == "fast":
            return
        self.quits += 1
        upgrade = self.upgrade
        if upgrade is not None and upgrade.phase in ("ready", "draining", "watching"):
            self._commit("QUIT")
            return
        if self.quits == 1 and self.pool.handles and self.up.other_generation_alive():
            if self.state != "stopping":
                self.log.info("QUIT: another generation serves the same sockets; stopping "
                              "gracefully (up to %.1f s, QUIT again to stop now)",
                              self.cfg.graceful_timeout)
                self._begin_stop("graceful")
            return
        self.log.info("fast stop")
        self._begin_stop("fast")

    def _on_hup(self) -> None:
        """Reload; with parked workers (WINCH, or an upgrade's drain), bring them back instead."""
        if self.state == "stopping":
            return
        upgrade = self.upgrade
        if self.state == "parked":
            if upgrade is not None and not upgrade.manual:
                self._roll_back("rolled back by HUP to the old master")
                return
            self.log.info("HUP: bringing the parked workers back")
            self._resume_all()
            if upgrade is not None and upgrade.phase in ("draining", "watching"):
                upgrade.unparked()
            return
        self.reloader.begin()

    def _on_ttin(self) -> None:
        self.pool.target += 1
        self.log.info("TTIN: %d worker(s)", self.pool.target)

    def _on_ttou(self) -> None:
        self.pool.target = max(1, self.pool.target - 1)
        self.log.info("TTOU: %d worker(s)", self.pool.target)

    def _on_usr1(self) -> None:
        """Reopen log files here and in every worker (logrotate)."""
        self.logs.reopen()
        self.log.info("USR1: log files reopened")
        self.pool.signal_all(signal.SIGUSR1)

    def _on_winch(self) -> None:
        """Park all workers (they stop serving, keep the app) — never for a terminal resize."""
        upgrade = self.upgrade
        if upgrade is not None and upgrade.phase == "starting":
            self._on_readiness()  # a READY may be waiting in the pipe
        if upgrade is not None and not upgrade.manual:
            self.log.info("WINCH ignored: the upgrade to %d retires this generation by itself",
                          upgrade.pid)
            return
        if self.state != "serving":
            self.log.info("WINCH ignored: this generation is %s", self.state)
            return
        if not ((upgrade is not None and upgrade.new_serves) or self.cfg.daemon):
            self.log.info("WINCH ignored: no newer generation is running and not daemonized")
            return
        self.log.info("WINCH: parking all workers (HUP brings them back)")
        self._park_all()
        if upgrade is not None:
            upgrade.parking()

    def _on_usr2(self) -> None:
        """Upgrade: start a new master from the code on disk, sharing our sockets."""
        if self.state == "stopping":
            self.up.refuse("the master is stopping")
            return
        request = self.up.recorder.take_request()
        env = {names.ENV_HEALTH_URL: request["health_url"]} if request.get("health_url") else {}
        rolling = self.cfg.upgrade_surge > 0 and self.cfg.upgrade_mode == "auto"
        if rolling:
            env[names.ENV_SURGE] = str(self.cfg.upgrade_surge)
        try:
            handover = self.up.start_upgrade(env)
        except UpgradeError:
            return  # logged and recorded by the Upgrader; we never stopped serving
        handover.before_close = lambda: self.wakeups.forget("upgrade")
        handover.rolling = rolling

    # -- the upgrade, seen from the old master ------------------------------------------

    def _on_readiness(self) -> None:
        """Every line the new master sent (READY may be followed by BOOTED or FAILED)."""
        upgrade = self.upgrade
        while upgrade is not None and not upgrade.over:
            event = upgrade.read()
            if event is None:
                return
            self._on_upgrade_event(event)

    def _check_upgrade(self, now: float) -> None:
        upgrade = self.upgrade
        if upgrade is None:
            return
        if upgrade.phase == "draining" and self.pool.drained():
            upgrade.drained()
        self._on_upgrade_event(upgrade.tick(now))

    def _on_upgrade_event(self, event: Event | None) -> None:
        upgrade = self.up.handover
        if event is None or upgrade is None:
            return
        if event is Event.READY and not upgrade.manual:
            if not upgrade.rolling:  # rolling: our workers leave one by one (BOOTED)
                self._park_all()
            upgrade.parking()
        elif event is Event.BOOTED:
            self.pool.target = max(0, self.cfg.workers - upgrade.new_booted)
        elif event is Event.ROLLBACK:
            self._roll_back(upgrade.failure)
        elif event is Event.COMMIT:
            self._commit("watch window over")

    def _commit(self, why: str) -> None:
        """The new generation stays: our parked workers hold nothing, so we can go."""
        upgrade = self.upgrade
        assert upgrade is not None
        upgrade.commit(why)
        self.pool.parked = False
        self._begin_stop("graceful")

    def _roll_back(self, reason: str) -> None:
        """Our parked workers still hold the old app: put them back, then send the new
        master away (the Handover restores PIDFILE and the record)."""
        upgrade = self.upgrade
        assert upgrade is not None
        self._resume_all()
        self.pool.target = self.cfg.workers  # after a rolling handover: spawn them again
        announce_master(self.pid)  # the keeper's signals come back to us at once
        upgrade.roll_back(reason)

    # -- workers ----------------------------------------------------------------------

    def _spec_for(self, status_fd: int, parked: bool) -> WorkerSpec:
        probe = self.health.listener if self.health is not None else None
        return WorkerSpec(self.cfg, self.up.listeners, status_fd, self.pid, self.up.generation,
                          self.logs, self.app, parked, probe)

    def _in_worker_child(self) -> None:
        """In a fresh worker: drop what belongs to the master alone."""
        self.wakeups.close()
        self.signals.close_in_child()
        self.pool.close_in_child()
        upgrade = self.upgrade
        for fd in {upgrade.fileno() if upgrade is not None else None, self.up.lineage.ready_fd,
                   self.health.fileno() if self.health is not None else None} - {None}:
            os.close(fd)

    def _reap(self) -> None:
        for pid, status in reaped():
            handle = self.pool.remove(pid)
            if handle is not None:
                self._worker_exited(handle, status)
            elif self.up.handover is not None and pid == self.up.handover.pid:
                self._on_upgrade_event(self.up.handover.exited(status))

    def _worker_exited(self, handle: WorkerHandle, status: int) -> None:
        expected = handle.retiring_since is not None or self.state == "stopping"
        if expected or (self.state == "parked" and handle.booted):
            self.log.debug("worker %d %s", handle.pid, describe_exit(status))
            return
        if not handle.booted:
            self._boot_failed(handle, handle.boot_failure(status))
            return
        what = f"worker {handle.pid} {describe_exit(status)}"
        if self.state == "booting" and self.up.lineage.parent_pid is not None:
            self._give_up(f"{what} before the new generation was ready")
            return
        (self.log.info if status == 0 else self.log.warning)("%s; replacing it", what)
        if self.watch is not None:
            self.watch.crashed(what)

    def _boot_failed(self, handle: WorkerHandle, reason: str) -> None:
        if self.reloader.pending is not None and handle.epoch == self.pool.epoch:
            self.reloader.abort(reason)
        elif not self.pool.ever_booted:
            self._give_up(reason)
        else:
            if self.watch is not None:
                self.watch.crashed(reason)
            delay = self.pool.boot_failed()
            self.log.error("worker failed to boot: %s (retrying in %.1f s)", reason, delay)

    def _give_up(self, reason: str) -> None:
        """A generation that cannot serve at all: tell the old master (if any) and leave."""
        self.fatal = reason
        self.up.fail(reason)
        self._begin_stop("fast")

    def _park_all(self) -> None:
        self.state = "parked"
        self.pool.park_all()

    def _resume_all(self) -> None:
        self.state = "serving"
        self.pool.resume_all()

    # -- readiness and stopping ---------------------------------------------------------

    def _check_ready(self, now: float) -> None:
        if self.state != "booting":
            return
        booted = self.pool.booted()
        if len(booted) < self.pool.target or not self._gate_passed(now):
            return
        self.state = "serving"
        self.up.ready()  # READY to the old master first (it parks on it), then PIDFILE
        if self.up.lineage.ready_fd is not None:  # the old master watches us
            self.watch = Watch(self.up, self.health, self.log, lambda: self.wakeups.forget("parent"))
        announce_master(self.pid)
        self.log.info("ready: %d worker(s) booted in %.2f s", len(booted), now - self.started)

    def _gate_passed(self, now: float) -> bool:
        """With a health URL, our workers wait parked until one probe passes."""
        if self.health is None or not self.pool.parked:
            return True
        result = self.health.poll(now, GATE_ATTEMPTS, GATE_INTERVAL)
        if result is None:
            return False
        if result:
            self.log.error("new generation is not healthy: %s", result)
            self._give_up(result)
            return False
        self.log.info("health check passed: %s", self.health.url)
        self.pool.resume_all()
        return True

    def _begin_stop(self, how: str) -> None:
        self.state = "stopping"
        self.stop_how = how
        if not self.up.other_generation_alive():
            notify.notify_stopping()
        if self.upgrade is not None:
            self.upgrade.abandon("the old master is stopping")
        self.pool.stop(how == "graceful", self.cfg.graceful_timeout + 1.0)

    def _stop_done(self, now: float) -> bool:
        starting = self.upgrade is not None and self.upgrade.phase == "starting"
        return self.pool.stopped(now) and not starting

    def _shutdown(self) -> int:
        if self.health is not None:
            self.health.close()
        self.up.close()
        self.log.info("master %d exiting", self.pid)
        if self.fatal:
            raise StartupError(self.fatal)
        return 0
