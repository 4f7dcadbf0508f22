"""One exchange (a request and its response) as an explicit state machine, without I/O.

Every decision about how a response goes on the wire is taken here, in one place, in the
spirit of h11: the caller hands in what the application did (its status and headers, body
pieces, the end) and gets back the exact bytes to send, or an exception when the app broke
the rules. The WSGI bridge (wsgi.py) uses it on the inline and threaded paths; an ASGI
worker can drive the same object from a coroutine, since nothing here blocks or reads a
socket.

Response states, in order (`exc_info` may go back from STARTED to STARTED, never later):

    IDLE --start--> STARTED --first body bytes / end--> SENDING --end--> DONE

The framing (Content-Length, chunked, or close-delimited), the head's Connection header,
HEAD and 1xx/204/304 rules are decided when the head leaves STARTED, not before: an app may
still replace its head with `exc_info` until then, and the replacement is framed afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import response as resp
from .request import Request

IDLE = "idle"  # the app has not called start_response
STARTED = "started"  # a head is set, nothing sent
SENDING = "sending"  # the head is on the wire, body pieces follow
DONE = "done"  # the response is complete (or was cut)


class Exchange:
    """The request side's framing facts and the response side's state, for one request."""

    def __init__(self, req: Request, closing: Callable[[], bool] = lambda: False) -> None:
        self.req = req
        self.is_head = req.method == "HEAD"
        # Asked as the head leaves: a worker that began retiring while the app ran still
        # says Connection: close on this response, so no client sends another request.
        self.closing = closing
        self.state = IDLE
        self.head: resp.Head | None = None
        self.sent = 0  # body bytes sent, before chunk framing
        self.continue_sent = False
        self.continue_withheld = False  # the final head went out while a 100 was owed
        self.cut = False  # the body ended short or long of its Content-Length
        self.overflow = False  # the app sent more than its Content-Length (the rest dropped)

    # -- request side --------------------------------------------------------------------

    def need_continue(self) -> bool:
        """Ask before blocking for body bytes: True once, when a 100 Continue must go now.

        RFC 9110 §10.1.1: the client may wait for it before sending the body, so it is
        sent exactly when the app reads and nothing of the final response is out yet.
        """
        if (not self.req.expect_continue or self.continue_sent or self.continue_withheld
                or self.state in (SENDING, DONE) or self.req.complete):
            return False
        self.continue_sent = True
        return True

    # -- response side -------------------------------------------------------------------

    def start(self, status: object, headers: object, exc_info: Any = None) -> None:
        """PEP 3333 start_response: validate the head; with exc_info, replace one not sent."""
        if exc_info is not None:
            try:
                if self.state in (SENDING, DONE):
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.state != IDLE:
            raise AssertionError("start_response called twice without exc_info")
        self.head = resp.check_head(status, headers)
        self.state = STARTED

    def send(self, data: bytes, total: int | None = None) -> bytes:
        """Wire bytes for one body piece, with the head in front if it is not out yet.

        `total`: the whole body's length when it is known before anything is sent (a list
        body), so the head can carry it. An empty piece sends nothing, not even the head:
        PEP 3333 lets the app still replace its head after `write(b"")`.
        """
        if not data and total is None:
            self._require_head()
            return b""
        out = self._head_bytes(total) if self.state == STARTED else b""
        return out + self._body_bytes(data)

    def flush_head(self) -> bytes:
        """The head alone, framing fixed now (b"" once it is out): an ASGI stream whose
        first body message is empty still shows the client its head at once (SSE)."""
        return self._head_bytes(None) if self.state == STARTED else b""

    def end(self) -> bytes:
        """Wire bytes that finish the response: a head nobody wrote, or the last chunk."""
        out = self._head_bytes(0) if self.state == STARTED else b""
        head = self._require_head()
        if head.chunked:
            out += resp.LAST_CHUNK
        elif head.content_length is not None and self.sent < head.content_length and self.has_body:
            self.cut = True  # the client waits for bytes that will never come: hang up
        self.state = DONE
        return out

    def file_head(self, size: int) -> tuple[bytes, int] | None:
        """For sendfile(2): the head and how many file bytes follow it, or None to iterate.

        A HEAD answer declares the file's length, as GET would, without reading the file.
        """
        if self.state != STARTED:
            return None
        head = self._head_bytes(size)
        assert self.head is not None
        if not self.has_body:
            return head, 0
        count = size if self.head.content_length is None else min(size, self.head.content_length)
        return head, count

    def file_sent(self, count: int) -> None:
        self.sent += count

    @property
    def has_body(self) -> bool:
        return not self.is_head and self.head is not None and not self.head.bodiless

    @property
    def reusable(self) -> bool:
        """After DONE: may the connection carry another request?"""
        head = self.head
        return (self.state == DONE and head is not None and not head.close and not self.cut
                and not self.continue_withheld)

    # -- the decisions -------------------------------------------------------------------

    def _require_head(self) -> resp.Head:
        if self.head is None:
            raise resp.BadResponse("the app returned before calling start_response")
        return self.head

    def _head_bytes(self, total: int | None) -> bytes:
        """Fix the framing as the head leaves, and serialise it."""
        head = self._require_head()
        if head.bodiless:
            # RFC 9110 §8.6: no Content-Length on 1xx/204; on 304 it could only repeat the
            # 200's, which the server cannot know, so none is sent there either.
            head.headers = [(n, v) for n, v in head.headers if n.lower() != "content-length"]
            head.content_length = None
        elif head.content_length is None and total is not None:
            head.content_length = total
            head.headers.append(("Content-Length", str(total)))
        keep_alive = self.req.keep_alive and not self.closing()
        if (self.req.expect_continue and not self.continue_sent and not self.req.complete):
            # The client may or may not send its body now: the connection cannot carry
            # another request, and a 100 sent after this head would corrupt the body.
            self.continue_withheld = True
            keep_alive = False
        head.close = head.close or not keep_alive
        if head.content_length is None and not head.bodiless and not self.is_head:
            if self.req.version == "1.1":
                head.chunked = True
            else:
                head.close = True  # HTTP/1.0: the body ends where the connection does
        self.state = SENDING
        return resp.serialize(head)

    def _body_bytes(self, data: bytes) -> bytes:
        head = self._require_head()
        if not data or not self.has_body:
            return b""
        if head.content_length is not None:
            room = head.content_length - self.sent
            if len(data) > room:
                data = data[:room]
                self.cut = self.overflow = True
                head.close = True
        self.sent += len(data)
        if head.chunked:
            return resp.chunk(data) if data else b""
        return data
