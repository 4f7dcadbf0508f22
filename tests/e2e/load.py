"""Load, pidfile watching and upgrade-tool helpers for the zero-downtime upgrade tests.

The promise under test is "not one request is lost", so this module is built to make
a lost request visible, never to hide one:

- every client is a `requests` Session with max_retries=0; over a unix socket it uses
  `UnixAdapter`, a transport on http.client that never retries or reconnects behind
  our back (a reused connection the server closed is a failure, not a silent redial);
- every request is recorded (times, outcome, failure kind, and who served it: the app
  below answers with its version, master pid, worker pid, client port and the wall
  clock at which the app got the request), so a test can prove *which* requests were
  in flight, or idle on a kept-alive connection, when a generation was retired;
- `PidfilePoller` reads PIDFILE every few ms and keeps every read where it did not
  name a live master;
- `run_upgrade_tool` runs `hotswap upgrade --json` or `scripts/hotswap-upgrade.sh`
  with a timeout, so a wedged upgrade fails the test instead of hanging it.

Everything is bounded: clients stop when told, after `max_seconds`, or after
`max_requests` each; threads are joined with a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from pidfiles import procs

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "hotswap-upgrade.sh"
REQUEST_TIMEOUT = 15.0  # far above any latency we expect; a hung request shows as a failure

# -- the app ----------------------------------------------------------------------------

APP_TEMPLATE = '''\
"""Test app {version}: says who served the request; /slow/SECONDS sleeps first.

?mark leaves a file inflight-WORKERPID-NS in the working directory on arrival.
"""
import json
import os
import time

VERSION = {version!r}
{prelude}

def app(environ, start_response):
    t_in = time.time()
    path = environ.get("PATH_INFO", "/")
    if environ.get("QUERY_STRING") == "mark":  # lets a test see the request is in our hands
        open("inflight-%d-%d" % (os.getpid(), time.time_ns()), "w").close()
    if path.startswith("/slow/"):
        time.sleep(float(path[len("/slow/"):]))
    if path == "/healthz":  # a prelude may set HEALTH = "503 ..." (or a function giving it)
        health = globals().get("HEALTH", "200 OK")
        start_response(health() if callable(health) else health, [("Content-Length", "0")])
        return [b""]
    body = json.dumps({{
        "version": VERSION,
        "master": environ.get("hotswap.master_pid"),
        "generation": environ.get("hotswap.generation"),
        "worker": os.getpid(),
        "port": environ.get("REMOTE_PORT"),
        "t_in": t_in,
    }}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def app_source(version: str, prelude: str = "") -> str:
    """The app's code; `prelude` runs at import (to make an import slow, hang or fail)."""
    return APP_TEMPLATE.format(version=version, prelude=prelude)


# -- a requests transport over a unix socket ----------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class UnixAdapter(BaseAdapter):
    """`requests` over AF_UNIX: one kept-alive connection, reused until the server closes it.

    requests cannot speak to a unix socket itself. This adapter never retries: a
    request on a connection the server has closed fails, which is what we want to see.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = REQUEST_TIMEOUT) -> None:
        super().__init__()
        self.path = str(path)
        self.timeout = timeout
        self._conn: _UnixHTTPConnection | None = None

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: Any = None, verify: Any = True, cert: Any = None,
             proxies: Any = None) -> requests.Response:
        if self._conn is None:
            seconds = timeout if isinstance(timeout, int | float) else self.timeout
            self._conn = _UnixHTTPConnection(self.path, seconds)
        conn = self._conn
        try:
            conn.request(request.method or "GET", request.path_url, body=request.body,
                         headers=dict(request.headers))
            raw = conn.getresponse()
            content = raw.read()
        except BaseException:
            self.close()
            raise
        if raw.will_close:
            self.close()
        response = requests.Response()
        response.status_code = raw.status
        response.reason = raw.reason
        response.headers = CaseInsensitiveDict(raw.getheaders())
        response.encoding = get_encoding_from_headers(response.headers)
        response._content = content
        response.url = request.url or ""
        response.request = request
        response.connection = self
        return response

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def tcp_session(verify: str | bool = True) -> requests.Session:
    """A Session that never retries, so a dropped connection is a failure; `verify` is the
    CA bundle for an https:// base."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=1)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.verify = verify
    return session


def unix_session(path: str | os.PathLike[str]) -> requests.Session:
    session = requests.Session()
    session.mount("http+unix://", UnixAdapter(path))
    return session


def fetch(base: str, path: str = "/", unix: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """One fresh request (new connection); the app's JSON answer."""
    with (unix_session(unix) if unix else tcp_session()) as session:
        response = session.get(base + path, timeout=REQUEST_TIMEOUT,
                               headers={"Connection": "close"})
        response.raise_for_status()
        return response.json()


# -- the load generator -------------------------------------------------------------------


@dataclass(frozen=True)
class ClientSpec:
    """One client thread: where it connects, how, and what it asks for."""

    name: str
    transport: str = "tcp"  # "tcp" or "unix"
    keepalive: bool = True  # False: every request says Connection: close
    kind: str = "fast"  # "fast", "slow" (/slow/0.3-0.4) or "pauser" (idles 1-1.5 s between)


@dataclass
class Record:
    """One request, as the client saw it and as the app said it served it."""

    client: str
    kind: str
    keepalive: bool
    transport: str
    path: str
    start: float  # time.monotonic() before sending
    end: float = 0.0
    ok: bool = False
    failure: str = ""
    status: int | None = None
    version: str | None = None
    master: int | None = None
    worker: int | None = None
    port: str | None = None  # REMOTE_PORT: with the worker pid, identifies a TCP connection
    t_in: float | None = None  # time.time() when the app got the request (server clock)
    server_closed: bool = False  # the response said Connection: close

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def connection(self) -> tuple[int | None, str | None]:
        return (self.worker, self.port)


def standard_clients() -> list[ClientSpec]:
    """The mix of the CI test: 17 requests threads, TCP and unix, kept-alive and closing.

    Three kept-alive clients keep a slow request in flight nearly all the time, so one
    is in a worker's hands whenever a generation is retired; three pausers sit idle on
    a kept-alive connection for 1-1.5 s (less than the 5 s keep-alive) between requests.
    """
    specs = [ClientSpec(f"tcp-keepalive-{i}") for i in range(4)]
    specs += [ClientSpec(f"tcp-close-{i}", keepalive=False) for i in range(3)]
    specs += [ClientSpec(f"unix-keepalive-{i}", transport="unix") for i in range(2)]
    specs += [ClientSpec("unix-close-0", transport="unix", keepalive=False)]
    specs += [ClientSpec(f"tcp-slow-{i}", kind="slow") for i in range(2)]
    specs += [ClientSpec("unix-slow-0", transport="unix", kind="slow")]
    specs += [ClientSpec("tcp-close-slow-0", keepalive=False, kind="slow")]
    specs += [ClientSpec(f"tcp-pauser-{i}", kind="pauser") for i in range(3)]
    return specs


class LoadGenerator:
    """N client threads recording every request until stopped (or their bounds run out)."""

    def __init__(self, tcp_base: str, unix_path: str | os.PathLike[str] | None,
                 clients: Sequence[ClientSpec], max_seconds: float = 120.0,
                 max_requests: int = 20_000, think: float = 0.02,
                 verify: str | bool = True) -> None:
        self.tcp_base = tcp_base
        self.verify = verify  # CA bundle when tcp_base is https://
        self.unix_path = unix_path
        self.clients = list(clients)
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.think = think
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._last: dict[str, Record] = {}
        self._threads: list[threading.Thread] = []
        self.crashed: list[str] = []

    # -- running ----------------------------------------------------------------------

    def start(self) -> LoadGenerator:
        for spec in self.clients:
            thread = threading.Thread(target=self._run_client, args=(spec,),
                                      name=f"load-{spec.name}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Ask every client to finish its request in hand, and wait for all of them."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            raise AssertionError(f"load clients still running after {timeout:g} s: {stuck}")

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run_client(self, spec: ClientSpec) -> None:
        try:
            self._client_loop(spec)
        except BaseException as exc:  # a bug in this harness must fail the test, loudly
            with self._lock:
                self.crashed.append(f"{spec.name}: {type(exc).__name__}: {exc}")

    def _client_loop(self, spec: ClientSpec) -> None:
        deadline = time.monotonic() + self.max_seconds
        if spec.transport == "unix":
            if self.unix_path is None:
                raise ValueError(f"client {spec.name} wants a unix socket but none is given")
            session, base = unix_session(self.unix_path), "http+unix://localhost"
        else:
            session, base = tcp_session(self.verify), self.tcp_base
        headers = {} if spec.keepalive else {"Connection": "close"}
        rng = random.Random(spec.name)
        with session:
            for _ in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                path = f"/slow/{rng.uniform(0.3, 0.4):.3f}" if spec.kind == "slow" else "/"
                record = self._one(session, base, path, headers, spec)
                with self._lock:
                    self._records.append(record)
                    self._last[spec.name] = record
                self._stop.wait(self._pause_after(spec, record, rng))

    def _pause_after(self, spec: ClientSpec, record: Record, rng: random.Random) -> float:
        if not record.ok:
            return 0.05  # do not spin on a broken server; the failure is recorded
        if spec.kind == "pauser":
            # Idle on the kept-alive connection; once the server closed it, reconnect at
            # once so the pauser is back on a live connection before the next upgrade.
            return 0.0 if record.server_closed else rng.uniform(1.0, 1.5)
        if spec.kind == "slow":
            return 0.0
        return self.think

    def _one(self, session: requests.Session, base: str, path: str,
             headers: dict[str, str], spec: ClientSpec) -> Record:
        record = Record(spec.name, spec.kind, spec.keepalive, spec.transport, path,
                        time.monotonic())
        try:
            # verify per request: REQUESTS_CA_BUNDLE in the environment beats session.verify
            response = session.get(base + path, headers=headers, timeout=REQUEST_TIMEOUT,
                                   verify=self.verify)
            record.status = response.status_code
            record.server_closed = response.headers.get("Connection", "").lower() == "close"
            if response.status_code != 200:
                raise ValueError(f"status {response.status_code}: {response.text[:200]!r}")
            data = response.json()
            record.version = data["version"]
            record.master = data["master"]
            record.worker = data["worker"]
            record.port = data["port"]
            record.t_in = data["t_in"]
            record.ok = True
        except Exception as exc:  # any kind of failure counts; its kind is the evidence
            record.failure = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        record.end = time.monotonic()
        return record

    # -- what happened ----------------------------------------------------------------

    @property
    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def failures(self) -> list[Record]:
        return [r for r in self.records if not r.ok]

    def last(self, name: str) -> Record | None:
        with self._lock:
            return self._last.get(name)

    def all_served_by(self, master: int, keepalive_only: bool = False) -> bool:
        """Has every client's latest request been answered by `master`?

        With keepalive_only, only kept-alive clients count, and their connection must
        still be open: they then sit on a connection to that generation.
        """
        for spec in self.clients:
            if keepalive_only and not spec.keepalive:
                continue
            last = self.last(spec.name)
            if last is None or not last.ok or last.master != master:
                return False
            if keepalive_only and last.server_closed:
                return False
        return True

    def finished_since(self, moment: float) -> int:
        """How many requests were sent after `moment` (monotonic) and have been recorded."""
        return sum(1 for r in self.records if r.start > moment)

    def summary(self) -> dict[str, Any]:
        records = self.records
        fast = [r.latency for r in records if r.ok and r.kind != "slow"]
        by_client: dict[str, int] = {}
        for r in records:
            by_client[r.client] = by_client.get(r.client, 0) + 1
        return {
            "clients": len(self.clients),
            "requests": len(records),
            "failures": sum(1 for r in records if not r.ok),
            "slow_requests": sum(1 for r in records if r.kind == "slow"),
            "unix_requests": sum(1 for r in records if r.transport == "unix"),
            "max_fast_latency_s": round(max(fast, default=0.0), 4),
            "requests_per_client": by_client,
        }


def failure_report(records: Iterable[Record], limit: int = 20) -> str:
    """The failed requests, one per line, for an assertion message."""
    lines = [f"{r.client} {r.path} at +{r.start:.3f}: {r.failure}" for r in records if not r.ok]
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


# -- the pidfile poller -------------------------------------------------------------------


@dataclass
class PidfileSwitch:
    """PIDFILE started naming `pid`: when we saw it, and its mtime (server wall clock)."""

    seen: float  # time.monotonic()
    pid: int
    mtime: float  # time.time() base: when the master wrote it, just before renaming


class PidfilePoller:
    """Reads PIDFILE every `interval` s and keeps every read that did not name a live master.

    A read naming P followed by "P is dead" only counts when PIDFILE still names P
    afterwards: if it changed in between, the master it named meanwhile is checked
    instead, so the poller's own scheduling delays cannot invent a violation.
    """

    def __init__(self, path: str | os.PathLike[str], interval: float = 0.005,
                 max_seconds: float = 150.0) -> None:
        self.path = str(path)
        self.interval = interval
        self.max_seconds = max_seconds
        self.polls = 0
        self.violations: list[str] = []
        self.switches: list[PidfileSwitch] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pidfile-poller", daemon=True)
        self.crashed: str | None = None

    def __enter__(self) -> PidfilePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._thread.is_alive():
            raise AssertionError("the pidfile poller did not stop")

    def switch_to(self, pid: int) -> PidfileSwitch | None:
        return next((s for s in self.switches if s.pid == pid), None)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._poll()
                self._stop.wait(self.interval)
        except BaseException as exc:
            self.crashed = f"{type(exc).__name__}: {exc}"

    def _read(self) -> tuple[str, float] | None:
        try:
            with open(self.path) as fh:
                return fh.read(), os.fstat(fh.fileno()).st_mtime
        except FileNotFoundError:
            return None

    def _poll(self) -> None:
        self.polls += 1
        for _ in range(3):
            got = self._read()
            if got is None:
                self.violations.append(f"+{time.monotonic():.3f}: {self.path} is missing")
                return
            text, mtime = got
            if not text.strip().isdigit():
                self.violations.append(f"+{time.monotonic():.3f}: {self.path} holds {text!r}")
                return
            pid = int(text)
            if not self.switches or self.switches[-1].pid != pid:
                self.switches.append(PidfileSwitch(time.monotonic(), pid, mtime))
            if procs.is_hotswap_master(pid):
                return
            again = self._read()
            if again is not None and again[0] == text:
                self.violations.append(f"+{time.monotonic():.3f}: {self.path} names {pid}, "
                                       f"not a live master ({procs.cmdline(pid)!r})")
                return
        self.violations.append(f"+{time.monotonic():.3f}: {self.path} kept changing under us")


# -- the upgrade tools --------------------------------------------------------------------


@dataclass
class ToolRun:
    """One run of `hotswap upgrade` or the shell script."""

    tool: str
    returncode: int
    stdout: str
    stderr: str
    started: float  # time.monotonic()
    ended: float
    report: dict[str, Any] | None = field(default=None)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def line(self) -> str:
        """The one final line both tools print on stdout."""
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""

    def explain(self) -> str:
        return f"{self.tool} exited {self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


def tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def upgrade_tool_argv(tool: str, pidfile: str | os.PathLike[str], timeout: int = 30) -> list[str]:
    if tool == "cli":
        return [sys.executable, "-m", "hotswap", "upgrade", "--pidfile", str(pidfile), "--json",
                "--timeout", str(timeout)]
    if tool == "script":
        return ["sh", str(SCRIPT), str(pidfile), str(timeout)]
    raise ValueError(f"unknown upgrade tool {tool!r}")


def run_upgrade_tool(tool: str, pidfile: str | os.PathLike[str], timeout: int = 30) -> ToolRun:
    """Run one upgrade to its end; a run that outlives every step deadline fails the test."""
    started = time.monotonic()
    try:
        done = subprocess.run(upgrade_tool_argv(tool, pidfile, timeout), capture_output=True,
                              text=True, env=tool_env(), cwd=REPO, timeout=3 * timeout + 15)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{tool} upgrade still running after {exc.timeout:g} s") from None
    return _tool_run(tool, done.returncode, done.stdout, done.stderr, started)


class BackgroundUpgrade:
    """An upgrade tool running while the test does something to the masters."""

    def __init__(self, tool: str, pidfile: str | os.PathLike[str], timeout: int = 30) -> None:
        self.tool = tool
        self.timeout = timeout
        self.started = time.monotonic()
        self.proc = subprocess.Popen(upgrade_tool_argv(tool, pidfile, timeout),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=tool_env(), cwd=REPO, start_new_session=True)

    def finish(self, timeout: float | None = None) -> ToolRun:
        try:
            out, err = self.proc.communicate(timeout=timeout or 3 * self.timeout + 15)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.tool} upgrade did not finish in time") from None
        return _tool_run(self.tool, self.proc.returncode, out, err, self.started)

    def kill(self) -> None:
        """Teardown: never leave the tool (or its sleep) running."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.communicate(timeout=10)

    def __enter__(self) -> BackgroundUpgrade:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def _tool_run(tool: str, code: int, out: str, err: str, started: float) -> ToolRun:
    run = ToolRun(tool, code, out, err, started, time.monotonic())
    if tool == "cli" and run.line.startswith("{"):
        run.report = json.loads(run.line)
    return run
