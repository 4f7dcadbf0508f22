"""A worker whose master was SIGKILLed finishes everything it holds (issue 9, item 2).

At the kill, one inline worker is inside the app for a slow request; a kept-alive client
has already sent its next request; another client has two pipelined requests waiting in
the listen queue; a third has connected and not yet sent anything. The orphan must
answer all five requests (no reset, no silent close), then leave by itself.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import pytest
from support import free_port, wait_for, write_app

from pidfiles import procs

pytestmark = pytest.mark.timeout(40)

# "/" answers the worker pid; "/sleep?S" creates a file `started` first, then sleeps S s.
APP = '''
import os, time

HERE = os.path.dirname(os.path.abspath(__file__))


def app(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        open(os.path.join(HERE, "started"), "w").close()
        time.sleep(float(environ["QUERY_STRING"]))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

GET = b"GET /%s HTTP/1.1\r\nHost: x\r\n%s\r\n"
CLOSE = b"Connection: close\r\n"


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes; a reset is a failure of the test."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_orphaned_worker_answers_everything_it_held(masters, tmp_path: Path) -> None:
    port = free_port()
    write_app(tmp_path, "app", APP)
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--graceful-timeout", "10", cwd=tmp_path)
    [worker] = m.workers()
    addr = ("127.0.0.1", port)

    kept = socket.create_connection(addr, timeout=15)
    kept.sendall(GET % (b"", b""))
    assert b"Connection: keep-alive" in kept.recv(65536)

    slow_answer: list = []
    slow = socket.create_connection(addr, timeout=15)
    slow.sendall(GET % (b"sleep?1.5", CLOSE))
    reader = threading.Thread(target=lambda: slow_answer.append(read_all(slow)), daemon=True)
    reader.start()
    wait_for(lambda: (tmp_path / "started").exists(), what="the slow request in the app")

    kept.sendall(GET % (b"", CLOSE))  # waits in the socket: the worker is in the app
    piped = socket.create_connection(addr, timeout=15)  # waits in the listen queue
    piped.sendall(GET % (b"?one", b"") + GET % (b"?two", CLOSE))
    silent = socket.create_connection(addr, timeout=15)  # sends once the master is dead

    os.kill(m.pid, signal.SIGKILL)
    m.wait_exit(10)
    silent.sendall(GET % (b"", CLOSE))

    try:
        answers = {"kept": read_all(kept), "piped": read_all(piped), "silent": read_all(silent)}
        reader.join(15)
    finally:
        for sock in (kept, slow, piped, silent):
            sock.close()
    answers["slow"] = slow_answer[0] if slow_answer else b""
    expected = {"kept": 1, "piped": 2, "silent": 1, "slow": 1}
    for name, count in expected.items():
        got = answers[name].count(b"HTTP/1.1 200 OK")
        assert got == count, f"{name}: {got} of {count} answers: {answers[name][:300]!r}"
        assert answers[name].endswith(str(worker).encode())
    wait_for(lambda: not procs.is_alive(worker), 15, what="the orphan to leave")
    assert f"master {m.pid} is gone" in m.log()
