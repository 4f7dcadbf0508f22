"""Accepting for the ASGI worker: the plain-asyncio `Acceptor`, and what a connection owes
before its first HTTP byte there (a PROXY header, then a TLS handshake).

Why an own acceptor: asyncio accepts, then sets the connection up in a task; a server
closed in between (a worker parking or retiring) fails that set-up on an assertion and
the connection is dropped with a reset (CPython 3.11's `Server._attach`). Accepting here
and handing each connection to `connect_accepted_socket` has no such window; the tasks
still running are in `pending`, so a retiring worker never leaves before they are
connections. uvloop sets a plain connection up within the accept itself: its own servers
are used there.

A listener with a preamble (--certfile or --proxy-protocol) is served by this acceptor on
uvloop too, for the same reason: with uvloop's `create_server(ssl=...)` a connection in
its TLS handshake is nowhere a retiring worker can see it (the protocol exists only after
the handshake), so the worker could leave and cut it. Here the set-up task, handshake
included, is in `pending` until it is a connection.

The preamble, in the order on the wire (as the WSGI worker's, preamble.py, whose
`Preamble` does the PROXY part here with `tls=None`):
- the PROXY header is read with MSG_PEEK from the raw socket, exactly its bytes consumed,
  from --proxy-allow-from peers only (others must not send one);
- then the raw socket, its ClientHello still in the kernel, goes to
  `loop.connect_accepted_socket(ssl=context, ssl_handshake_timeout=...)`.
Both together are bounded by --timeout from the accept. A preamble that fails closes the
connection without an answer, logged as the WSGI worker logs it.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from ..http.forwarded import TrustedProxies
from .preamble import DONE, Preamble, PreambleError

SNIFF_WAIT = 0.05  # a few bytes that may begin a PROXY header are there: look again after this


@dataclass(frozen=True)
class Entry:
    """What connections on one listener owe before HTTP: a TLS context and/or the
    --proxy-allow-from list (None: off), both within `timeout` (--timeout) of the accept."""

    tls: ssl.SSLContext | None
    proxies: TrustedProxies | None
    timeout: float


class Acceptor:
    """Accepts on one listening socket and sets each connection up (see the module doc).

    `factory(client)` makes the protocol; `client` is the address a PROXY header named, or
    None to keep the peer's.
    """

    BATCH = 64  # connections taken per wake-up, so one worker does not hog a burst

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Any,
                 pending: set[asyncio.Task[Any]], log: Any, entry: Entry | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.factory = factory
        self.pending = pending
        self.log = log
        self.entry = entry
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(self.BATCH):
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of fds: let other workers take it for a while
                self.log.error("accept on %s failed: %s", self.sock.getsockname(), exc)
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(0.5, self._again)
                return
            conn.setblocking(False)
            peer = (str(addr[0]), int(addr[1])) if isinstance(addr, tuple) else None
            task = self.loop.create_task(self._set_up(conn, peer))
            self.pending.add(task)
            task.add_done_callback(self._done)

    async def _set_up(self, conn: socket.socket, peer: tuple[str, int] | None) -> None:
        entry = self.entry
        if entry is None:
            await self.loop.connect_accepted_socket(functools.partial(self.factory, None), conn)
            return
        deadline = self.loop.time() + entry.timeout
        client = None
        if entry.proxies is not None:
            client, ok = await self._proxy_header(conn, peer, entry)
            if not ok:
                _drop(conn)
                return
        factory = functools.partial(self.factory, client)
        if entry.tls is None:
            await self.loop.connect_accepted_socket(factory, conn)
            return
        try:
            await self.loop.connect_accepted_socket(
                factory, conn, ssl=entry.tls,
                ssl_handshake_timeout=max(0.1, deadline - self.loop.time()))
        except ssl.SSLError as exc:
            self.log.info("%s: TLS handshake failed: %s", _who(peer), _reason(exc))
        except (OSError, TimeoutError) as exc:
            self.log.debug("%s: no TLS handshake: %s", _who(peer), exc or type(exc).__name__)

    async def _proxy_header(self, conn: socket.socket, peer: tuple[str, int] | None,
                            entry: Entry) -> tuple[tuple[str, int] | None, bool]:
        """Step the PROXY part of a Preamble until done: (the client it named, True), or
        (None, False) when the connection is to be closed."""
        preamble = Preamble(conn, peer, None, entry.proxies)
        try:
            async with asyncio.timeout(entry.timeout):
                while preamble.step() != DONE:
                    await self._readable(conn, preamble.sniff)
        except PreambleError as exc:
            self.log.log(exc.level, "%s", exc)
            return None, False
        except TimeoutError:
            self.log.debug("%s: no PROXY header within %g s; closed", _who(peer), entry.timeout)
            return None, False
        proxied = preamble.proxied
        return (proxied.client if proxied is not None else None), True

    async def _readable(self, conn: socket.socket, sniffing: bool) -> None:
        """Wait for more bytes. Peeked bytes stay in the kernel, and asyncio's readers are
        level-triggered: a peer that sent a few bytes that may begin a header (only the
        no-header check leaves them there) is looked at again after a moment, not spun on."""
        if sniffing and _has_bytes(conn):
            await asyncio.sleep(SNIFF_WAIT)
            return
        ready = self.loop.create_future()
        self.loop.add_reader(conn.fileno(), ready.set_result, None)
        try:
            await ready
        finally:
            self.loop.remove_reader(conn.fileno())

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.debug("connection not set up: %s", task.exception())

    def _again(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _drop(conn: socket.socket) -> None:
    """Close unanswered, our FIN first (as the WSGI worker's Connection.close): the
    client reads the end of the stream rather than only a reset for its unread bytes."""
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    conn.close()


def _has_bytes(conn: socket.socket) -> bool:
    try:
        return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


def _who(peer: tuple[str, int] | None) -> str:
    return f"{peer[0]}:{peer[1]}" if peer else "unix socket peer"


def _reason(exc: ssl.SSLError) -> str:
    """The WSGI worker's words (preamble.py), so logs read the same for both kinds of app."""
    reason = getattr(exc, "reason", None) or str(exc)
    if reason == "HTTP_REQUEST":
        return "plain HTTP sent to a TLS port"
    return str(reason).replace("_", " ").lower()
