"""A retiring worker stops accepting at once and leaves once done (issue 9, item 1).

Clients that open a new connection for every request (`Connection: close`) keep the
listen queue from ever being empty; a worker that accepts while retiring then never
leaves, and the master SIGKILLs it mid-request at --graceful-timeout + 1. Proven here,
with --graceful-timeout 3 and 2 workers, over raw sockets (no retries anywhere):

- 20 upgrades with `hotswap upgrade` under that load: not one request fails, and each
  drain is shorter than the longest request in flight plus 1 s;
- 20 TERM stops of a loaded master: every request that had connected before TERM is
  answered, every request the app saw is answered, and the master is gone within the
  longest request in flight plus 1 s. (A connection made after TERM may be refused, or
  reset if it was still queued when the last copy of the socket closed: the server is
  going away; but none of them reached the app without being answered.)

Each test is split in two batches of 10, so they can run in parallel.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from load import run_upgrade_tool
from support import free_port, wait_for, write_app

ROUNDS = 10  # per batch
SLOW = 0.3  # seconds a slow request spends in the app
FAST_CLIENTS = 4
SLOW_CLIENTS = 2

# Query `id=N&sleep=S`: the app marks seen/N on arrival, sleeps S, then answers JSON.
APP = '''
import json, os, time

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "VERSION_HERE"


def app(environ, start_response):
    query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    if "id" in query:
        open(os.path.join(HERE, "seen", query["id"]), "w").close()
    time.sleep(float(query.get("sleep", "0")))
    body = json.dumps({"version": VERSION, "worker": os.getpid(),
                       "master": environ["hotswap.master_pid"]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def write_version(folder: Path, version: str) -> None:
    (folder / "seen").mkdir(exist_ok=True)
    write_app(folder, "app", APP.replace("VERSION_HERE", version))


@dataclass
class Outcome:
    """One request as a raw-socket client saw it."""

    id: int
    slow: bool
    start: float
    connected: float | None = None  # None: the connection was refused
    end: float = 0.0
    answer: dict | None = None
    failure: str = ""

    @property
    def latency(self) -> float:
        return self.end - self.start


class CloseLoad:
    """Client threads, each opening a new connection per request until stopped."""

    def __init__(self, port: int, max_seconds: float = 80.0) -> None:
        self.port = port
        self.max_seconds = max_seconds
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.crashed: list[str] = []
        self._ids = itertools.count()
        self._lock = threading.Lock()
        slow = [True] * SLOW_CLIENTS + [False] * FAST_CLIENTS
        self.threads = [threading.Thread(target=self._run, args=(s,), daemon=True) for s in slow]

    def __enter__(self) -> CloseLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)
        assert not any(t.is_alive() for t in self.threads), "load clients still running"
        assert not self.crashed, self.crashed

    def done(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def _run(self, slow: bool) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                outcome = self._one(next(self._ids), slow)
                with self._lock:
                    self.outcomes.append(outcome)
                if outcome.connected is None:
                    self.stop.wait(0.02)  # refused: the server is gone; do not spin
        except BaseException as exc:  # a bug in the harness must fail the test
            self.crashed.append(f"{type(exc).__name__}: {exc}")

    def _one(self, rid: int, slow: bool) -> Outcome:
        outcome = Outcome(rid, slow, time.monotonic())
        path = f"/?id={rid}&sleep={SLOW if slow else 0}"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=15) as sock:
                outcome.connected = time.monotonic()
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                             .encode())
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            outcome.answer = parse(data)
        except ConnectionRefusedError:
            pass
        except Exception as exc:  # any failure counts; its kind is the evidence
            outcome.failure = f"{type(exc).__name__}: {exc}"
        outcome.end = time.monotonic()
        return outcome


def parse(data: bytes) -> dict:
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise ValueError(f"no 200 answer: {data[:120]!r}")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    if len(body) != length:
        raise ValueError(f"body of {len(body)} bytes, expected {length}")
    return json.loads(body)


def seen(folder: Path) -> set[int]:
    return {int(p.name) for p in (folder / "seen").iterdir()}


def in_flight_at(outcomes: list[Outcome], moment: float) -> list[Outcome]:
    return [o for o in outcomes if o.start <= moment <= o.end]


def report(outcomes: list[Outcome], limit: int = 10) -> str:
    bad = [o for o in outcomes if o.answer is None]
    return "\n".join(f"#{o.id} slow={o.slow} +{o.start:.3f}: {o.failure or 'refused'}"
                     for o in bad[:limit])


@pytest.mark.timeout(90)
@pytest.mark.parametrize("batch", [1, 2])
def test_upgrades_under_connection_per_request_load(masters, tmp_path: Path, batch: int):
    port = free_port()
    write_version(tmp_path, "v0")
    m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                "--graceful-timeout", "3", "--watch-window", "0", cwd=tmp_path)
    assert m.pidfile is not None
    drains: list[float] = []
    with CloseLoad(port) as load:
        wait_for(lambda: load.done() >= 20, what="the load to run")
        for round_ in range(1, ROUNDS + 1):
            old = m.current_pid()
            write_version(tmp_path, f"v{round_}")
            run = run_upgrade_tool("cli", m.pidfile, timeout=20)
            assert run.returncode == 0, run.explain()
            new = m.current_pid()
            assert new != old and new is not None
            m.extra_pids.add(new)
            assert run.report is not None and run.report.get("drain_seconds") is not None, \
                run.explain()
            drains.append(run.report["drain_seconds"])
            served = load.done()
            wait_for(lambda n=served: load.done() >= n + 10, what="requests after the upgrade")
    outcomes = load.outcomes
    failed = [o for o in outcomes if o.answer is None]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed:\n{report(outcomes)}"
    longest = max(o.latency for o in outcomes)
    print(f"\nbatch {batch}: {len(outcomes)} requests, 0 failed, longest {longest:.3f} s, "
          f"drains {[round(d, 3) for d in drains]}")
    assert max(drains) < longest + 1.0, f"drains {drains}, longest request {longest:.3f} s"
    assert outcomes[-1].answer is not None and outcomes[-1].answer["version"] == f"v{ROUNDS}"


GRACEFUL_TIMEOUT = 3.0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("batch", [1, 2])
def test_term_stops_under_connection_per_request_load(masters, tmp_path: Path, batch: int):
    port = free_port()
    write_version(tmp_path, "v1")
    drains = []
    totals = {"requests": 0, "after_term_refused": 0, "after_term_dropped": 0}
    for _ in range(ROUNDS):
        m = masters("app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                    "--graceful-timeout", str(GRACEFUL_TIMEOUT), cwd=tmp_path)
        drains.append(one_term_stop(m, port, tmp_path, totals))
    print(f"\nbatch {batch}: {totals}, drains {[round(d, 3) for d in drains]}")


def one_term_stop(m, port: int, folder: Path, totals: dict[str, int]) -> float:
    """Load a fresh master, TERM it, check what was answered; the drain in seconds."""
    with CloseLoad(port) as load:
        wait_for(lambda: load.done() >= 10, what="the load to run")
        term_at = time.monotonic()
        m.signal(signal.SIGTERM)
        wait_for(lambda: m.proc.poll() is not None, 10, interval=0.002, what="the master to exit")
        exited_at = time.monotonic()
        wait_for(lambda: any(o.start > exited_at for o in list(load.outcomes)),
                 what="a request after the stop")
    outcomes = load.outcomes
    before = [o for o in outcomes if o.connected is not None and o.connected < term_at]
    failed = [o for o in before if o.answer is None]
    assert not failed, f"connected before TERM, not answered:\n{report(failed)}"
    app_saw = seen(folder)
    dropped = [o for o in outcomes if o.id in app_saw and o.answer is None]
    assert not dropped, f"reached the app, not answered:\n{report(dropped)}"
    longest = max((o.latency for o in in_flight_at(outcomes, term_at)), default=0.0)
    drain = exited_at - term_at
    # A worker that kept accepting would never run dry under this load and be killed at the
    # graceful timeout (3 s); one that stopped accepting leaves with its last request.
    assert drain < GRACEFUL_TIMEOUT, (f"drain {drain:.3f} s reached the graceful timeout; longest "
                                      f"request in flight {longest:.3f} s")
    after = [o for o in outcomes if o not in before]
    totals["requests"] += len(outcomes)
    totals["after_term_refused"] += sum(1 for o in after if o.connected is None)
    totals["after_term_dropped"] += sum(1 for o in after if o.connected and not o.answer)
    for path in (folder / "seen").iterdir():
        path.unlink()
    return drain
