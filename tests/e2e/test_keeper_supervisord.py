"""hotswap under a real supervisord, with the README's [program:myapp] block.

Under load it is upgraded twice by `supervisorctl signal USR2` and once by `hotswap
upgrade`. Proven: not one request fails; `supervisorctl pid` (the keeper) never changes
and the program stays RUNNING; supervisord's log shows one spawn and no exit (no
respawn); the new code serves; `supervisorctl stop` leaves no process behind.

Before the keeper, supervisord watched the master itself: the old master's exit at
the end of an upgrade was a program exit to supervisord, which respawned it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from load import LoadGenerator, app_source, failure_report, fetch, standard_clients
from support import (
    descendants,
    free_port,
    masters_below,
    python_env,
    readme_block,
    wait_for,
    write_app,
    zombies_below,
)

from pidfiles import procs

pytestmark = pytest.mark.skipif(not shutil.which("supervisord"),
                                reason="needs supervisord (scripts/test-deps.sh installs it)")

README_COMMAND = "/opt/myapp/venv/bin/hotswap"


def program_block(tmp: Path, port: int, pidfile: Path) -> str:
    """The README's program block, pointed at this test's interpreter, folder, port and pidfile."""
    block = readme_block("ini", "[program:myapp]")
    replacements = {
        README_COMMAND: f"{sys.executable} -m hotswap",
        "127.0.0.1:8000": f"127.0.0.1:{port}",
        "/run/myapp/hotswap.pid": str(pidfile),
        "/opt/myapp/current": str(tmp),
    }
    for old, new in replacements.items():
        assert old in block, f"README program block no longer has {old!r}"
        block = block.replace(old, new)
    lines = block.rstrip("\n").splitlines()
    command = next(i for i, ln in enumerate(lines) if ln.startswith("command="))
    lines[command] += " --workers 2 --watch-window 0"
    lines += [f"stdout_logfile={tmp / 'myapp.log'}", "redirect_stderr=true"]
    return "\n".join(lines) + "\n"


class Supervisord:
    """supervisord in the foreground with its own config, socket and log in tmp."""

    def __init__(self, tmp: Path, program: str) -> None:
        self.tmp = tmp
        self.conf = tmp / "supervisord.conf"
        self.log_path = tmp / "supervisord.log"
        self.conf.write_text(
            f"[unix_http_server]\nfile={tmp / 'supervisor.sock'}\n\n"
            f"[supervisord]\nlogfile={self.log_path}\npidfile={tmp / 'supervisord.pid'}\n"
            f"childlogdir={tmp}\nnodaemon=true\nloglevel=info\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{tmp / 'supervisor.sock'}\n\n" + program)
        self.out = open(tmp / "supervisord.out", "ab")
        self.proc = subprocess.Popen(["supervisord", "-c", str(self.conf)], cwd=tmp,
                                     env=python_env(), stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["supervisorctl", "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=30)

    def pid(self) -> int | None:
        out = self.ctl("pid", "myapp").stdout.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    def status(self) -> str:
        return self.ctl("status", "myapp").stdout

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        """Stop supervisord (and so its program); then kill whatever is left, by pid."""
        left = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                pass
        for pid in left + [self.proc.pid]:
            if procs.is_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self.out.close()


@pytest.mark.timeout(120)
def test_supervisord_upgrades_keep_one_program_pid(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pidfile = tmp_path / "hotswap.pid"
    write_app(tmp_path, "myapp", app_source("v1"))
    sup = Supervisord(tmp_path, program_block(tmp_path, port, pidfile))
    app_log = tmp_path / "myapp.log"
    try:
        keeper = wait_for(lambda: "RUNNING" in sup.status() and sup.pid(), timeout=20,
                          what=f"myapp RUNNING; supervisord log:\n{sup.log()}")
        wait_for(lambda: _version(base) == "v1", timeout=15, what="the first master to serve")
        clients = [c for c in standard_clients() if c.transport == "tcp"]
        load = LoadGenerator(base, None, clients)
        seen = []
        with load:
            wait_for(lambda: len(load.records) > 20, what="load to run")
            for number, how in enumerate(["signal", "signal", "upgrade"], start=2):
                old = int(pidfile.read_text())
                version = f"v{number}"
                write_app(tmp_path, "myapp", app_source(version))
                if how == "signal":
                    result = sup.ctl("signal", "USR2", "myapp")
                    assert "myapp: signalled" in result.stdout, result
                else:
                    run = subprocess.run([sys.executable, "-m", "hotswap", "upgrade", "--pidfile",
                                          str(pidfile), "--timeout", "30"], env=python_env(),
                                         capture_output=True, text=True, timeout=60)
                    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{_tail(app_log)}"
                seen.append(_wait_upgraded(pidfile, old, version, base, app_log))
                assert sup.pid() == keeper, f"program pid changed; supervisord log:\n{sup.log()}"
                assert "exited: myapp" not in sup.log(), sup.log()
                assert masters_below(keeper) == [seen[-1]]
                moment = time.monotonic()
                wait_for(lambda t=moment: load.finished_since(t) >= 10,
                         what="requests after the upgrade")
        assert not load.crashed, load.crashed
        assert not load.failures(), failure_report(load.records)
        assert len(load.records) > 100
        assert sup.pid() == keeper and "RUNNING" in sup.status()
        log = sup.log()
        assert log.count("spawned: 'myapp'") == 1, log
        assert "exited: myapp" not in log, log
        wait_for(lambda: not zombies_below(keeper), what="no zombies below the keeper")
        family = [keeper, *descendants(keeper)]
        stopped = sup.ctl("stop", "myapp")
        assert "myapp: stopped" in stopped.stdout, (stopped, _tail(app_log))
        assert not [pid for pid in family if procs.is_alive(pid)], "processes left behind"
        assert "TERM: graceful stop" in app_log.read_text()
        print(f"\nsupervisord: {len(load.records)} requests, 0 failed, keeper {keeper}, "
              f"masters {seen}")
    finally:
        sup.close()


def _version(base: str) -> str | None:
    try:
        return fetch(base)["version"]
    except Exception:  # not serving yet
        return None


def _wait_upgraded(pidfile: Path, old: int, version: str, base: str, app_log: Path) -> int:
    """Until PIDFILE names a new master, the old one is gone and the new code serves."""
    def done() -> int | None:
        try:
            new = int(pidfile.read_text())
        except (OSError, ValueError):
            return None
        if new != old and not procs.is_alive(old) and _version(base) == version:
            return new
        return None
    return wait_for(done, timeout=30, interval=0.05,
                    what=f"the upgrade to {version} to complete; log:\n{_tail(app_log)}")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""
