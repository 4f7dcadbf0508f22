"""`hotswap start`: put a master together from configuration and environment, then run it.

The order matters: everything that can fail because of operator input (config, log
files, sockets, pidfile, app import with --preload) is done before daemonizing and
before any worker exists, so the failure is one line on the terminal. What can only
fail later (the pidfile, written by the daemon; the first workers' boot) reaches a
waiting `start --daemon` through `daemonpipe`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from listeners import Listener, close_listener
from pidfiles import AlreadyRunning, Pidfile, PidfileError
from upgrade.proctitle import set_title
from upgrade.reexec import original_argv, start_directory

from .. import config as config_mod
from .. import paths
from ..apploader import load_app
from ..errors import StartupError
from ..logs import Logs, redirect_stdio
from . import daemonpipe, keeper
from .arbiter import Arbiter
from .boot import Lineage, open_listeners, read_lineage


def serve(flags: dict[str, Any], keeper_flag: bool | None = None) -> int:
    """Start a master with the options the operator gave; returns its exit status.

    With a keeper (see hotswap.master.keeper), this process becomes the keeper and the master
    runs in its child; the keeper returns the service's exit status.
    """
    start_dir = start_directory()  # before --chdir: the next generation starts from here
    argv = original_argv()
    flags = paths.resolve_flags(flags, start_dir)
    lineage = read_lineage(os.environ)
    try:
        cfg = paths.resolve_config(config_mod.build(flags), start_dir)
    except StartupError as exc:
        lineage.fail(str(exc))
        raise
    in_upgrade = lineage.parent_pid is not None
    if keeper.wanted(keeper_flag, cfg.daemon, os.environ, in_upgrade):
        return keeper.run(lambda: _serve_in_keeper(cfg, flags, lineage, start_dir, argv), cfg.name)
    return _serve(cfg, flags, lineage, start_dir, argv)


def _serve_in_keeper(cfg: config_mod.Config, flags: dict[str, Any], lineage: Lineage,
                     start_dir: str, argv: list[str]) -> int:
    """The first master, as the keeper's child: its startup errors are its exit status."""
    try:
        return _serve(cfg, flags, lineage, start_dir, argv)
    except StartupError as exc:
        sys.stderr.write(f"hotswap: error: {exc}\n")
        return 1


def _serve(cfg: config_mod.Config, flags: dict[str, Any], lineage: Lineage, start_dir: str,
           argv: list[str]) -> int:
    try:
        logs = _open_logs(cfg)
        pidfile = Pidfile(cfg.pidfile) if cfg.pidfile else None
        first = lineage.parent_pid is None
        if first:
            # Titled before the pidfile is claimed: a master is recognised by its title
            # and by having started before it wrote its pidfile (pidfiles.procs).
            set_title("master", cfg.name)
        if pidfile is not None and first:
            # Before binding: started twice, the second would otherwise only say that
            # the address is in use, not that the server already runs.
            _refuse_if_running(pidfile)
    except StartupError as exc:
        lineage.fail(str(exc))
        raise
    listeners = open_listeners(cfg.bind, cfg.backlog, os.environ, lineage)
    try:
        _chdir(cfg.chdir)
        app = load_app(cfg.app) if cfg.preload else None
        if cfg.daemon and first:
            daemonpipe.detach(cfg.upgrade_timeout + cfg.timeout)
            _redirect_stdio(cfg.error_log)
            logs.reopen()
        if pidfile is not None and first:
            _claim(pidfile, logs)
    except StartupError as exc:
        _give_up(listeners, lineage, str(exc))
        daemonpipe.report_failure(str(exc))
        raise
    arbiter = Arbiter(cfg, flags, logs, listeners, lineage, pidfile, app, start_dir, argv)
    try:
        return arbiter.run()
    except StartupError as exc:
        daemonpipe.report_failure(str(exc))
        raise


def _redirect_stdio(error_log: str) -> None:
    try:
        redirect_stdio(error_log)
    except OSError as exc:
        raise StartupError(f"cannot open log file {error_log}: {exc.strerror}") from None


def _open_logs(cfg: config_mod.Config) -> Logs:
    try:
        return Logs(cfg.error_log, cfg.access_log, cfg.log_level)
    except OSError as exc:
        raise StartupError(f"cannot open log file {exc.filename}: {exc.strerror}") from None


def _refuse_if_running(pidfile: Pidfile) -> None:
    try:
        pid = pidfile.read()
    except PidfileError as exc:
        raise StartupError(str(exc)) from None
    if pid is not None and pid != os.getpid() and pidfile.identify().is_master:
        raise StartupError(f"already running as pid {pid} (pidfile {pidfile.path})")


def _claim(pidfile: Pidfile, logs: Logs) -> None:
    try:
        warning = pidfile.claim(os.getpid())
    except AlreadyRunning as exc:
        raise StartupError(str(exc)) from None
    except PidfileError as exc:
        raise StartupError(str(exc)) from None
    if warning:
        logs.error.warning("%s", warning)


def _chdir(path: str | None) -> None:
    if not path:
        return
    try:
        os.chdir(path)
    except OSError as exc:
        raise StartupError(f"cannot chdir to {path}: {exc.strerror}") from None


def _give_up(listeners: list[Listener], lineage: Lineage, reason: str) -> None:
    """Undo our sockets; a new generation never unlinks paths its parent still serves."""
    lineage.fail(reason)
    for listener in listeners:
        close_listener(listener, unlink=lineage.parent_pid is None)
