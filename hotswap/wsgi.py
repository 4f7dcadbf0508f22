"""Running one parsed request through a WSGI app (PEP 3333) and writing its response.

This is the bridge between the parser (`request`), the response rules (`response`) and a
connection's socket. It is called on whichever thread owns the connection at the time.
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

from . import response as resp
from .connection import Connection
from .forwarded import TrustedProxies
from .request import HttpError, Request

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
    """The client closed or timed out while the app was reading the body."""


class InputStream(io.RawIOBase):
    """`wsgi.input`: the body, pulled from the socket only when the app asks for it.

    It reads through the connection's parser, so chunked bodies arrive decoded and a
    pipelined next request that shares a packet with this body is kept for later.
    """

    def __init__(self, conn: Connection, req: Request) -> None:
        self._conn = conn
        self._req = req
        self._buf = bytearray()
        self.continue_sent = False

    def _fill(self) -> bool:
        """Move more body into the buffer; False at the end of the body."""
        req = self._req
        if req.body:
            while req.body:
                self._buf += req.body.popleft()
            return True
        if req.complete:
            return False
        if req.expect_continue and not self.continue_sent:
            self.continue_sent = True
            self._conn.send(resp.CONTINUE)
        try:
            alive = self._conn.receive(wait=True)
        except HttpError:
            raise ClientGone("malformed body") from None
        if not alive:
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
        if self._req.expect_continue and not self.continue_sent:
            return False  # the client may or may not send the body: do not guess
        dropped = 0
        try:
            while not self._req.complete and dropped < MAX_DRAIN:
                self._buf.clear()
                self._fill()
                dropped += len(self._buf)
        except (ClientGone, OSError):
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
    """The per-request environ, on top of the worker's shared base."""
    target = req.target
    if not target.startswith(b"/") and b"://" in target:
        target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
    path, _, query = target.partition(b"?")
    query = query.partition(b"#")[0]
    environ = site.base_environ.copy()
    environ["REQUEST_METHOD"] = req.method
    environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
    environ["QUERY_STRING"] = query.decode("latin-1")
    environ["RAW_URI"] = target.decode("latin-1")
    environ["SERVER_PROTOCOL"] = f"HTTP/{req.version}"
    environ["wsgi.input"] = stream
    environ["SERVER_NAME"], environ["SERVER_PORT"] = conn.server
    if conn.peer is not None:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = conn.peer[0], str(conn.peer[1])
    else:
        environ["REMOTE_ADDR"] = ""
    for name, value in req.headers:
        key = name.upper().replace("-", "_")
        if "_" in name:
            continue  # X_Foo would alias X-Foo: drop it rather than let it spoof
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            environ[key] = value
            continue
        key = "HTTP_" + key
        environ[key] = environ[key] + "," + value if key in environ else value
    if req.chunked:
        environ.pop("CONTENT_LENGTH", None)
    host = environ.get("HTTP_HOST")
    if host:
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if name and port.isdigit():
            environ["SERVER_NAME"], environ["SERVER_PORT"] = name, port
        else:
            environ["SERVER_NAME"] = host
    site.proxies.apply(environ, conn.peer)
    return environ


class ResponseWriter:
    """start_response, write(), and sending the app's iterable with the chosen framing."""

    def __init__(self, site: Site, conn: Connection, req: Request,
                 stream: InputStream | None = None) -> None:
        self.site = site
        self.conn = conn
        self.req = req
        self.stream = stream
        self.head: resp.Head | None = None
        self.prepared = False
        self.head_sent = False
        self.sent = 0  # body bytes sent (before chunk framing)
        self.is_head = req.method == "HEAD"

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.head is not None:
            raise AssertionError("start_response called twice without exc_info")
        self.head = resp.check_head(status, headers)
        return self.write

    def _prepare(self, known_length: int | None = None) -> resp.Head:
        head = self.head
        if head is None:
            raise resp.BadResponse("the app returned before calling start_response")
        if head.content_length is None and known_length is not None and not self.is_head:
            head.content_length = known_length
            head.headers.append(("Content-Length", str(known_length)))
        # A closing worker still answers a request the client already sent behind this one.
        closing = self.site.closing and not self.conn.next_request_waiting(self.req.complete)
        keep_alive = self.req.keep_alive and not closing and not self._uninvited_body()
        resp.frame(head, self.req.version, keep_alive, self.is_head)
        self.prepared = True
        return head

    def _uninvited_body(self) -> bool:
        """True when the client still waits for a 100 Continue as the final head goes out.

        Its body may or may not follow, so the connection cannot carry another request;
        and a 100 sent after this head would land inside the response body, so from here
        on none is sent at all.
        """
        stream = self.stream
        if stream is None or not self.req.expect_continue or stream.continue_sent:
            return False
        if self.req.complete:
            return False  # the client sent its body without waiting: nothing is pending
        stream.continue_sent = True
        return True

    def write(self, data: bytes) -> None:
        """Send a body piece (and the head, the first time)."""
        if type(data) is not bytes:
            raise resp.BadResponse(f"the app wrote {type(data).__name__}, not bytes")
        head = self.head if self.prepared and self.head else self._prepare()
        if not data or head.bodiless or self.is_head:
            return
        if head.content_length is not None:
            room = head.content_length - self.sent
            if len(data) > room:
                data = data[:room]
                head.close = True
                self.site.log_error("app sent more than its Content-Length; response cut")
        self.sent += len(data)
        if head.chunked:
            if data:
                self._send_head(resp.chunk(data))
        else:
            self._send_head(data)

    def _send_head(self, data: bytes) -> None:
        if not self.head_sent:
            self.head_sent = True
            assert self.head is not None
            data = resp.serialize(self.head) + data
        if data:
            self.conn.send(data)

    def send_all(self, body: list[bytes] | tuple[bytes, ...]) -> None:
        """A list body: its length is known, so send head and body in one write."""
        for piece in body:
            if type(piece) is not bytes:
                raise resp.BadResponse(f"the app yielded {type(piece).__name__}, not bytes")
        if not self.prepared:
            self._prepare(sum(map(len, body)))
        self.write(b"".join(body))

    def send_file(self, wrapper: FileWrapper) -> bool:
        """Try sendfile(2) for a real file; False when the object is not one."""
        try:
            fd = wrapper.filelike.fileno()
            offset = wrapper.filelike.tell()
            size = os.fstat(fd).st_size - offset
        except (AttributeError, OSError, io.UnsupportedOperation):
            return False
        if self.prepared or self.head is None:
            return False
        head = self._prepare(size)
        if head.chunked or head.bodiless or self.is_head:
            return False
        count = size if head.content_length is None else min(size, head.content_length)
        self._send_head(b"")
        sent = self.conn.sendfile(wrapper.filelike, offset, count)  # bounded by a deadline
        self.sent += sent
        return True

    def finish(self) -> None:
        """End the body: send a head nobody wrote, the last chunk, or mark a short body."""
        head = self.head if self.prepared and self.head else self._prepare(
            None if self.is_head else 0)
        self._send_head(b"")
        if head.chunked:
            self.conn.send(resp.LAST_CHUNK)
        elif (head.content_length is not None and self.sent < head.content_length
              and not head.bodiless and not self.is_head):
            head.close = True  # the client waits for bytes that will never come: hang up


def handle(site: Site, conn: Connection, req: Request) -> bool:
    """Run one request; True when the connection may carry another one."""
    started = time.monotonic()
    stream = InputStream(conn, req)
    writer = ResponseWriter(site, conn, req, stream)
    environ = build_environ(site, conn, req, stream)
    site.requests += 1
    try:
        _run_app(site, environ, writer)
    except (ClientGone, OSError):
        return False
    except Exception as exc:
        site.log_error("error handling %s %s: %s", req.method, environ["RAW_URI"],
                       exc, exc_info=sys.exc_info())
        if not writer.head_sent:
            try:
                conn.send(resp.error_response(500))
            except OSError:
                pass
            writer.head = resp.Head("500 Internal Server Error", 500, [], None, close=True)
            _log(site, environ, writer, started)
        return False
    _log(site, environ, writer, started)
    assert writer.head is not None
    if writer.head.close:
        return False
    return stream.finish()


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


def _log(site: Site, environ: dict[str, Any], writer: ResponseWriter, started: float) -> None:
    if site.log_access is not None and writer.head is not None:
        size = writer.sent if writer.sent or not writer.is_head else None
        site.log_access(environ, writer.head.status, size, time.monotonic() - started)
