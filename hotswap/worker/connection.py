"""One client connection: its socket, its parser, and the little I/O the worker needs.

Sockets stay in blocking mode with kernel send/receive timeouts (SO_SNDTIMEO /
SO_RCVTIMEO). The selector only calls `receive` when the socket is readable, so it never
blocks there; a thread running the app may block on a slow client, but never longer than
the timeout. This saves the poll() that Python's own timeout mode adds to every call.

A per-call timeout alone does not bound a response: a client that reads a byte now and
then restarts it at every call. So each response also has a deadline, `response_time`
seconds after its first byte (derived from --timeout, the number the master kills a
silent worker by), which every send and sendfile call respects. The head of a request
has one too (`head_started`, checked by the worker's sweep), and the lingering read after
a refused request is a state the worker's loop times, never a blocking wait.

A TLS connection (`start_tls`, once the worker's loop finished its handshake, see
preamble.py) cannot use kernel timeouts: Python's ssl module retries a read or write
that hit SO_RCVTIMEO/SO_SNDTIMEO for ever in blocking mode. It runs in Python's timeout
mode instead (same bound, raised as TimeoutError), and a read that must not wait (the
loop's) switches it to non-blocking for that one call. Flags such as MSG_DONTWAIT and
MSG_PEEK do not exist on an SSLSocket; sendfile(2) would bypass the encryption, so the
WSGI layer sends files with send() there.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import time

from ..http.request import Limits, RequestParser
from ..http.response import CONTINUE

RECV_SIZE = 65536
LINGER_TIME = 2.0  # a lingering close ends this long after it began, whatever the client sends
LINGER_IDLE = 0.5  # ... or once the client has sent nothing for this long
SENDFILE_CHUNK = 1 << 16  # one splice round: a larger count can wait SO_SNDTIMEO once per round


class Connection:
    """A client connection, parked in the selector between requests."""

    __slots__ = ("sock", "fd", "peer", "server", "parser", "last_active", "closed", "unix",
                 "busy", "served", "linger", "registered", "io_timeout", "response_time",
                 "deadline", "sndtimeo", "head_started", "lingering", "linger_until",
                 "linger_cap", "timed_out", "tls", "preamble")

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[str, int] | None,
        server: tuple[str, str],
        limits: Limits,
        io_timeout: float,
        response_time: float | None = None,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.server = server
        self.unix = peer is None
        self.parser = RequestParser(limits)
        self.last_active = time.monotonic()
        self.head_started: float | None = self.last_active  # a new connection owes a head
        self.closed = False
        self.busy = False  # owned by a pool thread right now: the sweep leaves it alone
        self.served = False  # has answered a request: idle from now on means kept-alive
        self.linger = False  # close with a lingering read (after refusing a request)
        self.lingering = False  # shut for writing, reading and dropping until linger_until
        self.linger_until = 0.0  # the linger ends then (LINGER_IDLE after the last bytes)...
        self.linger_cap = 0.0  # ... and by then at the latest (LINGER_TIME after it began)
        self.registered = False  # in the worker's epoll set
        self.io_timeout = io_timeout
        self.response_time = io_timeout if response_time is None else response_time
        self.deadline: float | None = None  # of the response being sent, from its first byte
        self.timed_out = False  # a response missed its deadline: abort, do not flush
        self.sndtimeo = io_timeout
        self.tls = False  # an SSLSocket once start_tls ran
        self.preamble: object | None = None  # a worker.preamble.Preamble still in progress
        _set_timeout(sock, socket.SO_RCVTIMEO, io_timeout)
        _set_timeout(sock, socket.SO_SNDTIMEO, io_timeout)
        if not self.unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start_tls(self, sock: ssl.SSLSocket) -> None:
        """From now on, speak through `sock` (same fd, handshake done)."""
        self.sock = sock
        self.tls = True
        sock.settimeout(self.io_timeout)

    def receive(self, wait: bool = False) -> bool:
        """Read what arrived and parse it; False when the client has gone.

        Without `wait` the read never blocks (the selector said the socket is readable,
        or we only peek for a pipelined request); with it, it waits up to the I/O timeout.
        """
        if self.tls:
            return self._receive_tls(wait)
        try:
            data = self.sock.recv(RECV_SIZE, 0 if wait else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return not wait  # with wait, EAGAIN means the receive timeout ran out
        except OSError:
            return False
        return self._took(data)

    def _took(self, data: bytes) -> bool:
        """Feed what a receive got; False on end of stream."""
        if not data:
            return False
        self.last_active = time.monotonic()
        if self.head_started is None:
            self.head_started = self.last_active
        self.parser.feed(data)
        return True

    def _receive_tls(self, wait: bool) -> bool:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        if not wait:
            sock.settimeout(0.0)
        elif self.sndtimeo != self.io_timeout:  # one timeout for both directions on TLS
            sock.settimeout(self.io_timeout)  # a send near its deadline shortened it
            self.sndtimeo = self.io_timeout
        try:
            data = sock.recv(RECV_SIZE)
            while data and sock.pending():  # decrypted bytes epoll cannot tell us about
                data += sock.recv(RECV_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return not wait
        except OSError:  # TimeoutError (the I/O timeout), a reset, a TLS alert
            return False
        finally:
            if not wait:
                sock.settimeout(self.io_timeout)
                self.sndtimeo = self.io_timeout
        return self._took(data)

    def waiting(self) -> bool:
        """True when the client has sent bytes we have not read yet (or has hung up)."""
        if self.tls:
            if self.sock.pending():  # type: ignore[attr-defined]
                return True
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            return bool(poller.poll(0))
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"" (EOF) counts too
            return True
        except BlockingIOError:
            return False
        except OSError:
            return True  # an error to report: reading it is how the connection ends

    def next_request_waiting(self, current_complete: bool) -> bool:
        """Is another request already here, behind the one being answered? Then a closing
        worker keeps the connection open for it instead of dropping it."""
        if self.parser.ready:
            return True
        return current_complete and self.waiting()

    def new_response(self) -> None:
        """The next bytes sent begin a new response, with a deadline of its own."""
        self.deadline = None

    def send(self, data: bytes) -> None:
        """Send everything, by the response's deadline (TimeoutError past it)."""
        deadline = self.deadline
        if deadline is None:
            deadline = time.monotonic() + self.response_time
            if data != CONTINUE:  # an interim answer does not start the response's clock
                self.deadline = deadline
        view = memoryview(data)
        while view:
            self._bound_timeout(deadline)
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, ssl.SSLWantWriteError):
                continue  # SO_SNDTIMEO ran out with nothing sent: the deadline decides
            except TimeoutError:
                if not self.tls:
                    raise
                continue  # the same for TLS, whose sockets time out in Python
            view = view[sent:]

    def sendfile(self, file: object, offset: int, count: int) -> int:
        """sendfile(2) `count` bytes of `file` from `offset`, by the response's deadline.

        socket.sendfile would wait in an unbounded poll() on a socket without a Python
        timeout, so one client that stops reading could hold a thread for ever.
        """
        if self.deadline is None:
            self.deadline = time.monotonic() + self.response_time
        deadline = self.deadline
        fileno = file.fileno()  # type: ignore[attr-defined]
        total = 0
        while total < count:
            self._bound_timeout(deadline)
            try:
                sent = os.sendfile(self.fd, fileno, offset + total,
                                   min(SENDFILE_CHUNK, count - total))
            except BlockingIOError:
                continue
            if sent == 0:
                break  # the file is shorter than it said
            total += sent
        file.seek(offset + total)  # type: ignore[attr-defined]
        return total

    def send_nowait(self, data: bytes) -> None:
        """Send what the kernel takes at once, never waiting (an answer from the loop)."""
        try:
            if self.tls:
                self.sock.settimeout(0.0)
                self.sock.send(data)
            else:
                self.sock.send(data, socket.MSG_DONTWAIT)
        except (OSError, ValueError):
            pass

    def _bound_timeout(self, deadline: float) -> None:
        """Fail past the deadline; near it, shorten SO_SNDTIMEO so one call cannot overrun."""
        left = deadline - time.monotonic()
        if left <= 0:
            self.timed_out = True
            raise TimeoutError("response deadline passed (client too slow)")
        wanted = min(self.io_timeout, left)
        if wanted < self.sndtimeo - 0.01 or (wanted >= self.io_timeout > self.sndtimeo):
            self.sndtimeo = wanted
            if self.tls:
                self.sock.settimeout(wanted)
            else:
                _set_timeout(self.sock, socket.SO_SNDTIMEO, wanted)

    def begin_linger(self, now: float) -> None:
        """After refusing a request: our FIN goes out now, and whatever the client still
        sends (a body we refused, a pipelined request) is read and dropped for a moment,
        by the worker's loop. Closing with unread data makes the kernel send a reset,
        which can destroy the error response before the client reads it."""
        self.lingering = True
        self.linger_cap = now + LINGER_TIME
        self.linger_until = min(self.linger_cap, now + LINGER_IDLE)
        self.head_started = None
        if self.tls:
            self.sock.settimeout(0.0)  # linger_read runs in the loop: no poll() inside recv
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.linger_until = now

    def linger_read(self, now: float) -> bool:
        """Drop what arrived while lingering; False once the client is done (EOF, error)."""
        try:
            while True:
                data = self.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
                if not data:
                    return False
                self.linger_until = min(self.linger_cap, now + LINGER_IDLE)
        except BlockingIOError:
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Close the connection (a lingering one too, whatever is left of its linger)."""
        if self.closed:
            return
        self.closed = True
        if self.timed_out:
            # Reset: a graceful close would still push the megabytes queued in the kernel
            # to the same slow client, holding the connection long past its deadline.
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        elif not self.lingering:
            if self.tls:
                _close_notify(self.sock)
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.sock.close()


def _close_notify(sock: socket.socket) -> None:
    """Tell a TLS client the stream ends here (a close-delimited body is then known whole),
    without waiting for its own close_notify: non-blocking, best effort."""
    try:
        sock.settimeout(0.0)
        sock.unwrap()  # type: ignore[attr-defined]
    except (OSError, ValueError):
        pass


def _set_timeout(sock: socket.socket, option: int, seconds: float) -> None:
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, option,
                    struct.pack("ll", whole, int((seconds - whole) * 1e6)))
