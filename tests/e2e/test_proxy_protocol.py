"""--proxy-protocol: PROXY v1 and v2 headers, exact bytes on raw sockets, as HAProxy and
AWS NLB send them; REMOTE_ADDR/REMOTE_PORT and the access log come from them."""

from __future__ import annotations

import json
import socket
import ssl
import struct
from pathlib import Path

import pytest
from certs import TestCA
from support import free_port, has_ipv6_loopback, http_raw, wait_for, write_app

APP = '''
import json

def app(environ, start_response):
    body = json.dumps({"remote_addr": environ["REMOTE_ADDR"],
                       "remote_port": environ.get("REMOTE_PORT"),
                       "scheme": environ["wsgi.url_scheme"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''
GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 54321 80\r\n"
V2_TCP4 = (V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([198, 51, 100, 7, 10, 0, 0, 1])
           + struct.pack("!HH", 40000, 443))
# AWS NLB: TCP4 plus a TLV of type 0xEA (the VPC endpoint id), which is skipped
NLB_TLV = b"\xea\x00\x17\x01vpce-0123456789abcdef0"
V2_NLB = (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 12 + len(NLB_TLV))
          + bytes([203, 0, 113, 9, 10, 0, 0, 1]) + struct.pack("!HH", 41000, 443) + NLB_TLV)
V2_TCP6 = (V2_SIGNATURE + b"\x21\x21\x00\x24" + bytes.fromhex("20010db8" + "00" * 11 + "05")
           + bytes.fromhex("20010db8" + "00" * 11 + "06") + struct.pack("!HH", 54000, 443))
V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"


def start(masters, tmp_path: Path, *args: str):
    write_app(tmp_path, "proxyapp", APP)
    port = free_port()
    master = masters("proxyapp:app", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                     "--proxy-protocol", *args, cwd=tmp_path)
    return master, port


def ask(port: int, data: bytes) -> dict | None:
    """Send raw bytes; the app's JSON answer, or None when the server closed without one."""
    answer = http_raw(port, data)
    if not answer:
        return None
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer
    return json.loads(body)


# From an allowed peer, each of these is closed unanswered: no header, a bad v1 address, a
# v1 line without its port, a v1 line past 107 bytes, a v2 header announcing 65535 bytes,
# version 1 in a v2 header, a v2 header too short for its addresses.
REFUSED = [
    GET,
    b"PROXY TCP4 999.0.0.1 192.168.0.11 56324 443\r\n" + GET,
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n" + GET,
    b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n" + GET,
    V2_SIGNATURE + b"\x21\x11\xff\xff" + bytes(64),
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12) + GET,
    V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8) + GET,
]

@pytest.mark.timeout(60)
def test_v1_and_v2_headers_set_remote_addr_and_the_access_log(masters, tmp_path) -> None:
    access = tmp_path / "access.log"
    _, port = start(masters, tmp_path, "--access-log", str(access))
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
    wait_for(lambda: "203.0.113.9 " in access.read_text(), 10, what="the access log line")
    assert access.read_text().startswith("192.168.0.1 ")


@pytest.mark.timeout(60)
def test_keep_alive_keeps_the_proxied_address(masters, tmp_path) -> None:
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


@pytest.mark.timeout(60)
def test_missing_malformed_or_oversized_headers_close_the_connection(masters, tmp_path) -> None:
    """From an allowed peer the header is required; anything else is closed unanswered
    (as HAProxy's accept-proxy does), and the one worker goes on serving."""
    master, port = start(masters, tmp_path)
    for data in REFUSED:
        assert ask(port, data) is None, data
        assert ask(port, V1_TCP4 + GET) is not None  # the worker lives on
    log = master.log()
    assert "no PROXY protocol header" in log and "longer than 107" in log
    assert "Traceback" not in log


@pytest.mark.timeout(60)
def test_header_from_a_peer_not_allowed_is_refused(masters, tmp_path) -> None:
    master, port = start(masters, tmp_path, "--proxy-allow-from", "10.0.0.1")
    for header in (V1_TCP4, V2_TCP4):
        assert ask(port, header + GET) is None
    data = ask(port, GET)  # a direct client of that peer is served as itself
    assert data is not None and data["remote_addr"] == "127.0.0.1"
    assert "PROXY header from a peer not in --proxy-allow-from" in master.log()


@pytest.mark.timeout(60)
@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_star_allows_every_peer(masters, tmp_path) -> None:
    write_app(tmp_path, "proxyapp", APP)
    port = free_port("::1")
    masters("proxyapp:app", "--bind", f"[::1]:{port}", "--workers", "1", "--proxy-protocol",
            "--proxy-allow-from", "*", cwd=tmp_path)
    answer = http_raw(port, V1_TCP4 + GET, host="::1")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["remote_addr"] == "192.168.0.1"
    assert http_raw(port, GET, host="::1") == b""


@pytest.mark.timeout(60)
def test_proxy_header_then_tls(masters, tmp_path) -> None:
    """The header comes before the ClientHello; exactly its bytes are read."""
    ca = TestCA(tmp_path / "pki")
    pair = ca.issue("server", 1001)
    _, port = start(masters, tmp_path, "--certfile", str(pair.cert), "--keyfile", str(pair.key))
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
def test_x_forwarded_for_rewrites_remote_addr_and_the_access_log(masters, tmp_path) -> None:
    """The README's "Behind a proxy": the right-most address no trusted proxy vouches
    for is the client, so a client's own spoofed X-Forwarded-For does not count."""
    write_app(tmp_path, "proxyapp", APP)
    port = free_port()
    access = tmp_path / "access.log"
    masters("proxyapp:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--access-log",
            str(access), "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8", cwd=tmp_path)
    chains = [("203.0.113.7", "203.0.113.7"), ("203.0.113.7, 10.1.2.3", "203.0.113.7"),
              ("6.6.6.6, 198.51.100.4, 10.1.2.3", "198.51.100.4")]
    for chain, client in chains:
        request = GET.replace(b"\r\n\r\n", f"\r\nX-Forwarded-For: {chain}\r\n"
                                           "X-Forwarded-Proto: https\r\n\r\n".encode())
        data = ask(port, request)
        assert data is not None and (data["remote_addr"], data["scheme"]) == (client, "https")
    wait_for(lambda: len(access.read_text().splitlines()) == 3, 10, what="three log lines")
    assert [line.split()[0] for line in access.read_text().splitlines()] == [
        "203.0.113.7", "203.0.113.7", "198.51.100.4"]
