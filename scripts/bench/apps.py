"""The WSGI apps every contender serves, from this one module, so no server gets an easier app.

`/` answers a 13-byte hello; `/16k` answers 16 KiB; anything else is a 404. Both bodies are
built once at import: the benchmark measures the server, not the app.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

HELLO = b"Hello, World!"
BIG = (b"0123456789abcdef" * 64)[:1024] * 16  # 16 KiB
assert len(BIG) == 16384

_HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
_BIG_HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))]
_MISSING = b"not found\n"


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The smallest useful response: what a health check or a tiny JSON API costs."""
    start_response("200 OK", list(_HELLO_HEADERS))
    return [HELLO]


def big(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A 16 KiB body: a typical HTML page, large enough that copying bytes starts to count."""
    start_response("200 OK", list(_BIG_HEADERS))
    return [BIG]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Both apps behind one callable, so each server is started once and serves both paths."""
    path = environ.get("PATH_INFO", "/")
    if path == "/":
        return hello(environ, start_response)
    if path == "/16k":
        return big(environ, start_response)
    start_response("404 Not Found", [("Content-Type", "text/plain"),
                                     ("Content-Length", str(len(_MISSING)))])
    return [_MISSING]
