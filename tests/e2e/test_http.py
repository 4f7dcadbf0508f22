"""HTTP/1.1 and WSGI (PEP 3333) behaviour of a real hotswap master, over real sockets.

What is proven, and why it matters:
- the server answers on TCP IPv4, IPv6 loopback and a unix socket, the three kinds of
  `--bind` an operator uses behind a proxy;
- `wsgiref.validate.validator` finds nothing wrong across GET, POST (Content-Length and
  chunked), HEAD and a streaming response, so any PEP 3333 app (Django, Flask) runs;
- every PEP 3333 corner the issue lists: request bodies by length and chunked,
  `Expect: 100-continue` answered only once the app reads, streaming and chunked
  responses, `write()`, `exc_info`, `wsgi.file_wrapper`, HEAD, HTTP/1.0, keep-alive,
  pipelining, `Date`/`Server` headers — checked on the wire with raw sockets where a
  client library would hide the framing;
- `--threads` really serves concurrently, idle keep-alive connections do not starve live
  clients, X-Forwarded-* is believed only from trusted peers, `--max-requests` recycles
  workers without failing a request, and the access log has the combined format.

The test app is tests/apps/httpapp.py, copied into each test's tmp_path.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from support import free_port, get, has_ipv6_loopback, wait_for

from hotswap import __version__

APP_SOURCE = Path(__file__).resolve().parent.parent / "apps" / "httpapp.py"
APP = "httpapp:app"


def install_app(folder: Path) -> None:
    """Copy the shared test app next to the master (its cwd is on sys.path)."""
    shutil.copy(APP_SOURCE, folder / "httpapp.py")


def start(masters, tmp_path: Path, *args: str, bind: str | None = None):
    """A master serving the test app; returns (master, base URL, port)."""
    install_app(tmp_path)
    port = free_port()
    master = masters(APP, "--bind", bind or f"127.0.0.1:{port}", *args, cwd=tmp_path)
    return master, f"http://127.0.0.1:{port}", port


# -- a raw HTTP/1.1 client that shows the framing -----------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    wire: bytes  # everything this response took on the socket, head included
    header_names: list[str] = field(default_factory=list)


class Raw:
    """One client connection; reads responses one by one, exactly as framed on the wire."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"server closed the connection; unread: {self.buf!r}")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def response(self, head_request: bool = False) -> RawResponse:
        wire = b""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        wire += head + b"\r\n\r\n"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        names = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            names.append(name)
            headers[name.lower()] = value.strip()
        body = b""
        if head_request or status < 200 or status in (204, 304):
            pass
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size_line = self._line()
                wire += size_line
                size = int(size_line.split(b";")[0], 16)
                data = self._take(size + 2)
                wire += data
                if size == 0:
                    break
                body += data[:-2]
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]))
            wire += body
        else:
            body = self.read_to_eof()
            wire += body
        return RawResponse(status, headers, body, wire, names)

    def read_to_eof(self) -> bytes:
        while True:
            try:
                self._more()
            except EOFError:
                data, self.buf = self.buf, b""
                return data

    def closed_by_server(self) -> bool:
        """True when the server closes (EOF) before the socket timeout, with nothing more sent."""
        try:
            return self.sock.recv(1) == b"" and not self.buf
        except (TimeoutError, ConnectionResetError):
            return False


def get_request(path: str, version: str = "1.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: test\r\n{extra}\r\n".encode()


# -- transports ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_tcp_ipv4_with_date_and_server_headers(masters, tmp_path) -> None:
    _, base, _ = start(masters, tmp_path, "--workers", "1")
    before = time.time()
    response = get(f"{base}/echo?x=1")
    assert response.status_code == 200
    data = response.json()
    assert (data["method"], data["path"], data["query"]) == ("GET", "/echo", "x=1")
    assert data["remote_addr"] == "127.0.0.1"
    assert data["protocol"] == "HTTP/1.1"
    assert response.headers["Server"] == f"hotswap/{__version__}"
    date = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
    assert before - 2 <= date <= time.time() + 2
    assert response.headers["Date"].endswith(" GMT")


@pytest.mark.timeout(30)
def test_ipv6_loopback(masters, tmp_path) -> None:
    if not has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    port = free_port("::1")
    start(masters, tmp_path, "--workers", "1", bind=f"[::1]:{port}")
    response = get(f"http://[::1]:{port}/echo", headers={"Connection": "close"})
    assert response.status_code == 200
    assert response.json()["remote_addr"] == "::1"
    with pytest.raises(requests.ConnectionError):
        get(f"http://127.0.0.1:{port}/echo", timeout=2)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket: only the connect step differs."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


@pytest.mark.timeout(30)
def test_unix_socket(masters, tmp_path) -> None:
    path = tmp_path / "hs.sock"
    assert len(str(path)) < 100, f"unix socket path too long for the kernel: {path}"
    start(masters, tmp_path, "--workers", "1", bind=f"unix:{path}")
    conn = UnixHTTPConnection(str(path))
    try:
        for body in (b"", b"over a unix socket"):
            conn.request("POST", "/echo?via=unix", body=body)
            response = conn.getresponse()
            assert response.status == 200
            data = json.loads(response.read())
            assert data["body"] == body.decode()
            assert data["query"] == "via=unix"
            assert data["remote_addr"] == ""  # no peer address on a unix socket
    finally:
        conn.close()


# -- PEP 3333 ------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_wsgiref_validator_finds_nothing(masters, tmp_path) -> None:
    master, base, _ = start(masters, tmp_path, "--workers", "1")
    payload = b"validated body " * 100

    def digest(method: str, body: bytes) -> str:
        return f"{method} {len(body)} {hashlib.sha256(body).hexdigest()}"

    with requests.Session() as session:
        r = session.get(f"{base}/validated", timeout=10)
        assert (r.status_code, r.text) == (200, digest("GET", b""))
        r = session.post(f"{base}/validated", data=payload, timeout=10)
        assert (r.status_code, r.text) == (200, digest("POST", payload))
        r = session.post(f"{base}/validated", data=iter([payload[:500], payload[500:]]),
                         timeout=10)  # a generator: requests sends it chunked
        assert r.request.headers.get("Transfer-Encoding") == "chunked"
        assert (r.status_code, r.text) == (200, digest("POST", payload))
        r = session.head(f"{base}/validated", timeout=10)
        assert r.status_code == 200 and r.content == b""
        assert r.headers["Content-Length"] == str(len(digest("HEAD", b"")))
        r = session.get(f"{base}/validated/stream", timeout=10)
        assert (r.status_code, r.content) == (200, b"alpha-beta-gamma")
        assert r.headers["Transfer-Encoding"] == "chunked"
    log = master.log()
    for sign in ("Traceback", "[ERROR]", "[WARNING]", "Error", "Warning", "Exception ignored"):
        assert sign not in log, log


@pytest.mark.timeout(30)
def test_body_with_content_length(masters, tmp_path) -> None:
    _, base, _ = start(masters, tmp_path, "--workers", "1")
    body = os.urandom(300_000)
    response = requests.post(f"{base}/echo", data=body, timeout=10)
    assert response.status_code == 200
    data = response.json()
    assert data["sha256"] == hashlib.sha256(body).hexdigest()
    assert data["content_length"] == str(len(body))


@pytest.mark.timeout(30)
def test_chunked_request_body(masters, tmp_path) -> None:
    _, _, port = start(masters, tmp_path, "--workers", "1")
    pieces = [b"hello ", b"chunked " * 1000, b"world"]
    encoded = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    with Raw(port) as raw:
        raw.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        raw.send(encoded[:50])  # split across packets, mid-chunk
        raw.send(encoded[50:] + b"0\r\nX-Trailer: yes\r\n\r\n")
        response = raw.response()
        assert response.status == 200
        data = json.loads(response.body)
        assert data["body"].encode() == b"".join(pieces)
        assert data["content_length"] is None  # PEP 3333: no CONTENT_LENGTH for chunked
        raw.send(get_request("/pid"))  # the connection is still in step after the body
        assert raw.response().status == 200


@pytest.mark.timeout(30)
def test_expect_100_continue_only_once_the_app_reads(masters, tmp_path) -> None:
    _, _, port = start(masters, tmp_path, "--workers", "1")
    marker = tmp_path / "app-is-reading"
    body = b"the body, sent only after 100 Continue"
    with Raw(port) as raw:
        raw.send(f"POST /continue?{marker} HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode())
        interim = raw.response()
        assert interim.status == 100
        assert interim.wire == b"HTTP/1.1 100 Continue\r\n\r\n"
        # The app sleeps, leaves the marker, then reads: a 100 before the marker was eager.
        assert marker.exists(), "100 Continue was sent before the app read the body"
        raw.send(body)
        final = raw.response()
        assert final.status == 200
        assert json.loads(final.body)["body"] == body.decode()


@pytest.mark.timeout(30)
def test_expect_100_continue_not_sent_when_app_does_not_read(masters, tmp_path) -> None:
    _, _, port = start(masters, tmp_path, "--workers", "1")
    with Raw(port) as raw:
        raw.send(b"POST /noread HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 5\r\n\r\n")
        response = raw.response()
        assert response.status == 200 and response.body == b"unread"
        # The body may or may not follow: the server cannot reuse the connection, says so
        # and closes it, without ever having invited the body.
        assert response.headers["connection"] == "close"
        rest = raw.read_to_eof()
        assert b"100 Continue" not in response.wire + rest


@pytest.mark.timeout(30)
def test_expect_100_continue_never_inside_a_response(masters, tmp_path) -> None:
    """An app that reads only after its head went out: a 100 then would corrupt the body."""
    _, _, port = start(masters, tmp_path, "--workers", "1")
    with Raw(port) as raw:
        raw.send(b"POST /late-read HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                 b"Content-Length: 3\r\n\r\n")
        # The head comes first (the socket's 10 s timeout is the deadline), no 100 before it.
        assert raw.sock.recv(65536, socket.MSG_PEEK).startswith(b"HTTP/1.1 200 OK\r\n")
        raw.send(b"abc")  # a client that stops waiting for 100 sends the body anyway
        response = raw.response()
        assert response.status == 200
        assert response.body == b"head-out;read:abc"
        assert b"100 Continue" not in response.wire
        assert response.headers["connection"] == "close"


@pytest.mark.timeout(30)
def test_streaming_response_is_chunked_on_the_wire(masters, tmp_path) -> None:
    _, _, port = start(masters, tmp_path, "--workers", "1")
    with Raw(port) as raw:
        raw.send(get_request("/stream"))
        response = raw.response()
        assert response.status == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        assert response.body == b"alpha-beta-gamma"
        assert response.wire.endswith(b"6\r\nalpha-\r\n5\r\nbeta-\r\n5\r\ngamma\r\n0\r\n\r\n")
        assert response.headers["connection"] == "keep-alive"


@pytest.mark.timeout(30)
def test_write_callable(masters, tmp_path) -> None:
    _, base, _ = start(masters, tmp_path, "--workers", "1")
    response = get(f"{base}/write")
    assert (response.status_code, response.content) == (200, b"written-twice-returned")


@pytest.mark.timeout(30)
def test_exc_info_second_status_wins(masters, tmp_path) -> None:
    _, base, _ = start(masters, tmp_path, "--workers", "1")
    response = get(f"{base}/exc_info")
    assert response.status_code == 503
    assert response.content == b"second status"
    assert "X-First" not in response.headers


@pytest.mark.timeout(30)
def test_file_wrapper_sends_the_file_with_its_length(masters, tmp_path) -> None:
    _, base, _ = start(masters, tmp_path, "--workers", "1")
    data = os.urandom(700_001)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    response = get(f"{base}/file?{path}")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(data))
    assert "Transfer-Encoding" not in response.headers
    assert response.content == data


@pytest.mark.timeout(30)
def test_head_has_no_body(masters, tmp_path) -> None:
    _, _, port = start(masters, tmp_path, "--workers", "1")
    with Raw(port) as raw:
        heads = {}
        for path in ("/echo", "/stream", "/write", "/file?" + str(APP_SOURCE)):
            raw.send(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            heads[path] = raw.response(head_request=True)
            assert heads[path].status == 200
        # A body sent after any HEAD answer would show up here, in front of this response.
        raw.send(get_request("/write"))
        follow = raw.response()
        assert follow.wire.startswith(b"HTTP/1.1 200 OK\r\n")
        assert follow.body == b"written-twice-returned"
    assert int(heads["/echo"].headers["content-length"]) > 0  # the app's own header is kept
    assert "transfer-encoding" not in heads["/stream"].headers


@pytest.mark.timeout(30)
def test_http10_closes_unless_keep_alive_asked(masters, tmp_path) -> None:
    _, _, port = start(masters, tmp_path, "--workers", "1")
    with Raw(port) as raw:
        raw.send(get_request("/pid", "1.0"))
        response = raw.response()
        assert response.status == 200
        assert response.headers["connection"] == "close"
        assert raw.closed_by_server()
    with Raw(port) as raw:
        for _ in range(2):  # length known: the connection is kept when asked for
            raw.send(get_request("/pid", "1.0", "Connection: keep-alive\r\n"))
            response = raw.response()
            assert response.status == 200
            assert response.headers["connection"] == "keep-alive"
        # No length and no chunked in HTTP/1.0: the body ends when the server closes.
        raw.send(get_request("/stream", "1.0", "Connection: keep-alive\r\n"))
        response = raw.response()
        assert response.headers["connection"] == "close"
        assert "transfer-encoding" not in response.headers
        assert response.body == b"alpha-beta-gamma"


@pytest.mark.timeout(30)
def test_http11_keep_alive_reuses_the_socket(masters, tmp_path) -> None:
    _, _, port = start(masters, tmp_path, "--workers", "1")
    with Raw(port) as raw:
        local = raw.sock.getsockname()
        for n in range(3):
            raw.send(get_request(f"/echo?n={n}"))
            response = raw.response()
            assert response.status == 200
            assert json.loads(response.body)["query"] == f"n={n}"
            assert response.headers["connection"] == "keep-alive"
        assert raw.sock.getsockname() == local
        raw.send(get_request("/pid", extra="Connection: close\r\n"))
        assert raw.response().headers["connection"] == "close"
        assert raw.closed_by_server()


@pytest.mark.timeout(30)
def test_pipelined_requests_answered_in_order(masters, tmp_path) -> None:
    _, _, port = start(masters, tmp_path, "--workers", "1")
    with Raw(port) as raw:
        raw.send(get_request("/echo?n=1")
                 + b"POST /echo?n=2 HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody"
                 + get_request("/echo?n=3"))
        answers = [json.loads(raw.response().body) for _ in range(3)]
    assert [a["query"] for a in answers] == ["n=1", "n=2", "n=3"]
    assert [a["body"] for a in answers] == ["", "body", ""]


@pytest.mark.timeout(30)
def test_upgrade_request_answered_as_http_then_closed(masters, tmp_path) -> None:
    """No protocol switch is offered: the client gets a plain answer and a clear close,
    never a kept-alive connection on which the bytes it sent next were dropped."""
    _, _, port = start(masters, tmp_path, "--workers", "1")
    with Raw(port, timeout=5) as raw:
        raw.send(b"GET /echo?ws=1 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\n\r\n" + get_request("/pid"))
        response = raw.response()
        assert response.status == 200
        assert json.loads(response.body)["query"] == "ws=1"
        assert response.headers["connection"] == "close"
        assert raw.closed_by_server()


# -- concurrency -----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_threads_serve_slow_requests_concurrently(masters, tmp_path) -> None:
    master, base, _ = start(masters, tmp_path, "--workers", "1", "--threads", "4")
    results: list[requests.Response] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(get(f"{base}/sleep?0.5"))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - began
    assert not errors, errors
    assert [r.status_code for r in results] == [200] * 4
    assert {r.text for r in results} == {str(master.workers()[0])}  # one worker did it all
    assert elapsed < 1.5, f"4 x 0.5 s took {elapsed:.2f} s: not concurrent"


@pytest.mark.timeout(60)
def test_idle_keep_alive_connections_do_not_starve_live_clients(masters, tmp_path) -> None:
    _, base, port = start(masters, tmp_path, "--workers", "2", "--keepalive", "60")
    idle: list[Raw] = []
    try:
        for _ in range(100):
            raw = Raw(port)
            idle.append(raw)
            raw.send(get_request("/pid"))
            assert raw.response().status == 200  # served once, now parked open
        slowest = 0.0
        for n in range(20):
            began = time.monotonic()
            response = get(f"{base}/echo?live={n}", timeout=5)
            slowest = max(slowest, time.monotonic() - began)
            assert response.status_code == 200
            assert response.json()["query"] == f"live={n}"
        assert slowest < 2.0, f"a live request waited {slowest:.2f} s"
        for raw in idle[::25]:  # the idle ones were kept, not dropped to make room
            raw.send(get_request("/pid"))
            assert raw.response().status == 200
    finally:
        for raw in idle:
            raw.sock.close()


# -- proxies, recycling, logging -----------------------------------------------------------

FORWARDED = {"X-Forwarded-For": "203.0.113.7, 127.0.0.1", "X-Forwarded-Proto": "https"}


@pytest.mark.timeout(30)
def test_forwarded_headers_from_trusted_peer(masters, tmp_path) -> None:
    _, base, _ = start(masters, tmp_path, "--workers", "1")
    data = get(f"{base}/echo", headers=FORWARDED).json()
    assert (data["remote_addr"], data["scheme"]) == ("203.0.113.7", "https")
    plain = get(f"{base}/echo").json()
    assert (plain["remote_addr"], plain["scheme"]) == ("127.0.0.1", "http")


@pytest.mark.timeout(30)
def test_forwarded_headers_ignored_from_untrusted_peer(masters, tmp_path) -> None:
    _, base, _ = start(masters, tmp_path, "--workers", "1", "--forwarded-allow-ips", "10.0.0.1")
    data = get(f"{base}/echo", headers=FORWARDED).json()
    assert (data["remote_addr"], data["scheme"]) == ("127.0.0.1", "http")


@pytest.mark.timeout(60)
def test_max_requests_recycles_workers_without_failures(masters, tmp_path) -> None:
    """Recycling never fails a request, and an idle keep-alive client does not stall it.

    The retiring worker keeps its idle connection open (up to --keepalive) and answers it;
    meanwhile its replacement must already be accepting new connections.
    """
    master, base, port = start(masters, tmp_path, "--workers", "1", "--max-requests", "5",
                               "--keepalive", "30")
    first = master.workers()[0]
    with Raw(port) as idle:
        idle.send(get_request("/pid"))
        assert idle.response().body == str(first).encode()  # request 1 of 5, then idle
        pids = []
        slowest = 0.0
        with requests.Session() as session:  # keep-alive, reconnects when told to close
            for _ in range(20):
                began = time.monotonic()
                response = session.get(f"{base}/pid", timeout=5)
                slowest = max(slowest, time.monotonic() - began)
                assert response.status_code == 200
                pids.append(int(response.text))
        assert pids[:4] == [first] * 4
        # 5 each, plus at most the request already in flight when a worker retires.
        per_worker = Counter([first, *pids])
        assert len(per_worker) >= 4 and max(per_worker.values()) <= 6, pids
        assert slowest < 2.0, f"a request waited {slowest:.2f} s for a replacement worker"
        # The first worker is still there for its idle client: answered, then closed.
        idle.send(get_request("/pid"))
        last = idle.response()
        assert (last.body, last.headers["connection"]) == (str(first).encode(), "close")
    wait_for(lambda: len(master.workers()) == 1, what="the retired workers gone")
    assert "max requests (5) reached" in master.log()


@pytest.mark.timeout(30)
def test_access_log_combined_format(masters, tmp_path) -> None:
    master, base, _ = start(masters, tmp_path, "--workers", "1", "--access-log", "-")
    response = get(f"{base}/echo?q=access", headers={"User-Agent": "hotswap-test/1.0",
                                                     "Referer": "http://ref.example/"})
    size = len(response.content)
    pattern = re.compile(
        r'^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
        r'"GET /echo\?q=access HTTP/1\.1" 200 ' + str(size)
        + r' "http://ref\.example/" "hotswap-test/1\.0"', re.M)
    line = wait_for(lambda: pattern.search(master.log()), what="the access log line")
    assert line
