"""WebSocket clients for the upgrade tests: they send a message every 50 ms, reconnect when
the server closes with 1001 Going Away, and resend every message not echoed yet.

Each client records every connection it made: who served it (the app's hello message:
version, master, worker), how it ended (the server's close code, or the client's own
close at the end), so a test can prove that no connection ended with a reset or 1006,
that no message was lost, and that a reconnect after 1001 reached another generation.
Everything is bounded: a stop event, a deadline, and a timeout on every wait.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

SEND_EVERY = 0.05


@dataclass
class WsConnection:
    client: str
    version: str
    master: int
    worker: int
    previous_master: int | None  # the master whose 1001 made us reconnect (None: first)
    ended_by: str = ""  # "server" (its close frame), "client" (ours, at the end), "error"
    code: int | None = None
    error: str = ""


@dataclass
class WsClient:
    url: str
    name: str
    connections: list[WsConnection] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    echoed: int = 0
    pending: dict[str, None] = field(default_factory=dict)  # sent, echo not seen yet
    seq: int = 0

    def run(self, stop: threading.Event, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        previous: int | None = None
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with connect(self.url, open_timeout=10, close_timeout=5) as ws:
                    closed_by = self._session(ws, previous, stop, deadline)
            except Exception as exc:  # refused, a bad handshake, no hello: a failure
                self.failures.append(f"connect: {type(exc).__name__}: {exc}")
                stop.wait(0.1)
                continue
            if closed_by is None:
                return
            previous = closed_by

    def _session(self, ws, previous: int | None, stop: threading.Event,
                 deadline: float) -> int | None:
        """One connection; the master that closed it with 1001, or None when we are done."""
        hello = json.loads(ws.recv(timeout=10))
        conn = WsConnection(self.name, hello["version"], hello["master"], hello["worker"],
                            previous)
        self.connections.append(conn)
        try:
            for message in list(self.pending):  # what the last connection did not echo
                ws.send(message)
            next_send = time.monotonic()
            while not stop.is_set() and time.monotonic() < deadline:
                if time.monotonic() >= next_send:
                    self.seq += 1
                    message = f"{self.name}:{self.seq}"
                    self.pending[message] = None
                    self.sent += 1
                    ws.send(message)
                    next_send += SEND_EVERY
                self._receive(ws, max(0.0, next_send - time.monotonic()))
            self._finish(ws, conn)
            return None
        except ConnectionClosed as exc:
            conn.ended_by = "server" if exc.rcvd is not None else "error"
            conn.code = exc.rcvd.code if exc.rcvd is not None else None
            conn.error = f"{type(exc).__name__}: {exc}"
            if conn.code != 1001:
                self.failures.append(f"connection to {conn.master} ended: {conn.error}")
            return conn.master

    def _receive(self, ws, timeout: float) -> None:
        try:
            reply = ws.recv(timeout=timeout)
        except TimeoutError:
            return
        self.echoed += 1
        self.pending.pop(str(reply).removeprefix("echo "), None)

    def _finish(self, ws, conn: WsConnection) -> None:
        """Stop sending, collect the echoes still on their way, then close ourselves."""
        until = time.monotonic() + 5
        while self.pending and time.monotonic() < until:
            self._receive(ws, 0.1)
        ws.close()
        conn.ended_by, conn.code = "client", 1000


class WsLoad:
    """N WebSocket clients, each on its own thread."""

    def __init__(self, url: str, count: int, max_seconds: float = 90.0) -> None:
        self.clients = [WsClient(url, f"ws-{i}") for i in range(count)]
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c, max_seconds), daemon=True,
                                         name=c.name) for c in self.clients]
        self.crashed: list[str] = []

    def _run(self, client: WsClient, max_seconds: float) -> None:
        try:
            client.run(self.stop_event, max_seconds)
        except BaseException as exc:  # a harness bug fails the test loudly
            self.crashed.append(f"{client.name}: {type(exc).__name__}: {exc}")

    def start(self) -> WsLoad:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        assert not stuck, f"WebSocket clients still running after {timeout:g} s: {stuck}"

    @property
    def connections(self) -> list[WsConnection]:
        return [conn for client in self.clients for conn in client.connections]

    def describe(self) -> str:
        """Each client's last connection and failures, for an assertion message."""
        lines = []
        for c in self.clients:
            last = c.connections[-1] if c.connections else None
            lines.append(f"{c.name}: {len(c.connections)} connection(s), last {last}, "
                         f"pending {len(c.pending)}, failures {c.failures[-3:]}")
        return "\n".join(lines)

    def connected_to(self, master: int) -> bool:
        """Is every client's current connection served by `master`?"""
        return all(c.connections and c.connections[-1].master == master and
                   not c.connections[-1].ended_by for c in self.clients)
