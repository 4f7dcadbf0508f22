"""50 MB up and down through one worker, in constant memory.

The parser delimits bodies itself and the Exchange frames responses piece by piece; this
proves neither buffers a whole body: the worker's peak RSS (VmHWM) grows by far less than
the 50 MB that went through it, for a Content-Length upload, a chunked upload and a
streamed (chunked) download, each checked byte for byte with SHA-256.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from support import free_port, write_app
from test_http import Raw

APP = '''
import hashlib
import socket

def app(environ, start_response):
    if environ["PATH_INFO"] == "/down":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (bytes([i % 251]) * 65536 for i in range(800))
    digest, size, stream = hashlib.sha256(), 0, environ["wsgi.input"]
    while piece := stream.read(65536):
        digest.update(piece)
        size += len(piece)
    body = f"{size} {digest.hexdigest()}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''
BLOCK, COUNT = 65536, 800  # 50 MiB
LIMIT_KB = 16 * 1024  # peak RSS growth allowed: a third of what one buffered body would take


def peak_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def upload(port: int, chunked: bool) -> bytes:
    block = b"u" * BLOCK
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % (BLOCK * COUNT)
    piece = b"%x\r\n%s\r\n" % (BLOCK, block) if chunked else block
    with Raw(port, timeout=30) as raw:
        raw.send(b"POST /up HTTP/1.1\r\nHost: t\r\n" + framing + b"\r\n\r\n")
        for _ in range(COUNT):
            raw.send(piece)
        if chunked:
            raw.send(b"0\r\n\r\n")
        answer = raw.response()
    assert answer.status == 200, answer.wire
    return answer.body


def download(port: int) -> tuple[bytes, bytes]:
    """GET /down to EOF, then undo the chunked framing in one pass."""
    wire = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /down HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        while data := sock.recv(1 << 20):
            wire += data
    end = wire.index(b"\r\n\r\n") + 4
    body, pos = bytearray(), end
    while True:
        line_end = wire.index(b"\r\n", pos)
        size = int(wire[pos:line_end], 16)
        if size == 0:
            return bytes(wire[:end]), bytes(body)
        body += wire[line_end + 2:line_end + 2 + size]
        pos = line_end + 2 + size + 2


@pytest.mark.timeout(90)
def test_50mb_up_and_down_in_constant_memory(masters, tmp_path) -> None:
    write_app(tmp_path, "bigapp", APP)
    port = free_port()
    master = masters("bigapp:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", cwd=tmp_path)
    (worker,) = master.workers()
    before = peak_kb(worker)
    expected = f"{BLOCK * COUNT} {hashlib.sha256(b'u' * BLOCK * COUNT).hexdigest()}".encode()
    assert upload(port, chunked=False) == expected
    assert upload(port, chunked=True) == expected
    head, body = download(port)
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head
    assert hashlib.sha256(body).digest() == hashlib.sha256(
        b"".join(bytes([i % 251]) * BLOCK for i in range(COUNT))).digest()
    growth = peak_kb(worker) - before
    assert growth < LIMIT_KB, f"worker peak RSS grew by {growth} kB for 50 MiB bodies"
