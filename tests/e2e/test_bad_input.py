"""Bad input from clients and bad output from apps: the right status, and the worker lives on.

A prefork server is only as available as its workers: one malformed request that kills
or wedges a worker is a denial of service. Every case here runs against one master with
`--workers 1` and checks, besides the status, that the very same worker pid answers a
good request afterwards (nothing crashed, nothing was respawned). For app errors it also
checks the error log (a traceback an operator can act on) and the wire (a header with
CR/LF must not reach the client: that is response splitting).

The limits are set small on the command line so the oversize cases stay small.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Master, MasterFactory, free_port, http_raw, wait_for

APP_SOURCE = Path(__file__).resolve().parent.parent / "apps" / "httpapp.py"
LIMITS = ("--limit-request-line", "256", "--limit-request-fields", "20",
          "--limit-request-field-size", "512")


class Server:
    """The shared master, its port, and a log cursor so each case reads only its own lines."""

    def __init__(self, master: Master, port: int) -> None:
        self.master = master
        self.port = port
        self.mark = 0

    def worker_pid(self) -> int:
        """The pid of the worker answering a good request right now."""
        answer = http_raw(self.port, b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        return int(answer.rpartition(b"\r\n\r\n")[2])

    def new_log(self) -> str:
        return self.master.log()[self.mark:]

    def start_case(self) -> int:
        self.mark = len(self.master.log())
        return self.worker_pid()

    def check_survived(self, pid: int) -> None:
        assert self.worker_pid() == pid, f"the worker was replaced; log:\n{self.new_log()}"
        assert self.master.workers() == [pid]
        assert "worker crashed" not in self.new_log()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("bad_input")
    shutil.copy(APP_SOURCE, tmp / "httpapp.py")
    port = free_port()
    factory = MasterFactory(tmp)
    try:
        master = factory("httpapp:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                         *LIMITS, cwd=tmp)
        yield Server(master, port)
    finally:
        factory.close()


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer
    return int(answer.split(b" ", 2)[1])


HEAD = "GET / HTTP/1.1\r\nHost: t\r\n"

REFUSED = [
    ("garbage request line", b"GARBAGE\r\n\r\n", 400),
    ("extra token after version", b"GET / HTTP/1.1 extra\r\nHost: t\r\n\r\n", 400),
    ("unknown HTTP version", b"GET / HTTP/7.1\r\nHost: t\r\n\r\n", 400),
    ("request line without version", b"GET /pid\r\n\r\n", 400),
    ("HTTP/2.0 in HTTP/1 syntax", b"GET /pid HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("header line without colon", (HEAD + "this is no header\r\n\r\n").encode(), 400),
    ("space before colon", (HEAD + "X-Bad : v\r\n\r\n").encode(), 400),
    ("control byte in header value", (HEAD + "X-Bad: a\x01b\r\n\r\n").encode(), 400),
    ("request line over --limit-request-line",
     ("GET /" + "a" * 300 + " HTTP/1.1\r\nHost: t\r\n\r\n").encode(), 414),
    ("more headers than --limit-request-fields",
     (HEAD + "".join(f"X-N{i}: v\r\n" for i in range(25)) + "\r\n").encode(), 431),
    ("header over --limit-request-field-size",
     (HEAD + "X-Big: " + "b" * 600 + "\r\n\r\n").encode(), 431),
    ("Content-Length and Transfer-Encoding",
     b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("two different Content-Length",
     b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("negative Content-Length", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
    ("Transfer-Encoding: gzip",
     b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    # The head is fine and arrives with a broken body: the app must not wait for the body.
    ("bad chunk size, app reads the body",
     b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("bad chunk size, app ignores the body",
     b"POST /noread HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("data", "expected"), [pytest.param(d, s, id=i) for i, d, s in REFUSED])
def test_refused_with_status_and_worker_lives(server: Server, data: bytes, expected: int) -> None:
    pid = server.start_case()
    answer = http_raw(server.port, data)
    assert status_of(answer) == expected, answer
    assert b"Connection: close\r\n" in answer
    server.check_survived(pid)


@pytest.mark.timeout(30)
def test_app_that_raises_gets_500_and_a_traceback(server: Server) -> None:
    pid = server.start_case()
    answer = http_raw(server.port, b"GET /raise HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(answer) == 500
    wait_for(lambda: "RuntimeError: boom from the test app" in server.new_log(),
             what="the app's exception in the error log")
    log = server.new_log()
    assert "Traceback (most recent call last):" in log
    assert "error handling GET /raise" in log
    server.check_survived(pid)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("path", "logged"), [
    ("/bad-status", "malformed status 'abc'"),
    ("/bad-header", "malformed value for response header 'X-Split'"),
    ("/str", "not bytes"),
])
def test_wsgi_contract_broken_before_sending_gets_500(server: Server, path: str,
                                                       logged: str) -> None:
    pid = server.start_case()
    answer = http_raw(server.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert status_of(answer) == 500
    # Nothing of what the app asked for reaches the wire, least of all an injected header.
    for leaked in (b"X-Split", b"X-Injected", b"evil", b"never", b"not bytes"):
        assert leaked not in answer
    assert answer.count(b"HTTP/1.1 ") == 1
    wait_for(lambda: logged in server.new_log(), what=f"{logged!r} in the error log")
    server.check_survived(pid)


@pytest.mark.timeout(30)
def test_str_after_the_head_is_sent_cuts_the_response(server: Server) -> None:
    """Too late for a 500: the response must end incomplete, never look complete."""
    pid = server.start_case()
    answer = http_raw(server.port, b"GET /str-late HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(answer) == 200
    assert b"Transfer-Encoding: chunked" in answer
    assert answer.endswith(b"b\r\nfirst-piece\r\n")  # no last chunk: the client sees the cut
    wait_for(lambda: "not bytes" in server.new_log(), what="the error in the log")
    server.check_survived(pid)


@pytest.mark.timeout(30)
def test_stalled_head_does_not_block_other_clients(server: Server) -> None:
    pid = server.start_case()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as stalled:
        stalled.sendall(b"GET /echo?stalled=1 HTTP/1.1\r\nHost: t\r\nX-Half: ")
        began = time.monotonic()
        assert server.worker_pid() == pid  # the one worker answers the second client...
        assert time.monotonic() - began < 2.0  # ...promptly
        stalled.sendall(b"done\r\nConnection: close\r\n\r\n")  # it was parked, not dropped
        late = b""
        while chunk := stalled.recv(65536):
            late += chunk
    assert status_of(late) == 200
    assert b'"query": "stalled=1"' in late
    server.check_survived(pid)


@pytest.mark.timeout(30)
def test_body_shorter_than_content_length_then_close(server: Server) -> None:
    pid = server.start_case()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := sock.recv(65536):  # the server closes: no answer is owed
            rest += chunk
    assert b"200 OK" not in rest  # the app never got a whole body to answer with
    server.check_survived(pid)
    assert "Traceback" not in server.new_log()
