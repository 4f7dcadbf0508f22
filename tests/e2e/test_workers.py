"""Workers die, hang, lose their master or cannot load the app: the master copes.

Proven with real processes: a SIGKILLed worker is replaced; one stuck past --timeout is
killed and replaced; workers never outlive a SIGKILLed master for long: idle or holding
an idle keep-alive connection they leave at once, busy on a 2 s request they answer it
first, hung in the app they are ended at --graceful-timeout; a worker that cannot boot once the
app is broken is retried with growing delays instead of a fork loop, while the others
keep serving; and a first generation that cannot load the app at all ends the master
with exit 1 and one line, leaving no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import requests
from support import free_port, get, group_members, send_sleep, wait_for, write_app

from pidfiles import procs

pytestmark = pytest.mark.timeout(30)  # each test; longer ones say so

# "/" answers the worker pid; "/sleep?S" first creates started-<pid>, then sleeps S s.
# Importing fails while a file named "broken" sits next to the module.
APP = '''
import os, time

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(HERE, "broken")):
    raise RuntimeError("the marker file says this worker must not boot")


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        open(os.path.join(HERE, "started-%d" % os.getpid()), "w").close()
        time.sleep(float(environ.get("QUERY_STRING") or "60"))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def test_killed_worker_is_replaced(masters, tmp_path: Path) -> None:
    port = free_port()
    write_app(tmp_path, "app", APP)
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", cwd=tmp_path)
    before = m.workers()
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(m.workers()) == 2 and victim not in m.workers(), 10,
             what="a replacement worker")
    assert before[1] in m.workers(), "the other worker must be left alone"
    answered = {get(f"http://127.0.0.1:{port}/").text for _ in range(10)}
    assert str(victim) not in answered
    assert f"worker {victim} killed by signal 9 (SIGKILL); replacing it" in m.log()


@pytest.mark.timeout(40)
def test_hung_worker_is_killed_after_the_timeout(masters, tmp_path: Path) -> None:
    port = free_port()
    write_app(tmp_path, "app", APP)
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "1",
                "--timeout", "2", cwd=tmp_path)
    before = set(m.workers())
    thread, outcome = send_sleep(port, tmp_path, 60)
    [marker] = tmp_path.glob("started-*")
    hung = int(marker.name.split("-")[1])
    assert hung in before

    began = time.monotonic()
    wait_for(lambda: not procs.is_alive(hung), 8, what=f"hung worker {hung} to be killed")
    assert time.monotonic() - began >= 0.5, "killed before its timeout could have passed"
    wait_for(lambda: len(m.workers()) == 2 and hung not in m.workers(), 10,
             what="a replacement worker")
    thread.join(10)
    assert outcome and isinstance(outcome[0], requests.ConnectionError)
    assert re.search(rf"worker {hung} timed out \(no heartbeat for \d+ s\); killing it", m.log())
    assert get(f"http://127.0.0.1:{port}/").status_code == 200


@pytest.mark.timeout(40)
@pytest.mark.parametrize("load", ["idle", "keepalive", "busy", "hung"])
def test_workers_never_outlive_a_killed_master(masters, tmp_path: Path, load: str) -> None:
    """An orphaned worker finishes what it holds (within --graceful-timeout), then leaves;
    an idle kept-alive connection is closed at its keep-alive timeout.

    "busy": a 2 s request is answered in full, then the worker goes; "hung": a request
    that would take 60 s is abandoned after the 1 s graceful timeout, since no master is
    left to kill the worker (and it would otherwise hold the port for a minute).
    """
    port = free_port()
    write_app(tmp_path, "app", APP)
    grace = "1" if load == "hung" else "10"
    # An idle kept-alive connection is kept until its keep-alive timeout, as in any
    # retirement (its client may be sending right now); then the worker leaves.
    keepalive = "2" if load == "keepalive" else "30"
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--keepalive",
                keepalive, "--graceful-timeout", grace, cwd=tmp_path)
    workers = m.workers()
    assert len(workers) == 2
    idle_conn = None
    slow = None
    if load in ("busy", "hung"):
        slow = send_sleep(port, tmp_path, 2 if load == "busy" else 60)
    elif load == "keepalive":
        idle_conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        idle_conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle_conn.recv(4096).startswith(b"HTTP/1.1 200")
    try:
        os.kill(m.pid, signal.SIGKILL)
        m.wait_exit(5)
        wait_for(lambda: not any(procs.is_alive(w) for w in workers), 5,
                 what=f"workers {workers} to leave after their master died")
        if idle_conn is not None:
            assert idle_conn.recv(4096) == b"", "the idle keep-alive connection must be closed"
    finally:
        if idle_conn is not None:
            idle_conn.close()
    if slow is not None:
        thread, outcome = slow
        thread.join(10)
        if load == "busy":
            assert outcome and getattr(outcome[0], "status_code", None) == 200, outcome
        else:
            assert outcome and isinstance(outcome[0], requests.ConnectionError), outcome


def boot_failure_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "worker failed to boot" in line]


@pytest.mark.timeout(60)
def test_worker_boot_failures_back_off_while_the_others_serve(masters, tmp_path: Path) -> None:
    port = free_port()
    write_app(tmp_path, "app", APP)
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", cwd=tmp_path)
    survivor, victim = m.workers()

    (tmp_path / "broken").touch()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(boot_failure_lines(m.log())) >= 1, 5, what="a first boot failure")
    began = time.monotonic()
    answers = []
    while time.monotonic() - began < 3:  # bounded: 3 s of traffic, then judge the log
        answers.append(get(f"http://127.0.0.1:{port}/").text)
        time.sleep(0.05)  # pacing the client, not synchronisation
    failures = boot_failure_lines(m.log())
    assert 2 <= len(failures) < 10, f"not a backoff: {len(failures)} boot failures in 3 s"
    assert set(answers) == {str(survivor)}, "the remaining worker must keep serving"
    assert "the marker file says this worker must not boot" in failures[0]
    delays = [float(d) for d in re.findall(r"retrying in ([\d.]+) s", "\n".join(failures))]
    assert delays == sorted(delays) and delays[-1] > delays[0], f"delays do not grow: {delays}"
    assert "Traceback" not in m.log()

    (tmp_path / "broken").unlink()
    wait_for(lambda: len(m.workers()) == 2, 15, what="the worker count to recover")
    wait_for(lambda: {get(f"http://127.0.0.1:{port}/").text for _ in range(10)} - {str(survivor)},
             10, what="the new worker to serve")
    assert survivor in m.workers() and m.proc.poll() is None


BROKEN_APPS = {
    "no-module": ("nosuchmodule_hotswap:app", None,
                  "cannot import APP module 'nosuchmodule_hotswap': no such module"),
    "no-attribute": ("app:missing", "def app(e, s):\n    pass\n",
                     "APP 'app:missing': module 'app' has no 'missing'"),
    "not-callable": ("app:app", "app = 42\n", "APP 'app:app' is not callable (it is a int)"),
    "import-raises": ("app:app", "raise ValueError('no database configured')\n",
                      "cannot import APP module 'app': ValueError: no database configured"),
}


@pytest.mark.timeout(40)
@pytest.mark.parametrize("case", list(BROKEN_APPS))
def test_first_generation_that_cannot_boot_exits_1(masters, tmp_path: Path, case: str) -> None:
    spec, source, message = BROKEN_APPS[case]
    if source is not None:
        write_app(tmp_path, "app", source)
    error_log = tmp_path / "error.log"
    # The error log goes to a file, so the terminal shows only what the CLI prints.
    m = masters(spec, "--bind", f"127.0.0.1:{free_port()}", "--workers", "2",
                "--error-log", str(error_log), cwd=tmp_path, ready=False)
    assert m.wait_exit(15) == 1
    assert m.log().splitlines() == [f"hotswap: error: {message}"]
    if case == "import-raises":  # the app's own error: where it is, for the operator to fix
        assert f'{tmp_path / "app.py"}", line 1' in error_log.read_text()
    else:
        assert "Traceback" not in error_log.read_text()
    assert "ready:" not in error_log.read_text()
    wait_for(lambda: not group_members(m.pgid), 5, what="no process left behind")
    assert not m.pidfile.exists()
