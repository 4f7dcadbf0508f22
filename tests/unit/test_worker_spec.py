"""WorkerSpec.parked, WorkerSpec.probe and the in-process health check, on a real worker.

The test process plays the master: it opens the sockets, forks a worker with
`hotswap.master.handles.fork_worker` and reads its status pipe. A worker born parked loads the
app, says `B`, and accepts nothing on the shared listener until HUP, while its probe
listener is served all along; a WINCH later makes it say `P` once empty. A failing
health check is a boot failure: `E<reason>` and exit status BOOT_FAILED.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_SPT_NOENV = os.environ.get("SPT_NOENV")

from hotswap.config import Config  # noqa: E402
from hotswap.logs import Logs  # noqa: E402
from hotswap.master.handles import fork_worker  # noqa: E402
from hotswap.worker.process import BOOT_FAILED, WorkerSpec  # noqa: E402
from listeners import Listener, open_listener, parse_bind  # noqa: E402

# Importing upgrade.proctitle sets SPT_NOENV in os.environ; children that later tests
# start must not inherit it (one of them checks what setproctitle does without it).
if _SPT_NOENV is None:
    os.environ.pop("SPT_NOENV", None)

pytestmark = pytest.mark.timeout(30)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/healthz" and environ.get("HTTP_USER_AGENT") == "hotswap-health-check":
        status = "503 Service Unavailable" if os.environ.get("TEST_UNHEALTHY") else "200 OK"
        start_response(status, [("Content-Length", "0")])
        return [b""]
    body = b"hello"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


class Worker:
    """One forked worker and the read end of its status pipe."""

    def __init__(self, tmp: Path, parked: bool, health: str | None = None) -> None:
        self.shared = open_listener(parse_bind("127.0.0.1:0"))
        self.probe = open_listener(parse_bind("127.0.0.1:0"))
        cfg = Config(app="unused:app", workers=1, health_path=health, timeout=10).validate()
        logs = Logs(str(tmp / "worker.log"), level="debug")
        master = os.getpid()

        def spec_for(status_fd: int) -> WorkerSpec:
            return WorkerSpec(cfg, [self.shared], status_fd, master, 1, logs, app,
                              parked=parked, probe=self.probe)

        self.handle = fork_worker(spec_for, 0, lambda: None)
        self.status = b""
        self.exit_status: int | None = None

    def port(self, listener: Listener) -> int:
        return listener.sock.getsockname()[1]

    def read_status(self, until: bytes, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while until not in self.status:
            left = deadline - time.monotonic()
            assert left > 0, f"status pipe said {self.status!r}, never {until!r}"
            if select.select([self.handle.fd], [], [], left)[0]:
                data = os.read(self.handle.fd, 4096)
                if not data:
                    break
                self.status += data
                self.handle.feed(data, time.monotonic())
        return self.status

    def wait_exit(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.handle.pid, os.WNOHANG)
            if pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
                return self.exit_status
            time.sleep(0.01)
        raise AssertionError(f"worker {self.handle.pid} did not exit in {timeout:g} s")

    def close(self) -> None:
        if self.exit_status is None:
            try:
                os.kill(self.handle.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.handle.pid, 0)
        os.close(self.handle.fd)
        self.shared.sock.close()
        self.probe.sock.close()


@pytest.fixture
def forked(tmp_path: Path) -> Iterator[list[Worker]]:
    made: list[Worker] = []
    try:
        yield made
    finally:
        for worker in made:
            worker.close()


def ask(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return sock


def answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def test_born_parked_serves_only_its_probe_until_hup(forked, tmp_path: Path) -> None:
    w = Worker(tmp_path, parked=True, health="/healthz")
    forked.append(w)
    assert w.read_status(b"B").startswith(b"B") and w.handle.booted
    assert answer(ask(w.port(w.probe))).endswith(b"hello"), "the probe is served while parked"
    waiting = ask(w.port(w.shared))
    waiting.settimeout(0.5)
    with pytest.raises(TimeoutError):
        waiting.recv(1)  # parked: nobody accepts on the shared listener
    os.kill(w.handle.pid, signal.SIGHUP)
    waiting.settimeout(10)
    assert answer(waiting).endswith(b"hello")
    assert b"P" not in w.status, "a worker born parked says no P"

    os.kill(w.handle.pid, signal.SIGWINCH)
    w.read_status(b"P")
    assert w.handle.parked_empty
    assert answer(ask(w.port(w.probe))).endswith(b"hello"), "the probe is served while parked"
    os.kill(w.handle.pid, signal.SIGTERM)
    assert w.wait_exit() == 0


def test_failing_health_check_is_a_boot_error(forked, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TEST_UNHEALTHY", "1")
    w = Worker(tmp_path, parked=True, health="/healthz")
    forked.append(w)
    w.read_status(b"\n")
    assert w.wait_exit() == BOOT_FAILED
    assert not w.handle.booted
    assert w.handle.boot_error == "health check GET /healthz answered 503 Service Unavailable"
