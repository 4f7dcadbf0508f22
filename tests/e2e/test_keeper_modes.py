"""When the keeper runs, what it forwards, and what its exit status says.

On under supervisord (SUPERVISOR_ENABLED) and as PID 1, off under systemd (NOTIFY_SOCKET)
and with --no-keeper; signals reach the current master with their meaning; the keeper
exits with the service's status (1 with the one-line reason when the app cannot boot,
128+N when the master is killed by signal N) and leaves no process or zombie behind.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from support import free_port, group_members, masters_below, wait_for, write_app, zombies_below

from pidfiles import procs

APP = "def app(environ, start_response):\n" \
      "    start_response('200 OK', [('Content-Length', '2')])\n" \
      "    return [b'ok']\n"


def _start(masters, tmp_path: Path, *extra: str, env: dict[str, str] | None = None):
    write_app(tmp_path, "app", APP)
    return masters("app:app", "--bind", f"127.0.0.1:{free_port()}", "--workers", "1", *extra,
                   cwd=tmp_path, env=env, ready=False)


@pytest.mark.timeout(60)
def test_supervisord_environment_gets_a_keeper_that_forwards(masters, tmp_path: Path) -> None:
    m = _start(masters, tmp_path, env={"SUPERVISOR_ENABLED": "1"})
    master = wait_for(lambda: m.current_pid() if m.current_pid() != m.pid else None,
                      what=f"a master below the keeper; log:\n{m.log()}")
    m.wait_ready(pid=master)
    assert masters_below(m.pid) == [master]
    assert procs.cmdline(m.pid).startswith("hotswap: keeper")
    m.signal(signal.SIGTTIN)  # to the keeper: the master gets it
    wait_for(lambda: len(m.workers(master)) == 2, what="TTIN to reach the master")
    m.signal(signal.SIGTERM)
    assert m.wait_exit(20) == 0
    assert "TERM: graceful stop" in m.log()
    wait_for(lambda: not group_members(m.pgid), what="nothing left")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["no-keeper", "systemd"])
def test_no_keeper_under_systemd_or_when_refused(masters, tmp_path: Path, how: str) -> None:
    env = {"SUPERVISOR_ENABLED": "1"}
    extra: tuple[str, ...] = ()
    if how == "systemd":
        env["NOTIFY_SOCKET"] = str(tmp_path / "no-such-notify-socket")
    else:
        extra = ("--no-keeper",)
    m = _start(masters, tmp_path, *extra, env=env)
    m.wait_ready()
    assert m.current_pid() == m.pid
    assert masters_below(m.pid) == []


@pytest.mark.timeout(60)
def test_keeper_exit_status_is_the_services(masters, tmp_path: Path) -> None:
    broken = masters("nosuchmodule_hotswap:app", "--keeper", "--bind",
                     f"127.0.0.1:{free_port()}", "--error-log", str(tmp_path / "err.log"),
                     cwd=tmp_path, ready=False)
    assert broken.wait_exit(20) == 1
    assert broken.log().splitlines() == [
        "hotswap: error: cannot import APP module 'nosuchmodule_hotswap': no such module"]
    m = _start(masters, tmp_path, "--keeper")
    master = wait_for(lambda: m.current_pid() if m.current_pid() != m.pid else None,
                      what="a master below the keeper")
    m.wait_ready(pid=master)
    workers = m.workers(master)
    m.signal(signal.SIGKILL, pid=master)
    assert m.wait_exit(20) == 128 + signal.SIGKILL
    assert not [w for w in workers if procs.is_alive(w)]
    assert not zombies_below(m.pid)
