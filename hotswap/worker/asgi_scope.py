"""The ASGI connection scope of a parsed request, and the status line of an ASGI response.

Built from what hotswap's parser already read (hotswap.http.request); X-Forwarded-Proto and
X-Forwarded-For are believed exactly as for WSGI (hotswap.http.forwarded), by running the
same rules on a small environ.
"""

from __future__ import annotations

import http
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..http import response as resp
from ..http.request import Request

if TYPE_CHECKING:
    from .asgi_http import HttpProtocol, Site

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


def http_scope(proto: HttpProtocol, req: Request, kind: str = "http") -> dict[str, Any]:
    """The ASGI connection scope of one request (http or websocket)."""
    site = proto.site
    raw_path = req.path or (b"/" if kind == "websocket" else b"")
    text = raw_path.decode("latin-1")
    headers = [(_header_name(name), value.encode("latin-1")) for name, value in req.headers]
    scheme, client = _forwarded(site, proto, req)
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": ASGI_VERSION,
        "http_version": req.version,
        "scheme": scheme if kind == "http" else ("wss" if scheme == "https" else "ws"),
        "method": req.method,
        "path": unquote(text) if "%" in text else text,
        "raw_path": raw_path,
        "query_string": req.query,
        "root_path": site.root_path,
        "headers": headers,
        "server": proto.server,
        "client": client,
        "state": site.state.copy(),
    }
    if kind == "websocket":
        del scope["method"]
        scope["subprotocols"] = [p.strip() for v in _values(req, "sec-websocket-protocol")
                                 for p in v.split(",") if p.strip()]
        scope["extensions"] = {"websocket.http.response": {}}
    return scope


def _values(req: Request, name: str) -> list[str]:
    return [v for n, v in req.headers if n.lower() == name]


def _forwarded(site: Site, proto: HttpProtocol, req: Request) -> tuple[str, tuple[str, int] | None]:
    """X-Forwarded-Proto/-For, believed as for WSGI (hotswap.http.forwarded); "https" on a
    TLS connection unless a trusted proxy says otherwise."""
    client = proto.client
    scheme = "https" if proto.tls else "http"
    proto_value = req.header("x-forwarded-proto")
    chain = req.header("x-forwarded-for")
    if not proto_value and not chain:
        return scheme, client
    environ = {"wsgi.url_scheme": scheme, "REMOTE_ADDR": client[0] if client else ""}
    if proto_value:
        environ["HTTP_X_FORWARDED_PROTO"] = proto_value
    if chain:
        environ["HTTP_X_FORWARDED_FOR"] = chain
    site.proxies.apply(environ, client)
    if client is None or environ["REMOTE_ADDR"] != client[0]:
        client = (environ["REMOTE_ADDR"], 0) if environ["REMOTE_ADDR"] else client
    return environ["wsgi.url_scheme"], client


def _header_name(name: str) -> bytes:
    """ASGI wants lowercased names as bytes; clients send the same few names each time."""
    key = _names.get(name)
    if key is None:
        key = name.lower().encode("latin-1")
        if len(_names) < 1024 and len(name) <= 64:
            _names[name] = key
    return key


_names: dict[str, bytes] = {}
_status_lines: dict[int, str] = {}


def status_line(code: object) -> str:
    """200 -> "200 OK" (the reason phrase from http.HTTPStatus, cached)."""
    if type(code) is not int:
        raise resp.BadResponse(f"status must be an int, got {type(code).__name__}")
    line = _status_lines.get(code)
    if line is None:
        try:
            line = f"{code} {http.HTTPStatus(code).phrase}"
        except ValueError:
            line = str(code)
        if 100 <= code <= 999:
            _status_lines[code] = line
    return line
