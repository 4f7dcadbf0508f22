"""The --health-url probe, aimed at one generation's own workers and nobody else's.

Probing the URL through the shared listening sockets lets an old worker answer and a
broken new version pass. Instead each new master opens a private listening socket (an
abstract unix socket: no file, no port, gone with its last holder) that only its own
workers accept on, even before they take real traffic. The probe sends the URL's path
and Host there, so every answer it judges comes from the new generation.

The master never blocks on a probe: it forks a short-lived child that does one plain
HTTP/1.1 GET and writes one line back (`OK` or the reason), then `_exit`s. The master
reads that line from its select loop and reaps the child like any other.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from listeners import Listener
from listeners.spec import BindSpec

PROBE_TIMEOUT = 5.0  # one probe never waits longer than this


def open_probe_listener() -> Listener:
    """A listening abstract unix socket private to this master and its workers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"\0hotswap-probe-{os.getpid()}-{time.monotonic_ns()}"
    sock.bind(name)
    sock.listen(64)
    sock.setblocking(False)
    return Listener(sock, BindSpec(kind="unix", path=name.replace("\0", "@")))


@dataclass
class RunningProbe:
    pid: int
    fd: int  # read end of the child's one-line answer
    started: float


def start_probe(listener: Listener, url: str) -> RunningProbe:
    """Fork a child that GETs `url` through `listener`; read its answer from `.fd`."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    address = listener.sock.getsockname()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, which only ever _exits
        os.close(read_fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGTTIN,
                    signal.SIGTTOU, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            reason = get_status(address, url)
            os.write(write_fd, (reason or "OK").encode("utf-8", "replace")[:1000] + b"\n")
        finally:
            os._exit(0)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return RunningProbe(pid, read_fd, time.monotonic())


def read_answer(probe: RunningProbe) -> str | None:
    """None while the child is still busy; "" for a 2xx; else the reason."""
    try:
        data = os.read(probe.fd, 2048)
    except BlockingIOError:
        return None
    text = data.decode("utf-8", "replace").strip()
    if text == "OK":
        return ""
    return text or "the health probe died without an answer"


def get_status(address: object, url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """One GET of `url`'s path over the unix socket `address`; None for 2xx, else why not."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc or "localhost"
    request = (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hotswap-health-probe\r\n"
               "Connection: close\r\n\r\n").encode("latin-1", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)  # type: ignore[arg-type]
            sock.sendall(request)
            head = _read_status_line(sock)
    except OSError as exc:
        return f"health check {url}: {exc.strerror or type(exc).__name__}"
    fields = head.split(" ", 2)
    if len(fields) < 2 or not fields[1].isdigit():
        return f"health check {url}: not an HTTP answer: {head[:80]!r}"
    if 200 <= int(fields[1]) < 300:
        return None
    return f"health check {url} answered {' '.join(fields[1:]).strip()}"


def _read_status_line(sock: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data and len(data) < 8192:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")
