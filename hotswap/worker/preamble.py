"""What a connection owes before its first HTTP byte: a PROXY header, then a TLS handshake.

Both are driven by the worker's epoll loop, one non-blocking step per readiness event,
never by a blocking call: the worker serves many connections from one loop (and
`--threads 1` runs requests inline in it), so a client that opens a TLS connection and
sends half a ClientHello, or a balancer that sends half a PROXY header, must cost one
idle fd, not the worker. The alternative, a blocking handshake on a pool thread with a
deadline, would tie up a thread per slow client and needs threads that `--threads 1`
does not have. A step that cannot go on says which readiness it waits for; the loop
registers the fd edge-triggered for it (peeking leaves bytes in the kernel, so a
level-triggered registration would spin). The whole preamble is bounded by --timeout:
the connection's request-head clock starts at accept, and the loop's sweep closes it.

Order on the wire: the PROXY header comes first (HAProxy and AWS NLB write it before
relaying the client's ClientHello), so it is read from the raw socket with MSG_PEEK and
exactly its own bytes are consumed; then OpenSSL reads the handshake from the same fd.

A preamble that fails (a malformed or missing PROXY header, a header from a peer not in
--proxy-allow-from, a handshake error such as plain HTTP on a TLS port or a missing
client certificate) closes the connection without an answer, as HAProxy does with
`accept-proxy`: before TLS is up there is no channel an HTTP error could be written on.

Nothing here knows the worker's loop: an asyncio server can step the same Preamble with
`tls=None` from `loop.add_reader` (the PROXY header only), then give the raw socket to
`loop.connect_accepted_socket(..., ssl=context, ssl_handshake_timeout=...)`, since exactly
the header's bytes were consumed and the ClientHello still waits in the kernel.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl

from ..http.forwarded import TrustedProxies
from ..http.proxy import MAX_HEADER, V2_SIGNATURE, HeaderParser, ProxyError, ProxyInfo, starts_like_header

DONE = 0
WANT_READ = select.EPOLLIN
WANT_WRITE = select.EPOLLOUT


class PreambleError(Exception):
    """The connection is to be closed; str() is one line, `level` the log level it deserves."""

    def __init__(self, message: str, level: int = logging.INFO) -> None:
        super().__init__(message)
        self.level = level


class Preamble:
    """The steps one new connection goes through before HTTP; see the module docstring.

    `proxy` is the --proxy-allow-from list when the PROXY protocol is on: peers on it
    must send a header, others must not (a unix-socket peer counts as allowed).
    """

    def __init__(self, sock: socket.socket, peer: tuple[str, int] | None,
                 tls: ssl.SSLContext | None, proxy: TrustedProxies | None) -> None:
        self.sock = sock
        self.peer = peer
        self.tls = tls
        allowed = proxy is not None and (peer is None or proxy.trusts(peer[0]))
        self.parser = HeaderParser() if allowed else None
        self.sniff = proxy is not None and not allowed  # refuse a header from this peer
        self.proxied: ProxyInfo | None = None
        self.tls_sock: ssl.SSLSocket | None = None

    def step(self) -> int:
        """Go as far as the bytes that arrived allow: DONE, WANT_READ or WANT_WRITE."""
        if self.parser is not None and self.proxied is None:
            if not self._read_header():
                return WANT_READ
        if self.sniff:
            if not self._check_no_header():
                return WANT_READ
            self.sniff = False
        if self.tls is not None:
            return self._handshake()
        return DONE

    def _peek(self, size: int, what: str) -> bytes | None:
        try:
            data = self.sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise PreambleError(f"{self._who()}: {exc} before {what}", logging.DEBUG) from None
        if not data:
            raise PreambleError(f"{self._who()}: closed before {what}", logging.DEBUG)
        return data

    def _read_header(self) -> bool:
        assert self.parser is not None
        data = self._peek(MAX_HEADER, "its PROXY header")
        if data is None:
            return False
        try:
            taken = self.parser.feed(data)
        except ProxyError as exc:
            raise PreambleError(f"{self._who()}: {exc}; connection closed") from None
        if taken:
            self.sock.recv(taken, socket.MSG_DONTWAIT)  # exactly the header's bytes, peeked above
        self.proxied = self.parser.result
        return self.proxied is not None

    def _check_no_header(self) -> bool:
        data = self._peek(len(V2_SIGNATURE), "its first bytes")
        if data is None:
            return False
        verdict = starts_like_header(data)
        if verdict:
            raise PreambleError(f"{self._who()}: PROXY header from a peer not in "
                                "--proxy-allow-from; connection closed")
        return verdict is False

    def _handshake(self) -> int:
        if self.tls_sock is None:
            self.sock.setblocking(False)
            assert self.tls is not None
            self.tls_sock = self.tls.wrap_socket(self.sock, server_side=True,
                                                 do_handshake_on_connect=False)
        try:
            self.tls_sock.do_handshake()
        except ssl.SSLWantReadError:
            return WANT_READ
        except ssl.SSLWantWriteError:
            return WANT_WRITE
        except ssl.SSLEOFError:
            raise PreambleError(f"{self._who()}: closed during the TLS handshake",
                                logging.DEBUG) from None
        except ssl.SSLError as exc:
            raise PreambleError(f"{self._who()}: TLS handshake failed: {_reason(exc)}") from None
        except OSError as exc:
            raise PreambleError(f"{self._who()}: TLS handshake failed: {exc}",
                                logging.DEBUG) from None
        return DONE

    def _who(self) -> str:
        return f"{self.peer[0]}:{self.peer[1]}" if self.peer else "unix socket peer"


def _reason(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None) or str(exc)
    if reason == "HTTP_REQUEST":
        return "plain HTTP sent to a TLS port"
    return reason.replace("_", " ").lower()
