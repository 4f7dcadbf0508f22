"""--proxy-protocol for ASGI apps: the WSGI worker's cases (test_proxy_protocol.py, the same
exact bytes) with an ASGI app, on uvloop and on asyncio's own loop; the scope's `client`
and the access log come from the header."""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import pytest
from asgi_rig import loop_env
from certs import TestCA
from support import free_port, has_ipv6_loopback, http_raw, wait_for, write_app
from test_proxy_protocol import (
    GET,
    REFUSED,
    V1_TCP4,
    V1_TCP6,
    V2_LOCAL,
    V2_NLB,
    V2_TCP4,
    V2_TCP6,
)

APP = '''
import json

async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(scope["client"])})
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    client = scope["client"]
    body = json.dumps({"remote_addr": client[0] if client else None,
                       "remote_port": str(client[1]) if client else None,
                       "scheme": scope["scheme"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''
LOOPS = ["uvloop", "asyncio"]


def start(masters, tmp_path: Path, *args: str, loop: str = "uvloop", host: str = "127.0.0.1"):
    write_app(tmp_path, "proxyapp", APP)
    env = loop_env(tmp_path, loop)
    port = free_port(host)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    master = masters("proxyapp:app", "--bind", bind, "--workers", "1", "--proxy-protocol", *args,
                     cwd=tmp_path, env=env)
    return master, port


def ask(port: int, data: bytes, host: str = "127.0.0.1") -> dict | None:
    """Send raw bytes; the app's JSON answer, or None when the server closed without one."""
    answer = http_raw(port, data, host=host)
    if not answer:
        return None
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer
    return json.loads(body)


def ask_in_pieces(port: int, pieces: list[bytes]) -> dict | None:
    """Like ask, with a pause between pieces (each its own packet)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.1)  # not a synchronisation: only makes the pieces separate packets
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    if not answer:
        return None
    return json.loads(answer.partition(b"\r\n\r\n")[2])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_v1_and_v2_headers_set_the_client_and_the_access_log(masters, tmp_path, loop) -> None:
    access = tmp_path / "access.log"
    _, port = start(masters, tmp_path, "--access-log", str(access), loop=loop)
    cases = [
        (V1_TCP4, "192.168.0.1", "56324"), (V1_TCP6, "2001:db8::1", "54321"),
        (V2_TCP4, "198.51.100.7", "40000"), (V2_NLB, "203.0.113.9", "41000"),
        (V2_TCP6, "2001:db8::5", "54000"),
        (b"PROXY UNKNOWN\r\n", "127.0.0.1", None), (V2_LOCAL, "127.0.0.1", None),
    ]
    for header, addr, port_text in cases:
        data = ask(port, header + GET)
        assert data is not None, header
        assert data["remote_addr"] == addr, header
        if port_text is not None:
            assert data["remote_port"] == port_text
    # X-Forwarded-For from the client the header named (not a trusted proxy) is ignored
    data = ask(port, V1_TCP4 + GET.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"))
    assert data is not None and data["remote_addr"] == "192.168.0.1"
    wait_for(lambda: access.exists() and "203.0.113.9 " in access.read_text(), 10,
             what="the access log line")
    assert access.read_text().startswith("192.168.0.1 ")
    # a header in pieces (consumed as it comes), then the request
    pieces = [V2_TCP4[:5], V2_TCP4[5:14], V2_TCP4[14:], GET]
    assert ask_in_pieces(port, pieces)["remote_addr"] == "198.51.100.7"


@pytest.mark.timeout(60)
def test_keep_alive_and_a_websocket_keep_the_proxied_address(masters, tmp_path) -> None:
    from websockets.sync.client import connect

    _, port = start(masters, tmp_path)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(V2_TCP4 + b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        sock.sendall(b"GET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        second = b""
        while chunk := sock.recv(65536):
            second += chunk
    for answer in (first, second):
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["remote_addr"] == "198.51.100.7"
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    raw.sendall(V1_TCP4)
    with connect(f"ws://127.0.0.1:{port}/ws", sock=raw, open_timeout=10, close_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=10)) == ["192.168.0.1", 56324]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_missing_malformed_or_oversized_headers_close_the_connection(masters, tmp_path,
                                                                    loop) -> None:
    """From an allowed peer the header is required; anything else is closed unanswered,
    and the one worker goes on serving."""
    master, port = start(masters, tmp_path, loop=loop)
    for data in REFUSED:
        assert ask(port, data) is None, data
        assert ask(port, V1_TCP4 + GET) is not None  # the worker lives on
    log = master.log()
    assert "no PROXY protocol header" in log and "longer than 107" in log
    assert "Traceback" not in log


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_header_from_a_peer_not_allowed_is_refused(masters, tmp_path, loop) -> None:
    master, port = start(masters, tmp_path, "--proxy-allow-from", "10.0.0.1", loop=loop)
    for header in (V1_TCP4, V2_TCP4):
        assert ask(port, header + GET) is None
    data = ask(port, GET)  # a direct client of that peer is served as itself
    assert data is not None and data["remote_addr"] == "127.0.0.1"
    assert "PROXY header from a peer not in --proxy-allow-from" in master.log()
    # first bytes that may begin a header wait for more: then refused, or served
    assert ask_in_pieces(port, [b"PRO", b"XY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + GET]) is None
    assert ask_in_pieces(port, [b"\r\n", GET])["remote_addr"] == "127.0.0.1"


@pytest.mark.timeout(60)
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_star_allows_every_peer(masters, tmp_path) -> None:
    _, port = start(masters, tmp_path, "--proxy-allow-from", "*", host="::1")
    assert ask(port, V1_TCP4 + GET, host="::1")["remote_addr"] == "192.168.0.1"
    assert http_raw(port, GET, host="::1") == b""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", LOOPS)
def test_proxy_header_then_tls(masters, tmp_path, loop) -> None:
    """The header comes before the ClientHello; exactly its bytes are read."""
    ca = TestCA(tmp_path / "pki")
    pair = ca.issue("server", 1001)
    _, port = start(masters, tmp_path, "--certfile", str(pair.cert), "--keyfile", str(pair.key),
                    loop=loop)
    ctx = ssl.create_default_context(cafile=str(ca.ca))
    for header, addr in ((V1_TCP4, "192.168.0.1"), (V2_NLB, "203.0.113.9")):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(header)
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(GET)
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
        data = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert (data["remote_addr"], data["scheme"]) == (addr, "https")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:  # TLS, no header
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ctx.wrap_socket(raw, server_hostname="localhost").sendall(GET)


@pytest.mark.timeout(60)
def test_a_header_not_complete_within_the_timeout_is_closed(masters, tmp_path) -> None:
    _, port = start(masters, tmp_path, "--timeout", "1.5")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(V1_TCP4[:10])
        assert stalled.recv(1024) == b""
    assert ask(port, V1_TCP4 + GET)["remote_addr"] == "192.168.0.1"
