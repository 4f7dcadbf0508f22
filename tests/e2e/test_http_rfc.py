"""Issue 9 items 7–15, each with the exact bytes of the report, against a real master.

Every case runs on the inline worker (`--threads 1`) and on the threaded one, since both
drive the same Exchange. Each request is one `sendall`, the way an attacker or a
pipelining client sends it, and the answer is read from the wire as framed.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import MasterFactory, free_port, wait_for
from test_http import Raw

APP = Path(__file__).resolve().parent.parent / "apps" / "rfcapp.py"
LIMITS = ("--limit-request-line", "120", "--limit-request-field-size", "100")


class Server:
    def __init__(self, master, port: int, tmp: Path) -> None:
        self.master = master
        self.port = port
        self.tmp = tmp

    def raw(self) -> Raw:
        return Raw(self.port, timeout=10)


@pytest.fixture(scope="module", params=["inline", "threaded"])
def server(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp(f"rfc-{request.param}")
    shutil.copy(APP, tmp / "rfcapp.py")
    port = free_port()
    threads = "1" if request.param == "inline" else "4"
    factory = MasterFactory(tmp)
    try:
        master = factory("rfcapp:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                         "--threads", threads, "--access-log", "-", *LIMITS, cwd=tmp)
        yield Server(master, port, tmp)
    finally:
        factory.close()


def echo_of(response) -> dict:
    assert response.status == 200, response.wire
    data = json.loads(response.body)
    data["body"] = __import__("base64").b64decode(data.pop("body_b64"))
    return data


def exchange(server: Server, data: bytes, count: int = 1, head: bool = False) -> list:
    """Send `data` in one sendall; read `count` responses; the server must then close."""
    with server.raw() as raw:
        raw.send(data)
        answers = [raw.response(head_request=head) for _ in range(count)]
        assert raw.closed_by_server(), f"more than {count} response(s) or no close: {raw.buf!r}"
    return answers


CHUNKED = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"


@pytest.mark.timeout(30)
def test_item7_trailer_fields_are_not_merged(server: Server) -> None:
    (answer,) = exchange(server, CHUNKED + b"Content-Type: text/plain\r\n\r\n"
                         b"5\r\nhello\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\n"
                         b"Content-Type: evil/type\r\nAuthorization: Basic ZXZpbA==\r\n\r\n")
    data = echo_of(answer)
    assert data["REMOTE_ADDR"] == "127.0.0.1"  # 127.0.0.1 is a trusted proxy: a merged XFF would win
    assert data["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_AUTHORIZATION" not in data and "HTTP_X_FORWARDED_FOR" not in data
    assert data["body"] == b"hello"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("field", [b"Host: evil.example", b"Content-Length: 99"])
def test_item7_framing_and_routing_trailers_refused(server: Server, field: bytes) -> None:
    (answer,) = exchange(server, CHUNKED + b"\r\n5\r\nhello\r\n0\r\n" + field + b"\r\n\r\n")
    assert answer.status == 400 and answer.headers["connection"] == "close"


@pytest.mark.timeout(30)
def test_item8_http10_chunked_is_refused_and_what_follows_is_not_served(server: Server) -> None:
    (answer,) = exchange(server, b"POST /echo HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                         b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n")
    assert answer.status == 400
    assert "/smuggled" not in server.master.log()


@pytest.mark.timeout(30)
def test_item9_duplicate_host_is_400(server: Server) -> None:
    (answer,) = exchange(server, b"GET /echo HTTP/1.1\r\nHost: good.example\r\n"
                         b"Host: evil.example\r\n\r\n")
    assert answer.status == 400


@pytest.mark.timeout(30)
def test_item10_body_with_a_broken_next_request(server: Server) -> None:
    """The body (with a broken next request behind it) arrives while the app reads.

    Expect: 100-continue makes that deterministic: the 100 goes out when the app reads,
    and only then are the body and the next bytes sent, in one sendall.
    """
    with server.raw() as raw:
        raw.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                 b"Expect: 100-continue\r\n\r\n")
        assert raw.response().status == 100
        raw.send(b"helloGET /next HTTP/1.1\r\nBad Header : x\r\n\r\n")
        assert echo_of(raw.response())["body"] == b"hello"
        assert raw.response().status == 400
        assert raw.closed_by_server()


@pytest.mark.timeout(30)
def test_item11_upgrade_request_keeps_its_body(server: Server) -> None:
    """What `curl --http2 -d hello` sends: the body must reach the app, then the close."""
    (answer,) = exchange(server, b"POST /echo HTTP/1.1\r\nHost: t\r\n"
                         b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                         b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: 5\r\n\r\nhello")
    data = echo_of(answer)
    assert (data["CONTENT_LENGTH"], data["body"]) == ("5", b"hello")


@pytest.mark.timeout(30)
def test_item12_app_oserror_is_a_500_with_logs(server: Server) -> None:
    (answer,) = exchange(server, b"GET /oserror/x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert answer.status == 500
    log = wait_for(lambda: (lambda text: "FileNotFoundError" in text and text)(server.master.log()),
                   what="the traceback in the error log")
    assert "error handling GET /oserror/x" in log
    assert re.search(r'"GET /oserror/x HTTP/1\.1" 500 ', log), log[-2000:]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("code", [b"204", b"304"])
def test_item13_no_content_length_on_204_304(server: Server, code: bytes) -> None:
    with server.raw() as raw:
        raw.send(b"GET /status?" + code + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = raw.response()
        assert answer.status == int(code)
        assert "content-length" not in answer.headers and "transfer-encoding" not in answer.headers
        raw.send(b"GET /sized HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection is still in sync
        assert raw.response().body == b"twelve bytes"


@pytest.mark.timeout(30)
def test_item13_head_declares_the_length_get_sends(server: Server) -> None:
    with server.raw() as raw:
        raw.send(b"GET /sized HTTP/1.1\r\nHost: t\r\n\r\nHEAD /sized HTTP/1.1\r\nHost: t\r\n\r\n")
        got = raw.response()
        head = raw.response(head_request=True)
        assert got.headers["content-length"] == head.headers["content-length"] == "12"
        raw.send(b"GET /sized HTTP/1.1\r\nHost: t\r\n\r\n")
        assert raw.response().body == b"twelve bytes"  # no body bytes followed the HEAD answer


@pytest.mark.timeout(30)
def test_item13_head_of_a_file_does_not_read_it(server: Server) -> None:
    big = server.tmp / "big.bin"
    big.write_bytes(b"z" * 300_000)
    marker = server.tmp / "read-position"
    marker.unlink(missing_ok=True)
    with server.raw() as raw:
        # relative to the master's cwd (tmp): short enough for --limit-request-line 120
        raw.send(f"HEAD /file?{big.name}&{marker.name} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        answer = raw.response(head_request=True)
    assert answer.headers["content-length"] == "300000"
    assert wait_for(lambda: marker.exists() and marker.read_text(), what="the file closed") == "0"


@pytest.mark.timeout(30)
def test_item14_empty_write_then_exc_info_is_framed(server: Server) -> None:
    with server.raw() as raw:
        raw.send(b"GET /empty-write HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = raw.response()
        assert answer.status == 503 and answer.body == b"second status"
        assert "content-length" in answer.headers or "transfer-encoding" in answer.headers
        raw.send(b"GET /sized HTTP/1.1\r\nHost: t\r\n\r\n")
        assert raw.response().body == b"twelve bytes"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method", [b"FOO", b"-BLARGH", b"M-SEARCH"])
def test_item15_extension_methods(server: Server, method: bytes) -> None:
    (answer,) = exchange(server, method + b" /echo?a=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data = echo_of(answer)
    assert (data["REQUEST_METHOD"], data["PATH_INFO"], data["QUERY_STRING"]) == (
        method.decode(), "/echo", "a=1")


@pytest.mark.timeout(30)
def test_item15_chunk_extensions_with_spaces(server: Server) -> None:
    (answer,) = exchange(server, CHUNKED + b"\r\n5 ; name = value\r\nhello\r\n"
                         b"6 ;q=\"a b\"\r\n world\r\n0\r\n\r\n")
    assert echo_of(answer)["body"] == b"hello world"


@pytest.mark.timeout(30)
def test_item15_http_1_2_is_served_as_1_1(server: Server) -> None:
    (answer,) = exchange(server, b"GET /echo HTTP/1.2\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert echo_of(answer)["SERVER_PROTOCOL"] == "HTTP/1.1"


@pytest.mark.timeout(30)
def test_item15_absolute_form_keeps_query_and_authority(server: Server) -> None:
    (answer,) = exchange(server, b"GET http://real.example:8081/echo?x=1 HTTP/1.1\r\n"
                         b"Host: other.example\r\nConnection: close\r\n\r\n")
    data = echo_of(answer)
    assert (data["PATH_INFO"], data["QUERY_STRING"]) == ("/echo", "x=1")
    assert (data["SERVER_NAME"], data["SERVER_PORT"], data["HTTP_HOST"]) == (
        "real.example", "8081", "real.example:8081")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("line", [b"GET * HTTP/1.1", b"GET http://:80/x HTTP/1.1",
                                  b"GET http:/x HTTP/1.1"])
def test_item15_bad_targets_refused(server: Server, line: bytes) -> None:
    (answer,) = exchange(server, line + b"\r\nHost: t\r\n\r\n")
    assert answer.status == 400


@pytest.mark.timeout(30)
def test_item15_limits_count_whole_lines_as_gunicorn(server: Server) -> None:
    """--limit-request-field-size 100: `Name: ` + 93 bytes + CRLF is 101 (name+value: 97)."""
    (answer,) = exchange(server, b"GET /echo HTTP/1.1\r\nHost: t\r\nName: " + b"v" * 93 + b"\r\n\r\n")
    assert answer.status == 431
    # --limit-request-line 120: a 121-byte request line (target alone: 108)
    line = b"GET /" + b"a" * 107 + b" HTTP/1.1"
    assert len(line) == 121
    (answer,) = exchange(server, line + b"\r\nHost: t\r\n\r\n")
    assert answer.status == 414


@pytest.mark.timeout(30)
def test_item15_header_values_from_the_app_are_trimmed(server: Server) -> None:
    (answer,) = exchange(server, b"GET /cookie HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert b"\r\nSet-Cookie: csrftoken=abc; Path=/\r\n" in answer.wire
