"""Parking a worker (WINCH) and resuming it (HUP), signalled directly, with real sockets.

A parked worker is what the old generation becomes during an upgrade: it must finish
what it holds (answering with Connection: close), then accept nothing more while it
stays alive with the app loaded, say `P` once empty, and serve again after HUP. TERM on
a parked worker ends it at once. The in-process health check (--health-path) fails a
worker's boot like an import error would.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import requests
from support import free_port, send_sleep, wait_for, write_app

from pidfiles import procs

pytestmark = pytest.mark.timeout(40)

# "/" answers the worker pid; "/sleep?S" creates started-<pid>-<n> first, then sleeps S s;
# "/healthz" answers 503 while a file named "unhealthy" sits next to the module.
APP = '''
import itertools, os, time

HERE = os.path.dirname(os.path.abspath(__file__))
COUNT = itertools.count()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/healthz" and os.path.exists(os.path.join(HERE, "unhealthy")):
        start_response("503 Service Unavailable", [("Content-Length", "0")])
        return [b""]
    if path == "/sleep":
        name = "started-%d-%d" % (os.getpid(), next(COUNT))
        open(os.path.join(HERE, name), "w").close()
        time.sleep(float(environ.get("QUERY_STRING") or "60"))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def start(masters, tmp_path: Path, *extra: str):
    port = free_port()
    write_app(tmp_path, "app", APP)
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--watch-window", "0", "--log-level", "debug", *extra, cwd=tmp_path)
    [worker] = wait_for(lambda: m.workers() if len(m.workers()) == 1 else None,
                        what="one worker")
    return m, port, worker


def parked_reports(log: str, worker: int) -> int:
    """How many times the worker logged that it said `P` (parked, holding nothing)."""
    return log.count(f"[{worker}] [DEBUG] parked and holding no connection")


def get_raw(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_parked_worker_finishes_in_flight_then_accepts_nothing_until_hup(masters, tmp_path):
    m, port, worker = start(masters, tmp_path)
    thread, outcome = send_sleep(port, tmp_path, 1.0, timeout=20)
    os.kill(worker, signal.SIGWINCH)
    thread.join(15)
    [response] = outcome
    assert isinstance(response, requests.Response), f"in-flight request failed: {response!r}"
    assert response.status_code == 200 and response.text == str(worker)
    assert response.headers["Connection"].lower() == "close", "parked: responses must close"
    wait_for(lambda: parked_reports(m.log(), worker) == 1, what="the worker to say P")

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # parked: nobody accepts, the connection waits in the queue
        assert procs.is_alive(worker) and m.workers() == [worker], "a parked worker stays"
        os.kill(worker, signal.SIGHUP)
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(str(worker).encode())
    after = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert after.headers["Connection"].lower() == "keep-alive", "resumed: keep-alive again"
    assert parked_reports(m.log(), worker) == 1


def test_parked_worker_serves_a_kept_alive_request_already_sent(masters, tmp_path):
    """An idle kept-alive connection at the park is not cut: its next request is answered
    (with Connection: close), and only then is the worker empty."""
    m, port, worker = start(masters, tmp_path)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert b"Connection: keep-alive" in first
        os.kill(worker, signal.SIGWINCH)
        wait_for(lambda: "parked: not accepting" in m.log(), what="the park")
        again = get_raw(sock)
    assert again.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in again
    wait_for(lambda: parked_reports(m.log(), worker) == 1, what="the worker to say P")


def test_park_twice_reports_twice_and_term_on_parked_exits_at_once(masters, tmp_path):
    m, port, worker = start(masters, tmp_path, "--graceful-timeout", "30")
    for round_ in (1, 2):
        os.kill(worker, signal.SIGWINCH)
        wait_for(lambda n=round_: parked_reports(m.log(), worker) == n, what=f"P number {round_}")
        os.kill(worker, signal.SIGHUP)
        wait_for(lambda n=round_: m.log().count(f"[{worker}] [INFO] resumed") == n, what="resume")
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == str(worker)
    os.kill(worker, signal.SIGWINCH)
    wait_for(lambda: parked_reports(m.log(), worker) == 3, what="P number 3")
    os.kill(worker, signal.SIGTERM)
    # Far below --graceful-timeout 30: a parked worker holds nothing to wait for.
    wait_for(lambda: not procs.is_alive(worker), 5, what="the parked worker to exit on TERM")


def test_failed_health_check_is_a_boot_failure(masters, tmp_path):
    port = free_port()
    write_app(tmp_path, "app", APP)
    (tmp_path / "unhealthy").touch()
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--health-path", "/healthz", cwd=tmp_path, ready=False)
    assert m.wait_exit(20) == 1
    assert "health check GET /healthz answered 503 Service Unavailable" in m.log()


def test_passing_health_check_boots(masters, tmp_path):
    m, port, worker = start(masters, tmp_path, "--health-path", "/healthz")
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).text == str(worker)


def test_term_on_a_parked_worker_still_answers_an_idle_kept_alive_client(masters, tmp_path):
    """The commit (or a manual QUIT right after WINCH) TERMs parked workers: a kept-alive
    client sending its next request right then is answered, not cut off."""
    m, port, worker = start(masters, tmp_path, "--graceful-timeout", "30", "--keepalive", "30")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"Connection: keep-alive" in sock.recv(65536)
        os.kill(worker, signal.SIGWINCH)
        wait_for(lambda: "parked: not accepting" in m.log(), what="the park")
        os.kill(worker, signal.SIGTERM)  # parked, it already answers with Connection: close
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer, answer
        wait_for(lambda: not procs.is_alive(worker), 10, what="the parked worker to exit")
