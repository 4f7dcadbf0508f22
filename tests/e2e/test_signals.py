"""What each signal does to a running master, proven with real processes and real HTTP.

The operator's contract (DESIGN.md, "Signals"): TERM lets in-flight requests finish and
cleans up (pidfile, unix socket path); INT and QUIT do not wait; HUP swaps in the code now
on disk without one failed request, and keeps the old workers when the new code cannot
load; TTIN/TTOU change the worker count; USR1 reopens log files moved away by logrotate;
WINCH is ignored when it could be a terminal resize. The `--daemon` mode and the
`status`, `reload` and `stop` commands are exercised the way an operator would use them.

Slow requests announce themselves by creating a marker file, so a test sends its signal
only once the request is really inside the app, never after a guessed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from support import free_port, get, wait_for, workers_of, write_app

from pidfiles import procs

pytestmark = pytest.mark.timeout(30)  # each test; longer ones say so

REPO = Path(__file__).resolve().parents[2]

# A versioned app: "/" answers "<version> <worker pid>"; "/slow?S" first creates
# started-<pid> in its folder, then sleeps S seconds and answers a 100 000-byte body.
APP = '''
import os, time

VERSION = {version!r}
HERE = os.path.dirname(os.path.abspath(__file__))
BIG = b"x" * 100_000


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        open(os.path.join(HERE, "started-%d" % os.getpid()), "w").close()
        time.sleep(float(environ.get("QUERY_STRING") or "1.5"))
        body = BIG
    else:
        body = ("%s %d" % (VERSION, os.getpid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def write_versioned(folder: Path, version: str) -> None:
    write_app(folder, "app", APP.format(version=version))


def hotswap_cli(*args: str, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run `python -m hotswap ARGS` as an operator would, from this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "hotswap", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


class Background:
    """Run one call on a thread and keep its result or exception for the test to check."""

    def __init__(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn: Any, args: Any, kwargs: Any) -> None:
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as exc:  # the test inspects it
            self.error = exc

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"client still waiting after {timeout:g} s"


def started_markers(folder: Path) -> list[Path]:
    return list(folder.glob("started-*"))


def start_slow_request(url: str, folder: Path, timeout: float = 20) -> Background:
    """Send a slow request and return once the app is inside it."""
    client = Background(requests.get, url, timeout=timeout)
    wait_for(lambda: started_markers(folder) or client.error, 10,
             what="the slow request to reach the app")
    assert client.error is None, f"the slow request failed before the test acted: {client.error!r}"
    return client


class Hammer:
    """A client thread sending requests until told to stop, on a fresh connection each
    time or on one kept-alive session (which a retiring worker must answer, then close).

    Bounded twice: it stops itself after `limit` seconds, and the test stops it as soon
    as what it waits for has been seen.
    """

    def __init__(self, url: str, keepalive: bool = False, limit: float = 15.0) -> None:
        self.url = url
        self.limit = limit
        self.get = requests.Session().get if keepalive else requests.get
        self.bodies: list[str] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                response = self.get(self.url, timeout=10)
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
                continue
            if response.status_code != 200:
                self.failures.append(f"{response.status_code}: {response.text[:200]}")
            else:
                self.bodies.append(response.text)

    def seen(self, prefix: str) -> bool:
        return any(body.startswith(prefix) for body in list(self.bodies))

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(15)
        assert not self.thread.is_alive(), "client thread did not stop"


def test_term_lets_a_slow_request_finish_then_cleans_up(masters, tmp_path: Path) -> None:
    port = free_port()
    sock_path = tmp_path / "s.sock"
    write_versioned(tmp_path, "v1")
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--bind", f"unix:{sock_path}",
                "--workers", "1", "--graceful-timeout", "10", cwd=tmp_path)
    assert sock_path.exists() and m.current_pid() == m.pid

    client = start_slow_request(f"http://127.0.0.1:{port}/slow?1.5", tmp_path)
    began = time.monotonic()
    m.signal(signal.SIGTERM)
    client.join(15)
    assert client.error is None, f"the in-flight request failed: {client.error!r}"
    assert client.result.status_code == 200
    assert client.result.content == b"x" * 100_000
    assert m.wait_exit(15) == 0
    assert time.monotonic() - began < 10, "TERM waited for the graceful timeout, not the request"
    assert not m.pidfile.exists(), "pidfile left behind"
    assert not sock_path.exists(), "unix socket path left behind"
    assert "TERM: graceful stop" in m.log()


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["INT", "QUIT"])
def test_fast_stop_does_not_wait_for_a_slow_request(masters, tmp_path: Path, sig: int) -> None:
    port = free_port()
    write_versioned(tmp_path, "v1")
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--graceful-timeout", "30", cwd=tmp_path)
    worker = m.workers()[0]

    client = start_slow_request(f"http://127.0.0.1:{port}/slow?10", tmp_path)
    began = time.monotonic()
    m.signal(sig)
    assert m.wait_exit(4) == 0
    assert time.monotonic() - began < 4
    client.join(5)
    assert client.result is None and isinstance(client.error, requests.ConnectionError), \
        f"the client should see the connection cut, got {client.result!r} / {client.error!r}"
    wait_for(lambda: not procs.is_alive(worker), 3, what=f"worker {worker} to be gone")
    assert not m.pidfile.exists()


@pytest.mark.timeout(60)
def test_hup_serves_the_new_code_without_a_failed_request(masters, tmp_path: Path) -> None:
    port = free_port()
    write_versioned(tmp_path, "v1")
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", cwd=tmp_path)
    old_workers = set(m.workers())
    assert get(f"http://127.0.0.1:{port}/").text.startswith("v1 ")

    hammers = [Hammer(f"http://127.0.0.1:{port}/", keepalive=k) for k in (False, True)]
    try:
        wait_for(lambda: all(h.bodies for h in hammers), 5, what="the clients' first answers")
        write_versioned(tmp_path, "v2")
        m.signal(signal.SIGHUP)
        wait_for(lambda: all(h.seen("v2 ") for h in hammers), 15, what="v2 to be served")
        # Keep sending while the old workers drain and exit.
        wait_for(lambda: not old_workers & set(m.workers()), 10, what="old workers to exit")
        counts = [len(h.bodies) for h in hammers]
        wait_for(lambda: all(len(h.bodies) >= c + 5 for h, c in zip(hammers, counts, strict=True)),
                 5, what="a few more answers")
    finally:
        for hammer in hammers:
            hammer.finish()

    for hammer in hammers:
        assert hammer.failures == [], \
            f"{len(hammer.failures)} failed request(s): {hammer.failures[:5]}"
        assert hammer.bodies[-1].startswith("v2 ")
    for _ in range(5):
        assert get(f"http://127.0.0.1:{port}/").text.startswith("v2 ")
    new_workers = set(m.workers())
    assert len(new_workers) == 2 and not new_workers & old_workers
    assert m.proc.poll() is None and m.current_pid() == m.pid
    assert "HUP: reload complete" in m.log()


@pytest.mark.timeout(60)
def test_hup_with_broken_code_keeps_the_old_workers(masters, tmp_path: Path) -> None:
    port = free_port()
    write_versioned(tmp_path, "v1")
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", cwd=tmp_path)
    old_workers = set(m.workers())

    hammer = Hammer(f"http://127.0.0.1:{port}/")
    try:
        wait_for(lambda: hammer.bodies, 5, what="the client's first answer")
        write_app(tmp_path, "app", "def app(environ, start_response:\n    pass\n")
        m.signal(signal.SIGHUP)
        wait_for(lambda: "HUP: reload failed" in m.log(), 10, what="the reload to fail")
        # The failed new workers are gone; the old ones serve as before.
        wait_for(lambda: set(m.workers()) == old_workers, 10, what="only the old workers left")
        count = len(hammer.bodies)
        wait_for(lambda: len(hammer.bodies) >= count + 5, 5, what="a few more answers")
    finally:
        hammer.finish()
    assert hammer.failures == [], f"{len(hammer.failures)} failed request(s): {hammer.failures[:5]}"
    assert all(body.startswith("v1 ") for body in hammer.bodies)
    assert "SyntaxError" in m.log()
    assert "Traceback" not in m.log()

    write_versioned(tmp_path, "v3")
    m.signal(signal.SIGHUP)
    wait_for(lambda: get(f"http://127.0.0.1:{port}/").text.startswith("v3 "), 15,
             what="v3 to be served after the fix")
    wait_for(lambda: not old_workers & set(m.workers()), 10, what="old workers to exit")
    assert len(m.workers()) == 2 and m.proc.poll() is None


def test_ttin_and_ttou_change_the_worker_count(masters, tmp_path: Path) -> None:
    port = free_port()
    m = masters("--bind", f"127.0.0.1:{port}", "--workers", "2")
    first = set(m.workers())
    assert len(first) == 2

    m.signal(signal.SIGTTIN)
    wait_for(lambda: len(m.workers()) == 3, 10, what="a third worker")
    assert first < set(m.workers()), "TTIN must add a worker, not replace the others"

    m.signal(signal.SIGTTOU)
    wait_for(lambda: len(m.workers()) == 2, 10, what="back to two workers")
    assert get(f"http://127.0.0.1:{port}/").status_code == 200
    assert "TTIN: 3 worker(s)" in m.log() and "TTOU: 2 worker(s)" in m.log()

    # Never below one worker: a second TTOU at one is logged and changes nothing.
    m.signal(signal.SIGTTOU)
    wait_for(lambda: len(m.workers()) == 1, 10, what="one worker")
    m.signal(signal.SIGTTOU)
    wait_for(lambda: m.log().count("TTOU: 1 worker(s)") == 2, 5, what="the second TTOU")
    assert len(m.workers()) == 1
    assert get(f"http://127.0.0.1:{port}/").status_code == 200


@pytest.mark.timeout(60)
def test_hup_rereads_the_config_file(masters, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "hotswap.toml"
    config.write_text(f'bind = "127.0.0.1:{port}"\nworkers = 1\n')
    m = masters("--config", str(config))
    assert len(m.workers()) == 1

    config.write_text(f'bind = "127.0.0.1:{port}"\nworkers = 3\n')
    m.signal(signal.SIGHUP)
    wait_for(lambda: len(m.workers()) == 3 and "HUP: reload complete" in m.log(), 10,
             what="three workers after HUP")

    # A broken file on HUP: logged, and the running configuration stays.
    workers = set(m.workers())
    config.write_text("workers = \n")
    m.signal(signal.SIGHUP)
    wait_for(lambda: "keeping the running configuration" in m.log(), 5, what="the refusal")
    assert "is not valid TOML" in m.log()
    assert set(m.workers()) == workers and m.proc.poll() is None
    assert get(f"http://127.0.0.1:{port}/").status_code == 200


def _open_paths(pid: int) -> set[str]:
    """What the process has open, as /proc shows it (a moved file shows its new name)."""
    paths = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return paths
    for fd in fds:
        try:
            paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return paths


def _wait_for_access_line(path: Path, needle: str) -> None:
    wait_for(lambda: path.exists() and needle in path.read_text(), 5,
             what=f"{needle!r} in {path}")


def test_usr1_reopens_moved_log_files(masters, tmp_path: Path) -> None:
    port = free_port()
    access, errors = tmp_path / "access.log", tmp_path / "error.log"
    m = masters("--bind", f"127.0.0.1:{port}", "--workers", "1", "--access-log", str(access),
                "--error-log", str(errors), ready=False)
    wait_for(lambda: errors.exists() and f"[{m.pid}] [INFO] ready:" in errors.read_text(), 15,
             what="the master to be ready (error log)")
    assert get(f"http://127.0.0.1:{port}/before-rotation").status_code == 200
    _wait_for_access_line(access, "/before-rotation")

    access.rename(tmp_path / "access.log.1")
    errors.rename(tmp_path / "error.log.1")
    m.signal(signal.SIGUSR1)
    wait_for(lambda: access.exists() and errors.exists(), 5, what="the log files to be reopened")
    # The workers reopen on their own loop: wait until no process holds the moved files.
    pids = [m.pid, *m.workers()]
    moved = {str(tmp_path / "access.log.1"), str(tmp_path / "error.log.1")}
    wait_for(lambda: all(not _open_paths(p) & moved and str(access) in _open_paths(p)
                         for p in pids), 5, what="master and workers to drop the moved files")

    assert get(f"http://127.0.0.1:{port}/after-rotation").status_code == 200
    _wait_for_access_line(access, "/after-rotation")
    assert "/before-rotation" not in access.read_text()
    assert "/after-rotation" not in (tmp_path / "access.log.1").read_text()
    assert "USR1: log files reopened" in errors.read_text()
    assert "USR1: log files reopened" not in (tmp_path / "error.log.1").read_text()
    assert "ready:" in (tmp_path / "error.log.1").read_text()


def test_winch_is_ignored_when_not_daemonized(masters, tmp_path: Path) -> None:
    port = free_port()
    m = masters("--bind", f"127.0.0.1:{port}", "--workers", "2")
    before = set(m.workers())
    m.signal(signal.SIGWINCH)
    wait_for(lambda: "WINCH ignored" in m.log(), 5, what="the master to log WINCH ignored")
    assert set(m.workers()) == before
    assert get(f"http://127.0.0.1:{port}/").status_code == 200
    assert set(m.workers()) == before


def _kill_daemon(pid: int | None, workers: list[int]) -> None:
    """The daemon left our process group: stop it (and its workers) by pid."""
    for target in ([pid] if pid else []) + workers:
        if procs.is_alive(target) and "hotswap" in (procs.cmdline(target) or ""):
            try:
                os.kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.timeout(60)
def test_daemon_detaches_serves_and_stops(tmp_path: Path) -> None:
    port = free_port()
    pidfile = tmp_path / "d.pid"
    errors = tmp_path / "error.log"
    daemon_pid: int | None = None
    workers: list[int] = []
    try:
        began = time.monotonic()
        done = hotswap_cli("start", "--daemon", "--pidfile", str(pidfile), "--bind",
                           f"127.0.0.1:{port}", "--workers", "1", "--error-log", str(errors),
                           cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - began < 8, "start --daemon must return at once"
        daemon_pid = wait_for(lambda: pidfile.exists() and int(pidfile.read_text()), 10,
                              what="the daemon to write its pidfile")
        wait_for(lambda: "ready:" in errors.read_text(), 10, what="the daemon to be ready")
        workers = workers_of(daemon_pid)
        assert procs.is_hotswap_master(daemon_pid) and len(workers) == 1
        assert procs.parent_pid(daemon_pid) != os.getpid(), "the daemon must be detached"
        assert os.getsid(daemon_pid) != os.getsid(0), "the daemon must have left our session"
        assert get(f"http://127.0.0.1:{port}/").status_code == 200

        # Daemonized, WINCH is honoured: workers are parked (alive, serving nobody) and not
        # replaced; HUP brings them back.
        os.kill(daemon_pid, signal.SIGWINCH)
        wait_for(lambda: "parked: not accepting" in errors.read_text(), 10,
                 what="WINCH to park the worker")
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(f"http://127.0.0.1:{port}/", timeout=1.0)
        assert workers_of(daemon_pid) == workers, "parked workers are kept, not replaced"
        os.kill(daemon_pid, signal.SIGHUP)
        wait_for(lambda: get(f"http://127.0.0.1:{port}/").status_code == 200, 10,
                 what="the daemon to serve again")

        stopped = hotswap_cli("stop", "--pidfile", str(pidfile), cwd=tmp_path)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == f"stopped {daemon_pid}"
        assert not procs.is_alive(daemon_pid)
        assert not pidfile.exists()
        wait_for(lambda: not any(procs.is_alive(w) for w in workers), 5, what="workers gone")
    finally:
        _kill_daemon(daemon_pid, workers)


def test_status_reload_and_stop_commands(masters, tmp_path: Path) -> None:
    port = free_port()
    write_versioned(tmp_path, "v1")
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", cwd=tmp_path)
    pidfile = str(m.pidfile)
    workers = m.workers()

    shown = hotswap_cli("status", "--pidfile", pidfile, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"current: master {m.pid}, generation 1, 2 worker(s) ")
    as_json = json.loads(hotswap_cli("status", "--pidfile", pidfile, "--json", cwd=tmp_path).stdout)
    assert as_json["upgrade_in_progress"] is False
    [entry] = as_json["masters"]
    assert entry["pid"] == m.pid and sorted(entry["workers"]) == sorted(workers)

    write_versioned(tmp_path, "v2")
    reloaded = hotswap_cli("reload", "--pidfile", pidfile, cwd=tmp_path)
    assert reloaded.returncode == 0 and reloaded.stdout.strip() == f"sent HUP to {m.pid}"
    wait_for(lambda: get(f"http://127.0.0.1:{port}/").text.startswith("v2 "), 15,
             what="reload to serve v2")
    wait_for(lambda: not set(workers) & set(m.workers()), 10, what="old workers to exit")

    stopped = hotswap_cli("stop", "--pidfile", pidfile, cwd=tmp_path)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped {m.pid}"
    assert m.wait_exit(5) == 0
    assert not m.pidfile.exists()

    gone = hotswap_cli("status", "--pidfile", pidfile, cwd=tmp_path)
    assert gone.returncode == 3 and gone.stdout.startswith("not running")
    for command in ("stop", "reload"):
        refused = hotswap_cli(command, "--pidfile", pidfile, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [
            f"hotswap: error: no running master found through {m.pidfile}"]


@pytest.mark.timeout(40)
def test_stop_fast_does_not_wait_for_a_slow_request(masters, tmp_path: Path) -> None:
    port = free_port()
    write_versioned(tmp_path, "v1")
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--graceful-timeout", "30", cwd=tmp_path)
    client = start_slow_request(f"http://127.0.0.1:{port}/slow?10", tmp_path)
    began = time.monotonic()
    stopped = hotswap_cli("stop", "--fast", "--pidfile", str(m.pidfile), cwd=tmp_path)
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped {m.pid}"
    assert time.monotonic() - began < 5
    assert m.wait_exit(1) == 0
    client.join(5)
    assert isinstance(client.error, requests.ConnectionError), client.result
