"""The in-process health check: a new worker asks its own app before it serves anyone.

`--health-path /healthz` makes every worker call the app once with a synthetic
`GET /healthz`, after loading it and before accepting a connection. A version that
imports fine but answers 5xx (a missing setting, a database it cannot reach) then
fails to boot like one that does not import, so it never goes live: the new master
reports the failure and the old generation keeps serving. No socket is involved, so
nothing an old worker answers can count.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 64 * 1024  # read at most this much of the answer; only the status matters


def check_app(app: Callable[..., Any], target: str, base_environ: dict[str, Any]) -> str | None:
    """None when `app` answers GET `target` with a 2xx, else the one-line reason."""
    environ = _environ(target, base_environ)
    status: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status[:] = [line]
        return lambda _data: None

    try:
        body = app(environ, start_response)
        _consume(body)
    except Exception as exc:  # the app's own bug: report it, never crash the worker
        return f"health check GET {target} raised {type(exc).__name__}: {exc}"
    if not status:
        return f"health check GET {target}: the app never called start_response"
    code = status[0].split(" ", 1)[0]
    if not (code.isdigit() and 200 <= int(code) < 300):
        return f"health check GET {target} answered {status[0]}"
    return None


def _environ(target: str, base: dict[str, Any]) -> dict[str, Any]:
    parts = urlsplit(target)
    environ = dict(base)
    environ.update({
        "REQUEST_METHOD": "GET",
        "PATH_INFO": parts.path or "/",
        "QUERY_STRING": parts.query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "HTTP_HOST": environ.get("SERVER_NAME", "localhost"),
        "HTTP_USER_AGENT": "hotswap-health-check",
        "wsgi.input": io.BytesIO(b""),
        "hotswap.health_check": True,
    })
    environ.setdefault("SERVER_NAME", "localhost")
    environ.setdefault("SERVER_PORT", "0")
    environ.setdefault("SCRIPT_NAME", "")
    environ.setdefault("wsgi.url_scheme", "http")
    return environ


def _consume(body: Iterable[bytes]) -> None:
    read = 0
    try:
        for chunk in body:
            read += len(chunk)
            if read >= MAX_BODY:
                break
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


async def check_asgi_app(app: Callable[..., Any], target: str, state: dict[str, Any]) -> str | None:
    """The same check for an ASGI app: one in-process `GET target`, None on a 2xx."""
    parts = urlsplit(target)
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "method": "GET", "scheme": "http", "path": parts.path or "/",
        "raw_path": (parts.path or "/").encode("latin-1"), "query_string": parts.query.encode(),
        "root_path": "", "headers": [(b"host", b"localhost"),
                                     (b"user-agent", b"hotswap-health-check")],
        "client": ("127.0.0.1", 0), "server": ("localhost", 0), "state": state.copy(),
        "extensions": {"hotswap.health_check": {}},
    }
    status: list[int] = []
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))

    try:
        await app(scope, receive, send)
    except Exception as exc:
        return f"health check GET {target} raised {type(exc).__name__}: {exc}"
    if not status:
        return f"health check GET {target}: the app never started a response"
    if not 200 <= status[0] < 300:
        return f"health check GET {target} answered {status[0]}"
    return None
