"""Metrics to a statsd server over UDP: fire-and-forget, so it never blocks or fails a request.

The address is resolved once at startup (a name that does not resolve is the operator's
one-line error); after that a datagram that cannot be sent is dropped without a word, and
a server that does not listen costs one `sendto` per event.

Names are gunicorn's with `hotswap.` in place of `gunicorn.`, behind --statsd-prefix as
gunicorn puts it:

    hotswap.requests (c)  hotswap.request.duration (ms)  hotswap.request.status.<code> (c)
    hotswap.workers (g)   hotswap.log.critical|error|warning|exception (c)

and the upgrade's, sent by the old master (which sees the whole upgrade) from its record:

    hotswap.upgrade.started|committed|rolled_back|failed (c)
    hotswap.upgrade.ready|drain|handover|commit (ms, seconds since USR2 as in the record)
    hotswap.generation (g): the generation serving now
"""

from __future__ import annotations

import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from upgrade import names

from .errors import StartupError

if TYPE_CHECKING:
    from upgrade import Upgrader

DEFAULT_PORT = 8125
GAUGE_REFRESH = 10.0  # a gauge is sent again this often even when it did not change


class Statsd:
    """One non-blocking UDP socket and the resolved address of the statsd server."""

    def __init__(self, address: tuple[Any, ...], family: int, prefix: str = "") -> None:
        self.address = address
        self.prefix = f"{prefix.rstrip('.')}." if prefix else ""  # as gunicorn: a trailing dot added
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.set_inheritable(False)

    @classmethod
    def connect(cls, host_port: str, prefix: str = "") -> Statsd:
        """From `host:port` (`[v6]:port`; the port defaults to 8125); StartupError if the
        name does not resolve."""
        host, port = parse_host_port(host_port)
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise StartupError(f"statsd-host {host_port}: cannot resolve {host!r} ({_why(exc)})") from None
        family, _, _, _, address = infos[0]
        return cls(address, family, prefix)

    def send(self, payload: str) -> None:
        """One datagram (several metrics may share it, one per line); never raises."""
        try:
            self.sock.sendto(payload.encode("ascii", "replace"), self.address)
        except OSError:
            pass

    def incr(self, name: str, count: int = 1) -> None:
        self.send(f"{self.prefix}{name}:{count}|c")

    def timing(self, name: str, ms: float) -> None:
        self.send(f"{self.prefix}{name}:{ms:.3f}|ms")

    def gauge(self, name: str, value: float) -> None:
        self.send(f"{self.prefix}{name}:{value:g}|g")

    def close(self) -> None:
        self.sock.close()


def parse_host_port(value: str) -> tuple[str, int]:
    """`host:port`, `[::1]:port` or `host` (port 8125); StartupError when malformed."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        raise StartupError(f"statsd-host must be HOST:PORT, e.g. 127.0.0.1:8125, got {value!r}")
    return host, port


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class LogCounter(logging.Filter):
    """On the error logger: counts warnings, errors, exceptions and criticals (never filters)."""

    def __init__(self, client: Statsd) -> None:
        super().__init__()
        self.client = client

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            if record.levelno == logging.ERROR and record.exc_info:
                kind = "exception"
            elif record.levelno >= logging.CRITICAL:
                kind = "critical"
            else:
                kind = "error" if record.levelno >= logging.ERROR else "warning"
            self.client.incr(f"hotswap.log.{kind}")
        return True


class Metrics:
    """What hotswap reports; every method is a no-op without --statsd-host."""

    def __init__(self, client: Statsd | None = None) -> None:
        self.client = client
        self._request_lines: tuple[str, str, str] = ("", "", "")
        if client is not None:
            p = client.prefix
            self._request_lines = (f"{p}hotswap.requests:1|c\n{p}hotswap.request.duration:",
                                   f"|ms\n{p}hotswap.request.status.", ":1|c")
        self._upgrade = _UpgradeWatch()
        self._workers: int | None = None
        self._workers_sent = 0.0
        self._generation_sent = False

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def request(self, status: str, duration: float) -> None:
        """In a worker, per request: requests, request.duration, request.status.<code>,
        in one datagram."""
        client = self.client
        if client is not None:
            head, mid, tail = self._request_lines
            client.send(f"{head}{duration * 1000:.3f}{mid}{status[:3]}{tail}")

    def master(self, up: Upgrader, workers: int | None) -> None:
        """In the master, once per loop turn and at exit: the workers gauge (`workers`
        None while this generation does not serve), the generation gauge, and whatever
        the last upgrade's record says that was not sent yet."""
        client = self.client
        if client is None:
            return
        now = time.monotonic()
        if workers is not None and (workers != self._workers
                                    or now - self._workers_sent >= GAUGE_REFRESH):
            self._workers, self._workers_sent = workers, now
            client.gauge("hotswap.workers", workers)
        if not self._generation_sent:
            self._generation_sent = True
            if up.lineage.parent_pid is None:  # a new generation is announced by its parent
                client.gauge("hotswap.generation", up.generation)
        if up.handover is not None:
            self._upgrade.report(client, up.handover.record, up.generation)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class _UpgradeWatch:
    """Turns the successive states of one UpgradeRecord into metrics, each sent once."""

    def __init__(self) -> None:
        self.record_id = ""
        self.sent: set[str] = set()

    def report(self, client: Statsd, record: Any, own_generation: int) -> None:
        if record.id != self.record_id:
            self.record_id, self.sent = record.id, set()
        if record.state == names.STATE_REFUSED:
            return
        self._once(client, "started", lambda: client.incr("hotswap.upgrade.started"))
        for step in ("ready", "drain", "handover", "commit"):
            seconds = getattr(record, step)
            if seconds is not None and (step != "commit" or record.state == names.STATE_COMMITTED):
                self._once(client, step, lambda s=step, v=seconds: client.timing(f"hotswap.upgrade.{s}",
                                                                                v * 1000))
        outcome = {names.STATE_COMMITTED: "committed", names.STATE_ROLLED_BACK: "rolled_back",
                   names.STATE_FAILED: "failed"}.get(record.state)
        if outcome is not None:
            serving = record.generation if outcome == "committed" else own_generation
            self._once(client, outcome, lambda: (client.incr(f"hotswap.upgrade.{outcome}"),
                                                 client.gauge("hotswap.generation", serving)))

    def _once(self, client: Statsd, key: str, send: Any) -> None:
        if key not in self.sent:
            self.sent.add(key)
            send()
