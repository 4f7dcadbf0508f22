"""Incremental HTTP/1.1 request parsing, without any I/O.

Bytes go in with `RequestParser.feed`; complete request heads come out on `ready`, in
order, each with a body buffer that keeps filling as more bytes are fed. That split lets
the worker park a connection with a half-received head in its selector, and lets the
WSGI input stream pull the body on demand, with one parser per connection and pipelined
requests answered strictly in order.

Who does what:
- this module delimits each message itself: it finds where a head ends (scanning lines,
  so the gunicorn limits apply to whole lines while they arrive) and where a body ends
  (Content-Length, or the chunked framing of RFC 9112 §7.1). Knowing the boundaries is
  what keeps one request's bytes from ever being read as part of another's, and lets a
  broken *next* request be refused without disturbing the current one;
- llhttp (httptools) parses and validates each head, and each trailer section, on its
  own, with a fresh parser. Where llhttp refuses what RFC 9110/9112 allow, the request
  line alone is normalised before llhttp sees it (an extension method, HTTP/1.2); see
  `_normalise_request_line`.

The parser never raises: a request it refuses sets `error` (and, when the refused part
is the body of a request already handed out, that request's `body_error`), and it stops.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

import httptools


class HttpError(Exception):
    """A request the server refuses: answered with `status`, then the connection closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Limits:
    request_line: int = 4094  # bytes of the request line, CRLF excluded (as gunicorn)
    fields: int = 100  # header field lines
    field_size: int = 8190  # bytes of one header line ("Name: value\r\n", as gunicorn)


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
    path: bytes = b""  # the target's path, still percent-encoded
    query: bytes = b""
    authority: str | None = None  # host[:port] of an absolute-form target (wins over Host)
    trailers: list[tuple[str, str]] = field(default_factory=list)  # never merged into headers
    body: deque[bytes] = field(default_factory=deque)
    body_buffered: int = 0
    complete: bool = False
    body_error: HttpError | None = None

    def header(self, name: str) -> str | None:
        """First value of a header, by case-insensitive name."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


_SUPPORTED_CODINGS = ("chunked",)
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])\r\n")
# RFC 9112 §7.1.1: chunk-size [ *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ) ]
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED
    + rb"))?)*\r\n")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_MAX_CHUNK_LINE = 4096
# RFC 9110 §6.5.1: fields a sender must not put in a trailer (framing, routing); a request
# that does is refused rather than half-trusted.
_FORBIDDEN_TRAILERS = frozenset(("content-length", "transfer-encoding", "host"))


class RequestParser:
    """One connection's requests: heads, bodies and the refusal that stops it."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.ready: deque[Request] = deque()
        self.error: HttpError | None = None
        self._buf = bytearray()
        self._scan = 0  # where the next unchecked head line starts in _buf
        self._lines = 0  # lines of the head checked so far (request line included)
        self._current: Request | None = None  # the request whose body is being received
        self._body: _Body | None = None
        self._done = False  # after an Upgrade/CONNECT request: nothing more is HTTP/1.1
        # A head no longer than this has no line over any limit (see _whole_head_end)
        self._plain_size = min(limits.request_line, limits.field_size - 2)
        self._head = _Head()  # llhttp, reused from one head to the next while that is safe

    @property
    def in_message(self) -> bool:
        """True while a request has started but its head is not complete (a stalled client)."""
        return self._current is None and bool(self._buf) and self.error is None

    def feed(self, data: bytes) -> None:
        """Take `data` and parse as far as it goes; a refusal lands in `error`."""
        if self.error is not None or self._done:
            return
        self._buf += data
        try:
            self._run()
        except HttpError as exc:
            self.error = exc
            if self._current is not None:
                self._current.body_error = exc
            self._buf.clear()

    def _run(self) -> None:
        while self._buf and not self._done:
            if self._current is None:
                if not self._next_head():
                    return
                continue
            assert self._body is not None
            req = self._current
            self._body.consume(self._buf, req)
            if not req.complete:
                return
            self._current = self._body = None
            self._stop_after(req)

    def _next_head(self) -> bool:
        end = self._find_head_end()
        if end is None:
            return False
        if end == len(self._buf):  # the usual case: nothing pipelined behind this head
            head = bytes(self._buf)
            self._buf.clear()
        else:
            head = bytes(self._buf[:end])
            del self._buf[:end]
        self._scan = self._lines = 0
        req = parse_head(head, self._head)
        self.ready.append(req)
        if req.chunked:
            self._current, self._body = req, _Chunked(self.limits)
        elif req.content_length:
            self._current, self._body = req, _Sized(req.content_length)
        else:
            req.complete = True
            self._stop_after(req)
        return True

    def _stop_after(self, req: Request) -> None:
        """After an Upgrade or CONNECT request nothing more is parsed.

        No protocol switch is offered: the request is served as HTTP/1.1, body included,
        and whatever follows it (the other protocol's bytes) is never read as HTTP.
        """
        if req.upgrade or req.method == "CONNECT":
            self._done = True
            self._buf.clear()

    def _find_head_end(self) -> int | None:
        """End offset of the head in the buffer, checking each line's limit as it arrives."""
        buf = self._buf
        if self._lines == 0 and self._scan == 0:
            while buf.startswith(b"\r\n"):
                del buf[:2]  # RFC 9112 §2.2: empty lines before a request line are ignored
        end = self._whole_head_end()
        if end is not None:
            return end
        while True:
            nl = buf.find(b"\n", self._scan)
            if nl < 0:
                self._check_line(len(buf) - self._scan - buf.endswith(b"\r"))
                return None
            if nl == self._scan or buf[nl - 1] != 0x0D:
                raise HttpError(400, "bad request: line ends with a bare LF")
            length = nl - 1 - self._scan
            self._check_line(length)
            if self._lines == 0 and not _REQUEST_LINE.fullmatch(buf, 0, nl + 1):
                # refused at once, not when a head that may never end is complete
                raise HttpError(400, "bad request: malformed request line")
            self._scan = nl + 1
            if length == 0:
                return self._scan
            self._lines += 1
            if self._lines - 1 > self.limits.fields:
                raise HttpError(431, "too many request header fields")

    def _whole_head_end(self) -> int | None:
        """The common case in one pass: the whole head is in the buffer and plainly within
        every limit (all of it shorter than the shortest line limit, CRLF line ends only,
        a well-formed request line). None sends anything else through the line-by-line
        scan, which decides it (and words its refusal) exactly as before."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end > self._plain_size:
            return None
        end += 4
        crlfs = buf.count(b"\r\n", 0, end)
        if (buf.count(b"\n", 0, end) != crlfs or crlfs - 2 > self.limits.fields
                or not _REQUEST_LINE.match(buf, 0, end)):
            return None
        return end

    def _check_line(self, length: int) -> None:
        """gunicorn's limits, counted the same way: whole lines, CRLF excluded."""
        if self._lines == 0:
            if length > self.limits.request_line:
                raise HttpError(414, "request line too long")
        elif length + 2 > self.limits.field_size:  # gunicorn counts a field line's CRLF
            raise HttpError(431, "request header field too large")


def parse_head(head: bytes, collector: _Head | None = None) -> Request:
    """One complete head (request line to blank line) into a checked Request.

    `collector` lets a connection reuse its llhttp parser from head to head (creating one
    is a good part of parsing a small head); it hands out a fresh one whenever the last
    head did not leave llhttp exactly at the start of a new message.
    """
    line_end = head.index(b"\n") + 1
    fed, method, version = _normalise_request_line(head[:line_end])
    if collector is None:
        collector = _Head()
    parser = collector.begin(read_line=method is None)
    try:
        parser.feed_data(head if fed is None else fed + head[line_end:])
    except httptools.HttpParserUpgrade:
        collector.reusable = False  # Upgrade/CONNECT: llhttp stops after the head
    except httptools.HttpParserError as exc:
        collector.reusable = False
        # Once the head is complete, llhttp's remaining checks are about body framing,
        # which _read_framing decides (more strictly, with 501 for unknown codings).
        if not collector.complete:
            raise HttpError(400, f"bad request: {exc}") from None
    if not collector.complete:
        collector.reusable = False
        raise HttpError(400, "bad request: incomplete head")
    req = Request(method=method or collector.method, target=collector.url,
                  version=version or collector.version, headers=collector.headers)
    _check_version(req.version)
    req.upgrade = collector.upgrade
    req.keep_alive = collector.keep_alive and not req.upgrade and req.method != "CONNECT"
    _read_target(req)
    fields = _singletons(req.headers)
    _read_host(fields)
    _read_framing(req, fields)
    return req


def _normalise_request_line(line: bytes) -> tuple[bytes | None, str | None, str | None]:
    """What llhttp wrongly refuses, made acceptable to it without changing the meaning.

    - RFC 9110 §9.1: a method is any token; llhttp knows a fixed list. An unknown token is
      given to llhttp as GET (request framing never depends on the method) and kept.
    - RFC 9112 §2.3: HTTP/1.x with x > 1 is processed as HTTP/1.1.
    Anything else goes to llhttp untouched, to be judged there.

    Returns the line to give llhttp instead (None: the line as it is) and the method and
    version the request has, read here from the line (asking llhttp for them costs more);
    both None when the line does not parse, for llhttp to judge and report.
    """
    space = line.find(b" ")
    if line.endswith(_PLAIN_VERSIONS) and line[:space] in _PLAIN_METHODS:
        # the common case, decided without the regex below
        return None, line[:space].decode("ascii"), line[-5:-2].decode("ascii")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        return None, None, None
    method, target, major, minor = match.groups()
    known = _llhttp_knows(method)
    newer = major == b"1" and minor > b"1"
    version = b"1.1" if newer else major + b"." + minor
    fed = None
    if newer or not known:
        fed = (method if known else b"GET") + b" " + target + b" HTTP/" + version + b"\r\n"
    return fed, method.decode("ascii"), version.decode("ascii")


# Methods llhttp knows and versions it takes as they are: such a line is never rewritten.
_PLAIN_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"))
_PLAIN_VERSIONS = (b" HTTP/1.1\r\n", b" HTTP/1.0\r\n")


@lru_cache(maxsize=128)
def _llhttp_knows(method: bytes) -> bool:
    probe = httptools.HttpRequestParser(_Head())
    try:
        probe.feed_data(method + b" / HTTP/1.1\r\n\r\n")
    except httptools.HttpParserUpgrade:
        return True
    except httptools.HttpParserError:
        return False
    return True


class _Head:
    """httptools protocol that collects one head (or one trailer section).

    The parser it owns is reused for the next head only when llhttp reported the message
    complete and kept alive: it is then back at the start of a message, exactly as a new
    one. Anything else (a body follows, an error, an upgrade, a close) retires it.
    """

    def __init__(self) -> None:
        self.parser: httptools.HttpRequestParser | None = None
        self.reusable = False
        self.read_line = True
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.complete = False
        self.keep_alive = False
        self.upgrade = False
        self.method = ""
        self.version = ""

    def begin(self, read_line: bool = True) -> httptools.HttpRequestParser:
        """Ready for a new head: the parser to feed it to. `read_line`: ask llhttp for the
        method and version (not needed when the caller read them from the request line)."""
        self._reset()
        self.read_line = read_line
        if self.parser is None or not self.reusable:
            self.parser = httptools.HttpRequestParser(self)
        self.reusable = False
        return self.parser

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops leading whitespace; RFC 9110 §5.5 excludes the trailing one too
        self.headers.append((name.decode("latin-1"), value.decode("latin-1").rstrip(" \t")))

    def on_headers_complete(self) -> None:
        """Read here: llhttp resets these once the message is complete."""
        self.complete = True
        if self.parser is not None:
            self.keep_alive = self.parser.should_keep_alive()
            self.upgrade = self.parser.should_upgrade()
            if self.read_line:
                self.method = self.parser.get_method().decode("ascii")
                self.version = self.parser.get_http_version()

    def on_message_complete(self) -> None:
        self.reusable = self.keep_alive and not self.upgrade


def _check_version(version: str) -> None:
    """llhttp lets HTTP/0.9 (a request line with no version) and HTTP/2.0 through; an
    HTTP/1.1 answer would be garbage to either, and the app would see a protocol it
    cannot trust, so both are refused here."""
    if version in ("1.0", "1.1"):
        return
    if version.startswith("0."):
        raise HttpError(400, "bad request: HTTP/0.9 request line (no HTTP/1.x version)")
    raise HttpError(505, f"HTTP/{version} is not supported")


def _read_target(req: Request) -> None:
    """RFC 9112 §3.2: the four forms of request-target, each only where it is allowed."""
    target = req.target
    if target.startswith(b"/"):
        path, _, query = target.partition(b"?")
        req.path, req.query = path, query.partition(b"#")[0]
    elif target == b"*":
        if req.method != "OPTIONS":
            raise HttpError(400, "bad request: asterisk-form target is only for OPTIONS")
    elif req.method == "CONNECT":
        req.authority = target.decode("latin-1")
    elif b"://" in target:
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            raise HttpError(400, "bad request: malformed absolute-form target") from None
        if url.schema is None or url.schema.lower() not in (b"http", b"https") or not url.host:
            raise HttpError(400, "bad request: malformed absolute-form target")
        host = url.host.decode("latin-1")
        if ":" in host:
            host = f"[{host}]"
        req.authority = host if url.port is None else f"{host}:{url.port}"
        req.path, req.query = url.path or b"/", url.query or b""
    else:
        raise HttpError(400, "bad request: malformed request target")


def _singletons(headers: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The values of the few fields the server itself reads, by lowercase name, in one
    pass over the head (instead of one scan per field)."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in _SERVER_FIELDS:
            found.setdefault(lname, []).append(value)
    return found


_SERVER_FIELDS = frozenset(("host", "content-type", "content-length", "transfer-encoding", "expect"))


def _read_host(fields: dict[str, list[str]]) -> None:
    """RFC 9112 §3.2: more than one Host, or an invalid one, is a 400.

    Content-Type is a singleton too (RFC 9110 §8.3): two of them leave the app guessing
    which one a proxy in front of it believed, so that is refused as well.
    """
    if len(fields.get("content-type", ())) > 1:
        raise HttpError(400, "bad request: more than one Content-Type header")
    hosts = fields.get("host", ())
    if len(hosts) > 1:
        raise HttpError(400, "bad request: more than one Host header")
    if hosts and not _HOST.fullmatch(hosts[0]):
        raise HttpError(400, "bad request: invalid Host header")


def _read_framing(req: Request, fields: dict[str, list[str]]) -> None:
    """Decide how the body is framed and refuse anything ambiguous (request smuggling)."""
    lengths = fields.get("content-length")
    codings = fields.get("transfer-encoding")
    if codings:
        if req.version == "1.0":
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
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
        if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            raise HttpError(400, "bad Content-Length")
        req.content_length = int(lengths[0])
    expect = fields.get("expect")
    if expect is not None:
        if expect[0].lower() != "100-continue":
            raise HttpError(417, "expectation failed")
        req.expect_continue = req.version == "1.1"


def _take(buf: bytearray, req: Request, size: int) -> int:
    data = bytes(buf[:size])
    del buf[:size]
    if data:
        req.body.append(data)
        req.body_buffered += len(data)
    return len(data)


class _Body:
    def consume(self, buf: bytearray, req: Request) -> None:
        raise NotImplementedError


class _Sized(_Body):
    """A Content-Length body: exactly that many bytes, the rest belongs to the next request."""

    def __init__(self, length: int) -> None:
        self.left = length

    def consume(self, buf: bytearray, req: Request) -> None:
        self.left -= _take(buf, req, self.left)
        req.complete = self.left == 0


class _Chunked(_Body):
    """RFC 9112 §7.1: chunk-size line, data, CRLF, ..., last chunk, trailer section."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.left = -1  # data bytes left in the current chunk; -1: at a size line
        self.trailer_end = 0  # where the trailer section checked so far ends

    def consume(self, buf: bytearray, req: Request) -> None:
        """Decode what `buf` holds; an offset walks it and the used part is cut once at
        the end, so a body of many small chunks costs no copy per chunk."""
        pos, end = 0, len(buf)
        pieces: list[bytes] = []
        try:
            while pos < end:
                if self.left > 0:
                    n = min(self.left, end - pos)
                    pieces.append(bytes(buf[pos:pos + n]))
                    self.left -= n
                    pos += n
                elif self.left == 0:
                    if buf[pos] != 0x0D or (end - pos > 1 and buf[pos + 1] != 0x0A):
                        raise HttpError(400, "bad request: chunk data longer than its size")
                    if end - pos < 2:
                        break
                    pos += 2
                    self.left = -1
                elif self.left == -1:
                    nl = self._size_line(buf, pos)
                    if nl < 0:
                        break
                    pos = nl + 1
                else:
                    del buf[:pos]
                    pos = 0
                    req.complete = self._trailers(buf, req)
                    break
        finally:
            del buf[:pos]
            if pieces:
                data = b"".join(pieces) if len(pieces) > 1 else pieces[0]
                req.body.append(data)
                req.body_buffered += len(data)

    def _size_line(self, buf: bytearray, pos: int) -> int:
        """Read the chunk-size line at `pos`; its LF's offset, or -1 while it is incomplete."""
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > _MAX_CHUNK_LINE:
                raise HttpError(400, "bad request: chunk size line too long")
            return -1
        match = _CHUNK_LINE.fullmatch(buf, pos, nl + 1)
        digits = match.group(1) if match is not None else b""
        if match is None or len(digits.lstrip(b"0")) > 15:
            raise HttpError(400, "bad request: invalid chunk size line")
        size = int(digits, 16)
        self.left = size if size else -2  # -2: the trailer section follows
        return nl

    def _trailers(self, buf: bytearray, req: Request) -> bool:
        """The trailer section, checked by llhttp and kept apart from the headers."""
        if buf[:2] == b"\r\n":
            del buf[:2]
            return True
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.limits.fields * (self.limits.field_size + 2):
                raise HttpError(431, "request trailer section too large")
            return False
        block = bytes(buf[:end + 4])
        del buf[:end + 4]
        collector = _Head()
        try:
            httptools.HttpRequestParser(collector).feed_data(b"GET / HTTP/1.1\r\n" + block)
        except httptools.HttpParserError as exc:
            raise HttpError(400, f"bad request: trailer section: {exc}") from None
        for name, _value in collector.headers:
            if name.lower() in _FORBIDDEN_TRAILERS:
                raise HttpError(400, f"bad request: {name} is not allowed in a trailer")
        req.trailers = collector.headers
        return True
