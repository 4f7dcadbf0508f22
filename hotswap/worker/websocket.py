"""WebSocket (RFC 6455) connections for ASGI apps, on `websockets`' sans-I/O protocol.

Why `websockets` (its `ServerProtocol`) rather than wsproto: both are sans-I/O and well
kept, but websockets validates the opening handshake fully (key, version, upgrade
headers, each failure mapped to the right 4xx), answers pings and echoes close frames by
itself, bounds message size, and unmasks frames in C (its `speedups` extension), which
is most of the CPU a busy echo server spends; wsproto unmasks in pure Python. It is what
uvicorn's default WebSocket implementation uses too, so apps see the same behaviour.
It is imported only by a worker that meets a WebSocket request: WSGI workers, and ASGI
apps without WebSockets, never need it installed.

The handshake request was already parsed (and held to the limits) by hotswap's own
parser; its head is handed to `ServerProtocol` as bytes, the sans-I/O way in.

ASGI side: `websocket.connect` first; `websocket.accept` (subprotocol, headers) sends
the 101; `websocket.send` text/bytes; `websocket.close` (before accept: a 403, as the
spec asks); the `websocket.http.response` extension lets an app deny with a response of
its own. The app sees `websocket.disconnect` with the client's close code (1006 when
the TCP connection ended without a close frame).

Going away: a retiring worker calls `going_away()` before its drain deadline: a close
frame 1001 goes out, the client answers with its own close (its library then reconnects,
to the new generation) and the TCP connection is closed cleanly (FIN, never a reset);
a client that does not answer within CLOSE_TIMEOUT is closed anyway, still with a FIN.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from ..http import response as resp
from ..http.exchange import Exchange
from ..http.request import Request
from .asgi_http import ClientDisconnected, HttpProtocol
from .asgi_scope import http_scope, status_line

CLOSE_TIMEOUT = 2.0  # after our close frame, wait this long for the client's before closing TCP
QUEUE_HIGH = 64  # received messages the app has not taken yet: pause reading
MAX_MESSAGE = 16 * 1024 * 1024  # as uvicorn's default ws-max-size


class Session:
    """One WebSocket connection: the handshake, then frames both ways, then the close."""

    def __init__(self, proto: HttpProtocol, req: Request) -> None:
        from websockets.frames import Opcode
        from websockets.server import ServerProtocol

        self.proto = proto
        self.site = proto.site
        self.req = req
        self.op = Opcode
        self.ws = ServerProtocol(max_size=MAX_MESSAGE)
        self.scope = http_scope(proto, req, "websocket")
        self.response: Any = None  # the 101 to send once the app accepts
        self.accepted = False
        self.closed = False  # a close frame was sent or received, or TCP is gone
        self.close_sent = False
        self.denial: Exchange | None = None  # the websocket.http.response extension
        self.connect_delivered = False
        self.queue: deque[dict[str, Any]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.fragments: list[bytes] = []
        self.fragment_text = False
        self.reading_paused = False
        self.close_timer: asyncio.TimerHandle | None = None
        self.started = time.monotonic()
        self.log_debug = proto.site.log_debug

    # -- opening handshake --------------------------------------------------------------

    def start(self) -> None:
        """Check the handshake; a bad one is answered 4xx at once, a good one runs the app."""
        self.ws.receive_data(_head_bytes(self.req))
        events = self.ws.events_received()
        if not events:
            self._refuse(400, "bad WebSocket handshake")
            return
        response = self.ws.accept(events[0])
        if response.status_code != 101:
            self.site.log_error("refused WebSocket handshake from %s: %d %s",
                                self.proto.client[0] if self.proto.client else "unix socket",
                                response.status_code, (response.body or b"").decode().strip())
            self.ws.send_response(response)
            self._flush()
            self.proto.close()
            return
        self.response = response
        self.site.count_request()
        self.proto.loop.create_task(self._run())

    def _refuse(self, code: int, message: str) -> None:
        self.proto.write(resp.error_response(code, message))
        self.proto.close()

    async def _run(self) -> None:
        try:
            await self.site.app(self.scope, self.receive, self.send)
        except Exception as exc:
            if self.closed:  # e.g. Starlette's WebSocketDisconnect: the app heard the end
                self.log_debug("WebSocket app at %s ended with %r", self.scope["path"], exc)
            elif not isinstance(exc, ClientDisconnected):
                self.site.log_error("error in WebSocket app at %s: %s", self.scope["path"], exc,
                                    exc_info=True)
            self._ended(1011, 500)
        else:
            self._ended(1000, 403)

    def _ended(self, close_code: int, refuse_code: int) -> None:
        """The app returned: close what it left open (1000, or 1011 after an error)."""
        if self.denial is not None:
            self.proto.close()
        elif not self.accepted:
            if not self.closed:
                self._deny(refuse_code)
        elif not self.closed and not self.close_sent:
            self._send_close(close_code, "")

    # -- receive ------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        if not self.connect_delivered:
            self.connect_delivered = True
            return {"type": "websocket.connect"}
        while not self.queue:
            if self.closed and not self.queue:
                return {"type": "websocket.disconnect", "code": self._close_code(), "reason": ""}
            waiter = self.waiter = self.proto.loop.create_future()
            await waiter
        message = self.queue.popleft()
        if self.reading_paused and len(self.queue) < QUEUE_HIGH // 2:
            self.reading_paused = False
            if self.proto.transport is not None and not self.proto.closed:
                self.proto.transport.resume_reading()
        return message

    def _close_code(self) -> int:
        """The client's close code; 1006 when TCP ended without a close frame."""
        received = self.ws.close_rcvd
        return 1006 if received is None else int(received.code)

    def _push(self, message: dict[str, Any]) -> None:
        self.queue.append(message)
        if len(self.queue) >= QUEUE_HIGH and not self.reading_paused and self.proto.transport:
            self.reading_paused = True
            self.proto.transport.pause_reading()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- frames from the client ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.proto.last_active = time.monotonic()
        self.ws.receive_data(data)
        for frame in self.ws.events_received():
            self._frame(frame)
        self._flush()

    def _frame(self, frame: Any) -> None:
        op = frame.opcode
        if op is self.op.TEXT or op is self.op.BINARY:
            if frame.fin:
                self._message(bytes(frame.data), op is self.op.TEXT)
            else:
                self.fragments, self.fragment_text = [bytes(frame.data)], op is self.op.TEXT
        elif op is self.op.CONT:
            self.fragments.append(bytes(frame.data))
            if frame.fin:
                data, self.fragments = b"".join(self.fragments), []
                self._message(data, self.fragment_text)
        elif op is self.op.CLOSE:
            self._closed()

    def _message(self, data: bytes, text: bool) -> None:
        if not self.accepted or self.closed:
            return
        if text:
            try:
                self._push({"type": "websocket.receive", "text": data.decode("utf-8")})
            except UnicodeDecodeError:
                self.ws.fail(1007, "invalid UTF-8 in a text message")
                self._closed()
        else:
            self._push({"type": "websocket.receive", "bytes": data})

    def _closed(self) -> None:
        """A close frame came (or we failed the connection): the app hears the end."""
        if not self.closed:
            self.closed = True
            received = self.ws.close_rcvd
            self._push({"type": "websocket.disconnect", "code": self._close_code(),
                        "reason": received.reason if received is not None else ""})
            self.site.on_change()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None

    def connection_lost(self) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
        if not self.closed:
            self.closed = True
            self._push({"type": "websocket.disconnect", "code": self._close_code(), "reason": ""})
        self._wake()

    def _flush(self) -> None:
        """Write what the protocol wants sent; its end-of-stream marker closes TCP (FIN)."""
        for data in self.ws.data_to_send():
            if data:
                self.proto.write(data)
            else:
                self.proto.close()
        if self.ws.close_expected() and self.close_timer is None and not self.proto.closed:
            self.close_timer = self.proto.loop.call_later(CLOSE_TIMEOUT, self.proto.close)

    # -- send -------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            if self.closed or self.close_sent or self.proto.closed:
                raise ClientDisconnected("the WebSocket is closed")
            text = message.get("text")
            if text is not None:
                self.ws.send_text(text.encode("utf-8"))
            else:
                self.ws.send_binary(bytes(message.get("bytes") or b""))
            self._flush()
            if not await self.proto.drain():
                raise ClientDisconnected("the client stopped reading")
        elif kind == "websocket.close":
            if not self.accepted:
                self._deny(403)
            elif not self.close_sent and not self.closed:
                self._send_close(int(message.get("code", 1000)), message.get("reason") or "")
        elif kind in ("websocket.http.response.start", "websocket.http.response.body"):
            self._denial(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} in a websocket scope")

    def _accept(self, message: dict[str, Any]) -> None:
        if self.accepted or self.response is None or self.denial is not None:
            raise RuntimeError("websocket.accept sent twice, or after a denial")
        response = self.response
        subprotocol = message.get("subprotocol")
        if subprotocol:
            response.headers["Sec-WebSocket-Protocol"] = subprotocol
        for name, value in message.get("headers") or ():
            response.headers[bytes(name).decode("latin-1")] = bytes(value).decode("latin-1")
        self.ws.send_response(response)
        self.accepted = True
        self._flush()
        self.site.on_change()

    def _send_close(self, code: int, reason: str) -> None:
        self.close_sent = True
        self.ws.send_close(code, reason)
        self._flush()

    def going_away(self) -> None:
        """The drain deadline is near: close with 1001 so the client reconnects elsewhere."""
        if self.accepted and not self.closed and not self.close_sent:
            self._send_close(1001, "server restarting")
        elif not self.accepted and self.denial is None and not self.closed:
            self._deny(503)

    def _deny(self, code: int) -> None:
        """Before accept: a plain HTTP answer (403 when the app closed), then close."""
        self.closed = True
        self.proto.write(resp.error_response(code))
        self.proto.close()

    def _denial(self, message: dict[str, Any]) -> None:
        """The websocket.http.response extension: the app's own HTTP answer, framed by the
        same Exchange as any HTTP response (the request said Upgrade: Connection closes)."""
        if self.accepted:
            raise RuntimeError("websocket.http.response after websocket.accept")
        if message["type"] == "websocket.http.response.start":
            if self.denial is not None:
                raise RuntimeError("websocket.http.response.start sent twice")
            self.denial = Exchange(self.req)
            headers = [(bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                       for n, v in message.get("headers", ())]
            self.denial.start(status_line(message["status"]), headers)
            return
        if self.denial is None:
            raise RuntimeError("websocket.http.response.body before its start")
        body = bytes(message.get("body", b""))
        if message.get("more_body", False):
            self.proto.write(self.denial.send(body) if body else self.denial.flush_head())
            return
        exchange = self.denial
        wire = exchange.send(body, len(body)) if exchange.state == "started" else exchange.send(body)
        self.proto.write(wire + exchange.end())
        self.closed = True
        self.proto.close()


def _head_bytes(req: Request) -> bytes:
    """The handshake's head again, for ServerProtocol's own parser (already validated)."""
    lines = [f"GET {req.target.decode('latin-1')} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in req.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
