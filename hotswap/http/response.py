"""Response heads and body framing, without any I/O.

The app's status and headers are checked here before a single byte is sent, so a bad
header (a CR/LF in a value is a response-splitting attack) becomes a clean 500 instead of
a corrupt stream. Framing (Content-Length, chunked, or close-delimited) is decided once,
from what the app declared and what the client speaks.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .. import __version__

SERVER_SOFTWARE = f"hotswap/{__version__}"  # the environ's SERVER_SOFTWARE, always
SERVER = SERVER_SOFTWARE  # the Server header's value; None: no Server header (see set_server)
_SERVER_LINES: tuple[str, ...] = (f"Server: {SERVER}",)

_STATUS = re.compile(r"[1-9][0-9]{2}( [^\x00-\x08\x0a-\x1f\x7f]*)?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HOP_BY_HOP = frozenset(
    ("keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
     "transfer-encoding", "upgrade")
)
_REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found", 408: "Request Timeout",
    413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}


class BadResponse(Exception):
    """The app broke the WSGI contract; the request gets a 500 instead."""


@dataclass
class Head:
    """A checked response head, and how its body will be framed."""

    status: str
    code: int
    headers: list[tuple[str, str]]
    content_length: int | None
    close: bool = False
    chunked: bool = False

    @property
    def bodiless(self) -> bool:
        """204 and 304 never carry a body, whatever the app yields (1xx is refused)."""
        return self.code < 200 or self.code in (204, 304)


def check_head(status: object, headers: object) -> Head:
    """Validate what the app passed to start_response (PEP 3333 types, RFC 9110 syntax)."""
    if type(status) is not str:
        raise BadResponse(f"status must be a str, got {type(status).__name__}")
    if not _STATUS.fullmatch(status):
        raise BadResponse(f"malformed status {status!r}")
    if type(headers) is not list:
        raise BadResponse(f"response headers must be a list, got {type(headers).__name__}")
    checked: list[tuple[str, str]] = []
    content_length = None
    close = False
    latin1 = _is_latin1(status)
    for item in headers:
        name, value, lname, item_latin1 = _check_item(item)
        if lname == "connection":
            close = close or "close" in value.lower()
            continue
        if lname in _HOP_BY_HOP:
            raise BadResponse(f"hop-by-hop header {name!r} is the server's to send")
        if lname == "content-length":
            if not value.strip().isdigit():
                raise BadResponse(f"malformed Content-Length {value!r}")
            content_length = int(value)
        latin1 = latin1 and item_latin1
        checked.append((name, value))
    if not latin1:
        raise BadResponse("response status and headers must be latin-1")
    if status[0] == "1":
        raise BadResponse(f"{status!r} is an interim status, not a final response")
    return Head(status, int(status[:3]), checked, content_length, close)


def _check_item(item: object) -> tuple[str, str, str, bool]:
    """One header's syntax checked: (name, stripped value, lowercase name, is latin-1).

    Apps send the same header tuples over and over, so the verdict on a well-typed one
    is kept (a bounded cache): checking it afresh was most of a small response's cost.
    """
    if type(item) is tuple and len(item) == 2 and type(item[0]) is str and type(item[1]) is str:
        known = _checked_items.get(item)
        if known is not None:
            return known
    if type(item) is not tuple or len(item) != 2:
        raise BadResponse(f"response header {item!r} is not a (name, value) tuple")
    name, value = item
    if type(name) is not str or not _TOKEN.fullmatch(name):
        raise BadResponse(f"malformed response header name {name!r}")
    if type(value) is not str or _BAD_VALUE.search(value):
        raise BadResponse(f"malformed value for response header {name!r}")
    value = value.strip(" \t")  # RFC 9110 §5.5: no leading/trailing whitespace
    verdict = (name, value, name.lower(), _is_latin1(value))
    if len(name) + len(value) <= 256:  # short ones only: the cache stays small
        if len(_checked_items) >= _CHECKED_ITEMS_MAX:
            _checked_items.clear()
        _checked_items[item] = verdict
    return verdict


_checked_items: dict[tuple[str, str], tuple[str, str, str, bool]] = {}
_CHECKED_ITEMS_MAX = 1024


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


class DateCache:
    """The Date header changes once a second; formatting it per request is waste."""

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = http_date(now)
        return self._value


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(seconds: float) -> str:
    """RFC 9110 IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").

    Formatted here rather than with email.utils.formatdate: importing the email package
    costs every master and worker about 0.3 MiB of RSS and 6 ms of start-up, for one line.
    """
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


_dates = DateCache()


def serialize(head: Head) -> bytes:
    """The bytes of the status line and header block."""
    lines = [f"HTTP/1.1 {head.status}", *_SERVER_LINES, f"Date: {_dates.get()}"]
    lines.extend(f"{name}: {value}" for name, value in head.headers)
    if head.chunked:
        lines.append("Transfer-Encoding: chunked")
    lines.append("Connection: close" if head.close else "Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def set_server(value: str | None) -> None:
    """The Server header of every response this process sends from now on; None: none.

    A process-wide setting (each worker sets it once at boot from --server-header), like
    gunicorn's module-level SERVER that its users overwrite from their config file.
    """
    global SERVER, _SERVER_LINES
    SERVER = value
    _SERVER_LINES = (f"Server: {value}",) if value else ()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def status_text(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Error')}"


def error_response(code: int, message: str = "") -> bytes:
    """A complete small response the server sends on its own (4xx/5xx), always closing."""
    reason = _REASONS.get(code, "Error")
    body = (message or reason).encode("latin-1", "replace") + b"\n"
    head = [
        f"HTTP/1.1 {code} {reason}",
        *_SERVER_LINES,
        f"Date: {_dates.get()}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
