"""Without the `websockets` package (the `asgi` extra), a WebSocket request to an ASGI app
is served as plain HTTP with one warning, as uvicorn does, instead of breaking the worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from asgi_rig import shadow_env
from support import free_port, http_raw, wait_for, write_app

APP = '''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("http scope, upgrade=" + dict(scope["headers"]).get(b"upgrade", b"-").decode()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''
HANDSHAKE = (b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.timeout(60)
def test_a_websocket_request_without_the_package_is_served_as_http(masters, tmp_path: Path) -> None:
    write_app(tmp_path, "wsapp", APP)
    port = free_port()
    m = masters("wsapp:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", cwd=tmp_path,
                env=shadow_env(tmp_path, "websockets"))
    answer = http_raw(port, HANDSHAKE)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert answer.endswith(b"http scope, upgrade=websocket"), answer[-200:]
    wait_for(lambda: "the websockets package is not installed" in m.log(), what="the warning")
    again = http_raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 200 "), "the worker lives on"
    assert m.log().count("the websockets package is not installed") == 1

