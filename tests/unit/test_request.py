"""RequestParser, the pure request side of the HTTP layer (no sockets).

Proven here: a request parses the same whether it arrives whole or one byte at a time
(TCP promises no packet boundaries); pipelined requests come out in order with their own
bodies; the gunicorn-style limits refuse an oversized head before it is buffered whole;
every ambiguous framing that enables request smuggling is refused with the right status;
chunked bodies are decoded; keep-alive follows the HTTP version and Connection header.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hotswap.http.request import HttpError, Limits, Request, RequestParser


def parse(data: bytes, limits: Limits | None = None, step: int | None = None) -> list[Request]:
    """Feed `data` whole, or `step` bytes at a time, and return the complete requests."""
    parser = RequestParser(limits or Limits())
    if step is None:
        parser.feed(data)
    else:
        for i in range(0, len(data), step):
            parser.feed(data[i:i + step])
    return list(parser.ready)


def refusal(data: bytes, limits: Limits | None = None, step: int | None = None) -> HttpError:
    parser = RequestParser(limits or Limits())
    for i in range(0, len(data), step or len(data)):
        parser.feed(data[i:i + (step or len(data))])
    assert parser.error is not None, f"accepted: {data!r}"
    return parser.error


def body(req: Request) -> bytes:
    return b"".join(req.body)


SAMPLES = [
    b"GET /path?q=1 HTTP/1.1\r\nHost: example\r\nX-Two: a\r\nx-two: b\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: t\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
]


def summary(req: Request) -> tuple:
    return (req.method, req.target, req.version, req.headers, req.keep_alive, req.chunked,
            req.content_length, body(req), req.complete)


@pytest.mark.parametrize("data", SAMPLES)
def test_byte_by_byte_equals_whole(data: bytes) -> None:
    whole = [summary(r) for r in parse(data)]
    assert len(whole) == 1 and whole[0][-1] is True
    assert [summary(r) for r in parse(data, step=1)] == whole
    assert [summary(r) for r in parse(data, step=7)] == whole


def test_head_fields() -> None:
    (req,) = parse(SAMPLES[0])
    assert (req.method, req.target, req.version) == ("GET", b"/path?q=1", "1.1")
    assert req.headers == [("Host", "example"), ("X-Two", "a"), ("x-two", "b")]
    assert req.header("x-TWO") == "a"  # first value, any case
    assert req.header("missing") is None
    assert req.keep_alive and not req.chunked and req.content_length is None


def test_in_message_only_while_a_head_is_incomplete() -> None:
    parser = RequestParser(Limits())
    assert not parser.in_message
    parser.feed(b"GET / HTTP/1.1\r\nHo")
    assert parser.in_message and not parser.ready
    parser.feed(b"st: h\r\n\r\n")
    assert not parser.in_message and len(parser.ready) == 1


def test_body_arrives_after_the_head() -> None:
    """The head is handed out at once; the body keeps filling the same Request."""
    parser = RequestParser(Limits())
    parser.feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123")
    (req,) = parser.ready
    assert (req.complete, req.body_buffered, body(req)) == (False, 4, b"0123")
    parser.feed(b"456789")
    assert (req.complete, req.body_buffered, body(req)) == (True, 10, b"0123456789")


def test_pipelined_requests_in_order_with_their_bodies() -> None:
    data = (b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
            b"GET /4 HTTP/1.1\r\nHost: h\r\n\r\n")
    for step in (None, 1, 5):
        reqs = parse(data, step=step)
        assert [r.target for r in reqs] == [b"/1", b"/2", b"/3", b"/4"]
        assert [body(r) for r in reqs] == [b"", b"abc", b"xy", b""]
        assert all(r.complete for r in reqs)


def test_chunked_body_decoded_with_extensions_and_trailers() -> None:
    (req,) = parse(SAMPLES[2], step=3)
    assert req.chunked and req.content_length is None
    assert body(req) == b"hello world"


def test_chunked_not_complete_before_the_last_chunk() -> None:
    parser = RequestParser(Limits())
    parser.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    (req,) = parser.ready
    assert body(req) == b"abc" and not req.complete
    parser.feed(b"0\r\n\r\n")
    assert req.complete


@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"GET / HTTP/1.1\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
])
def test_keep_alive_by_version_and_connection_header(head: bytes, keep_alive: bool) -> None:
    (req,) = parse(head)
    assert req.keep_alive is keep_alive


def test_upgrade_request_is_answered_then_the_connection_closes() -> None:
    """No protocol switch is offered; what follows an Upgrade is not parsed as HTTP."""
    reqs = parse(b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                 b"GET /next HTTP/1.1\r\n\r\n")
    assert [r.target for r in reqs] == [b"/ws"]
    assert reqs[0].upgrade and not reqs[0].keep_alive


def test_connect_closes_the_connection() -> None:
    (req,) = parse(b"CONNECT example:443 HTTP/1.1\r\nHost: example:443\r\n\r\n")
    assert req.method == "CONNECT" and not req.keep_alive


def test_expect_100_continue() -> None:
    (req,) = parse(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
    assert req.expect_continue and not req.complete
    (old,) = parse(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
    assert not old.expect_continue  # HTTP/1.0 clients do not know 100 Continue
    assert refusal(b"GET / HTTP/1.1\r\nExpect: something-else\r\n\r\n").status == 417


# -- limits ----------------------------------------------------------------------------------

SMALL = Limits(request_line=20, fields=3, field_size=30)


@pytest.mark.parametrize("step", [None, 1])
def test_request_line_limit_is_414(step: int | None) -> None:
    """The whole line counts, CRLF excluded, as in gunicorn (issue 9 item 15)."""
    assert parse(b"GET /" + b"a" * 6 + b" HTTP/1.1\r\n\r\n", SMALL, step)  # 20: allowed
    error = refusal(b"GET /" + b"a" * 7 + b" HTTP/1.1\r\n\r\n", SMALL, step)
    assert error.status == 414


def test_request_line_refused_before_it_ends() -> None:
    """A never-ending target is refused as soon as it passes the limit, not buffered."""
    assert refusal(b"GET /" + b"a" * 25, SMALL, step=1).status == 414


@pytest.mark.parametrize("step", [None, 1])
def test_header_count_limit_is_431(step: int | None) -> None:
    three = b"".join(b"X-%d: v\r\n" % i for i in range(3))
    assert parse(b"GET / HTTP/1.1\r\n" + three + b"\r\n", SMALL, step)
    error = refusal(b"GET / HTTP/1.1\r\n" + three + b"X-3: v\r\n\r\n", SMALL, step)
    assert error.status == 431


@pytest.mark.parametrize("step", [None, 1])
def test_header_size_limit_is_431(step: int | None) -> None:
    """The whole "Name: value\\r\\n" line counts, as in gunicorn (issue 9 item 15)."""
    assert parse(b"GET / HTTP/1.1\r\nName: " + b"v" * 22 + b"\r\n\r\n", SMALL, step)  # 30
    error = refusal(b"GET / HTTP/1.1\r\nName: " + b"v" * 23 + b"\r\n\r\n", SMALL, step)
    assert error.status == 431


def test_endless_header_refused_before_it_ends() -> None:
    """A header line is refused as soon as it passes the limit, not when it ends."""
    parser = RequestParser(SMALL)
    parser.feed(b"GET / HTTP/1.1\r\nX: ")
    for _ in range(3):
        parser.feed(b"v" * 10)
    assert parser.error is not None and parser.error.status == 431


def test_limits_apply_to_each_pipelined_request_afresh() -> None:
    one = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(3)) + b"\r\n"
    assert len(parse(one * 20, SMALL)) == 20


# -- smuggling and malformed input -----------------------------------------------------------


@pytest.mark.parametrize(("data", "status"), [
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                 400, id="CL then TE"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                 400, id="TE then CL"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                 400, id="two lengths"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
                 400, id="repeated length"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na", 400, id="signed length"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 1 1\r\n\r\na", 400, id="spaced length"),
    pytest.param(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                 400, id="length overflow"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, id="gzip"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501,
                 id="gzip then chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", 501, id="identity"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400,
                 id="chunked twice"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n", 400,
                 id="space before colon"),
    pytest.param(b"POST / HTTP/1.1\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n", 400,
                 id="obsolete line folding"),
    pytest.param(b"GET / HTTP/1.1\nHost: h\n\n", 400, id="bare LF"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", 400, id="NUL in value"),
    pytest.param(b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400, id="no colon"),
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="garbage request line"),
    pytest.param(b"GET / HTTP/1.1 x\r\n\r\n", 400, id="extra token"),
    pytest.param(b"GET / HTTP/2.7\r\n\r\n", 400, id="unknown version"),
    pytest.param(b"GET /\r\n\r\n", 400, id="no version (HTTP/0.9)"),
    pytest.param(b"GET / HTTP/0.9\r\n\r\n", 400, id="HTTP/0.9"),
    pytest.param(b"GET / HTTP/2.0\r\n\r\n", 505, id="HTTP/2.0 in HTTP/1 syntax"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
                 id="bad chunk size"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX", 400,
                 id="chunk longer than its size"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
                 400, id="chunk size overflow"),
])
def test_refusals(data: bytes, status: int) -> None:
    for step in (None, 1):
        error = refusal(data, step=step)
        assert error.status == status, error.reason
        assert str(error) == error.reason and "\n" not in error.reason


def test_chunked_header_value_is_case_insensitive() -> None:
    (req,) = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n")
    assert req.chunked and body(req) == b"z"


def test_broken_body_keeps_the_head_and_stops_the_parser() -> None:
    """The head before a broken body is already out; nothing more can be parsed after it."""
    parser = RequestParser(Limits())
    parser.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    (req,) = parser.ready
    assert not req.complete and req.body_error is parser.error and parser.error.status == 400
    parser.feed(b"0\r\n\r\n")
    assert not req.complete


# -- issue 9: what the RFCs allow, and what they forbid ----------------------------------


def test_trailers_are_kept_apart_from_the_headers() -> None:
    (req,) = parse(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"1\r\nz\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nAuthorization: x\r\n\r\n", step=2)
    assert req.headers == [("Host", "h"), ("Transfer-Encoding", "chunked")]
    assert req.trailers == [("X-Forwarded-For", "6.6.6.6"), ("Authorization", "x")]


@pytest.mark.parametrize("name", [b"Content-Length", b"Host", b"Transfer-Encoding"])
def test_framing_and_routing_fields_refused_in_trailers(name: bytes) -> None:
    data = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\nz\r\n0\r\n" + name + b": 9\r\n\r\n")
    assert refusal(data).status == 400


@pytest.mark.parametrize("method", [b"FOO", b"-BLARGH", b"PATCH", b"M-SEARCH", b"X.Y_Z~1"])
def test_extension_methods(method: bytes) -> None:
    for step in (None, 1):
        (req,) = parse(method + b" /p?q HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nz", step=step)
        assert (req.method, req.path, req.query, body(req)) == (method.decode(), b"/p", b"q", b"z")


def test_http_1_2_is_processed_as_1_1() -> None:
    (req,) = parse(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n")
    assert req.version == "1.1" and req.keep_alive


def test_chunk_extensions_with_spaces() -> None:
    (req,) = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5 ; a = b ;c=\"q s\"\r\nhello\r\n0\r\n\r\n", step=3)
    assert body(req) == b"hello" and req.complete


@pytest.mark.parametrize(("data", "status"), [
    pytest.param(b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n", 400,
                 id="duplicate Host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, id="invalid Host"),
    pytest.param(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
                 id="HTTP/1.0 with Transfer-Encoding"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400, id="asterisk for GET"),
    pytest.param(b"GET http:// HTTP/1.1\r\nHost: h\r\n\r\n", 400, id="absolute without host"),
    pytest.param(b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400, id="absolute, not http"),
    pytest.param(b"GET h:80 HTTP/1.1\r\nHost: h\r\n\r\n", 400, id="authority for GET"),
    pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n", 400,
                 id="chunk size then junk"),
])
def test_rfc_refusals(data: bytes, status: int) -> None:
    assert refusal(data).status == status


def test_absolute_form_keeps_its_query_and_authority() -> None:
    (req,) = parse(b"GET http://real.example:8080/a%20b?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert (req.authority, req.path, req.query) == ("real.example:8080", b"/a%20b", b"x=1")


def test_broken_next_request_leaves_the_current_one_whole() -> None:
    """Issue 9 item 10: the error belongs to the next request, not to this body."""
    parser = RequestParser(Limits())
    parser.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nX : y\r\n\r\n")
    (req,) = parser.ready
    assert req.complete and body(req) == b"hello" and req.body_error is None
    assert parser.error is not None and parser.error.status == 400


def test_upgrade_request_body_is_read() -> None:
    """Issue 9 item 11: `curl --http2 -d` sends Upgrade: h2c with a body."""
    (req,) = parse(b"POST /u HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                   b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
                   b"Content-Length: 5\r\n\r\nhello", step=4)
    assert req.upgrade and not req.keep_alive and body(req) == b"hello" and req.complete


def test_header_values_lose_trailing_whitespace() -> None:
    (req,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX:  a b \t\r\n\r\n")
    assert req.header("x") == "a b"


# -- every split of gunicorn's corpus parses alike -----------------------------------------

CORPUS = Path(__file__).resolve().parent.parent / "data" / "gunicorn-requests"


def _decode(text: bytes) -> bytes:
    data = text.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n").replace(b"\\0", b"\0")
    data = data.replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    return re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)


def _outcome(data: bytes, step: int) -> tuple:
    parser = RequestParser(Limits())
    for i in range(0, len(data), step):
        parser.feed(data[i:i + step])
    reqs = [(summary(r), r.trailers, r.body_error and r.body_error.status) for r in parser.ready]
    return reqs, parser.error and parser.error.status


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*/*.http")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_corpus_parses_the_same_in_any_split(path: Path) -> None:
    """TCP has no packet boundaries: whole, byte by byte or in odd pieces, one result."""
    data = _decode(path.read_bytes())
    whole = _outcome(data, len(data) or 1)
    assert _outcome(data, 1) == whole
    assert _outcome(data, 7) == whole


# -- the fast paths (one llhttp parser reused per connection, a whole head found at once) --

MIXED = (
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
    b"GET /d HTTP/1.1\r\nHost: x\r\nUpgrade-Insecure-Requests: 1\r\n\r\n"
    b"PURGE /e HTTP/1.2\r\nHost: x\r\n\r\n"
    b"GET /f HTTP/1.0\r\nHost: x\r\n\r\n"
)


@pytest.mark.parametrize("step", [None, 1, 7])
def test_reused_parser_reads_each_pipelined_head_afresh(step: int | None) -> None:
    """Heads after a body, a chunked body, an unknown method and a non-keep-alive head
    each parse exactly as alone: nothing of one head's llhttp state leaks into the next."""
    reqs = parse(MIXED, step=step)
    assert [(r.method, r.path, r.version, r.keep_alive) for r in reqs] == [
        ("GET", b"/a", "1.1", True), ("POST", b"/b", "1.1", True), ("PUT", b"/c", "1.1", True),
        ("GET", b"/d", "1.1", True), ("PURGE", b"/e", "1.1", True), ("GET", b"/f", "1.0", False)]
    assert [body(r) for r in reqs] == [b"", b"abc", b"de", b"", b"", b""]
    assert [r.headers for r in reqs][3] == [("Host", "x"), ("Upgrade-Insecure-Requests", "1")]
    assert all(r.complete and r.body_error is None for r in reqs)


def test_llhttp_parser_is_reused_only_after_a_complete_kept_alive_message() -> None:
    parser = RequestParser(Limits())
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    first = parser._head.parser
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert parser._head.parser is first  # a plain GET left llhttp at a message start
    parser.feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert parser._head.parser is not first  # llhttp still waited for the POST's body
    assert [r.method for r in parser.ready] == ["GET", "GET", "POST", "GET"]


@pytest.mark.parametrize("head, status", [
    (b"GET / HTTP/1.1\r\nHost: x\nA: b\r\n\r\n", 400),  # a bare LF inside a whole head
    (b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 101 + b"\r\n", 431),  # one field too many
    (b"GET / HTTP/1.1\r\nA: " + b"b" * 8200 + b"\r\n\r\n", 431),  # longer than any limit
    (b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # malformed request line
])
def test_whole_head_is_held_to_the_line_by_line_limits(head: bytes, status: int) -> None:
    assert refusal(head).status == status
    assert refusal(head, step=1).status == status
