"""One client connection: its socket, its parser, and the little I/O the worker needs.

Sockets stay in blocking mode with kernel send/receive timeouts (SO_SNDTIMEO /
SO_RCVTIMEO). The selector only calls `receive` when the socket is readable, so it never
blocks there; a thread running the app may block on a slow client, but never longer than
the timeout. This saves the poll() that Python's own timeout mode adds to every call.
"""

from __future__ import annotations

import socket
import struct
import time

from .request import Limits, RequestParser

RECV_SIZE = 65536
LINGER_SECONDS = 0.5


class Connection:
    """A client connection, parked in the selector between requests."""

    __slots__ = ("sock", "fd", "peer", "server", "parser", "last_active", "closed", "unix",
                 "busy", "served", "linger", "registered")

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[str, int] | None,
        server: tuple[str, str],
        limits: Limits,
        io_timeout: float,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.server = server
        self.unix = peer is None
        self.parser = RequestParser(limits)
        self.last_active = time.monotonic()
        self.closed = False
        self.busy = False  # owned by a pool thread right now: the sweep leaves it alone
        self.served = False  # has answered a request: idle from now on means kept-alive
        self.linger = False  # close with a lingering read (after refusing a request)
        self.registered = False  # in the worker's epoll set
        seconds = int(io_timeout)
        timeval = struct.pack("ll", seconds, int((io_timeout - seconds) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        if not self.unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def receive(self, wait: bool = False) -> bool:
        """Read what arrived and parse it; False when the client has gone.

        Without `wait` the read never blocks (the selector said the socket is readable,
        or we only peek for a pipelined request); with it, it waits up to the I/O timeout.
        """
        try:
            data = self.sock.recv(RECV_SIZE, 0 if wait else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return not wait  # with wait, EAGAIN means the receive timeout ran out
        except OSError:
            return False
        if not data:
            return False
        self.last_active = time.monotonic()
        self.parser.feed(data)
        return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        """Close the connection.

        With `self.linger`, bytes the client may still be sending (a body we refused, a
        pipelined request after an error) are read and dropped for a moment after our FIN:
        closing with unread data makes the kernel send a reset, which can destroy the
        error response before the client reads it.
        """
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
            if self.linger:
                self._drain(LINGER_SECONDS)
        except OSError:
            pass
        self.sock.close()

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        self.sock.settimeout(seconds)
        while time.monotonic() < deadline:
            if not self.sock.recv(RECV_SIZE):
                return
