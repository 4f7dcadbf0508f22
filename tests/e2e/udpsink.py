"""A UDP socket on 127.0.0.1 (port 0) for the server to send syslog or statsd datagrams to."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import wait_for


class UdpSink:
    """A UDP socket on 127.0.0.1 (port 0) the server sends to; collects the datagrams."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []

    def drain(self) -> list[bytes]:
        while True:
            try:
                self.received.append(self.sock.recv(65536))
            except BlockingIOError:
                return self.received

    def wait(self, predicate: Callable[[list[bytes]], Any], what: str, timeout: float = 15.0) -> Any:
        wait_for(lambda: predicate(self.drain()), timeout,
                 what=f"{what}; received:\n{self.received[-30:]}")
        return self.received

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp() -> Iterator[UdpSink]:
    sink = UdpSink()
    try:
        yield sink
    finally:
        sink.close()
