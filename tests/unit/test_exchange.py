"""Exchange, the state machine that takes every response framing decision (no sockets).

Proven here: Content-Length when known, chunked for HTTP/1.1, close-delimited for
HTTP/1.0; HEAD declares what GET would (and never a body); 204/304 never carry a
Content-Length; the framing is decided when the head leaves, so `write(b"")` followed by
`start_response(..., exc_info)` still frames the replacement head; a short or long body
ends the connection; 100 Continue is owed only while nothing of the response is out.
"""

from __future__ import annotations

import sys

import pytest

from hotswap.http.exchange import DONE, SENDING, STARTED, Exchange
from hotswap.http.request import Limits, Request, RequestParser

CT = ("Content-Type", "text/plain")


def request(head: bytes) -> Request:
    parser = RequestParser(Limits())
    parser.feed(head)
    assert parser.error is None
    return parser.ready[0]


def exchange(method: str = "GET", version: str = "1.1", extra: str = "") -> Exchange:
    return Exchange(request(f"{method} / HTTP/{version}\r\nHost: h\r\n{extra}\r\n".encode()))


def head_of(wire: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, rest = wire.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:])}, rest


def test_list_body_gets_its_length() -> None:
    ex = exchange()
    ex.start("200 OK", [CT])
    status, headers, body = head_of(ex.send(b"hello", total=5) + ex.end())
    assert (status, headers["content-length"], body) == ("HTTP/1.1 200 OK", "5", b"hello")
    assert "transfer-encoding" not in headers and ex.reusable


def test_unknown_length_is_chunked_in_http11_and_closes_in_http10() -> None:
    ex = exchange()
    ex.start("200 OK", [CT])
    _, headers, body = head_of(ex.send(b"ab") + ex.send(b"c") + ex.end())
    assert headers["transfer-encoding"] == "chunked" and body == b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
    old = exchange(version="1.0", extra="Connection: keep-alive\r\n")
    old.start("200 OK", [CT])
    _, headers, body = head_of(old.send(b"ab") + old.end())
    assert headers["connection"] == "close" and body == b"ab" and not old.reusable


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_no_content_length_on_204_and_304(status: str) -> None:
    for app_headers in ([CT], [CT, ("Content-Length", "42")]):
        ex = exchange()
        ex.start(status, app_headers)
        wire = ex.send(b"discarded body", total=14) + ex.end()
        _, headers, body = head_of(wire)
        assert "content-length" not in headers and "transfer-encoding" not in headers
        assert body == b"" and ex.reusable


def test_head_declares_the_length_get_would() -> None:
    ex = exchange("HEAD")
    ex.start("200 OK", [CT])
    _, headers, body = head_of(ex.send(b"x" * 10, total=10) + ex.end())
    assert headers["content-length"] == "10" and body == b"" and ex.reusable


def test_head_of_a_file_reads_nothing() -> None:
    ex = exchange("HEAD")
    ex.start("200 OK", [CT])
    plan = ex.file_head(1234)
    assert plan is not None
    wire, count = plan
    assert count == 0 and head_of(wire)[1]["content-length"] == "1234"


def test_empty_write_then_exc_info_frames_the_new_head() -> None:
    """Issue 9 item 14: the replaced head still gets Content-Length or chunked."""
    ex = exchange()
    ex.start("200 OK", [CT])
    assert ex.send(b"") == b"" and ex.state == STARTED
    try:
        raise RuntimeError("changed my mind")
    except RuntimeError:
        ex.start("500 Internal Server Error", [CT], sys.exc_info())
    _, headers, body = head_of(ex.send(b"oops") + ex.end())
    assert headers["transfer-encoding"] == "chunked" and body == b"4\r\noops\r\n0\r\n\r\n"


def test_exc_info_after_the_head_is_sent_reraises() -> None:
    ex = exchange()
    ex.start("200 OK", [CT])
    ex.send(b"out")
    assert ex.state == SENDING
    with pytest.raises(ValueError):
        try:
            raise ValueError("late")
        except ValueError:
            ex.start("500 Internal Server Error", [CT], sys.exc_info())


def test_start_twice_without_exc_info_is_an_error() -> None:
    ex = exchange()
    ex.start("200 OK", [CT])
    with pytest.raises(AssertionError):
        ex.start("200 OK", [CT])


def test_body_longer_or_shorter_than_its_length_ends_the_connection() -> None:
    ex = exchange()
    ex.start("200 OK", [("Content-Length", "3")])
    assert head_of(ex.send(b"abcdef"))[2] == b"abc" and ex.overflow
    ex.end()
    assert not ex.reusable
    short = exchange()
    short.start("200 OK", [("Content-Length", "3")])
    short.send(b"a")
    short.end()
    assert short.state == DONE and not short.reusable


def test_continue_only_while_nothing_is_out() -> None:
    ex = exchange("POST", extra="Content-Length: 3\r\nExpect: 100-continue\r\n")
    assert ex.need_continue() and not ex.need_continue()  # once
    late = exchange("POST", extra="Content-Length: 3\r\nExpect: 100-continue\r\n")
    late.start("200 OK", [CT])
    late.send(b"head out")
    assert not late.need_continue() and late.continue_withheld
    late.end()
    assert not late.reusable


def test_closing_worker_says_close() -> None:
    retiring = False
    ex = Exchange(request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"), closing=lambda: retiring)
    ex.start("200 OK", [CT])
    retiring = True  # the worker began retiring while the app ran
    assert head_of(ex.send(b"x", total=1))[1]["connection"] == "close"
