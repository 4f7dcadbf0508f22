"""HTTP/1.1 for ASGI apps: an asyncio Protocol on the same parser and framing as WSGI.

Bytes from the socket go into the connection's `RequestParser` (hotswap.http.request:
message boundaries, llhttp per head, the same limits and refusals as the WSGI worker);
each complete head becomes one `Cycle`, an ASGI `http` scope with its receive/send,
whose response goes through the same `Exchange` (hotswap.http.exchange) that decides
every framing question for WSGI. Nothing here parses HTTP or frames a response itself.

Requests are answered strictly in order: a pipelined request waits in the parser until
the one before it is done. Flow control both ways:
- reading pauses while the app does not consume what arrived (more than BODY_HIGH bytes
  of body buffered, or PIPELINE_HIGH heads queued behind the current one) and resumes
  when it calls receive();
- `send` waits while the transport's write buffer is over its high-water mark; a client
  that reads nothing for the I/O timeout (0.75 x --timeout, as the WSGI worker's per-call
  timeout) is cut. Unlike WSGI there is no deadline on a whole response: a server-sent
  event stream may rightly last for hours, and it costs no thread.

A request with `Upgrade: websocket` becomes a `websocket.Session` on the same transport.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..hooks import NO_REQUEST_HOOKS, RequestHooks
from ..http import response as resp
from ..http.exchange import DONE, IDLE, SENDING, STARTED, Exchange
from ..http.forwarded import TrustedProxies
from ..http.request import HttpError, Limits, Request, RequestParser
from .asgi_scope import http_scope, status_line

BODY_HIGH = 256 * 1024  # body bytes buffered for an app that is not reading: pause reading
PIPELINE_HIGH = 16  # pipelined heads waiting behind the current request: pause reading
LINGER_TIME = 2.0  # after a refusal: read and drop what the client still sends, this long at most
MAX_DRAIN = 1 << 20  # unread body bytes worth reading after the response to keep the connection


class ClientDisconnected(OSError):
    """Raised by a WebSocket `send` once the client has gone (as uvicorn does)."""


@dataclass
class Site:
    """What every connection of an ASGI worker shares."""

    app: Callable[..., Any]
    limits: Limits
    proxies: TrustedProxies
    log_error: Callable[..., None]
    log_access: Callable[[dict[str, Any], str, int | None, float], None] | None
    keepalive: float
    io_timeout: float
    root_path: str = ""
    state: dict[str, Any] = field(default_factory=dict)  # the lifespan state, copied per request
    closing: bool = False  # retiring or parked: every response says Connection: close
    requests: int = 0
    conns: set[HttpProtocol] = field(default_factory=set)
    on_change: Callable[[], None] = lambda: None  # a connection closed or became long-lived
    log_debug: Callable[..., None] = lambda *args, **kwargs: None
    request_limit: int = 0  # --max-requests (with its jitter): on_limit is called when reached
    on_limit: Callable[[], None] = lambda: None
    hooks: RequestHooks = NO_REQUEST_HOOKS  # pre_request / post_request (hotswap.hooks)

    def count_request(self) -> None:
        """Counted as each request starts, so the limit is seen at once: a busy worker
        would otherwise serve many requests past it before its next housekeeping."""
        self.requests += 1
        if self.requests == self.request_limit:
            self.on_limit()


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse, run one Cycle at a time, keep alive or close."""

    def __init__(self, site: Site, client: tuple[str, int] | None = None) -> None:
        """`client`: the address a PROXY header named, kept instead of the peer's."""
        self.site = site
        self.loop = asyncio.get_running_loop()
        self.parser = RequestParser(site.limits)
        self.transport: asyncio.Transport | None = None
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = client
        self.proxied = client is not None
        self.tls = False  # the transport is TLS: scheme https / wss
        self.cycle: Cycle | None = None
        self.ws: Any = None  # a websocket.Session once upgraded
        self.discarding: Request | None = None  # body left unread by an app that returned
        self.discarded = 0
        self.reading_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.last_active = time.monotonic()
        self.head_started: float | None = self.last_active
        self.served = False
        self.eof = False  # the client half-closed: close once what it sent is answered

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's is no asyncio.Transport)
        sockname = transport.get_extra_info("sockname")
        peer = transport.get_extra_info("peername")
        if isinstance(sockname, tuple):
            self.server = (str(sockname[0]), int(sockname[1]))
        if isinstance(peer, tuple) and not self.proxied:
            self.client = (str(peer[0]), int(peer[1]))
        self.tls = transport.get_extra_info("ssl_object") is not None
        self.site.conns.add(self)

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.feed(data)
            return
        if self.closed:
            return  # lingering after a refusal: dropped
        now = time.monotonic()
        self.last_active = now
        if self.head_started is None and self.cycle is None:
            self.head_started = now
        self.parser.feed(data)
        if self.discarding is not None:
            self._discard()
        if self.cycle is not None:
            self.cycle.wake()
            self._flow()
        elif self.discarding is None:
            self._next()

    def eof_received(self) -> bool | None:
        """The client half-closed: what it sent before is still answered (as the WSGI
        worker does), then the connection closes; nothing more can come on it."""
        if self.ws is not None:
            return self.ws.eof_received()
        if self.closed:
            return None  # the end of a linger
        self.eof = True
        if self.cycle is None and self.discarding is None and not self.parser.ready:
            return None  # nothing to answer: close our side too
        if self.cycle is not None:
            self.cycle.peer_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.site.conns.discard(self)
        if self.cycle is not None:
            self.cycle.client_gone()
        if self.ws is not None:
            self.ws.connection_lost()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)
        self.site.on_change()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    # -- what the worker asks ---------------------------------------------------------

    @property
    def long_lived(self) -> bool:
        """A WebSocket, or a response already streaming with the whole request read:
        neither holds a request the next generation could take, so a parked worker
        says `P` (empty) without waiting for them (see aio.py, "Long-lived")."""
        if self.ws is not None:
            return True
        cycle = self.cycle
        return (cycle is not None and cycle.exchange.state == SENDING and cycle.req.complete
                and not self.parser.ready)

    def idle_for(self, now: float) -> float | None:
        """Seconds idle between requests (None while a request is in progress)."""
        if self.cycle is not None or self.ws is not None or self.discarding is not None:
            return None
        if self.head_started is not None:
            return None
        return now - self.last_active

    def head_overdue(self, now: float, timeout: float) -> bool:
        return (self.cycle is None and self.ws is None and self.head_started is not None
                and now - self.head_started > timeout)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def refuse(self, error: HttpError) -> None:
        """Answer a request the parser refused, then a lingering close: our FIN goes out,
        what the client still sends (a body we refused) is read and dropped for a moment,
        since closing with unread data makes the kernel send a reset that can destroy the
        answer before the client reads it (the WSGI worker's linger, connection.py)."""
        self.site.log_error("refused request from %s: %d %s",
                            self.client[0] if self.client else "unix socket",
                            error.status, error.reason)
        self.write(resp.error_response(error.status, error.reason))
        self.linger_close()

    def linger_close(self) -> None:
        transport = self.transport
        if transport is None or self.closed or not transport.can_write_eof():
            self.close()
            return
        self.closed = True  # nothing more is read as HTTP or written
        transport.write_eof()
        self.loop.call_later(LINGER_TIME, transport.close)

    def write(self, data: bytes) -> None:
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> bool:
        """Wait while the client is not reading; False (and the connection cut) when it
        read nothing for the I/O timeout."""
        if not self.write_paused or self.closed:
            return not self.closed
        waiter = self.drain_waiter = self.loop.create_future()
        try:
            await asyncio.wait_for(waiter, self.site.io_timeout)
        except TimeoutError:
            self.site.log_error("client read nothing for %g s; connection cut", self.site.io_timeout)
            if self.transport is not None:
                self.transport.abort()
            self.closed = True
            return False
        return not self.closed

    # -- requests, in order -----------------------------------------------------------

    def _next(self) -> None:
        """Start the next complete request, or refuse a broken one, or wait for bytes."""
        parser = self.parser
        if parser.ready:
            req = parser.ready.popleft()
            if req.body_error is not None:
                self.refuse(req.body_error)
                return
            self.head_started = time.monotonic() if parser.in_message else None
            self.served = True
            if req.upgrade and _is_websocket(req):
                from .websocket import Session

                self.ws = Session(self, req)
                self.ws.start()
                self.site.on_change()
                return
            self.cycle = Cycle(self, req)
            self._flow()
            self.loop.create_task(self.cycle.run())
        elif parser.error is not None:
            self.refuse(parser.error)
        elif self.eof or (self.site.closing and self.site.keepalive <= 0):
            self.close()

    def cycle_done(self, keep: bool) -> None:
        """The app returned and its response is complete (or cut): carry on or close."""
        cycle = self.cycle
        assert cycle is not None
        self.cycle = None
        if not keep or self.closed:
            self.close()
            self.site.on_change()
            return
        self.last_active = time.monotonic()
        req = cycle.req
        if not req.complete and self.eof:
            self.close()
            self.site.on_change()
            return
        if not req.complete:
            self.discarding, self.discarded = req, 0
            self._discard()
            if self.discarding is not None:
                return
        req.body.clear()
        self._resume()
        self._next()
        self.site.on_change()

    def _discard(self) -> None:
        """Drop a body the app left unread, so the next request can be read after it."""
        req = self.discarding
        assert req is not None
        self.discarded += req.body_buffered
        req.body.clear()
        req.body_buffered = 0
        if req.body_error is not None or self.discarded > MAX_DRAIN:
            self.discarding = None
            self.close()
        elif req.complete:
            self.discarding = None
            if self.cycle is None:
                self._next()

    def _flow(self) -> None:
        """Pause reading while the app has not consumed what came (backpressure)."""
        cycle = self.cycle
        if cycle is None or self.reading_paused or self.transport is None:
            return
        if cycle.req.body_buffered > BODY_HIGH or len(self.parser.ready) > PIPELINE_HIGH:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def next_request_waiting(self) -> bool:
        """Another request is already here behind this one: a closing worker keeps the
        connection for it (the WSGI worker's rule)."""
        return bool(self.parser.ready) or self.parser.in_message


def _is_websocket(req: Request) -> bool:
    value = req.header("upgrade")
    wanted = req.method == "GET" and value is not None and value.strip().lower() == "websocket"
    return wanted and _websockets_installed()


@functools.cache
def _websockets_installed() -> bool:
    """WebSockets need the `websockets` package (`pip install 'hotswap[asgi]'`). Without it
    an upgrade request is served as plain HTTP, as uvicorn does, with one warning."""
    try:
        import websockets.server  # noqa: F401
    except ImportError:
        logging.getLogger("hotswap.error").warning(
            "a WebSocket request was served as plain HTTP: the websockets package is not "
            "installed (pip install 'hotswap[asgi]')")
        return False
    return True


class Cycle:
    """One request and its response: the ASGI `http` scope, receive and send."""

    __slots__ = ("proto", "site", "req", "exchange", "scope", "started", "waiter",
                 "disconnected", "body_done", "response_done", "eof")

    def __init__(self, proto: HttpProtocol, req: Request) -> None:
        self.proto = proto
        self.site = proto.site
        self.req = req
        site = proto.site
        self.exchange = Exchange(
            req, closing=lambda: site.closing and not proto.next_request_waiting())
        self.scope = http_scope(proto, req)
        self.started = time.monotonic()
        self.waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.body_done = False  # the last http.request message was handed to the app
        self.response_done = False
        self.eof = False  # the client half-closed (see peer_eof)

    async def run(self) -> None:
        site = self.site
        site.count_request()
        keep = False
        hooked = site.hooks.pre_request(self.req, self._hook_environ())
        try:
            await site.app(self.scope, self.receive, self.send)
        except Exception as exc:
            site.log_error("error handling %s %s: %s", self.req.method,
                           self.req.target.decode("latin-1"), exc, exc_info=True)
            self._answer_error(500)
        else:
            if self.exchange.state == IDLE and not self.disconnected:
                site.log_error("%s %s: the app returned without starting a response",
                               self.req.method, self.req.target.decode("latin-1"))
                self._answer_error(500)
            elif self.exchange.state == DONE:
                keep = self.exchange.reusable and not self.disconnected
            elif not self.disconnected:
                site.log_error("%s %s: the app returned before its response was complete",
                               self.req.method, self.req.target.decode("latin-1"))
        finally:
            self.response_done = True
            site.hooks.post_request(hooked, self.scope, self.exchange)
            self._log()
            self.proto.cycle_done(keep)

    def _hook_environ(self) -> dict[str, str]:
        """What pre_request's Req view reads (path, query, client address): a few keys in
        WSGI's names, since the view is the same for both kinds of app. post_request gets
        the scope itself as its `environ` argument (an ASGI app's equivalent)."""
        scope = self.scope
        client = scope.get("client")
        return {"PATH_INFO": scope["path"], "QUERY_STRING": scope["query_string"].decode("latin-1"),
                "REMOTE_ADDR": client[0] if client else ""}

    # -- receive ----------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        req = self.req
        if not self.disconnected and not self.response_done and not (self.body_done and self.eof):
            if self.body_done or (not req.body and not req.complete):
                if not self.body_done and self.exchange.need_continue():
                    self.proto.write(resp.CONTINUE)
                self.proto._resume()
                await self._wait()
        if self.disconnected or self.response_done or (self.body_done and self.eof):
            return {"type": "http.disconnect"}
        if req.body_error is not None and not req.body:
            # the body broke the parser: refused as the WSGI worker does, the app sees the end
            self.site.log_error("refused request body of %s %s: %s", req.method,
                                req.target.decode("latin-1"), req.body_error.reason)
            self._answer_error(req.body_error.status, req.body_error.reason)
            self.proto.linger_close()
            self.client_gone()
            return {"type": "http.disconnect"}
        if len(req.body) == 1:
            body = req.body.popleft()
        else:
            body = b"".join(req.body)
            req.body.clear()
        req.body_buffered = 0
        more = not req.complete
        self.body_done = not more
        self.proto._resume()
        return {"type": "http.request", "body": body, "more_body": more}

    async def _wait(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            waiter = self.waiter = self.proto.loop.create_future()
        await waiter

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def client_gone(self) -> None:
        self.disconnected = True
        self.wake()

    def peer_eof(self) -> None:
        """The client sent FIN. Its answer still goes out (a half-close is legal), but an
        app asking for more after the whole body is told http.disconnect: a FIN is the only
        sign of a client that has gone, and SSE or long-poll apps wait for exactly that."""
        self.eof = True
        if not self.req.complete:
            self.client_gone()  # the body can never be completed
        else:
            self.wake()

    # -- send -------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        exchange = self.exchange
        if kind == "http.response.start":
            if exchange.state != IDLE:
                raise RuntimeError("http.response.start sent twice")
            headers = [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                       for n, v in message.get("headers", ())]
            exchange.start(status_line(message["status"]), headers)
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r} in an http scope")
        if exchange.state == IDLE:
            raise RuntimeError("http.response.body sent before http.response.start")
        if exchange.state == DONE:
            raise RuntimeError("http.response.body sent after the response was complete")
        body = bytes(message.get("body", b""))
        more = message.get("more_body", False)
        if self.disconnected:
            if not more:
                exchange.state = DONE
            return  # the client is gone: what the app still sends goes nowhere
        if more:
            wire = exchange.send(body) if body else exchange.flush_head()
        elif exchange.state == STARTED:
            wire = exchange.send(body, len(body)) + exchange.end()
        else:
            wire = exchange.send(body) + exchange.end()
        if exchange.overflow:
            exchange.overflow = False
            self.site.log_error("app sent more than its Content-Length; response cut")
        self.proto.write(wire)
        if not more:
            self.response_done = True
            self.wake()
        elif not await self.proto.drain():
            self.client_gone()

    def _answer_error(self, code: int, message: str = "") -> None:
        if self.exchange.state in (IDLE, STARTED) and not self.disconnected:
            self.proto.write(resp.error_response(code, message))
            self.exchange.head = resp.Head(resp.status_text(code), code, [], None, close=True)

    def _log(self) -> None:
        log = self.site.log_access
        if log is None or self.exchange.head is None:
            return
        req, client = self.req, self.scope.get("client")
        environ = {"REQUEST_METHOD": req.method, "RAW_URI": req.target.decode("latin-1"),
                   "SERVER_PROTOCOL": f"HTTP/{req.version}",
                   "REMOTE_ADDR": client[0] if client else "",
                   "HTTP_REFERER": req.header("referer") or "-",
                   "HTTP_USER_AGENT": req.header("user-agent") or "-"}
        size = self.exchange.sent if self.exchange.sent or not self.exchange.is_head else None
        log(environ, self.exchange.head.status, size, time.monotonic() - self.started)
