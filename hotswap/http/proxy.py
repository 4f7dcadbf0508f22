"""The PROXY protocol, versions 1 and 2 (HAProxy's spec, as HAProxy and AWS NLB send it),
without any I/O.

A load balancer that forwards TCP (not HTTP) cannot add `X-Forwarded-For`; instead it
writes one header before the client's first byte, naming the client's address. That
header comes before everything else, a TLS ClientHello included, so the caller must not
read a byte past it: `HeaderParser.feed` says how many of the bytes it was given belong
to the header, and the rest stays where it was (the worker peeks, then consumes exactly
that many; an asyncio server can hand the rest to its HTTP parser).

Formats (byte for byte):

- v1: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`, or `PROXY UNKNOWN[ anything]\\r\\n`,
  at most 107 bytes with the CRLF.
- v2: the 12-byte signature `\\r\\n\\r\\n\\0\\r\\nQUIT\\n`, a version/command byte (0x2_:
  version 2; command 0 LOCAL, 1 PROXY), a family/transport byte (family 0 UNSPEC, 1 INET,
  2 INET6, 3 UNIX; transport 1 STREAM), a big-endian 16-bit length, then the addresses
  (12, 36 or 216 bytes) and TLVs, which are skipped. The length is bounded here by
  MAX_V2_LENGTH, so a peer cannot make a worker buffer 64 KiB per connection.

LOCAL (a health check from the balancer itself), UNSPEC, UNKNOWN and UNIX keep the
connection's own peer address: there is no client IP address to report.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/transport, length
MAX_V2_LENGTH = 4096  # addresses (at most 216 bytes) plus TLVs; HAProxy and NLB send far less
MAX_HEADER = V2_FIXED + MAX_V2_LENGTH  # the most a caller ever needs to look at

_V2_ADDRESS_SIZES = {1: 12, 2: 36, 3: 216}


class ProxyError(ValueError):
    """A missing or malformed PROXY header; str() is one line for the log."""


@dataclass(frozen=True)
class ProxyInfo:
    """What a PROXY header said."""

    version: int  # 1 or 2
    command: str  # "PROXY", or "LOCAL" (v2: the balancer's own connection)
    family: str  # "TCP4", "TCP6", "UNIX" or "UNKNOWN"
    source: tuple[str, int] | str | None = None  # (ip, port), a unix path, or None
    destination: tuple[str, int] | str | None = None

    @property
    def client(self) -> tuple[str, int] | None:
        """The client's (ip, port) to use as REMOTE_ADDR/REMOTE_PORT; None keeps the peer."""
        if self.command == "PROXY" and self.family in ("TCP4", "TCP6"):
            assert isinstance(self.source, tuple)
            return self.source
        return None


def starts_like_header(data: bytes) -> bool | None:
    """Do these first bytes of a connection begin a PROXY header? None: too few to say.

    Used on connections from peers that are not allowed to send one, to refuse the
    header instead of taking it for a request.
    """
    for signature in (V1_PREFIX, V2_SIGNATURE):
        size = min(len(data), len(signature))
        if data[:size] == signature[:size]:
            return True if size == len(signature) else None
    return False


class HeaderParser:
    """Feed the first bytes of a connection; `result` is set once the header is complete."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.result: ProxyInfo | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def feed(self, data: bytes) -> int:
        """Take the bytes of `data` that belong to the header; returns how many.

        Raises ProxyError as soon as the bytes cannot be a valid header (no PROXY header
        at all, a v1 line past 107 bytes, a v2 length past MAX_V2_LENGTH, bad fields).
        """
        if self.result is not None:
            return 0
        before = len(self._buf)
        self._buf += data
        end = self._end()
        if end is None or end > len(self._buf):
            return len(data)  # every byte so far is header; more must come
        header = bytes(self._buf[:end])
        del self._buf[:]
        self.result = _parse_v1(header) if header.startswith(V1_PREFIX) else _parse_v2(header)
        return end - before

    def _end(self) -> int | None:
        """Where the header ends, once that is known."""
        buf = self._buf
        looks = starts_like_header(bytes(buf[:len(V2_SIGNATURE)]))
        if looks is False:
            raise ProxyError("no PROXY protocol header")
        if looks is None:
            return None
        if buf.startswith(V1_PREFIX):
            newline = buf.find(b"\n", 0, V1_MAX)
            if newline < 0:
                if len(buf) >= V1_MAX:
                    raise ProxyError(f"PROXY v1 header longer than {V1_MAX} bytes")
                return None
            return newline + 1
        if len(buf) < V2_FIXED:
            return None
        length = int.from_bytes(buf[14:16], "big")
        if length > MAX_V2_LENGTH:
            raise ProxyError(f"PROXY v2 header of {length} bytes (at most {MAX_V2_LENGTH})")
        return V2_FIXED + length


def _parse_v1(header: bytes) -> ProxyInfo:
    if not header.endswith(b"\r\n"):
        raise ProxyError("PROXY v1 header does not end with CRLF")
    try:
        line = header[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 header is not ASCII") from None
    fields = line.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyInfo(1, "PROXY", "UNKNOWN")  # the rest of the line is to be ignored
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"malformed PROXY v1 header {line[:107]!r}")
    family = fields[1]
    version = 4 if family == "TCP4" else 6
    source = (_ip(fields[2], version), _port(fields[4]))
    destination = (_ip(fields[3], version), _port(fields[5]))
    return ProxyInfo(1, "PROXY", family, source, destination)


def _ip(text: str, version: int) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"PROXY v1 header: {text[:45]!r} is not an IP address") from None
    if ip.version != version:
        raise ProxyError(f"PROXY v1 header: {text!r} is not an IPv{version} address")
    return str(ip)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise ProxyError(f"PROXY v1 header: {text[:10]!r} is not a port")
    return int(text)


def _parse_v2(header: bytes) -> ProxyInfo:
    version, command = header[12] >> 4, header[12] & 0x0F
    family, transport = header[13] >> 4, header[13] & 0x0F
    if version != 2:
        raise ProxyError(f"PROXY v2 header with version {version}")
    if command not in (0, 1):
        raise ProxyError(f"PROXY v2 header with unknown command {command}")
    if command == 0:
        return ProxyInfo(2, "LOCAL", "UNKNOWN")  # addresses, if any, are to be ignored
    if family == 0:
        return ProxyInfo(2, "PROXY", "UNKNOWN")
    if family not in _V2_ADDRESS_SIZES:
        raise ProxyError(f"PROXY v2 header with unknown address family {family}")
    if transport != 1:
        raise ProxyError(f"PROXY v2 header with transport {transport} (not STREAM)")
    body = header[V2_FIXED:]
    if len(body) < _V2_ADDRESS_SIZES[family]:
        raise ProxyError(f"PROXY v2 header: {len(body)} bytes are too few for its addresses")
    if family == 3:
        return ProxyInfo(2, "PROXY", "UNIX", _path(body[:108]), _path(body[108:216]))
    size = 4 if family == 1 else 16
    make = ipaddress.IPv4Address if family == 1 else ipaddress.IPv6Address
    ports = body[2 * size:2 * size + 4]
    source = (str(make(body[:size])), int.from_bytes(ports[:2], "big"))
    destination = (str(make(body[size:2 * size])), int.from_bytes(ports[2:], "big"))
    return ProxyInfo(2, "PROXY", "TCP4" if family == 1 else "TCP6", source, destination)


def _path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")
