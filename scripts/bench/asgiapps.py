"""The ASGI app every ASGI contender serves: a plain ASGI 3 callable, no framework.

`/` answers the same 13-byte hello as the WSGI app (apps.HELLO, same headers), `/16k` the
same 16 KiB, anything else a 404; a WebSocket on any path echoes every message back as
it came (text as text, bytes as bytes). Lifespan is answered at once, so servers that
run it (all three do) pay the same. The response is built at import: the benchmark
measures the server, not the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from apps import BIG, HELLO

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_MISSING = b"not found\n"
_RESPONSES = {
    "/": (200, [(b"content-type", b"text/plain"), (b"content-length", str(len(HELLO)).encode())], HELLO),
    "/16k": (200, [(b"content-type", b"application/octet-stream"),
                   (b"content-length", str(len(BIG)).encode())], BIG),
}
_NOT_FOUND = (404, [(b"content-type", b"text/plain"), (b"content-length", str(len(_MISSING)).encode())],
              _MISSING)


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """One callable for HTTP, WebSocket and lifespan, so each server is started once."""
    kind = scope["type"]
    if kind == "http":
        await _http(scope, send)
    elif kind == "websocket":
        await _echo(receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)


async def _http(scope: dict[str, Any], send: Send) -> None:
    """A GET has no body to read: like the WSGI hello, the app never calls receive."""
    status, headers, body = _RESPONSES.get(scope["path"], _NOT_FOUND)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _echo(receive: Receive, send: Send) -> None:
    """Accept, then send back every message until the client leaves."""
    while True:
        event = await receive()
        kind = event["type"]
        if kind == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif kind == "websocket.receive":
            if event.get("text") is not None:
                await send({"type": "websocket.send", "text": event["text"]})
            else:
                await send({"type": "websocket.send", "bytes": event.get("bytes") or b""})
        elif kind == "websocket.disconnect":
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
