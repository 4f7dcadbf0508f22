"""`hotswap start --daemon` tells the truth, and relative paths survive --chdir.

Before: the command exited 0 as soon as it forked, whatever happened next (an app that
cannot be imported, a pidfile in a missing folder: the reason went to the error log or
nowhere), and a good start returned before the pidfile existed, so
`start -D && hotswap status` raced. `--error-log logs/err.log --chdir sub -D` printed a
traceback and exited 0 with nothing running.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
from load import unix_session
from support import Daemons, free_port, python_env, wait_for, write_app

from pidfiles import procs

APP = "def app(environ, start_response):\n" \
      "    start_response('200 OK', [('Content-Length', '2')])\n" \
      "    return [b'ok']\n"


@pytest.mark.timeout(60)
def test_daemon_is_ready_when_start_returns(daemons: Daemons, tmp_path: Path) -> None:
    write_app(tmp_path, "app", APP)
    port = free_port()
    pidfile = tmp_path / "hotswap.pid"
    run = daemons.start("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "3",
                        "--pidfile", str(pidfile), "--error-log", str(tmp_path / "err.log"))
    # Checked at once, without any wait: the pidfile, the workers and the answer.
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    pid = int(pidfile.read_text())
    assert procs.is_hotswap_master(pid)
    assert len(procs.hotswap_workers(pid)) == 3
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).text == "ok"
    status = subprocess.run([sys.executable, "-m", "hotswap", "status", "--pidfile", str(pidfile)],
                            env=python_env(), capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and "3 worker(s)" in status.stdout, status


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["unimportable", "raises", "pidfile-folder-missing"])
def test_daemon_failure_is_exit_1_with_the_reason(daemons: Daemons, tmp_path: Path,
                                                   case: str) -> None:
    pidfile = tmp_path / "hotswap.pid"
    spec, expected = "app:app", ""
    if case == "unimportable":
        spec, expected = "nosuchmodule_hotswap:app", \
            "cannot import APP module 'nosuchmodule_hotswap': no such module"
    elif case == "raises":
        write_app(tmp_path, "app", "raise RuntimeError('no database configured')\n")
        expected = "cannot import APP module 'app': RuntimeError: no database configured"
    else:
        write_app(tmp_path, "app", APP)
        pidfile = tmp_path / "missing" / "hotswap.pid"
        expected = str(pidfile)
    run = daemons.start(spec, "--bind", f"127.0.0.1:{free_port()}", "--workers", "2",
                        "--pidfile", str(pidfile), "--error-log", str(tmp_path / "err.log"),
                        pidfile=pidfile)
    assert run.returncode == 1, (run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hotswap: error: "), run.stderr
    assert expected in lines[0]
    assert "Traceback" not in run.stderr
    wait_for(lambda: not [p for p in daemons.pids if procs.is_alive(p)],
             what="the failed daemon to be gone")


@pytest.mark.timeout(60)
def test_daemon_with_relative_paths_and_chdir(daemons: Daemons, tmp_path: Path) -> None:
    """Relative --error-log/--access-log/--pidfile/unix binds are relative to where
    `start` ran, not to --chdir."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (tmp_path / "logs").mkdir()
    write_app(sub, "app", APP)
    run = daemons.start("app:app", "--bind", "unix:run.sock", "--workers", "1",
                        "--error-log", "logs/err.log", "--access-log", "logs/access.log",
                        "--pidfile", "hotswap.pid", "--chdir", "sub",
                        pidfile=tmp_path / "hotswap.pid")
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert procs.is_hotswap_master(int((tmp_path / "hotswap.pid").read_text()))
    assert (tmp_path / "run.sock").exists()
    with unix_session(tmp_path / "run.sock") as session:
        assert session.get("http+unix://localhost/", timeout=10).text == "ok"
    assert "ready:" in (tmp_path / "logs" / "err.log").read_text()
    wait_for(lambda: "GET / HTTP/1.1" in (tmp_path / "logs" / "access.log").read_text(),
             what="the access log line")


@pytest.mark.timeout(60)
def test_relative_config_is_found_again_at_hup(masters, tmp_path: Path) -> None:
    """`--config hotswap.toml --chdir sub`: HUP re-reads the same file (it used to look
    in sub/ and keep the old configuration, while `hotswap reload` said "sent HUP")."""
    sub = tmp_path / "sub"
    sub.mkdir()
    write_app(sub, "app", APP)
    config = tmp_path / "hotswap.toml"
    config.write_text(f'app = "app:app"\nbind = ["127.0.0.1:{free_port()}"]\nworkers = 1\n')
    m = masters("--config", "hotswap.toml", "--chdir", "sub", cwd=tmp_path)
    assert len(m.workers()) == 1
    config.write_text(config.read_text().replace("workers = 1", "workers = 3"))
    assert m.pidfile is not None
    run = subprocess.run([sys.executable, "-m", "hotswap", "reload", "--pidfile", str(m.pidfile)],
                         env=python_env(), capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    wait_for(lambda: "HUP: reload complete" in m.log(), what=f"the reload; log:\n{m.log()}")
    assert "keeping the running configuration" not in m.log()
    wait_for(lambda: len(m.workers()) == 3, what="3 workers from the re-read config")
