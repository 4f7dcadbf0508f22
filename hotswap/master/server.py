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

from listeners import close_listener
from upgrade import UpgradeError, Upgrader, names, report_startup_failure
from upgrade.reexec import original_argv, start_directory

from .. import config as config_mod
from .. import paths
from ..apploader import load_app
from ..errors import StartupError
from ..logs import Logs, redirect_stdio
from ..tls import context_for
from . import daemonpipe, keeper
from .arbiter import Arbiter

DEFAULT_BIND = "127.0.0.1:8000"


def serve(flags: dict[str, Any], keeper_flag: bool | None = None) -> int:
    """Start a master with the options the operator gave; returns its exit status.

    With a keeper (see hotswap.master.keeper), this process becomes the keeper and the
    master runs in its child; the keeper returns the service's exit status.
    """
    start_dir = start_directory()  # before --chdir: the next generation starts from here
    argv = original_argv()
    flags = paths.resolve_flags(flags, start_dir)
    try:
        cfg = paths.resolve_config(config_mod.build(flags), start_dir)
        context_for(cfg)  # a bad certificate or key fails here, before anything is bound
    except StartupError as exc:
        report_startup_failure(str(exc))  # a waiting old master learns why at once
        raise
    in_upgrade = names.ENV_PARENT_PID in os.environ
    if keeper.wanted(keeper_flag, cfg.daemon, os.environ, in_upgrade):
        return keeper.run(lambda: _serve_in_keeper(cfg, flags, start_dir, argv), cfg.name)
    return _serve(cfg, flags, start_dir, argv)


def _serve_in_keeper(cfg: config_mod.Config, flags: dict[str, Any], start_dir: str,
                     argv: list[str]) -> int:
    """The first master, as the keeper's child: its startup errors are its exit status."""
    try:
        return _serve(cfg, flags, start_dir, argv)
    except StartupError as exc:
        sys.stderr.write(f"hotswap: error: {exc}\n")
        return 1


def _serve(cfg: config_mod.Config, flags: dict[str, Any], start_dir: str, argv: list[str]) -> int:
    try:
        logs = _open_logs(cfg)
    except StartupError as exc:
        report_startup_failure(str(exc))
        raise
    try:
        # Titles this process first: a master is recognised by its title and by having
        # started before it wrote its pidfile (pidfiles.procs). A first master refuses
        # here, before binding, if the pidfile names a live one.
        up = Upgrader(cfg.pidfile, upgrade_timeout=cfg.upgrade_timeout,
                      watch_window=cfg.watch_window, manual=cfg.upgrade_mode == "manual",
                      name=cfg.name, argv=argv, start_dir=start_dir, log=logs.error)
        up.listen_all(cfg.bind, cfg.backlog, default=DEFAULT_BIND, reuse_port=cfg.reuse_port)
    except UpgradeError as exc:
        raise StartupError(str(exc)) from None
    first = up.lineage.parent_pid is None
    try:
        _chdir(cfg.chdir)
        app = load_app(cfg.app) if cfg.preload else None
        if cfg.daemon and first:
            daemonpipe.detach(cfg.upgrade_timeout + cfg.timeout)
            _redirect_stdio(cfg.error_log)
            logs.reopen()
        up.claim()  # after daemonizing: PIDFILE names the daemon
    except (StartupError, UpgradeError) as exc:
        _give_up(up, str(exc))
        daemonpipe.report_failure(str(exc))
        raise StartupError(str(exc)) from None
    arbiter = Arbiter(cfg, flags, logs, up, app)
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


def _chdir(path: str | None) -> None:
    if not path:
        return
    try:
        os.chdir(path)
    except OSError as exc:
        raise StartupError(f"cannot chdir to {path}: {exc.strerror}") from None


def _give_up(up: Upgrader, reason: str) -> None:
    """Undo our sockets; a new generation never unlinks paths its parent still serves."""
    up.fail(reason)
    for listener in up.listeners:
        close_listener(listener, unlink=up.lineage.parent_pid is None)
