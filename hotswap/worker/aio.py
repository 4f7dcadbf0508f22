"""The ASGI worker process: one asyncio loop (uvloop when installed) serving an ASGI app.

It keeps the WSGI worker's contract with the master byte for byte (see process.py):
`B` once the app is loaded *and its lifespan startup completed* (and its --health-path
check passed), `.` heartbeats from the loop (an app that blocks the loop stops them, and
the master kills the worker after --timeout, as for a stuck WSGI worker), `E<reason>` for
a failed boot (an import error or a failed lifespan startup), `R` at --max-requests, `P`
once parked and holding no HTTP request. Signals: WINCH parks, HUP resumes, TERM retires
gracefully within --graceful-timeout (lifespan shutdown last), QUIT and INT leave at once,
USR1 reopens the logs. A worker whose master dies retires as on TERM. Hooks of a config
file (hotswap.hooks) as in the WSGI worker: post_worker_init after the lifespan startup,
pre_request/post_request around each HTTP request (asgi_http.Cycle), worker_int on
QUIT/INT; worker_abort and worker_exit are process.py's.

Accepting: each listening socket is served on a *duplicate* of its fd (uvloop's
`create_server`, or `aio_accept.Acceptor` on asyncio's own loop, which would otherwise reset
a connection accepted just before the server closed, and on any loop for a listener with
TLS or the PROXY protocol), so stopping to accept (park, retire) closes only the duplicate:
the listener itself (same fd number, inherited across upgrades) stays open for a later
resume.

Long-lived connections (WebSockets, and responses already streaming with the whole
request read) never hold a request the next generation could take:
- parked (WINCH, e.g. the old generation during an upgrade's watch window), the worker
  says `P` as soon as only such connections are left, so they do not delay the handover
  figure or get the worker killed by the master's park deadline; it keeps serving them,
  since a rollback resumes this very worker and its clients should not notice anything;
- retiring (TERM: the upgrade committed, a reload, --max-requests), they go on until the
  client ends them or the drain deadline: --graceful-timeout after the retirement began.
  DRAIN_LEAD (at most 1 s) before it, every WebSocket gets a close frame 1001 Going Away
  and a server-sent event stream (text/event-stream) its last chunk, so clients reconnect
  (to the new generation) after a clean close; anything still open at the deadline is
  closed with a FIN. The master's SIGKILL comes 1 s after the deadline, so it never meets
  an open socket. One option serves both kinds of drain, and an operator who wants
  WebSockets to last longer across upgrades raises --graceful-timeout.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import time
from typing import Any

from listeners import Listener

from ..http import response as resp
from ..http.exchange import SENDING
from ..http.forwarded import TrustedProxies
from ..http.request import Limits
from .aio_accept import Acceptor, Entry
from .asgi_http import HttpProtocol, Site
from .healthcheck import check_asgi_app
from .lifespan import Lifespan
from .process import tell_master

HOUSEKEEPING = 0.25
DRAIN_LEAD_MAX = 1.0  # 1001 Going Away this long before the drain deadline (at most)
SHUTDOWN_GRACE = 0.5  # lifespan shutdown's time once the drain deadline has passed


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (optional, never a dependency), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class AsgiWorker:
    """The loop, the master channel and the worker's states (serving, parked, retiring)."""

    def __init__(self, spec: Any, app: Any, booting: Any, boot_failed: int) -> None:
        """`booting`: the process.Worker that loaded the app; until our own handlers are
        installed (after the lifespan startup), its handlers record WINCH/HUP/USR1."""
        self.spec = spec
        self.booting = booting
        self.cfg = spec.cfg
        self.app = app
        self.log = spec.logs.error
        self.boot_failed = boot_failed
        self.parked = booting.park_wanted
        self.park_wanted = booting.park_wanted
        self.park_told = True
        self.stop_at: float | None = None
        self.going_away_sent = False
        self.orphaned = False
        self.reopen_logs = False
        self.servers: dict[int, Any] = {}  # listener fd -> what accepts on it (close() stops)
        self.accepting: set[asyncio.Task[Any]] = set()  # connections accepted, not set up yet
        self.shared = {lst.fd: lst for lst in spec.listeners}
        self.probe: Listener | None = spec.probe
        self.last_beat = 0.0
        self.beat_interval = min(1.0, self.cfg.timeout / 4)
        self.tick_pending = False
        self.syncing = False
        self.done: asyncio.Future[int] | None = None
        self.fast = False
        self.max_requests = 0
        if self.cfg.max_requests:
            import random

            self.max_requests = self.cfg.max_requests + random.randint(
                0, self.cfg.max_requests_jitter)

    def run(self) -> int:
        loop = new_loop()
        self.uvloop = type(loop).__module__.startswith("uvloop")
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(self._main())

    async def _main(self) -> int:
        self.loop = asyncio.get_running_loop()
        io_timeout = max(0.5, self.cfg.timeout * 0.75)
        self.site = Site(
            app=self.app,
            limits=Limits(self.cfg.limit_request_line, self.cfg.limit_request_fields,
                          self.cfg.limit_request_field_size),
            proxies=TrustedProxies(self.cfg.forwarded_allow_ips),
            log_error=self.log.error,
            log_access=self.spec.logs.access if self.spec.logs.access_enabled else None,
            keepalive=self.cfg.keepalive,
            io_timeout=io_timeout,
            root_path=os.environ.get("SCRIPT_NAME", ""),
            on_change=self._changed,
            log_debug=self.log.debug,
            request_limit=self.max_requests,
            on_limit=self._request_limit,
            hooks=self.booting.hooks.requests(),
        )
        # TLS context and --proxy-allow-from per shared listener, as process.Worker read
        # them at boot (the certificate files read anew by every worker: a renewed
        # certificate is served by the next generation)
        self.entries = {fd: Entry(tls, proxies, self.cfg.timeout)
                        for fd, (tls, proxies) in self.booting.preambles.items()}
        self.lifespan = Lifespan(self.app, self.site.state, self.log)
        failure = await self.lifespan.startup()
        if failure is None and self.cfg.health_path:
            failure = await check_asgi_app(self.app, self.cfg.health_path, self.site.state)
        if failure is not None:
            self.log.error("%s", failure)
            self._tell(b"E" + " ".join(failure.split()).encode("utf-8", "replace") + b"\n")
            return self.boot_failed
        self.booting.hooks.post_worker_init()  # after the lifespan startup, before accepting
        self.done = self.loop.create_future()  # before the handlers: QUIT resolves it
        self._install_signals()
        self.park_wanted = self.booting.park_wanted  # a WINCH or HUP during the startup
        self.reopen_logs = self.booting.reopen_logs
        self.parked = self.park_wanted
        self.park_told = not self.parked
        self.site.closing = self.cfg.keepalive <= 0 or self.parked
        await self._sync_accept()
        self._tell(b"B")
        self.last_beat = time.monotonic()
        ticker = self.loop.create_task(self._housekeeping())
        code = await self.done
        ticker.cancel()
        if not self.fast:
            left = (self.stop_at or time.monotonic()) - time.monotonic()
            await self.lifespan.shutdown(max(SHUTDOWN_GRACE, left))
        return code

    # -- signals (from the loop, never inside app code) ----------------------------------

    def _install_signals(self) -> None:
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self._on_term)
        loop.add_signal_handler(signal.SIGQUIT, self._on_quit, signal.SIGQUIT)
        loop.add_signal_handler(signal.SIGINT, self._on_quit, signal.SIGINT)
        loop.add_signal_handler(signal.SIGUSR1, self._on_usr1)
        loop.add_signal_handler(signal.SIGWINCH, self._on_winch)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    def _on_term(self) -> None:
        if os.getppid() != self.spec.master_pid:
            self._leave_by_deadline()
        self._begin_stop()

    def _on_quit(self, signum: int) -> None:
        self.booting.hooks.worker_int(signum)
        self.fast = True
        self._finish(0)

    def _on_usr1(self) -> None:
        self.reopen_logs = True
        self._kick()

    def _on_winch(self) -> None:
        self.park_wanted = True
        self.site.closing = True  # a response leaving now already says Connection: close
        self._kick()

    def _on_hup(self) -> None:
        self.park_wanted = False
        if self.stop_at is None:
            self.site.closing = self.cfg.keepalive <= 0
        self._kick()

    def _leave_by_deadline(self) -> None:
        """No master is left to kill us after the graceful timeout: the kernel does (as
        the WSGI worker's orphan rule, process.py)."""
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(math.ceil(self.cfg.graceful_timeout) + 1)

    # -- states -------------------------------------------------------------------------

    def _changed(self) -> None:
        """A connection closed or became long-lived: a parked or retiring worker looks now."""
        if self.parked or self.stop_at is not None:
            self._kick()

    def _kick(self) -> None:
        if not self.tick_pending:
            self.tick_pending = True
            self.loop.call_soon(self._tick)

    def _request_limit(self) -> None:
        """--max-requests: the response being sent already says Connection: close."""
        if self.stop_at is None:
            self.log.info("max requests (%d) reached, worker retiring", self.max_requests)
            self._begin_stop()
            self._tell(b"R")

    def _begin_stop(self) -> None:
        if self.stop_at is not None:
            return
        self.stop_at = time.monotonic() + self.cfg.graceful_timeout
        self.site.closing = True
        self.log.info("retiring: not accepting; finishing %d connection(s)", len(self.site.conns))
        self.loop.create_task(self._sync_accept())
        self._kick()

    def _finish(self, code: int) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(code)

    async def _sync_accept(self) -> None:
        """Serve exactly the listeners we should accept on now: none once retiring, the
        probe alone while parked, all of them otherwise."""
        if self.syncing:
            return
        self.syncing = True
        try:
            while True:
                want: dict[int, Listener] = {}
                if self.stop_at is None:
                    if not self.parked:
                        want.update(self.shared)
                    if self.probe is not None:
                        want[self.probe.fd] = self.probe
                if set(want) == set(self.servers):
                    return
                for fd in set(self.servers) - set(want):
                    self.servers.pop(fd).close()
                for fd in set(want) - set(self.servers):
                    self.servers[fd] = await self._serve(want[fd])
        finally:
            self.syncing = False

    async def _serve(self, listener: Listener) -> Any:
        sock = listener.sock.dup()
        entry = self.entries.get(listener.fd)
        if entry is not None or not self.uvloop:
            return Acceptor(self.loop, sock, self._protocol, self.accepting, self.log, entry)
        factory = self._protocol
        if sock.family == socket.AF_UNIX:
            return await self.loop.create_unix_server(factory, sock=sock,
                                                      backlog=self.cfg.backlog)
        return await self.loop.create_server(factory, sock=sock, backlog=self.cfg.backlog)

    def _protocol(self, client: tuple[str, int] | None = None) -> HttpProtocol:
        """`client`: the address a PROXY header named (None: the peer's own)."""
        return HttpProtocol(self.site, client)

    # -- housekeeping -----------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            self._kick()

    def _tick(self) -> None:
        self.tick_pending = False
        now = time.monotonic()
        if now - self.last_beat >= self.beat_interval:
            self.last_beat = now
            alive = self._tell(b".") and os.getppid() == self.spec.master_pid
            if not alive and not self.orphaned:
                self.log.warning("master %d is gone, worker exiting", self.spec.master_pid)
                self.orphaned = True
                self._leave_by_deadline()
                self._begin_stop()
        if self.reopen_logs:
            self.reopen_logs = False
            self.spec.logs.reopen()
        if self.park_wanted != self.parked and self.stop_at is None:
            self._park() if self.park_wanted else self._resume()
        self._sweep(now)
        if self.parked and not self.park_told and self.stop_at is None:
            if all(conn.long_lived for conn in self.site.conns):
                self.park_told = True
                self.log.debug("parked and holding no HTTP request")
                self._tell(b"P")
        if self.stop_at is not None:
            self._drain(now)

    def _park(self) -> None:
        self.parked = True
        self.park_told = False
        self.site.closing = True
        self.loop.create_task(self._sync_accept())
        self.log.info("parked: not accepting; finishing %d connection(s)", len(self.site.conns))

    def _resume(self) -> None:
        self.parked = False
        self.park_told = True
        self.site.closing = self.cfg.keepalive <= 0
        self.loop.create_task(self._sync_accept())
        self.log.info("resumed: accepting again")

    def _sweep(self, now: float) -> None:
        """Close kept-alive connections idle past --keepalive; answer 408 to a request
        head not complete --timeout after its first byte (as the WSGI worker)."""
        for conn in list(self.site.conns):
            if conn.head_overdue(now, self.cfg.timeout):
                if conn.parser.in_message:
                    conn.write(resp.error_response(408, "request head not received in time"))
                conn.close()
                continue
            idle = conn.idle_for(now)
            if idle is not None and idle > self.cfg.keepalive:
                conn.close()

    def _drain(self, now: float) -> None:
        """Retiring: leave once nothing is held, say 1001 near the deadline, stop at it."""
        assert self.stop_at is not None
        conns = self.site.conns
        if not conns and not self.accepting:
            self.log.debug("retired: holding no connection")
            self._finish(0)
            return
        lead = min(DRAIN_LEAD_MAX, self.cfg.graceful_timeout / 2)
        if now >= self.stop_at - lead and not self.going_away_sent:
            self.going_away_sent = True
            ws = [c for c in conns if c.ws is not None]
            streams = [c for c in conns if c.cycle is not None and c.long_lived]
            self.log.info("drain deadline near: closing %d WebSocket(s) with 1001 and %d "
                          "stream(s)", len(ws), len(streams))
            for conn in ws:
                conn.ws.going_away()
            for conn in streams:
                _end_stream(conn)
        if now >= self.stop_at:
            self.log.warning("graceful timeout: closing %d connection(s)", len(conns))
            for conn in list(conns):
                conn.close()
            self._finish(0)

    # -- master channel ---------------------------------------------------------------

    def _tell(self, message: bytes) -> bool:
        return tell_master(self.spec.status_fd, message)


def _end_stream(conn: HttpProtocol) -> None:
    """At the drain deadline: an event stream ends cleanly (its client reconnects, to the
    new generation); any other response still streaming is cut with a FIN. The app sees
    http.disconnect and what it sends afterwards goes nowhere."""
    cycle = conn.cycle
    if cycle is None:
        return
    exchange = cycle.exchange
    head = exchange.head
    if exchange.state == SENDING and head is not None and head.chunked and any(
            name.lower() == "content-type" and value.startswith("text/event-stream")
            for name, value in head.headers):
        conn.write(resp.LAST_CHUNK)
    cycle.client_gone()
    conn.close()
