"""A load generator made of what real Python clients use: threads of `requests`.

Run as its own process (`python loadgen.py ...`) so its threads never steal the GIL from
the harness that times the upgrades. It stops when its stdin closes (or at --max-seconds)
and writes every request as (start, latency, outcome) to --out, with start on the
system-wide monotonic clock, so the harness can sort requests into upgrade windows.

Keep-alive on: one `requests.Session` per thread, connections reused. Keep-alive off:
the same, with `Connection: close` on every request, so each request has its own
connection. A unix socket is reached through a small urllib3 connection class.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool

TIMEOUT = 10.0


class UnixConnection(HTTPConnection):
    """An HTTP connection whose socket is AF_UNIX; everything above the socket is stock urllib3."""

    def __init__(self, *args: Any, socket_path: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if isinstance(self.timeout, int | float) else TIMEOUT)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock


class UnixPool(HTTPConnectionPool):
    ConnectionCls = UnixConnection


class UnixAdapter(HTTPAdapter):
    """Sends every request of a session to one unix socket, keeping one pooled connection."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._pool = UnixPool("localhost", 80, maxsize=1, socket_path=path)

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                        cert: Any = None) -> HTTPConnectionPool:
        return self._pool

    def get_connection(self, url: Any, proxies: Any = None) -> HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()


def classify(exc: BaseException) -> str:
    """Name a failure by its root cause, the way an operator would read it in a client log."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.append(cur)
        for nxt in (cur.__cause__, cur.__context__, getattr(cur, "reason", None),
                    *(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    kinds = [
        (ConnectionRefusedError, "connection refused"),
        (FileNotFoundError, "unix socket missing"),
        (ConnectionResetError, "connection reset"),
        (BrokenPipeError, "broken pipe"),
        (http.client.RemoteDisconnected, "closed without response"),
        (requests.Timeout, "timeout"),
        (TimeoutError, "timeout"),
    ]
    for cls, name in kinds:
        if any(isinstance(e, cls) for e in seen):
            return name
    text = " ".join(str(e) for e in seen)
    if "Remote end closed" in text or "RemoteDisconnected" in text:
        return "closed without response"
    return type(exc).__name__


class Recorder:
    """Per-thread lists merged at the end: no lock on the hot path."""

    def __init__(self) -> None:
        self.rows: list[list[tuple[float, float, str]]] = []

    def new(self) -> list[tuple[float, float, str]]:
        rows: list[tuple[float, float, str]] = []
        self.rows.append(rows)
        return rows


def worker(target: str, path: str, keepalive: bool, interval: float, expected: bytes,
           stop: threading.Event, rows: list[tuple[float, float, str]]) -> None:
    session = requests.Session()
    if target.startswith("unix:"):
        session.mount("http://", UnixAdapter(target[5:]))
        url = "http://localhost" + path
    else:
        url = target + path
    headers = {} if keepalive else {"Connection": "close"}
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            resp = session.get(url, headers=headers, timeout=TIMEOUT)
            if resp.status_code != 200:
                kind = f"status {resp.status_code}"
            elif resp.content != expected:
                kind = "wrong body"
            else:
                kind = "ok"
        except Exception as exc:  # every failure is data here, never a crash
            kind = classify(exc)
        t1 = time.monotonic()
        rows.append((t0, t1 - t0, kind))
        pause = interval - (t1 - t0)
        if pause > 0:
            stop.wait(pause)
    session.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", required=True, help="http://host:port or unix:/path")
    ap.add_argument("--path", default="/")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--close", action="store_true", help="Connection: close on every request")
    ap.add_argument("--interval", type=float, default=0.0,
                    help="each thread starts a request at most this often (s)")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    import apps

    expected = apps.BIG if args.path == "/16k" else apps.HELLO
    stop = threading.Event()
    recorder = Recorder()
    threads = [threading.Thread(target=worker, daemon=True,
                                args=(args.target, args.path, not args.close, args.interval,
                                      expected, stop, recorder.new()))
               for _ in range(args.threads)]
    for t in threads:
        t.start()
    print("started", flush=True)
    watcher = threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True)
    watcher.start()
    stop.wait(args.max_seconds)
    stop.set()
    for t in threads:
        t.join(TIMEOUT + 5)
    rows = sorted(r for part in recorder.rows for r in part)
    with open(args.out, "w") as fh:
        json.dump({"start": [round(r[0], 6) for r in rows], "latency": [round(r[1], 6) for r in rows],
                   "kind": [r[2] for r in rows]}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
