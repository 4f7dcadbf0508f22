"""PROXY protocol v1/v2 headers, byte for byte (HAProxy's proxy-protocol.txt)."""

from __future__ import annotations

import struct

import pytest

from hotswap.http.proxy import (
    MAX_V2_LENGTH,
    V2_SIGNATURE,
    HeaderParser,
    ProxyError,
    ProxyInfo,
    starts_like_header,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def v2(command: int, family: int, body: bytes, transport: int = 1, version: int = 2) -> bytes:
    return (V2_SIGNATURE + bytes([version << 4 | command, family << 4 | transport])
            + struct.pack("!H", len(body)) + body)


def parse_all(data: bytes, step: int | None = None) -> tuple[ProxyInfo, int]:
    """Feed `data` (in pieces of `step`); the result and how many bytes were taken."""
    parser = HeaderParser()
    taken = 0
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        taken += parser.feed(piece)
        if parser.done:
            break
    assert parser.result is not None
    return parser.result, taken


V1_TCP4 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 54321 80\r\n"
V2_TCP4 = v2(1, 1, bytes([192, 168, 1, 10, 192, 168, 1, 1]) + struct.pack("!HH", 12345, 443))
V2_TCP6 = v2(1, 2, bytes.fromhex("20010db8" + "00" * 11 + "01") + bytes.fromhex("20010db8" + "00" * 11 + "02")
             + struct.pack("!HH", 54321, 80))


@pytest.mark.parametrize("step", [None, 1, 7])
@pytest.mark.parametrize(("header", "family", "client"), [
    (V1_TCP4, "TCP4", ("192.168.0.1", 56324)),
    (V1_TCP6, "TCP6", ("2001:db8::1", 54321)),
    (V2_TCP4, "TCP4", ("192.168.1.10", 12345)),
    (V2_TCP6, "TCP6", ("2001:db8::1", 54321)),
])
def test_header_gives_the_client_and_takes_only_its_own_bytes(header, family, client, step) -> None:
    for after in (REQUEST, CLIENT_HELLO):
        info, taken = parse_all(header + after, step)
        assert taken == len(header)  # the request or ClientHello behind it is left alone
        assert (info.family, info.command, info.client) == (family, "PROXY", client)


def test_v1_destination_and_version() -> None:
    info, _ = parse_all(V1_TCP4)
    assert (info.version, info.destination) == (1, ("192.168.0.11", 443))
    info, _ = parse_all(V2_TCP4)
    assert (info.version, info.destination) == (2, ("192.168.1.1", 443))


@pytest.mark.parametrize("header", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    v2(1, 0, b""),  # PROXY over UNSPEC
    v2(0, 0, b""),  # LOCAL: the balancer's own health check
    v2(0, 1, bytes(12)),  # LOCAL with addresses: ignored
])
def test_headers_without_a_client_keep_the_peer(header) -> None:
    info, taken = parse_all(header + REQUEST)
    assert taken == len(header)
    assert info.client is None


def test_v2_local_command() -> None:
    info, _ = parse_all(v2(0, 1, bytes(12)))
    assert (info.command, info.family) == ("LOCAL", "UNKNOWN")


def test_v2_unix_addresses() -> None:
    body = b"/run/src.sock".ljust(108, b"\0") + b"/run/dst.sock".ljust(108, b"\0")
    info, _ = parse_all(v2(1, 3, body))
    assert (info.family, info.source, info.destination, info.client) == (
        "UNIX", "/run/src.sock", "/run/dst.sock", None)


def test_v2_tlvs_are_skipped() -> None:
    """AWS NLB appends a TLV of type 0xEA (its VPC endpoint id); HAProxy, SSL ones."""
    addresses = bytes([10, 0, 0, 7, 10, 0, 0, 1]) + struct.pack("!HH", 40000, 443)
    tlvs = b"\xea" + struct.pack("!H", 23) + b"\x01vpce-0123456789abcdef0" + b"\x04\x00\x00"
    header = v2(1, 1, addresses + tlvs)
    info, taken = parse_all(header + REQUEST, 3)
    assert (info.client, taken) == (("10.0.0.7", 40000), len(header))


def test_v1_of_exactly_107_bytes_is_accepted_and_108_refused() -> None:
    longest = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(longest) == 107
    assert parse_all(longest)[0].family == "UNKNOWN"
    parser = HeaderParser()
    with pytest.raises(ProxyError, match="longer than 107"):
        parser.feed(b"PROXY UNKNOWN " + b"x" * (108 - 14))


def test_v2_length_is_bounded_before_the_body_arrives() -> None:
    parser = HeaderParser()
    with pytest.raises(ProxyError, match="at most"):
        parser.feed(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_LENGTH + 1))
    assert parse_all(v2(1, 1, bytes(MAX_V2_LENGTH)))[0].family == "TCP4"


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",  # no header at all
    CLIENT_HELLO,  # TLS straight away
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",  # a field missing
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 9\r\n",  # one too many
    b"PROXY TCP4 999.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 2001:db8::1 192.168.0.11 56324 443\r\n",  # v6 address in TCP4
    b"PROXY TCP6 192.168.0.1 2001:db8::2 56324 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
    b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",  # two spaces
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",  # LF without CR
    b"PROXY TCP5 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP4 192.168.0.\xff 192.168.0.11 56324 443\r\n",
    b"proxy TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    v2(1, 1, bytes(12), version=1),
    v2(2, 1, bytes(12)),  # unknown command
    v2(1, 4, bytes(12)),  # unknown family
    v2(1, 1, bytes(12), transport=2),  # DGRAM
    v2(1, 1, bytes(11)),  # too short for two IPv4 addresses and ports
    v2(1, 2, bytes(35)),
    v2(1, 3, bytes(215)),
])
def test_malformed_headers_are_refused(data) -> None:
    parser = HeaderParser()
    with pytest.raises(ProxyError):
        for i in range(len(data)):  # byte by byte: an error is never deferred past the end
            parser.feed(data[i:i + 1])


def test_nothing_is_taken_after_the_header_is_done() -> None:
    parser = HeaderParser()
    assert parser.feed(V1_TCP4) == len(V1_TCP4)
    assert parser.feed(REQUEST) == 0


@pytest.mark.parametrize(("data", "verdict"), [
    (b"", None), (b"P", None), (b"PROXY", None), (b"PROXY ", True), (b"PROXY TCP4", True),
    (b"\r\n", None), (b"\r\n\r\n\x00\r\nQUI", None), (V2_SIGNATURE, True),
    (b"POST", False), (b"GET", False), (b"\r\nGET", False), (CLIENT_HELLO, False),
])
def test_starts_like_header(data, verdict) -> None:
    assert starts_like_header(data) is verdict
