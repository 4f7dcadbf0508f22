"""The pure response side of the HTTP layer: checking, framing and serializing heads.

Proven here: what an app passes to start_response is checked before a byte is sent
(wrong types, malformed status, a CR/LF in a header — response splitting —, hop-by-hop
headers that are the server's to send, surrounding whitespace trimmed), and the bytes on
the wire are well-formed, with Date and Server. Framing is the Exchange's (test_exchange).
"""

from __future__ import annotations

import email.utils
import time

import pytest

from hotswap import __version__
from hotswap.http import response as resp
from hotswap.http.response import BadResponse, check_head, chunk, error_response, serialize

CT = ("Content-Type", "text/plain")


def parse_head(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, header list and what follows the blank line."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, data
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(": ")
        assert colon and name and "\r" not in value and "\n" not in value, line
        headers.append((name, value))
    return lines[0], headers, rest


# -- check_head -------------------------------------------------------------------------------


def test_good_head() -> None:
    head = check_head("200 OK", [CT, ("Content-Length", "12"), ("X-Tab", "a\tb")])
    assert (head.status, head.code, head.content_length, head.close) == ("200 OK", 200, 12, False)
    assert head.headers == [CT, ("Content-Length", "12"), ("X-Tab", "a\tb")]
    assert not head.chunked and not head.bodiless


@pytest.mark.parametrize("status", [
    b"200 OK", 200, "abc", "20 OK", "2000 OK", "200OK", "099 Low", "200 OK\r\nX-Injected: 1",
    "200 OK\n", "", " 200 OK",
])
def test_bad_status(status: object) -> None:
    with pytest.raises(BadResponse):
        check_head(status, [CT])


@pytest.mark.parametrize("headers", [
    (CT,),  # a tuple, not a list
    [["Content-Type", "text/plain"]],  # a list, not a tuple
    [("Content-Type", "text/plain", "extra")],
    [(b"Content-Type", "text/plain")],
    [("Content-Type", b"text/plain")],
    [("Bad Name", "v")],
    [("Bad:Name", "v")],
    [("", "v")],
    [("X-Split", "ok\r\nX-Injected: evil")],
    [("X-Split", "ok\nX-Injected: evil")],
    [("X-Split", "ok\rX-Injected: evil")],
    [("X-Nul", "a\x00b")],
    [("X-Del", "a\x7fb")],
    [("X-Euro", "\u20ac")],  # not latin-1
    [("Content-Length", "12a")],
    [("Content-Length", "-1")],
    [("Transfer-Encoding", "chunked")],  # hop-by-hop: the server frames the body
    [("Keep-Alive", "timeout=5")],
    [("Upgrade", "websocket")],
])
def test_bad_headers(headers: object) -> None:
    with pytest.raises(BadResponse) as info:
        check_head("200 OK", headers)
    assert "\n" not in str(info.value)


def test_status_must_be_latin1() -> None:
    with pytest.raises(BadResponse):
        check_head("200 \u20ac", [])


def test_connection_header_is_taken_not_forwarded() -> None:
    closing = check_head("200 OK", [CT, ("Connection", "Close")])
    assert closing.close and closing.headers == [CT]
    kept = check_head("200 OK", [CT, ("connection", "keep-alive")])
    assert not kept.close and kept.headers == [CT]


@pytest.mark.parametrize(("status", "bodiless"), [
    ("204 No Content", True), ("304 Not Modified", True),
    ("200 OK", False), ("404 Not Found", False), ("205 Reset Content", False),
])
def test_bodiless_codes(status: str, bodiless: bool) -> None:
    assert check_head(status, []).bodiless is bodiless


def framed(status: str, headers: list, keep_alive: bool = True) -> resp.Head:
    """A checked head with the framing flags serialize() reads (the Exchange sets them)."""
    head = check_head(status, headers)
    head.chunked = head.content_length is None
    head.close = head.close or not keep_alive
    return head


def test_header_values_lose_surrounding_whitespace() -> None:
    """Django's SimpleCookie output starts with a space: `Set-Cookie:  csrftoken=…`."""
    head = check_head("200 OK", [("Set-Cookie", " csrftoken=abc"), ("X-T", "\tv\t ")])
    assert head.headers == [("Set-Cookie", "csrftoken=abc"), ("X-T", "v")]
    assert b"Set-Cookie: csrftoken=abc\r\n" in serialize(head)


def test_interim_status_is_not_a_final_response() -> None:
    with pytest.raises(BadResponse):
        check_head("100 Continue", [])


# -- serialize, chunk, error_response ----------------------------------------------------------


def test_serialize() -> None:
    head = framed("201 Created", [CT, ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    before = time.time()
    status, headers, rest = parse_head(serialize(head))
    assert status == "HTTP/1.1 201 Created"
    assert rest == b""
    names = [n for n, _ in headers]
    assert names == ["Server", "Date", "Content-Type", "Set-Cookie", "Set-Cookie",
                     "Transfer-Encoding", "Connection"]
    values = dict(headers)
    assert values["Server"] == resp.SERVER == f"hotswap/{__version__}"
    assert values["Transfer-Encoding"] == "chunked"
    assert values["Connection"] == "keep-alive"
    assert [v for n, v in headers if n == "Set-Cookie"] == ["a=1", "b=2"]  # order and repeats
    date = email.utils.parsedate_to_datetime(values["Date"])
    assert values["Date"].endswith(" GMT") and abs(date.timestamp() - before) < 3


def test_serialize_closing_head() -> None:
    head = framed("200 OK", [("Content-Length", "0")], keep_alive=False)
    _, headers, _ = parse_head(serialize(head))
    assert ("Connection", "close") in headers
    assert "Transfer-Encoding" not in dict(headers)


def test_serialize_latin1_value() -> None:
    head = framed("200 OK", [("X-Name", "caf\u00e9"), ("Content-Length", "0")])
    assert b"X-Name: caf\xe9\r\n" in serialize(head)


@pytest.mark.parametrize(("data", "wire"), [
    (b"hello", b"5\r\nhello\r\n"),
    (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
    (b"\r\n", b"2\r\n\r\n\r\n"),
])
def test_chunk(data: bytes, wire: bytes) -> None:
    assert chunk(data) == wire


def test_empty_chunk_would_end_the_body() -> None:
    """Why the writer never sends chunk(b''): on the wire it is the last chunk."""
    assert chunk(b"") == resp.LAST_CHUNK == b"0\r\n\r\n"


@pytest.mark.parametrize(("code", "reason"), [
    (400, "Bad Request"), (414, "URI Too Long"), (431, "Request Header Fields Too Large"),
    (500, "Internal Server Error"), (501, "Not Implemented"), (505, "HTTP Version Not Supported"),
    (599, "Error"),
])
def test_error_response(code: int, reason: str) -> None:
    status, headers, body = parse_head(error_response(code))
    assert status == f"HTTP/1.1 {code} {reason}"
    values = dict(headers)
    assert values["Connection"] == "close"
    assert values["Server"] == f"hotswap/{__version__}"
    assert int(values["Content-Length"]) == len(body)
    assert body == reason.encode() + b"\n"


def test_error_response_with_message() -> None:
    _, headers, body = parse_head(error_response(400, "bad request: caf\u00e9 \u20ac"))
    assert body == b"bad request: caf\xe9 ?\n"  # latin-1, unknown characters replaced
    assert int(dict(headers)["Content-Length"]) == len(body)


def test_continue_line() -> None:
    assert resp.CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_date_cache_formats_once_per_second() -> None:
    cache = resp.DateCache()
    for _ in range(5):  # retried only if the clock ticks over between the two calls
        second = int(time.time())
        first, again = cache.get(), cache.get()
        if int(time.time()) == second:
            break
    else:
        pytest.fail("the clock ticked over on every try")
    assert again is first  # the cached string, not a fresh format
    parsed = email.utils.parsedate_to_datetime(first).timestamp()
    assert parsed == second
    assert first == email.utils.formatdate(second, usegmt=True)


def test_server_header_can_be_turned_off_and_back() -> None:
    """--no-server-header: no Server line in app responses nor in the server's own errors."""
    head = check_head("200 OK", [("Content-Length", "0")])
    try:
        resp.set_server(None)
        assert b"\r\nServer:" not in serialize(head)
        assert b"\r\nServer:" not in error_response(400)
    finally:
        resp.set_server(resp.SERVER_SOFTWARE)
    assert f"\r\nServer: hotswap/{__version__}\r\n".encode() in serialize(head)
    assert resp.SERVER_SOFTWARE == f"hotswap/{__version__}"
