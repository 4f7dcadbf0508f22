"""A bounded WebSocket echo load: N connections x M messages, one message in flight per connection.

wrk speaks no WebSocket, so this is the echo counterpart of `wrk -c N`: written here, on
asyncio alone, with just enough RFC 6455 for a client: the opening handshake (a 101 and
the right Sec-WebSocket-Accept, or the connection counts as failed), masked client
frames, unmasked server frames (fragments joined), pings answered, and the closing
handshake (1000, and the server's close code recorded). Every frame is built before the
clock starts, so the client spends its time on sockets, not on masking.

All connections first complete their handshake; then the clock starts and each sends
its M messages, each one only after the echo of the previous one came back intact (a
different payload is "wrong echo"). messages/s is echoed messages over the time from the
start to the last echo; p50/p99 are nearest-rank percentiles of every round trip;
client_cpu is the client's own CPU time over that wall time (near 1.0: the client, one
process, is what limits the rate, not the server).
The whole run is bounded by --timeout. Output: one JSON object on stdout.
Runs on uvloop when it is installed (the harness starts it on the bench venv's Python).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

from summary import percentile

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    """The server broke RFC 6455 in a way this client refuses to read past."""


def accept_value(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer to this Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def handshake_request(host: str, path: str, key: bytes) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def apply_mask(data: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte key repeated: one big-integer XOR instead of a loop per byte."""
    if not data:
        return b""
    key = (mask * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


def client_frame(payload: bytes, opcode: int = OP_TEXT, mask: bytes | None = None) -> bytes:
    """One final frame from a client: always masked (RFC 6455 5.3)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + apply_mask(payload, mask)


def parse_frame(buf: bytearray) -> tuple[bool, int, bytes] | None:
    """(fin, opcode, payload) of the first whole server frame in `buf`, removed from it; None if partial."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    if b0 & 0x70:
        raise ProtocolError("reserved bits set (no extension was negotiated)")
    if b1 & 0x80:
        raise ProtocolError("server frame is masked")
    n, pos = b1 & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, pos = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, pos = int.from_bytes(buf[2:10], "big"), 10
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos:pos + n])
    del buf[:pos + n]
    return bool(b0 & 0x80), b0 & 0x0F, payload


def messages(count: int, size: int) -> list[bytes]:
    """Distinct text payloads of `size` bytes (numbered), so an echo of the wrong one is caught."""
    return [f"{i:0{max(8, size)}d}"[-size:].encode() if size else b"" for i in range(count)]


class EchoClient(asyncio.Protocol):
    """One connection: handshake, then send message i+1 when message i came back intact."""

    def __init__(self, request: bytes, key: bytes, frames: list[bytes], payloads: list[bytes]) -> None:
        self.request, self.expect_accept = request, accept_value(key)
        self.frames, self.payloads = frames, payloads
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[str] = loop.create_future()  # "ok" or what went wrong
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head_done = False
        self.fragments: list[bytes] = []
        self.index = 0
        self.sent_at = 0.0
        self.rtts: list[float] = []
        self.last_echo = 0.0
        self.closing = False
        self.close_code: int | None = None
        self.t_connect = time.perf_counter()
        self.handshake_s: float | None = None

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            if not self.head_done and not self._read_head():
                return
            self._read_frames()
        except ProtocolError as exc:
            self._end(f"protocol error: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the handshake"))
        if self.closing and self.close_code is not None:
            self._end("ok" if self.close_code == 1000 else f"closed {self.close_code}")
        else:
            self._end("connection lost" if self.close_code is None else f"server closed {self.close_code}")

    # -- the exchange -----------------------------------------------------------------

    def begin(self) -> None:
        """Send the first message (the harness calls this when every connection is upgraded)."""
        if self.finished.done() or self.transport is None:
            return
        self._send_next()

    def _read_head(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                raise ProtocolError("handshake response head too long")
            return False
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        if not head[0].startswith("HTTP/1.1 101"):
            self.upgraded.set_exception(ConnectionError(f"handshake refused: {head[0][:40]}"))
            self._end("handshake refused")
            return False
        if fields.get("sec-websocket-accept", "").encode() != self.expect_accept:
            self.upgraded.set_exception(ConnectionError("wrong Sec-WebSocket-Accept"))
            self._end("wrong Sec-WebSocket-Accept")
            return False
        self.head_done = True
        self.handshake_s = time.perf_counter() - self.t_connect
        self.upgraded.set_result(None)
        return True

    def _read_frames(self) -> None:
        while (frame := parse_frame(self.buf)) is not None:
            fin, opcode, payload = frame
            if opcode == OP_PING:
                self._write(client_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                self._on_close(payload)
                return
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONT) and not fin:
                self.fragments.append(payload)
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
                whole = b"".join([*self.fragments, payload])
                self.fragments.clear()
                self._on_message(whole)

    def _on_message(self, payload: bytes) -> None:
        now = time.perf_counter()
        if self.closing or self.index >= len(self.payloads) or payload != self.payloads[self.index]:
            self._end("wrong echo")
            return
        self.rtts.append(now - self.sent_at)
        self.last_echo = now
        self.index += 1
        if self.index < len(self.frames):
            self._send_next()
        else:
            self.closing = True
            self._write(client_frame((1000).to_bytes(2, "big"), OP_CLOSE))

    def _on_close(self, payload: bytes) -> None:
        self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        if not self.closing:  # the server started it: answer, then it is not a clean end of ours
            self._write(client_frame(payload[:2], OP_CLOSE))
        if self.transport is not None:
            self.transport.close()

    def _send_next(self) -> None:
        self.sent_at = time.perf_counter()
        self._write(self.frames[self.index])

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _end(self, outcome: str) -> None:
        if not self.finished.done():
            self.finished.set_result(outcome)
        if self.transport is not None and outcome != "ok":
            self.transport.abort()


async def _open(host: str, port: int, path: str, frames: list[bytes],
                payloads: list[bytes]) -> EchoClient | str:
    """One upgraded connection, or why it could not be had."""
    key = base64.b64encode(os.urandom(16))
    loop = asyncio.get_running_loop()
    request = handshake_request(f"{host}:{port}", path, key)
    try:
        _, client = await loop.create_connection(lambda: EchoClient(request, key, frames, payloads),
                                                 host, port)
        await client.upgraded
    except (OSError, ConnectionError) as exc:
        return str(exc).split(":")[0] or type(exc).__name__
    return client


async def run(url: str, connections: int, count: int, size: int, timeout: float) -> dict:
    """Open every connection, then run the echo exchange on all of them at once; bounded by `timeout`."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    payloads = messages(count, size)
    frames = [client_frame(p) for p in payloads]
    deadline = time.perf_counter() + timeout
    opened = await asyncio.wait_for(
        asyncio.gather(*(_open(host, port, path, frames, payloads) for _ in range(connections))),
        timeout)
    clients = [c for c in opened if isinstance(c, EchoClient)]
    errors: Counter[str] = Counter(c for c in opened if isinstance(c, str))
    started, cpu = time.perf_counter(), time.process_time()
    for client in clients:
        client.begin()
    pending = [c.finished for c in clients]
    if pending:
        _, late = await asyncio.wait(pending, timeout=max(0.0, deadline - time.perf_counter()))
        for client in clients:
            if client.finished in late:
                client._end("timeout")
    out = _summary(clients, errors, started, connections, count, size)
    out["client_cpu"] = (time.process_time() - cpu) / max(time.perf_counter() - started, 1e-9)
    return out


def _summary(clients: list[EchoClient], errors: Counter[str], started: float, connections: int,
             count: int, size: int) -> dict:
    rtts = [r for c in clients for r in c.rtts]
    last = max((c.last_echo for c in clients if c.rtts), default=started)
    seconds = max(last - started, 1e-9)
    for client in clients:
        outcome = client.finished.result() if client.finished.done() else "unfinished"
        if outcome != "ok":
            errors[outcome] += 1
    codes = Counter(str(c.close_code) for c in clients if c.close_code is not None)
    shakes = [c.handshake_s for c in clients if c.handshake_s is not None]
    return {"connections": connections, "messages_per_connection": count, "size": size,
            "messages": len(rtts), "expected": connections * count, "seconds": round(seconds, 6),
            "rate": len(rtts) / seconds if rtts else 0.0, "p50": percentile(rtts, 50),
            "p99": percentile(rtts, 99), "handshake_p50": percentile(shakes, 50),
            "errors": dict(errors), "close_codes": dict(codes), "loop": _loop_name()}


def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/PATH")
    ap.add_argument("-c", "--connections", type=int, default=16)
    ap.add_argument("-m", "--messages", type=int, default=1000, help="messages per connection")
    ap.add_argument("-s", "--size", type=int, default=32, help="payload bytes (text)")
    ap.add_argument("--timeout", type=float, default=60.0, help="bound on the whole run (s)")
    args = ap.parse_args(argv)
    if not args.url.startswith("ws://"):
        print(f"wsload: --url must be ws://HOST:PORT/PATH, not {args.url!r}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        result = runner(run(args.url, args.connections, args.messages, args.size, args.timeout))
    except TimeoutError:
        print(f"wsload: connections not open within {args.timeout:g} s", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
