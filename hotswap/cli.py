"""The `hotswap` command line: start, upgrade, status, stop, reload.

Every operator mistake ends as one line on stderr and exit status 1; a traceback
means a bug in hotswap, never a mistake of the user's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import click
from click.core import ParameterSource

from pidfiles import MASTER, MISSING, SAME, Finding, Pidfile, procs

from . import __version__
from .errors import StartupError
from .status import SUSPECT, gather, not_running_message, render

_PIDFILE = click.option("--pidfile", "-p", required=True, type=click.Path(dir_okay=False),
                        help="The pidfile the master was started with.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hotswap")
def main() -> None:
    """A prefork HTTP/WSGI server whose live upgrade never drops a request."""


@main.command()
@click.argument("app", required=False)
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="TOML file; flags win.")
@click.option("--bind", "-b", multiple=True,
              help="host:port, [v6]:port, unix:/path or fd://N; repeatable. [127.0.0.1:8000]")
@click.option("--workers", "-w", type=int, help="Worker processes. [CPU count]")
@click.option("--threads", type=int, help="Threads per worker. [1]")
@click.option("--timeout", "-t", type=float, help="Kill a worker silent this long (s). [30]")
@click.option("--graceful-timeout", type=float, help="Time to finish requests on stop (s). [30]")
@click.option("--keepalive", type=float, help="Idle keep-alive seconds; 0 disables. [5]")
@click.option("--max-requests", type=int, help="Recycle a worker after N requests. [0: never]")
@click.option("--max-requests-jitter", type=int, help="Random extra requests per worker. [0]")
@click.option("--pidfile", "-p", type=click.Path(dir_okay=False), help="Write the master pid here.")
@click.option("--daemon", "-D", is_flag=True, default=None, help="Detach from the terminal.")
@click.option("--chdir", type=click.Path(file_okay=False), help="Change to this folder first.")
@click.option("--preload", is_flag=True, default=None, help="Load the app in the master.")
@click.option("--access-log", help="Access log file, '-' for stdout. [off]")
@click.option("--error-log", help="Error log file, '-' for stderr. [-]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error", "critical"],
                                               case_sensitive=False), help="[info]")
@click.option("--name", "-n", help="Shown in process titles: hotswap: master [NAME].")
@click.option("--limit-request-line", type=int, help="Longest request line. [4094]")
@click.option("--limit-request-fields", type=int, help="Most header fields. [100]")
@click.option("--limit-request-field-size", type=int, help="Largest header field. [8190]")
@click.option("--forwarded-allow-ips", help="Comma-separated proxies trusted for X-Forwarded-*, "
                                            "or '*'. [127.0.0.1,::1]")
@click.option("--backlog", type=int, help="Listen queue length. [2048]")
@click.option("--upgrade-timeout", type=float,
              help="A new master not ready within this is stopped (s). [60]")
@click.option("--upgrade-mode", type=click.Choice(["auto", "manual"]),
              help="auto: USR2 alone finishes or rolls back the upgrade; manual: the old "
                   "generation waits for WINCH and QUIT. [auto]")
@click.option("--watch-window", type=float,
              help="After the handover, roll back on repeated worker crashes or a failed "
                   "health check for this long (s); 0 commits at once. [10]")
@click.option("--upgrade-surge", type=int,
              help="Rolling handover: the new generation starts this many workers, then one per "
                   "old worker gone; at most workers + this many exist. [0: off]")
@click.option("--health-path", help="Each new worker GETs this path from the app in-process "
                                    "and boots only on a 2xx. [off]")
@click.option("--health-url", help="Probed on the new generation only (never the old one) "
                                   "before it goes live and during the watch window. [off]")
@click.option("--keeper/--no-keeper", default=None,
              help="Run a resident keeper process in front of the master, so a supervisor "
                   "sees one stable pid across upgrades. [on as PID 1 or under supervisord; "
                   "off under systemd or with --daemon]")
# -- TLS, PROXY protocol, sockets (issue 12) --
@click.option("--certfile", type=click.Path(dir_okay=False),
              help="PEM certificate (chain): serve HTTPS on every --bind. Read again by "
                   "each upgrade and HUP. [off]")
@click.option("--keyfile", type=click.Path(dir_okay=False),
              help="PEM private key of --certfile. [in certfile]")
@click.option("--ca-certs", type=click.Path(dir_okay=False),
              help="CA bundle client certificates are verified against.")
@click.option("--cert-reqs", type=click.IntRange(0, 2),
              help="Client certificate: 0 none, 1 optional, 2 required (gunicorn's values). [0]")
@click.option("--ciphers", help="OpenSSL cipher list for TLS 1.2. [OpenSSL's default]")
@click.option("--proxy-protocol", is_flag=True, default=None,
              help="Read a PROXY v1/v2 header (HAProxy, AWS NLB) from --proxy-allow-from peers "
                   "and take the client address from it. [off]")
@click.option("--proxy-allow-from",
              help="Comma-separated peers that must send a PROXY header, or '*'. "
                   "[127.0.0.1,::1]")
@click.option("--reuse-port", is_flag=True, default=None,
              help="SO_REUSEPORT on the TCP sockets this server opens. [off]")
@click.option("--server-header/--no-server-header", default=None,
              help="Send 'Server: hotswap/VERSION'. [on]")
def start(**params: Any) -> None:
    """Serve APP (module:callable; the built-in demo app when omitted)."""
    keeper = params.pop("keeper")
    ctx = click.get_current_context()
    flags = {name: value for name, value in params.items()
             if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    if "forwarded_allow_ips" in flags:
        flags["forwarded_allow_ips"] = [v.strip() for v in flags["forwarded_allow_ips"].split(",")]
    if "proxy_allow_from" in flags:
        flags["proxy_allow_from"] = [v.strip() for v in flags["proxy_allow_from"].split(",")]
    if "bind" in flags:
        flags["bind"] = list(flags["bind"])
    if params.get("app"):
        flags["app"] = params["app"]
    from .master.server import serve  # keeps `hotswap status` and friends light

    try:
        code = serve(flags, keeper)
    except StartupError as exc:
        _fail(str(exc))
    sys.exit(code)


@main.command()
@_PIDFILE
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Stop following after this long (s); the server goes on by itself.")
@click.option("--health-url", help="For this upgrade: probed on the new generation only, "
                                   "before it goes live and during the watch window.")
@click.option("--json", "as_json", is_flag=True, help="Print the upgrade record as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def upgrade(pidfile: str, timeout: float, health_url: str | None, as_json: bool,
            quiet: bool) -> None:
    """Live upgrade: send USR2 and follow it; exit 0 only when it committed.

    The master runs the upgrade (and any rollback) by itself; interrupting this
    command changes nothing but what is printed.
    """
    if timeout <= 0:
        _fail("--timeout must be positive")
    from upgrade.orchestrator import run_upgrade

    def step(message: str) -> None:
        if not quiet:
            click.echo(f"hotswap upgrade: {message}", err=True)

    report = run_upgrade(pidfile, timeout=timeout, health_url=health_url, on_step=step)
    click.echo(report.as_json() if as_json else report.line())
    sys.exit(0 if report.outcome == "upgraded" else 1)


@main.command()
@_PIDFILE
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(pidfile: str, as_json: bool) -> None:
    """Show the masters (old, current, booting), workers, the upgrade's state and history.

    Exit status: 0 a master runs, 3 none does, 1 PIDFILE names something that is not a
    hotswap master (it is shown, never signalled).
    """
    found = gather(Pidfile(pidfile))
    if as_json:
        click.echo(json.dumps(found, indent=2))
    else:
        for line in render(found):
            click.echo(line)
    if found["pidfile_verdict"] in SUSPECT:
        _fail(found["pidfile_message"])
    sys.exit(0 if found["masters"] else 3)


@main.command()
@_PIDFILE
@click.option("--fast", is_flag=True, help="QUIT instead of TERM: do not wait for requests.")
@click.option("--timeout", type=float, default=60.0, show_default=True)
def stop(pidfile: str, fast: bool, timeout: float) -> None:
    """Stop the master(s) named by PIDFILE and PIDFILE.oldbin, and wait until they are gone."""
    pf = Pidfile(pidfile)
    current = _trusted(pf)
    old = pf.identify_oldbin(current)
    if old.verdict not in (MISSING, MASTER, SAME):
        click.echo(f"hotswap: note: {old.message} (stale, ignored)", err=True)
    pids = list(dict.fromkeys(f.pid for f in (current, old) if f.is_master and f.pid))
    if not pids:
        _fail(not_running_message(pf, current))
    for pid in pids:
        _kill(pid, signal.SIGQUIT if fast else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(procs.is_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            _fail(f"master(s) {pids} still running after {timeout:g} s")
        time.sleep(0.05)
    click.echo(f"stopped {', '.join(map(str, pids))}")


@main.command()
@_PIDFILE
def reload(pidfile: str) -> None:
    """HUP: re-read the configuration and replace the workers gracefully."""
    pf = Pidfile(pidfile)
    current = _trusted(pf)
    if not current.is_master or current.pid is None:
        _fail(not_running_message(pf, current))
        return
    _kill(current.pid, signal.SIGHUP)
    click.echo(f"sent HUP to {current.pid}")


def _trusted(pf: Pidfile) -> Finding:
    """PIDFILE's finding; a file naming something that is not our master ends the command.

    A stranger (a pid reused by another program, even one titled like us) must never get
    a signal, and guessing past an unreadable pidfile could hit one.
    """
    current = pf.identify()
    if current.verdict in SUSPECT:
        _fail(current.message)
    return current


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        _fail(f"not allowed to signal process {pid}")


def _fail(message: str) -> None:
    click.echo(f"hotswap: error: {message}", err=True)
    sys.exit(1)
