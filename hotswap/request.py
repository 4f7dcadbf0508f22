"""Incremental HTTP/1.1 request parsing on top of httptools (llhttp), without any I/O.

Bytes go in with `RequestParser.feed`; complete request heads come out on `ready`, in
order, each with a body buffer that keeps filling as more bytes are fed. That split lets
the worker park a connection with a half-received head in its selector, and lets the
WSGI input stream pull the body on demand, with one parser per connection and pipelined
requests answered strictly in order.

The limits gunicorn users know (request line, header count, header size) are enforced
here, while parsing, so an oversized head is refused before it is buffered whole.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import httptools


class HttpError(Exception):
    """A request the server refuses: answered with `status`, then the connection closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Limits:
    request_line: int = 4094
    fields: int = 100
    field_size: int = 8190


@dataclass
class Request:
    """One request head plus the body bytes received so far."""

    method: str = ""
    target: bytes = b""
    version: str = "1.1"
    headers: list[tuple[str, str]] = field(default_factory=list)
    keep_alive: bool = True
    chunked: bool = False
    content_length: int | None = None
    expect_continue: bool = False
    upgrade: bool = False
    body: deque[bytes] = field(default_factory=deque)
    body_buffered: int = 0
    complete: bool = False

    def header(self, name: str) -> str | None:
        """First value of a header, by case-insensitive name."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


_SUPPORTED_CODINGS = ("chunked",)
_SUPPORTED_VERSIONS = ("1.0", "1.1")


class RequestParser:
    """Feeds one connection's bytes to llhttp and collects requests with their bodies."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.ready: deque[Request] = deque()
        self._parser = httptools.HttpRequestParser(self)
        self._current: Request | None = None
        self._head_bytes = 0
        self._url_size = 0
        self._in_head = False
        self._max_head = limits.request_line + limits.fields * (limits.field_size + 4) + 4

    @property
    def in_message(self) -> bool:
        """True while a request has started but its head is not complete (a stalled client)."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises HttpError for anything that must be refused."""
        if self._in_head or self._current is None:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpError):
                raise cause from None
            raise HttpError(400, f"bad request: {cause}") from None
        except httptools.HttpParserUpgrade:
            # An Upgrade or CONNECT request: the head is answered as plain HTTP and the
            # connection closes afterwards, since no protocol switch is offered (its head
            # was marked so in on_headers_complete; llhttp stops parsing here).
            pass
        except httptools.HttpParserError as exc:
            if self._in_head and self._head_bytes > self._max_head:
                raise HttpError(431, "request header fields too large") from None
            raise HttpError(400, f"bad request: {exc}") from None
        if self._in_head and self._head_bytes > self._max_head:
            raise HttpError(431, "request header fields too large")

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._current = Request()
        self._in_head = True
        self._url_size = 0

    def on_url(self, url: bytes) -> None:
        assert self._current is not None
        self._url_size += len(url)
        if self._url_size > self.limits.request_line:
            raise HttpError(414, "request line too long")
        self._current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._current
        assert req is not None
        if len(req.headers) >= self.limits.fields:
            raise HttpError(431, "too many request header fields")
        if len(name) + len(value) > self.limits.field_size:
            raise HttpError(431, "request header field too large")
        req.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        req = self._current
        assert req is not None
        self._in_head = False
        self._head_bytes = 0
        parser = self._parser
        req.method = parser.get_method().decode("ascii")
        req.version = parser.get_http_version()
        _check_version(req.version)
        req.upgrade = parser.should_upgrade()
        # Marked here, while the request is still ours: by the time llhttp reports the
        # upgrade, the message is complete and may already be in the worker's hands.
        req.keep_alive = parser.should_keep_alive() and not req.upgrade
        _read_framing(req)
        self.ready.append(req)

    def on_body(self, body: bytes) -> None:
        req = self._current
        assert req is not None
        req.body.append(bytes(body))
        req.body_buffered += len(body)

    def on_message_complete(self) -> None:
        req = self._current
        assert req is not None
        req.complete = True
        self._current = None


def _check_version(version: str) -> None:
    """llhttp lets HTTP/0.9 (a request line with no version) and HTTP/2.0 through; an
    HTTP/1.1 answer would be garbage to either, and the app would see a protocol it
    cannot trust, so both are refused here."""
    if version in _SUPPORTED_VERSIONS:
        return
    if version.startswith("0."):
        raise HttpError(400, "bad request: HTTP/0.9 request line (no HTTP/1.x version)")
    raise HttpError(505, f"HTTP/{version} is not supported")


def _read_framing(req: Request) -> None:
    """Decide how the body is framed and refuse anything ambiguous (request smuggling)."""
    lengths = [v for k, v in req.headers if k.lower() == "content-length"]
    codings = [v for k, v in req.headers if k.lower() == "transfer-encoding"]
    if codings:
        if lengths:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        tokens = [t.strip().lower() for v in codings for t in v.split(",")]
        unknown = [t for t in tokens if t not in _SUPPORTED_CODINGS]
        if unknown:
            raise HttpError(501, f"transfer coding {unknown[0]!r} is not implemented")
        if tokens != ["chunked"]:
            raise HttpError(400, "bad Transfer-Encoding")
        req.chunked = True
    elif lengths:
        if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
            raise HttpError(400, "bad Content-Length")
        req.content_length = int(lengths[0])
    expect = req.header("expect")
    if expect is not None:
        if expect.strip().lower() != "100-continue":
            raise HttpError(417, "expectation failed")
        req.expect_continue = req.version == "1.1"
