"""Running one parsed request through a WSGI app (PEP 3333) and writing its response.

This is the bridge between the parser (`request`), the exchange state machine (`exchange`,
which takes every framing decision) and a connection's socket: it only moves bytes and
maps errors (the app's become a 500; only the server's own socket errors mean the client
has gone). It is called on whichever thread owns the connection at the time.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

from ..http import response as resp
from ..http.exchange import IDLE, STARTED, Exchange
from ..http.forwarded import TrustedProxies
from ..http.request import HttpError, Request
from .connection import Connection

MAX_DRAIN = 1 << 20  # unread body bytes worth reading to keep a connection alive


@dataclass
class Site:
    """What every request of a worker shares: the app and the server-wide facts."""

    app: Callable[..., Any]
    base_environ: dict[str, Any]
    proxies: TrustedProxies
    log_error: Callable[..., None]
    log_access: Callable[[dict[str, Any], str, int | None, float], None] | None
    closing: bool = False  # set when the worker retires: every response says Connection: close
    requests: int = field(default=0)


class ClientGone(Exception):
    """The server's own socket failed (the client closed, reset or timed out).

    Only the server's I/O raises this; an OSError the app raises (a missing file, a
    timeout to its database) is the app's error and gets a 500 like any other.
    """


class BadBody(ClientGone):
    """The request body turned out malformed while the app was reading it."""

    def __init__(self, error: HttpError) -> None:
        super().__init__(error.reason)
        self.error = error


def send(conn: Connection, data: bytes) -> None:
    """Send on the client socket; its failures are the client's, not the app's."""
    try:
        conn.send(data)
    except OSError as exc:
        raise ClientGone(f"client gone while sending: {exc}") from None


class InputStream(io.RawIOBase):
    """`wsgi.input`: the body, pulled from the socket only when the app asks for it.

    It reads through the connection's parser, so chunked bodies arrive decoded and a
    pipelined next request that shares a packet with this body is kept for later (a
    broken next request is that request's problem, never this one's).
    """

    def __init__(self, conn: Connection, exchange: Exchange) -> None:
        self._conn = conn
        self._exchange = exchange
        self._req = exchange.req
        self._buf = bytearray()

    def _fill(self) -> bool:
        """Move more body into the buffer; False at the end of the body."""
        req = self._req
        if req.body:
            while req.body:
                self._buf += req.body.popleft()
            return True
        if req.complete:
            return False
        if req.body_error is not None:
            raise BadBody(req.body_error)
        if self._exchange.need_continue():
            send(self._conn, resp.CONTINUE)
        if not self._conn.receive(wait=True):
            raise ClientGone("client went away while sending the body")
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._buf)
            self._buf.clear()
            return data
        while len(self._buf) < size and self._fill():
            pass
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        while True:
            end = self._buf.find(b"\n")
            if end >= 0 or (limit is not None and len(self._buf) >= limit):
                break
            if not self._fill():
                break
        cut = len(self._buf) if end < 0 else end + 1
        if limit is not None:
            cut = min(cut, limit)
        data = bytes(self._buf[:cut])
        del self._buf[:cut]
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self):  # type: ignore[override]
        while line := self.readline():
            yield line

    def readable(self) -> bool:
        return True

    def finish(self) -> bool:
        """After the response: drop what the app left unread; True if the connection can go on."""
        if self._req.complete:
            self._req.body.clear()
            return True
        if self._req.expect_continue and not self._exchange.continue_sent:
            return False  # the client may or may not send the body: do not guess
        dropped = 0
        try:
            while not self._req.complete and dropped < MAX_DRAIN:
                self._buf.clear()
                self._fill()
                dropped += len(self._buf)
        except ClientGone:
            return False
        self._buf.clear()
        self._req.body.clear()
        return self._req.complete


class FileWrapper:
    """`wsgi.file_wrapper`: lets a file response go out with sendfile(2)."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        while data := self.filelike.read(self.blksize):
            yield data


def build_environ(site: Site, conn: Connection, req: Request, stream: InputStream) -> dict[str, Any]:
    """The per-request environ, on top of the worker's shared base.

    Only the head's fields go in: trailer fields never do (RFC 9110 §6.5.1), since they
    arrive after the app started and are not vouched for like the head.
    """
    environ = site.base_environ.copy()
    environ["REQUEST_METHOD"] = req.method
    path = req.path
    environ["PATH_INFO"] = (unquote_to_bytes(path) if b"%" in path else path).decode("latin-1")
    environ["QUERY_STRING"] = req.query.decode("latin-1")
    environ["RAW_URI"] = req.target.decode("latin-1")
    environ["SERVER_PROTOCOL"] = f"HTTP/{req.version}"
    environ["wsgi.input"] = stream
    environ["SERVER_NAME"], environ["SERVER_PORT"] = conn.server
    if conn.tls:
        environ["wsgi.url_scheme"] = "https"
    if conn.peer is not None:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = conn.peer[0], str(conn.peer[1])
    else:
        environ["REMOTE_ADDR"] = ""
    keys = _environ_keys
    for name, value in req.headers:
        key = keys.get(name)
        if key is None:
            key = _environ_key(name)
        if not key:
            continue
        if key in environ and key.startswith("HTTP_"):
            environ[key] = environ[key] + "," + value
        else:
            environ[key] = value
    if req.chunked:
        environ.pop("CONTENT_LENGTH", None)
    if req.authority is not None:
        # RFC 9112 §3.2.2: an absolute-form target's authority replaces the Host header
        environ["HTTP_HOST"] = req.authority
    host = environ.get("HTTP_HOST")
    if host:
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if name and port.isdigit():
            environ["SERVER_NAME"], environ["SERVER_PORT"] = name, port
        else:
            environ["SERVER_NAME"] = host
    site.proxies.apply(environ, conn.peer)
    return environ


def _environ_key(name: str) -> str:
    """A header field name's environ key ("" for a dropped one), remembered: clients send
    the same few names on every request, and deriving the key was a good part of
    building the environ."""
    if "_" in name:
        key = ""  # X_Foo would alias X-Foo: drop it rather than let it spoof
    else:
        key = name.upper().replace("-", "_")
        if key != "CONTENT_TYPE" and key != "CONTENT_LENGTH":
            key = "HTTP_" + key
    if len(_environ_keys) < _ENVIRON_KEYS_MAX and len(name) <= 64:  # bounded, whatever is sent
        _environ_keys[name] = key
    return key


_environ_keys: dict[str, str] = {}
_ENVIRON_KEYS_MAX = 1024


class ResponseWriter:
    """PEP 3333's start_response and write(), and sending the app's iterable.

    Every framing decision is the Exchange's; this class only moves its bytes to the socket.
    """

    def __init__(self, site: Site, conn: Connection, exchange: Exchange) -> None:
        self.site = site
        self.conn = conn
        self.exchange = exchange

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        self.exchange.start(status, headers, exc_info)
        return self.write

    def write(self, data: bytes, total: int | None = None) -> None:
        """Send a body piece (and the head, the first time)."""
        if type(data) is not bytes:
            raise resp.BadResponse(f"the app wrote {type(data).__name__}, not bytes")
        self._send(self.exchange.send(data, total))

    def _send(self, wire: bytes) -> None:
        if self.exchange.overflow:
            self.exchange.overflow = False
            self.site.log_error("app sent more than its Content-Length; response cut")
        if wire:
            send(self.conn, wire)

    def send_all(self, body: list[bytes] | tuple[bytes, ...]) -> None:
        """A list body: its length is known, so send head and body in one write."""
        for piece in body:
            if type(piece) is not bytes:
                raise resp.BadResponse(f"the app yielded {type(piece).__name__}, not bytes")
        data = b"".join(body)
        self.write(data, len(data) if self.exchange.state == STARTED else None)

    def send_file(self, wrapper: FileWrapper) -> bool:
        """Try sendfile(2) for a real file; False when the object is not one, or the
        connection is TLS (sendfile would bypass the encryption: the file is sent in pieces)."""
        if self.conn.tls:
            return False
        try:
            fd = wrapper.filelike.fileno()
            offset = wrapper.filelike.tell()
            size = os.fstat(fd).st_size - offset
        except (AttributeError, OSError, io.UnsupportedOperation):
            return False
        plan = self.exchange.file_head(size)
        if plan is None:
            return False
        head, count = plan
        self._send(head)
        if count:
            try:
                sent = self.conn.sendfile(wrapper.filelike, offset, count)  # by a deadline
            except OSError as exc:
                raise ClientGone(f"client gone during sendfile: {exc}") from None
            self.exchange.file_sent(sent)
        return True

    def finish(self) -> None:
        """End the body: send a head nobody wrote, or the last chunk."""
        self._send(self.exchange.end())


def handle(site: Site, conn: Connection, req: Request) -> bool:
    """Run one request; True when the connection may carry another one."""
    started = time.monotonic()
    # A closing worker still answers a request the client already sent behind this one.
    exchange = Exchange(
        req, closing=lambda: site.closing and not conn.next_request_waiting(req.complete))
    stream = InputStream(conn, exchange)
    writer = ResponseWriter(site, conn, exchange)
    environ = build_environ(site, conn, req, stream)
    site.requests += 1
    try:
        _run_app(site, environ, writer)
    except BadBody as exc:
        site.log_error("refused request body of %s %s: %s", req.method, environ["RAW_URI"],
                       exc.error.reason)
        if exchange.state in (IDLE, STARTED):
            _answer_error(site, conn, exchange, environ, started, exc.error.status,
                          exc.error.reason)
        return False
    except ClientGone:
        return False
    except Exception as exc:
        site.log_error("error handling %s %s: %s", req.method, environ["RAW_URI"],
                       exc, exc_info=sys.exc_info())
        if exchange.state in (IDLE, STARTED):
            _answer_error(site, conn, exchange, environ, started, 500, "")
        return False
    _log(site, environ, exchange, started)
    if not exchange.reusable:
        return False
    return stream.finish()


def _answer_error(site: Site, conn: Connection, exchange: Exchange, environ: dict[str, Any],
                  started: float, code: int, message: str) -> None:
    """The server's own answer when the app's response never started."""
    try:
        send(conn, resp.error_response(code, message))
    except ClientGone:
        return
    exchange.head = resp.Head(resp.status_text(code), code, [], None, close=True)
    _log(site, environ, exchange, started)


def _run_app(site: Site, environ: dict[str, Any], writer: ResponseWriter) -> None:
    result: Iterable[bytes] = site.app(environ, writer.start_response)
    try:
        if type(result) is list or type(result) is tuple:
            writer.send_all(result)
        elif isinstance(result, FileWrapper) and writer.send_file(result):
            pass
        else:
            for data in result:
                writer.write(data)
        writer.finish()
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _log(site: Site, environ: dict[str, Any], exchange: Exchange, started: float) -> None:
    if site.log_access is not None and exchange.head is not None:
        size = exchange.sent if exchange.sent or not exchange.is_head else None
        site.log_access(environ, exchange.head.status, size, time.monotonic() - started)
