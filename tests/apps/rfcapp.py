"""The WSGI app of tests/e2e/test_http_rfc.py and the gunicorn corpus test.

Routes by the first path segment, so any path (the corpus has many) reaches `echo`.
"""

from __future__ import annotations

import base64
import io
import json
import sys


def echo(environ, start_response):
    """Everything the server told the app about the request, body included."""
    stream = environ["wsgi.input"]
    body = b""
    while piece := stream.read(8192):
        body += piece
    data = {key: value for key, value in environ.items() if type(value) is str}
    data["body_b64"] = base64.b64encode(body).decode()
    out = json.dumps(data, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


def os_error(environ, start_response):
    """An OSError of the app's own, not the client's."""
    open("/nonexistent/hotswap-test-file")  # noqa: SIM115 - raises FileNotFoundError
    start_response("200 OK", [])
    return [b"never"]


def status(environ, start_response):
    """The status in the query string, with a body the server must drop for 204/304."""
    code = environ["QUERY_STRING"]
    start_response(f"{code} X", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"discarded"]


def sized(environ, start_response):
    """A list body without Content-Length: GET gets one, and HEAD must declare the same."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"twelve bytes"]


class TrackedFile(io.FileIO):
    """A real file (sendfile-able) that records, on close, how far it was read."""

    marker = ""

    def close(self) -> None:
        if not self.closed:
            with open(self.marker, "w") as fh:
                fh.write(str(self.tell()))
        super().close()


def file(environ, start_response):
    path, _, marker = environ["QUERY_STRING"].partition("&")
    handle = TrackedFile(path, "rb")
    handle.marker = marker
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](handle, 8192)


def empty_write_then_exc_info(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"")
    try:
        raise RuntimeError("changed my mind")
    except RuntimeError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
    return iter([b"second ", b"status"])


def cookie(environ, start_response):
    """Django's SimpleCookie output keeps a leading space in the value."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2"),
                              ("Set-Cookie", " csrftoken=abc; Path=/")])
    return [b"ok"]


ROUTES = {
    "oserror": os_error,
    "status": status,
    "sized": sized,
    "file": file,
    "empty-write": empty_write_then_exc_info,
    "cookie": cookie,
}


def app(environ, start_response):
    first = environ["PATH_INFO"].lstrip("/").partition("/")[0]
    return ROUTES.get(first, echo)(environ, start_response)
