"""A FastAPI app under hotswap answers like it does under uvicorn (issue 11).

The same module (tests/apps/fastapp.py) is served by hotswap (`hotswap start fastapp:app`,
ASGI detected) and by uvicorn as a subprocess; every endpoint's status, relevant headers
and body must match. Before the ASGI worker, hotswap called FastAPI as WSGI and every
request was a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket

import pytest
import requests
from asgi_rig import install_fastapp, uvicorn_server  # noqa: F401  (a fixture)
from support import free_port
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

HEADERS = ("content-type", "content-length", "x-test", "allow")
UPLOAD = bytes(range(256)) * 4000  # ~1 MB, every byte value


@pytest.fixture
def hotswap_server(masters, tmp_path):
    app = install_fastapp(tmp_path)
    port = free_port()
    masters(app, "--bind", f"127.0.0.1:{port}", "--workers", "2", cwd=tmp_path)
    return f"http://127.0.0.1:{port}"


REQUESTS = [
    ("GET", "/json", {}),
    ("GET", "/json?q=caf%C3%A9", {}),
    ("POST", "/items", {"json": {"name": "pen", "price": 1.5, "tags": ["a"]}}),
    ("POST", "/items", {"json": {"name": "pen"}}),  # 422 from validation
    ("POST", "/items", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),
    ("GET", "/items/7", {}),
    ("GET", "/items/404", {}),
    ("GET", "/items/abc", {}),
    ("GET", "/missing", {}),
    ("PUT", "/json", {}),  # 405 with Allow
    ("POST", "/form", {"data": {"name": "zoë"}, "files": {"upload": ("data.bin", UPLOAD)}}),
    ("POST", "/echo", {"data": b"x" * 300_000, "headers": {"Content-Type": "application/x-raw"}}),
    ("POST", "/echo", {"chunks": [b"chunk-1 ", b"chunk-2 ", b"chunk-3"]}),  # a chunked upload
    ("GET", "/stream?n=50", {}),
    ("GET", "/sse?n=3", {}),
    ("GET", "/lifespan", {}),
    ("GET", "/text", {}),
    ("HEAD", "/text", {}),
    ("GET", "/boom", {}),  # the app raises: 500
]


def answer(base: str, method: str, path: str, kwargs: dict) -> tuple:
    kwargs = dict(kwargs)
    if "chunks" in kwargs:
        kwargs["data"] = iter(kwargs.pop("chunks"))  # requests sends an iterator chunked
    response = requests.request(method, base + path, timeout=10, **kwargs)
    headers = {name: response.headers.get(name) for name in HEADERS}
    return response.status_code, headers, response.content


def test_http_answers_match_uvicorn(hotswap_server, uvicorn_server) -> None:  # noqa: F811
    """Every request of REQUESTS, each compared (all differences reported at once)."""
    differences = []
    for method, path, kwargs in REQUESTS:
        ours = answer(hotswap_server, method, path, kwargs)
        theirs = answer(uvicorn_server.base, method, path, kwargs)
        if ours != theirs or (ours[0] >= 500 and path != "/boom"):
            differences.append(f"{method} {path}: hotswap {ours[:2]} {ours[2][:200]!r}\n"
                               f"    uvicorn {theirs[:2]} {theirs[2][:200]!r}")
    assert not differences, "\n".join(differences)


def test_what_the_endpoints_say(hotswap_server) -> None:
    """Not just equal to uvicorn: right (the lifespan ran, the upload arrived intact)."""
    assert requests.get(hotswap_server + "/lifespan", timeout=10).json() == {
        "started": True, "version": "v1"}
    form = requests.post(hotswap_server + "/form", data={"name": "n"},
                         files={"upload": ("f.bin", UPLOAD)}, timeout=10).json()
    assert form["size"] == len(UPLOAD)
    assert form["sha256"] == hashlib.sha256(UPLOAD).hexdigest()
    stream = requests.get(hotswap_server + "/stream?n=50", timeout=10)
    assert stream.headers["Transfer-Encoding"] == "chunked"
    assert stream.text == "".join(f"piece {i}\n" for i in range(50))
    sse = requests.get(hotswap_server + "/sse?n=3", timeout=10)
    assert sse.text == "".join(f"data: event {i}\n\n" for i in range(3))


def test_keepalive_and_pipelining(hotswap_server) -> None:
    """Three requests in one write on one connection: three answers, in order."""
    port = int(hotswap_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /items/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                     b"GET /items/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 3
    first, second, third = data.index(b'{"item_id":1}'), data.index(b"hello"), data.index(
        b'{"item_id":3}')
    assert first < second < third
    assert data.count(b"Connection: keep-alive") == 2 and data.count(b"Connection: close") == 1
    with requests.Session() as session:
        ports = {session.get(hotswap_server + "/who", timeout=10).json()["port"] for _ in range(5)}
    assert len(ports) == 1  # one kept-alive connection served all five


def websocket_exchange(base: str) -> dict:
    url = base.replace("http://", "ws://")
    seen: dict = {}
    with connect(url + "/ws", open_timeout=10, close_timeout=5) as ws:
        hello = json.loads(ws.recv(timeout=10))
        seen["hello_keys"] = sorted(hello)
        ws.send("text message ✓")
        seen["text"] = ws.recv(timeout=10)
        ws.send(b"\x00\x01binary")
        seen["bytes"] = ws.recv(timeout=10)
        big = "x" * 200_000
        ws.send(big)
        seen["big"] = ws.recv(timeout=10) == "echo " + big
        ws.send(["frag", "mented"])  # one message in two frames
        seen["fragmented"] = ws.recv(timeout=10)
    with connect(url + "/ws-sub", subprotocols=["one", "two"], open_timeout=10) as ws:
        seen["subprotocol"] = ws.subprotocol
        seen["offered"] = ws.recv(timeout=10)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        seen["close"] = (ws.close_code, ws.close_reason)
    with pytest.raises(InvalidStatus) as denied:
        connect(url + "/ws-deny", open_timeout=10)
    seen["deny"] = denied.value.response.status_code
    with pytest.raises(InvalidStatus) as missing:
        connect(url + "/no-such-ws", open_timeout=10)
    seen["missing"] = missing.value.response.status_code
    return seen


def test_websocket_answers_match_uvicorn(hotswap_server, uvicorn_server) -> None:  # noqa: F811
    ours = websocket_exchange(hotswap_server)
    assert ours == websocket_exchange(uvicorn_server.base)
    assert ours["text"] == "echo text message ✓" and ours["bytes"] == b"echo \x00\x01binary"
    assert ours["big"] and ours["fragmented"] == "echo fragmented"
    assert ours["subprotocol"] == "two" and ours["close"] == (4000, "done")
    assert ours["deny"] == 403


def test_many_websockets_at_once(hotswap_server) -> None:
    """50 concurrent echo sessions (asyncio client) on 2 workers, all answered."""
    from websockets.asyncio.client import connect as aconnect

    url = hotswap_server.replace("http://", "ws://") + "/ws"

    async def one(i: int) -> list[str]:
        async with aconnect(url, open_timeout=10) as ws:
            await asyncio.wait_for(ws.recv(), 10)
            out = []
            for j in range(10):
                await ws.send(f"{i}-{j}")
                out.append(await asyncio.wait_for(ws.recv(), 10))
            return out

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(one(i) for i in range(50)))

    results = asyncio.run(main())
    assert results == [[f"echo {i}-{j}" for j in range(10)] for i in range(50)]
