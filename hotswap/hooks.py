"""Server hooks: functions of a Python config file, called at gunicorn's points (and at the
upgrade's, which gunicorn does not have).

Hooks see small read-only views (`Server`, `Worker`, `Req`, `Resp`), never hotswap's own
classes: those change from one release to the next, a hook file should not have to.
A hook that raises is logged with its traceback and the server goes on: operator code
must never take down a master (which would leave workers and an upgrade unmanaged) or a
worker.

The master calls its hooks through `MasterHooks`, a worker through `WorkerHooks`; each
call site in the arbiter or the worker is one line. The hooks in force are the ones of
the configuration in force (`cfg.hooks`), so a HUP that re-reads the file changes them.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("hotswap.error")

# Every hook, with the arguments it is called with (in this order).
SIGNATURES: dict[str, tuple[str, ...]] = {
    "on_starting": ("server",),
    "when_ready": ("server",),
    "pre_fork": ("server", "worker"),
    "post_fork": ("server", "worker"),
    "post_worker_init": ("worker",),
    "worker_int": ("worker",),
    "worker_abort": ("worker",),
    "pre_exec": ("server",),
    "pre_request": ("worker", "req"),
    "post_request": ("worker", "req", "environ", "resp"),
    "child_exit": ("server", "worker"),
    "worker_exit": ("server", "worker"),
    "on_reload": ("server",),
    "on_exit": ("server",),
    "pre_upgrade": ("server",),
    "on_upgrade_ready": ("server", "new_pid"),
    "on_upgrade_committed": ("server", "new_pid"),
    "on_upgrade_failed": ("server", "reason"),
}
# A function named like this in a config file must be one of the hooks (a typo is an error).
HOOK_PREFIXES = ("on_", "pre_", "post_", "when_", "worker_", "child_")


@dataclass(frozen=True)
class Server:
    """The master, as a hook sees it.

    pid: the master's pid; generation: 1 for the first master, +1 per upgrade;
    cfg: the configuration in force (hotswap.config.Config: one attribute per option);
    log: the error logger; worker_pids: its workers now; addresses: what it listens on;
    state: booting, serving, parked or stopping ("" when seen from a worker)."""

    pid: int
    generation: int
    cfg: Any
    log: logging.Logger
    worker_pids: tuple[int, ...] = ()
    addresses: tuple[str, ...] = ()
    state: str = ""


@dataclass(frozen=True)
class Worker:
    """A worker, as a hook sees it.

    pid: None in pre_fork (not forked yet); master_pid, generation, cfg, log as for
    Server; exit_code: in child_exit only, the exit status (-N: killed by signal N)."""

    pid: int | None
    master_pid: int
    generation: int
    cfg: Any
    log: logging.Logger
    exit_code: int | None = None


@dataclass(frozen=True)
class Req:
    """A request: method, uri (the target as sent), path (decoded), query, version
    ("1.1"), headers (a tuple of (name, value) as received), remote_addr."""

    method: str
    uri: str
    path: str
    query: str
    version: str
    headers: tuple[tuple[str, str], ...]
    remote_addr: str


@dataclass(frozen=True)
class Resp:
    """The response sent: status ("200 OK"), status_code (200; 0 when no response head
    was sent, e.g. the client left), headers (as the app gave them), sent (body bytes)."""

    status: str
    status_code: int
    headers: tuple[tuple[str, str], ...]
    sent: int


@dataclass
class Hooks:
    """The hook functions of one configuration (none without a Python config file)."""

    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)
    path: str | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.functions

    def call(self, name: str, *args: Any) -> None:
        """Run hook `name` if defined; what it raises is logged, never propagated.

        BaseException too (a hook calling sys.exit()): a hook has no say over whether the
        master lives."""
        function = self.functions.get(name)
        if function is None:
            return
        try:
            function(*args)
        except BaseException:  # see the docstring
            log.exception("hook %s (%s) raised; going on", name, self.path)


# -- the master's side ---------------------------------------------------------------


class MasterHooks:
    """The master's hook calls; reads the arbiter's public state to build the views."""

    def __init__(self, arbiter: Any) -> None:
        self._arbiter = arbiter

    def _call(self, name: str, *args: Any) -> None:
        hooks: Hooks = self._arbiter.cfg.hooks
        if name in hooks:
            hooks.call(name, self.server(), *args)

    def server(self) -> Server:
        a = self._arbiter
        return Server(a.pid, a.up.generation, a.cfg, a.log, tuple(a.pool.handles),
                      tuple(lst.address() for lst in a.up.listeners), a.state)

    def _worker(self, pid: int | None, exit_code: int | None = None) -> Worker:
        a = self._arbiter
        return Worker(pid, a.pid, a.up.generation, a.cfg, a.log, exit_code)

    def when_ready(self) -> None:
        self._call("when_ready")

    def pre_fork(self) -> None:
        self._call("pre_fork", self._worker(None))

    def post_fork(self) -> None:
        """In the new worker, before it drops privileges and loads the app."""
        self._call("post_fork", self._worker(os.getpid()))

    def child_exit(self, pid: int, status: int) -> None:
        self._call("child_exit", self._worker(pid, os.waitstatus_to_exitcode(status)))

    def on_reload(self) -> None:
        self._call("on_reload")

    def on_exit(self) -> None:
        self._call("on_exit")

    def pre_upgrade(self) -> None:
        """USR2 will start a new master: pre_upgrade, then pre_exec (not for a refused USR2)."""
        if not self._arbiter.up.refusal():
            self._call("pre_upgrade")
            self._call("pre_exec")

    def upgrade_not_started(self, exc: Exception) -> None:
        """start_upgrade raised: a refusal is no upgrade; anything else failed it."""
        from upgrade.errors import UpgradeRefused

        if not isinstance(exc, UpgradeRefused):
            self._call("on_upgrade_failed", str(exc))

    def upgrade_event(self, event: Any, handover: Any) -> None:
        """READY: on_upgrade_ready; FAILED (never became ready): on_upgrade_failed."""
        if event is not None and event.name == "READY":
            self._call("on_upgrade_ready", handover.pid)
        elif event is not None and event.name == "FAILED":
            self._call("on_upgrade_failed", handover.failure)

    def upgrade_committed(self, new_pid: int) -> None:
        self._call("on_upgrade_committed", new_pid)

    def upgrade_rolled_back(self, reason: str) -> None:
        """A rollback is a failed upgrade too: the new generation did not stay."""
        self._call("on_upgrade_failed", f"rolled back: {reason}")


def on_starting(cfg: Any, logger: logging.Logger, generation: int) -> None:
    """Before the master binds its sockets (it has no workers or addresses yet)."""
    hooks: Hooks = cfg.hooks
    if "on_starting" in hooks:
        hooks.call("on_starting", Server(os.getpid(), generation, cfg, logger))


# -- a worker's side -----------------------------------------------------------------


class WorkerHooks:
    """A worker's hook calls. `spec` is its hotswap.worker.process.WorkerSpec."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.hooks: Hooks = spec.cfg.hooks
        self.worker = Worker(os.getpid(), spec.master_pid, spec.generation, spec.cfg,
                             spec.logs.error)

    def post_worker_init(self) -> None:
        self.hooks.call("post_worker_init", self.worker)

    def worker_int(self, signum: int) -> None:
        """INT or QUIT (gunicorn's worker_int); not TERM."""
        if signum in (signal.SIGINT, signal.SIGQUIT):
            self.hooks.call("worker_int", self.worker)

    def install_abort(self) -> None:
        """SIGABRT (from the master for a worker silent past --timeout when this hook is
        defined, or from an operator): worker_abort, then the worker exits with status 1."""
        if "worker_abort" in self.hooks:  # else SIGABRT keeps its default action
            signal.signal(signal.SIGABRT, self._on_abort)

    def _on_abort(self, signum: int, frame: Any) -> None:
        self.hooks.call("worker_abort", self.worker)
        raise SystemExit(1)

    def worker_exit(self) -> None:
        spec = self.spec
        server = Server(spec.master_pid, spec.generation, spec.cfg, spec.logs.error,
                        addresses=tuple(lst.address() for lst in spec.listeners))
        self.hooks.call("worker_exit", server, self.worker)

    def requests(self) -> RequestHooks:
        if "pre_request" in self.hooks or "post_request" in self.hooks:
            return RequestHooks(self.hooks, self.worker)
        return NO_REQUEST_HOOKS


class RequestHooks:
    """pre_request and post_request around each request the app runs for."""

    def __init__(self, hooks: Hooks | None = None, worker: Worker | None = None) -> None:
        self.hooks = hooks
        self.worker = worker

    def pre_request(self, req: Any, environ: dict[str, Any]) -> Req | None:
        """Returns the view post_request gets (None when no hook is defined)."""
        if self.hooks is None:
            return None
        view = Req(req.method, req.target.decode("latin-1"), environ.get("PATH_INFO", ""),
                   environ.get("QUERY_STRING", ""), req.version, tuple(req.headers),
                   environ.get("REMOTE_ADDR", ""))
        self.hooks.call("pre_request", self.worker, view)
        return view

    def post_request(self, view: Req | None, environ: dict[str, Any], exchange: Any) -> None:
        if self.hooks is None or view is None or "post_request" not in self.hooks:
            return
        head = exchange.head
        resp = (Resp(head.status, head.code, tuple(head.headers), exchange.sent) if head is not None
                else Resp("", 0, (), 0))
        self.hooks.call("post_request", self.worker, view, environ, resp)


NO_REQUEST_HOOKS = RequestHooks()
