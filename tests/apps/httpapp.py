"""One WSGI app with a route per behaviour the HTTP tests need.

It lives in a real file (copied into each test's tmp_path) rather than in strings, so
ruff checks it and a reader sees every route in one place. Routes are chosen by
PATH_INFO; anything not listed answers 404.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from wsgiref.validate import WSGIWarning, validator

# A validator *warning* (not only an assertion) must fail the request too.
warnings.simplefilter("error", WSGIWarning)

CHUNKS = [b"alpha-", b"beta-", b"gamma"]


def _json(start_response, data: dict, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _read_all(environ) -> bytes:
    """Read wsgi.input the way the validator allows: read(size) until it returns b''."""
    stream = environ["wsgi.input"]
    parts = []
    while True:
        piece = stream.read(7)
        if not piece:
            return b"".join(parts)
        parts.append(piece)


def echo(environ, start_response):
    """What the server told the app, and the body it received."""
    body = _read_all(environ)
    return _json(start_response, {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "remote_addr": environ.get("REMOTE_ADDR"),
        "scheme": environ["wsgi.url_scheme"],
        "content_length": environ.get("CONTENT_LENGTH"),
        "protocol": environ["SERVER_PROTOCOL"],
        "body": body.decode("latin-1"),
        "sha256": hashlib.sha256(body).hexdigest(),
        "pid": os.getpid(),
    })


def pid(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def stream(environ, start_response):
    """A generator and no Content-Length: the server must frame it (chunked or close)."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def pieces():
        yield from CHUNKS

    return pieces()


def write_callable(environ, start_response):
    """The legacy write() callable, mixed with a returned iterable."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written-")
    write(b"twice-")
    return [b"returned"]


def exc_info(environ, start_response):
    """start_response again with exc_info before anything is sent: the second status wins."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "yes")])
    try:
        raise RuntimeError("changed my mind")
    except RuntimeError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")],
                       sys.exc_info())
    return [b"second status"]


def file(environ, start_response):
    """wsgi.file_wrapper around a real file whose path is the query string."""
    path = environ["QUERY_STRING"]
    handle = open(path, "rb")  # closed by the server through the wrapper's close()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](handle, 8192)


def sleep(environ, start_response):
    seconds = float(environ["QUERY_STRING"] or "0.5")
    time.sleep(seconds)
    return pid(environ, start_response)


def slow_continue(environ, start_response):
    """Waits, leaves a marker, then reads: a 100 Continue seen before the marker was too early."""
    time.sleep(0.3)
    marker = environ["QUERY_STRING"]
    with open(marker, "w") as fh:
        fh.write("reading")
    return echo(environ, start_response)


def no_read(environ, start_response):
    """Answers without touching wsgi.input."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"unread"]


def late_read(environ, start_response):
    """Sends the head and a first piece, and only then reads the body."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"head-out;")
    return [b"read:" + _read_all(environ)]


def fail(environ, start_response):
    raise RuntimeError("boom from the test app")


def bad_status(environ, start_response):
    start_response("abc", [("Content-Type", "text/plain")])
    return [b"never"]


def bad_header(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("X-Split", "ok\r\nX-Injected: evil")])
    return [b"never"]


def str_body(environ, start_response):
    """Yields str where PEP 3333 demands bytes."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def pieces():
        yield "not bytes"

    return pieces()


def str_late(environ, start_response):
    """Yields str after the head and a first piece went out: too late for a 500."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def pieces():
        yield b"first-piece"
        yield "then a str"

    return pieces()


def _validated_inner(environ, start_response):
    """Behind wsgiref's validator: GET, POST (length or chunked), HEAD, streaming."""
    body = _read_all(environ)
    path = environ["PATH_INFO"]
    if path.endswith("/stream"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter(CHUNKS)
    text = f"{environ['REQUEST_METHOD']} {len(body)} {hashlib.sha256(body).hexdigest()}"
    data = text.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


ROUTES = {
    "/echo": echo,
    "/pid": pid,
    "/stream": stream,
    "/write": write_callable,
    "/exc_info": exc_info,
    "/file": file,
    "/sleep": sleep,
    "/continue": slow_continue,
    "/noread": no_read,
    "/late-read": late_read,
    "/raise": fail,
    "/bad-status": bad_status,
    "/bad-header": bad_header,
    "/str": str_body,
    "/str-late": str_late,
}

validated = validator(_validated_inner)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/validated"):
        return validated(environ, start_response)
    route = ROUTES.get(path)
    if route is None:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"not found\n"]
    return route(environ, start_response)
