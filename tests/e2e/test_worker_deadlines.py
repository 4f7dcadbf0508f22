"""Deadlines a worker cannot exceed, each one shown with the client that would break it.

- A lingering close after a refused request is timed by the loop: it never stalls the
  worker's other connections (issue 9, item 4).
- A response has a deadline from its first byte: a client that stops reading a
  `wsgi.file_wrapper` download frees its thread, and a slow reader of a generated body
  cannot get an inline worker killed by the master (item 5).
- A request head must be complete within --timeout, however slowly its bytes trickle
  in: 408, then close (item 6).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from support import free_port, wait_for, write_app

pytestmark = pytest.mark.timeout(60)

BIG = 64 * 1024 * 1024  # far more than loopback socket buffers can hold

# "/" answers the worker pid; "/file" a 64 MB sparse file through wsgi.file_wrapper;
# "/big" 64 MB from a generator.
APP = """
import os

HERE = os.path.dirname(os.path.abspath(__file__))
BIG = BIG_SIZE


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(BIG))])
        return environ["wsgi.file_wrapper"](open(os.path.join(HERE, "big.bin"), "rb"))
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(BIG))])
        piece = b"x" * 65536
        return (piece for _ in range(BIG // 65536))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
""".replace("BIG_SIZE", str(BIG))


def start(masters, tmp_path: Path, *extra: str):
    port = free_port()
    write_app(tmp_path, "app", APP)
    with open(tmp_path / "big.bin", "wb") as fh:
        fh.truncate(BIG)
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "1", *extra,
                cwd=tmp_path)
    return m, port


def read_until_close(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def raw_get(port: int, results: list) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            results.append(read_until_close(sock))
    except OSError as exc:
        results.append(exc)


def stalled_download(port: int, path: str) -> socket.socket:
    """A client that asks for a big body, reads its first bytes, then stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
    return sock


# -- item 4 -----------------------------------------------------------------------------


@pytest.mark.parametrize("threads", ["1", "4"])
def test_lingering_close_does_not_stall_other_connections(masters, tmp_path, threads):
    """While a refused client still trickles bytes (so its linger goes on), another
    client is answered, and the worker still holds the refused connection's socket
    afterwards. With the linger run on the loop thread, the other client was only
    answered once that socket had been closed."""
    m, port = start(masters, tmp_path, "--threads", threads)
    [worker] = m.workers()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as refused:
        refused.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert read_until_close(refused).startswith(b"HTTP/1.1 400 ")
        inode = server_side_inode(port, refused.getsockname()[1])
        assert holds_socket(worker, inode), "the worker lingers on the refused connection"
        other: list = []
        thread = threading.Thread(target=raw_get, args=(port, other), daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while thread.is_alive() and time.monotonic() < deadline:
            refused.send(b"x")  # keeps the linger going: it ends 0.5 s after silence
            thread.join(0.1)
        thread.join(10)
        assert other and isinstance(other[0], bytes) and other[0].startswith(b"HTTP/1.1 200 ")
        assert holds_socket(worker, inode), "the other client waited for the linger to end"


def server_side_inode(server_port: int, client_port: int) -> int:
    """The inode of the server's end of a loopback TCP connection, from /proc/net/tcp."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted and fields[9] != "0":
            return int(fields[9])
    raise AssertionError("no server-side socket for the refused connection")


def holds_socket(pid: int, inode: int) -> bool:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:
            continue
    return False


# -- item 5 -----------------------------------------------------------------------------


def read_cut(sock: socket.socket) -> int:
    """Read a download the server gave up on to its end (EOF or reset); bytes received."""
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


def test_clients_that_stop_reading_a_file_download_free_their_threads(masters, tmp_path):
    """Two clients stall a --threads 2 worker's FileResponse-style downloads; the response
    deadline (0.75 x --timeout) frees both threads and a third client is answered by the
    same worker, which the master never had to kill."""
    m, port = start(masters, tmp_path, "--threads", "2", "--timeout", "4")
    [worker] = m.workers()
    stalled = [stalled_download(port, "/file") for _ in range(2)]
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/", timeout=20)
        assert answer.status_code == 200 and answer.text == str(worker)
        for sock in stalled:
            sock.settimeout(20)
            assert read_cut(sock) < BIG, "a stalled download cannot have been sent whole"
    finally:
        for sock in stalled:
            sock.close()
    assert m.workers() == [worker]
    assert "killing it" not in m.log()


def test_slow_reader_of_a_big_body_cannot_get_an_inline_worker_killed(masters, tmp_path):
    """A client reading 4 kB every 50 ms makes progress at every send, so a per-call
    timeout never fires; the response deadline ends the response instead, and the
    worker keeps beating: the master does not SIGKILL it."""
    m, port = start(masters, tmp_path, "--timeout", "4")
    [worker] = m.workers()
    sock = stalled_download(port, "/big")
    received = 0
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break  # cut by the server: the response missed its deadline
            if not chunk:
                break
            received += len(chunk)
            time.sleep(0.05)
        else:
            raise AssertionError("the slow download neither ended nor was cut in 30 s")
    finally:
        sock.close()
    assert received < BIG
    answer = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
    assert answer.text == str(worker), "the worker was replaced"
    assert "killing it" not in m.log()


# -- item 6 -----------------------------------------------------------------------------


@pytest.mark.parametrize("kept_alive", [False, True], ids=["fresh", "kept-alive"])
def test_head_sent_byte_by_byte_is_timed_out(masters, tmp_path, kept_alive):
    """One byte every 0.4 s never leaves the connection idle for --timeout 2, but the
    whole head must arrive within 2 s of its first byte: 408, then close."""
    m, port = start(masters, tmp_path, "--timeout", "2")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if kept_alive:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
        answer = b""
        sock.setblocking(False)
        for byte in head[:-1]:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            if wait_for_data(sock, 0.4):
                break
        sock.settimeout(10)
        answer = read_until_close(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    wait_for(lambda: "not complete after 2 s: 408" in m.log(), what="the 408 in the log")


def wait_for_data(sock: socket.socket, seconds: float) -> bool:
    """Pace the trickle: True as soon as the server sent something."""
    import select

    readable, _, _ = select.select([sock], [], [], seconds)
    return bool(readable)
