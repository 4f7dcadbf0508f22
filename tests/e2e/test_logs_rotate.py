"""logrotate (mv, then USR1) with relative log paths and --chdir, and USR1 under stress.

Before: relative paths were reopened relative to --chdir (in the foreground USR1 gave
"internal error in the master loop"), and a daemon's fds 1 and 2 stayed on the rotated
file, so app print()s, wsgi.errors and crash tracebacks went to err.log.1 forever. And a
USR1 that reached a worker between fork and its own handlers killed it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from support import Daemons, free_port, wait_for, write_app

from pidfiles import procs

APP = '''\
import os
import sys


def app(environ, start_response):
    print("app-stdout", os.getpid(), flush=True)
    print("app-stderr", os.getpid(), file=sys.stderr, flush=True)
    environ["wsgi.errors"].write("wsgi-errors %d\\n" % os.getpid())
    environ["wsgi.errors"].flush()
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
'''


def _layout(tmp: Path) -> tuple[Path, Path]:
    (tmp / "sub").mkdir()
    (tmp / "logs").mkdir()
    write_app(tmp / "sub", "app", APP)
    return tmp / "logs" / "err.log", tmp / "logs" / "access.log"


def _rotate(*paths: Path) -> None:
    for path in paths:
        path.rename(path.with_name(path.name + ".1"))


def _get(port: int, count: int) -> None:
    for _ in range(count):
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).text == "ok"


@pytest.mark.timeout(60)
def test_foreground_rotation_with_relative_paths_and_chdir(masters, tmp_path: Path) -> None:
    err, access = _layout(tmp_path)
    port = free_port()
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--chdir", "sub",
                "--error-log", "logs/err.log", "--access-log", "logs/access.log",
                ready=False, cwd=tmp_path)
    wait_for(lambda: err.exists() and "ready:" in err.read_text(),
             what=f"the master to be ready; terminal:\n{m.log()}")
    _get(port, 4)
    _rotate(err, access)
    m.signal(signal.SIGUSR1)
    wait_for(lambda: err.exists() and "USR1: log files reopened" in err.read_text(),
             what=f"a new error log; terminal:\n{m.log()}")
    workers = m.workers()
    wait_for(lambda: all(_points_to(w, access) for w in workers),
             what="every worker to reopen the access log")
    _get(port, 6)
    _wait_access_lines(access, 6)
    assert "internal error" not in err.read_text() + m.log()
    assert (tmp_path / "logs" / "err.log.1").exists()


@pytest.mark.timeout(60)
def test_daemon_rotation_moves_stdout_and_stderr(daemons: Daemons, tmp_path: Path) -> None:
    err, access = _layout(tmp_path)
    port = free_port()
    run = daemons.start("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                        "--chdir", "sub", "--pidfile", "hotswap.pid",
                        "--error-log", "logs/err.log", "--access-log", "logs/access.log",
                        pidfile=tmp_path / "hotswap.pid")
    assert run.returncode == 0, run.stderr
    master = int((tmp_path / "hotswap.pid").read_text())
    family = [master, *procs.hotswap_workers(master)]
    assert len(family) == 3
    _get(port, 2)
    _rotate(err, access)
    os.kill(master, signal.SIGUSR1)
    wait_for(lambda: all(_points_to(pid, err, fds=(1, 2)) for pid in family),
             what="fds 1 and 2 of the master and every worker on the new error log")
    _get(port, 6)
    text = err.read_text()
    assert "USR1: log files reopened" in text  # the master's logger
    assert text.count("app-stderr") == 6 and text.count("app-stdout") == 6  # workers' fds 1, 2
    assert text.count("wsgi-errors") == 6
    _wait_access_lines(access, 6)
    old = (tmp_path / "logs" / "err.log.1").read_text()
    assert old.count("app-stderr") == 2  # nothing more went to the rotated file


@pytest.mark.timeout(90)
def test_usr1_storm_while_workers_are_forked_kills_none(masters, tmp_path: Path) -> None:
    """USR1 to the master goes on to every worker, the newest included: one that has
    not installed its handlers yet must not die of it (signals blocked across the fork)."""
    write_app(tmp_path, "app", APP)
    port = free_port()
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "4",
                "--error-log", str(tmp_path / "err.log"), cwd=tmp_path, ready=False)
    wait_for(lambda: "ready:" in _read(tmp_path / "err.log"), what="ready")
    stop = threading.Event()

    def storm() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            os.kill(m.pid, signal.SIGUSR1)
            time.sleep(0.0005)

    thread = threading.Thread(target=storm, daemon=True)
    thread.start()
    try:
        for _ in range(25):
            done = _reloads(tmp_path / "err.log")
            m.signal(signal.SIGHUP)
            wait_for(lambda done=done: _reloads(tmp_path / "err.log") > done, timeout=20,
                     what="the reload to end")
    finally:
        stop.set()
        thread.join(5)
    log = _read(tmp_path / "err.log")
    assert "reload failed" not in log
    assert "killed by signal 10" not in log, [ln for ln in log.splitlines() if "signal 10" in ln]
    assert "SIGUSR1" not in log
    assert m.proc.poll() is None
    _get(port, 2)


def _wait_access_lines(path: Path, count: int) -> None:
    """A worker writes its access line after the response is sent: wait for it."""
    wait_for(lambda: _read(path).count("GET / HTTP/1.1") >= count, what=f"{count} access lines")
    assert _read(path).count("GET / HTTP/1.1") == count


def _reloads(path: Path) -> int:
    """HUPs finished, either way."""
    text = _read(path)
    return text.count("HUP: reload complete") + text.count("HUP: reload failed")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _points_to(pid: int, path: Path, fds: tuple[int, ...] | None = None) -> bool:
    """Does `pid` hold `path` itself (not the rotated file) open, on `fds` or on any fd?"""
    folder = Path(f"/proc/{pid}/fd")
    try:
        names = [str(fd) for fd in fds] if fds else os.listdir(folder)
        targets = [os.readlink(folder / name) for name in names]
    except OSError:
        return False
    return all(t == str(path) for t in targets) if fds else str(path) in targets
