"""Bad input to an ASGI app: the same refusals as WSGI, and the worker lives on.

Malformed requests are refused by the shared parser (hotswap.http.request) before the app
sees them; bad WebSocket handshakes are answered 4xx by `websockets`' handshake checks;
an app that raises gets a 500. After each case, the very same worker answers a good
request (one worker, so a crash or a respawn shows as a new pid).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from asgi_rig import install_fastapp
from support import MasterFactory, free_port, http_raw

LIMITS = ("--limit-request-line", "256", "--limit-request-fields", "20",
          "--limit-request-field-size", "512")
WS_HEAD = ("GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Version: 13\r\n")
WS_KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("asgi_bad_input")
    app = install_fastapp(tmp)
    port = free_port()
    masters = MasterFactory(tmp)
    try:
        masters(app, "--bind", f"127.0.0.1:{port}", "--workers", "1", "--timeout", "5",
                *LIMITS, cwd=tmp)
        yield port
    finally:
        masters.close()


def worker(port: int) -> int:
    answer = http_raw(port, b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    return json.loads(answer.partition(b"\r\n\r\n")[2])["worker"]


CASES = [
    ("garbage", b"GARBAGE\r\n\r\n", 400),
    ("bare LF", b"GET / HTTP/1.1\nHost: t\n\n", 400),
    ("request line too long", b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    ("too many fields", b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 25 + b"\r\n", 431),
    ("field too large", b"GET / HTTP/1.1\r\nX-A: " + b"b" * 600 + b"\r\n\r\n", 431),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("bad Content-Length", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", 400),
    ("CL and TE", b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("unknown coding", b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("bad chunk size while the app reads", b"POST /echo HTTP/1.1\r\nHost: t\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n", 400),
    ("refused while a body is still coming", b"POST /echo HTTP/1.1\r\nHost: t\r\n"
     b"Transfer-Encoding: gzip\r\n\r\n" + b"x" * 3_000_000, 501),
    ("bad chunk, a body still coming", b"POST /echo HTTP/1.1\r\nHost: t\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n" + b"x" * 3_000_000, 400),
    ("the app raises", b"GET /boom HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 500),
    ("WebSocket without a key", (WS_HEAD + "\r\n").encode(), 400),
    ("WebSocket, wrong version", (WS_HEAD.replace("13", "8") + WS_KEY + "\r\n").encode(), 400),
    ("WebSocket, bad key", (WS_HEAD + "Sec-WebSocket-Key: short\r\n\r\n").encode(), 400),
    ("WebSocket to an HTTP route", (WS_HEAD.replace("/ws", "/json") + WS_KEY + "\r\n").encode(),
     403),
]


@pytest.mark.parametrize("data,status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_and_the_worker_lives_on(port: int, data: bytes, status: int) -> None:
    before = worker(port)
    answer = http_raw(port, data)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
    assert worker(port) == before


def test_a_good_request_behind_a_refused_one_is_not_answered(port: int) -> None:
    """The refusal closes the connection: nothing after a broken request is read as HTTP."""
    answer = http_raw(port, b"GET /who HTTP/1.1\r\nHost: t\r\n\r\nGARBAGE\r\n\r\n"
                            b"GET /who HTTP/1.1\r\nHost: t\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 1 and answer.count(b"HTTP/1.1 400 ") == 1
