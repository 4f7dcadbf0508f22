"""A worker process: one selector loop that accepts, parks and serves connections.

Idle keep-alive connections and half-received requests wait in epoll, costing no
thread, so a hundred idle clients never starve a worker. A connection with a complete
request head is served inline (threads=1) or on a pool of `threads` threads.

The worker talks to its master over one pipe: `B` once the app is loaded (the master's
readiness depends on it), `.` as a heartbeat at most once a second, `E<reason>\\n`
when the app cannot be loaded, `R` when it retires on its own (--max-requests), so
the master forks its replacement at once instead of after the last idle keep-alive
client is gone, and `P` once it is parked and holds no connection. A worker whose
master is gone leaves on its own.

Parking (WINCH, resumed by HUP) is a retirement that does not end: the worker stops
accepting on the shared listeners at once, finishes what it holds, and stays alive with
the app loaded, so an upgrade can hand the sockets to a new generation and still roll
back to this one in a moment. A private probe listener is served even while parked.
"""

from __future__ import annotations

import errno
import math
import os
import random
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from listeners import Listener
from upgrade.proctitle import set_title

from ..apploader import load_app
from ..config import Config
from ..errors import StartupError
from ..hooks import WorkerHooks
from ..http import response as resp
from ..http.forwarded import TrustedProxies
from ..http.request import HttpError, Limits
from ..interface import resolve as resolve_interface
from ..logs import Logs
from ..tls import context_for
from . import wsgi
from .connection import Connection
from .healthcheck import check_app
from .preamble import DONE, Preamble, PreambleError

BOOT_FAILED = 3  # exit status of a worker that could not load the app
TICK = 1.0
HOUSEKEEPING = 0.25
ACCEPT_BACKOFF = 0.5  # seconds without accepting after accept() ran out of fds
ACCEPT_BACKOFF_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_LOG_EVERY = 5.0  # at most one line per this many seconds about failed accepts
TAKE_QUEUED = 64  # connections a retiring or parking worker takes from each listener's queue
PR_SET_PDEATHSIG = 1


@dataclass
class WorkerSpec:
    """What the master hands a freshly forked worker."""

    cfg: Config
    listeners: list[Listener]
    status_fd: int
    master_pid: int
    generation: int
    logs: Logs
    app: Callable[..., Any] | None  # preloaded in the master, or None to load here
    parked: bool = False  # boot without accepting on `listeners` until SIGHUP (see Parking)
    probe: Listener | None = None  # private listener served even while parked (--health-url)


def run(spec: WorkerSpec) -> None:
    """Entry point in the forked child; never returns into the master's code."""
    code = 1
    try:
        spec.logs.capture_stdio()  # --capture-output: print() into the error log
        code = Worker(spec).run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        spec.logs.error.exception("worker crashed")
    finally:
        WorkerHooks(spec).worker_exit()
        for handler in spec.logs.error.handlers:
            handler.flush()
        os._exit(code)


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.cfg = spec.cfg
        self.hooks = WorkerHooks(spec)  # the config file's worker hooks (hotswap.hooks)
        self.log = spec.logs.error
        self.conns: dict[int, Connection] = {}
        self.shared = {lst.fd: lst for lst in spec.listeners}
        self.probe = spec.probe
        self.listeners = dict(self.shared)  # every listener fd an epoll event may name
        if self.probe is not None:
            self.listeners[self.probe.fd] = self.probe
        self.server_names = {fd: _server_address(lst) for fd, lst in self.listeners.items()}
        self.in_epoll: set[int] = set()  # listener fds registered right now
        self.limits = Limits(self.cfg.limit_request_line, self.cfg.limit_request_fields,
                             self.cfg.limit_request_field_size)
        self.stop_at: float | None = None  # monotonic deadline once a graceful stop began
        self.stop_wanted = False  # TERM arrived; the loop begins the stop
        self.parked = spec.parked  # not accepting on the shared listeners
        self.park_wanted = spec.parked  # what the last WINCH/HUP asked for
        self.park_told = True  # `P` already sent for this park (none for a worker born parked)
        self.reopen_logs = False
        self.last_beat = 0.0
        self.beat_interval = min(TICK, self.cfg.timeout / 4)
        self.orphaned = False
        self.deadline_armed = False
        self.next_housekeeping = 0.0
        self.busy = 0
        self.returned: deque[tuple[Connection, bool]] = deque()
        self.accept_paused_until = 0.0  # accept() ran out of fds: try again then (or sooner)
        self.accept_errors = 0  # failed accepts not logged yet
        self.accept_logged = 0.0  # when the last accept failure was logged
        self.pool: ThreadPoolExecutor | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.epoll = select.epoll()
        jitter = random.randint(0, self.cfg.max_requests_jitter) if self.cfg.max_requests else 0
        self.max_requests = self.cfg.max_requests + jitter if self.cfg.max_requests else 0

    # -- start ------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        _term_when_parent_dies()
        if os.getppid() != self.spec.master_pid:
            return 0  # the master died before we could ask to be told
        set_title("worker", self.cfg.name)
        resp.set_server(resp.SERVER_SOFTWARE if self.cfg.server_header else None)
        try:
            self.preambles = self._preambles()
            app = self.spec.app or load_app(self.cfg.app)
            kind, app = resolve_interface(app, self.cfg.interface, self.cfg.app)
        except StartupError as exc:
            self._tell(b"E" + _one_line(str(exc)) + b"\n")
            return BOOT_FAILED
        if kind == "asgi":
            return self._run_asgi(app)
        base_environ = self._base_environ()
        if self.cfg.health_path:
            failure = check_app(app, self.cfg.health_path, base_environ)
            if failure is not None:
                self.log.error("%s", failure)
                self._tell(b"E" + _one_line(failure) + b"\n")
                return BOOT_FAILED
        self.site = wsgi.Site(
            app=app,
            base_environ=base_environ,
            proxies=TrustedProxies(self.cfg.forwarded_allow_ips),
            log_error=self.log.error,
            log_access=self.spec.logs.access if self.spec.logs.access_enabled else None,
            hooks=self.hooks.requests(),
        )
        self.hooks.post_worker_init()
        if self.park_wanted != self.parked:  # WINCH or HUP while the app was loading
            self.parked = self.park_wanted
            self.park_told = not self.parked
        self.site.closing = self.cfg.keepalive <= 0 or self.parked
        if self.cfg.threads > 1:
            self.pool = ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="hotswap")
        self.epoll.register(self.wake_r, select.EPOLLIN)
        self._sync_accept()
        signal.signal(signal.SIGTERM, self._on_term)  # from now on TERM means: finish, then go
        self._tell(b"B")
        self.last_beat = time.monotonic()
        return self._loop()

    def _run_asgi(self, app: Callable[..., Any]) -> int:
        """An ASGI app: the asyncio worker serves it, under the same master contract."""
        from .aio import AsgiWorker

        # The wake pipe stays open: this object's signal handlers (WINCH, HUP, USR1) keep
        # recording into it until the ASGI worker installs its own, after its lifespan
        # startup, and reads what they recorded (`booting`).
        self.epoll.close()
        return AsgiWorker(self.spec, app, self, BOOT_FAILED).run()

    def _base_environ(self) -> dict[str, Any]:
        return {
            "SCRIPT_NAME": os.environ.get("SCRIPT_NAME", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": self.cfg.threads > 1,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": wsgi.FileWrapper,
            "SERVER_SOFTWARE": resp.SERVER_SOFTWARE,
            "hotswap.generation": self.spec.generation,
            "hotswap.master_pid": self.spec.master_pid,
        }

    def _install_signals(self) -> None:
        for sig in (signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # While the app loads there is nothing to finish: TERM leaves at once.
        signal.signal(signal.SIGTERM, self._on_quit)
        signal.signal(signal.SIGQUIT, self._on_quit)
        signal.signal(signal.SIGINT, self._on_quit)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        # Recorded from the start, so a HUP sent while the app still loads is not lost.
        signal.signal(signal.SIGWINCH, self._on_winch)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.hooks.install_abort()
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])  # blocked since fork_worker, see there

    def _on_term(self, signum: int, frame: Any) -> None:
        if os.getppid() != self.spec.master_pid:
            self._leave_by_deadline()  # TERM from the kernel: the master died
        # Closing now, since an inline worker may be inside the app and its response must
        # already say Connection: close; the rest waits for the loop (not in a handler).
        self.stop_wanted = True
        self.site.closing = True
        self._wake()

    def _leave_by_deadline(self) -> None:
        """An orphan has no master left to kill it after the graceful timeout, and an app
        stuck in a request never hands the loop back to check it: let the kernel end the
        process then (SIGALRM's default action), or it would hold the port for ever. One
        second late, so a loop that is free leaves by itself first, logging why."""
        if not self.deadline_armed:
            self.deadline_armed = True
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(math.ceil(self.cfg.graceful_timeout) + 1)

    def _on_quit(self, signum: int, frame: Any) -> None:
        self.hooks.worker_int(signum)
        raise SystemExit(0)

    def _on_usr1(self, signum: int, frame: Any) -> None:
        self.reopen_logs = True
        self._wake()

    def _on_winch(self, signum: int, frame: Any) -> None:
        self.park_wanted = True
        site = getattr(self, "site", None)
        if site is not None:
            # Now, not at the next tick: an inline worker may be inside the app, and the
            # response it is about to send must already say Connection: close.
            site.closing = True
        self._wake()

    def _on_hup(self, signum: int, frame: Any) -> None:
        self.park_wanted = False
        site = getattr(self, "site", None)
        if site is not None and self.stop_at is None:
            site.closing = self.cfg.keepalive <= 0  # undo a WINCH the loop has not seen yet
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass

    # -- the loop ---------------------------------------------------------------------

    def _loop(self) -> int:
        while True:
            try:
                events = self.epoll.poll(TICK)
            except InterruptedError:
                events = []
            for fd, _mask in events:
                if fd in self.listeners:
                    if fd in self.in_epoll:  # not one unregistered by an earlier event
                        self._accept(self.listeners[fd])
                elif fd == self.wake_r:
                    self._drain_wake()
                else:
                    conn = self.conns.get(fd)
                    if conn is not None:
                        self._readable(conn)
            if not self._tick():
                return 0

    def _tick(self) -> bool:
        """Housekeeping after each wake-up; False when the worker should leave.

        Under load the loop wakes per request; the sweep over idle connections runs at
        most every HOUSEKEEPING seconds so a hundred idle clients cost nothing per request.
        """
        now = time.monotonic()
        if self.stop_wanted and self.stop_at is None:
            self._begin_stop()
        if self.stop_at is None and self.max_requests and self.site.requests >= self.max_requests:
            # Checked on every wake-up, not with the housekeeping below: a busy worker
            # would otherwise serve hundreds of requests past the limit in that time.
            self.log.info("max requests (%d) reached, worker retiring", self.max_requests)
            self._begin_stop()
            self._tell(b"R")
        if self.park_wanted != self.parked and self.stop_at is None:
            self._park() if self.park_wanted else self._resume()
        if self.parked and not self.park_told and not self.conns and not self.busy:
            self.park_told = True
            self.log.debug("parked and holding no connection")
            self._tell(b"P")
        if now < self.next_housekeeping and self.stop_at is None and not self.reopen_logs:
            return True
        self.next_housekeeping = now + HOUSEKEEPING
        if now - self.last_beat >= self.beat_interval:
            self.last_beat = now
            master_alive = self._tell(b".") and os.getppid() == self.spec.master_pid
            if not master_alive and not self.orphaned:
                self._orphaned()
        if self.reopen_logs:
            self.reopen_logs = False
            self.spec.logs.reopen()
        self._sweep(now)
        if self.stop_at is not None:
            if not self.conns and not self.busy:
                self.log.debug("retired: holding no connection")
                return False
            if now >= self.stop_at:
                self.log.warning("graceful timeout: closing %d connection(s)", len(self.conns))
                return False
        return True

    def _orphaned(self) -> None:
        """The master is gone: retire exactly like on TERM, and finish everything we hold.

        Idle kept-alive connections are not closed at once: a client may be sending its
        next request right now, and closing under it would fail that request. They get
        their next answer with `Connection: close`, or are closed at the keep-alive
        timeout, as in any retirement.
        """
        self.log.warning("master %d is gone, worker exiting", self.spec.master_pid)
        self.orphaned = True
        self._leave_by_deadline()
        self._begin_stop()

    def _begin_stop(self) -> None:
        """Retire: stop accepting at once, finish what we hold, then leave."""
        if self.stop_at is not None:
            return
        self.stop_at = time.monotonic() + self.cfg.graceful_timeout
        self.site.closing = True
        self._sync_accept()
        taken = 0 if self.parked else self._take_queued()
        for listener in self.listeners.values():
            listener.sock.close()
        self.listeners = {}
        self.log.info("retiring: not accepting; finishing %d connection(s) (%d just taken from "
                      "the queue)", len(self.conns), taken)

    def _park(self) -> None:
        """WINCH: like a retirement (stop accepting, answer with Connection: close, take
        what was queued for us), but the worker stays, app loaded, until HUP or TERM."""
        self.parked = True
        self.park_told = False
        self.site.closing = True
        self._sync_accept()
        taken = self._take_queued()
        self.log.info("parked: not accepting; finishing %d connection(s) (%d just taken from "
                      "the queue)", len(self.conns), taken)

    def _resume(self) -> None:
        """HUP: accept on the shared listeners again."""
        self.parked = False
        self.park_told = True
        self.site.closing = self.cfg.keepalive <= 0
        self._sync_accept()
        self.log.info("resumed: accepting again")

    def _sweep(self, now: float) -> None:
        """End what waits in epoll past its deadline: a linger, a request head that is not
        complete --timeout after its first byte (or after the connection was accepted),
        a kept-alive connection idle past --keepalive."""
        if self.accept_paused_until and now >= self.accept_paused_until:
            self.accept_paused_until = 0.0
            self._sync_accept()
        for conn in list(self.conns.values()):
            if conn.closed or conn.busy:
                continue
            if conn.lingering:
                if now >= conn.linger_until:
                    self._forget(conn)
                    conn.close()
            elif conn.head_started is not None:
                if now - conn.head_started > self.cfg.timeout:
                    self._head_timed_out(conn, now)
            elif now - conn.last_active > self.cfg.keepalive:
                self._close(conn)

    def _head_timed_out(self, conn: Connection, now: float) -> None:
        """A whole request head must arrive within --timeout: a client sending a byte now
        and then does not hold a connection for ever. Answer 408 if it sent anything."""
        if conn.preamble is not None:
            self.log.debug("%s: no PROXY header or TLS handshake within %g s; closed",
                           conn.peer[0] if conn.peer else "unix socket", self.cfg.timeout)
        elif conn.parser.in_message or conn.parser.ready:
            self.log.info("request head from %s not complete after %g s: 408",
                          conn.peer[0] if conn.peer else "unix socket", self.cfg.timeout)
            conn.send_nowait(resp.error_response(408, "request head not received in time"))
            conn.linger = True
        self._close(conn)

    # -- accepting --------------------------------------------------------------------

    def _sync_accept(self) -> None:
        """Register exactly the listeners we should accept on now, and no others.

        None once stopping or while every thread is busy (other workers take the new
        connections); the probe only while parked.
        """
        want: set[int] = set()
        if self.stop_at is None and self.busy < self.cfg.threads and not self.accept_paused_until:
            if not self.parked:
                want.update(self.shared)
            if self.probe is not None:
                want.add(self.probe.fd)
        for fd in self.in_epoll - want:
            self.epoll.unregister(fd)
        for fd in want - self.in_epoll:
            self.epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        self.in_epoll = want

    def _take_queued(self) -> int:
        """After leaving epoll, take the connections already queued on the shared listeners,
        at most TAKE_QUEUED each, without serving any of them here.

        With EPOLLEXCLUSIVE a new connection wakes one worker only; if that worker is
        this one, leaving without accepting could strand it in the queue until the next
        arrival wakes someone else. The count is bounded and nothing is served inline, so
        a steady stream of new connections cannot keep a retiring worker accepting: the
        next arrival wakes a worker that still accepts.
        """
        taken = 0
        for fd, listener in self.shared.items():
            if fd not in self.listeners:
                continue
            for _ in range(TAKE_QUEUED):
                if not self._accept(listener, serve=False):
                    break
                taken += 1
        return taken

    def _accept(self, listener: Listener, serve: bool = True) -> bool:
        try:
            fd, addr = listener.sock._accept()  # type: ignore[attr-defined]
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return False
        except OSError as exc:
            self._accept_failed(listener, exc)
            return False
        sock = socket.socket(listener.sock.family, socket.SOCK_STREAM, 0, fileno=fd)
        peer = addr[:2] if isinstance(addr, tuple) else None
        io_timeout = _io_timeout(self.cfg.timeout)
        conn = Connection(sock, peer, self.server_names[listener.fd], self.limits, io_timeout,
                          response_time=io_timeout)
        self.conns[conn.fd] = conn
        preamble = self.preambles.get(listener.fd)
        if preamble is not None:
            conn.preamble = Preamble(sock, peer, *preamble)
            if serve:
                self._step_preamble(conn)
            else:
                self._watch(conn, select.EPOLLIN | select.EPOLLET)
        elif self.pool is None:
            self.epoll.register(conn.fd, select.EPOLLIN)
            conn.registered = True
            if serve:
                self._readable(conn)  # the request usually arrived with the connection
        else:
            # Straight to a thread: waiting for epoll to report the first request costs a
            # round trip. It enters epoll only when a thread hands it back; registering it
            # now, even without EPOLLIN, would let an EPOLLHUP/EPOLLERR (always reported)
            # hand the same connection to a second thread.
            self._readable(conn)
        return True

    def _accept_failed(self, listener: Listener, exc: OSError) -> None:
        """Out of fds (or kernel memory): the connection stays queued and the listener
        readable, so accepting again at once would spin. Stop accepting for a while (or
        until one of our connections closes), and log the failure at most every few s."""
        now = time.monotonic()
        if exc.errno in ACCEPT_BACKOFF_ERRNOS:
            self.accept_paused_until = now + ACCEPT_BACKOFF
            self._sync_accept()
        self.accept_errors += 1
        if now - self.accept_logged >= ACCEPT_LOG_EVERY:
            pause = f"; accepting again in {ACCEPT_BACKOFF:g} s" if self.accept_paused_until else ""
            more = self.accept_errors - 1
            self.log.error("accept on %s failed: %s%s%s", listener.address(), exc, pause,
                           f" ({more} more since the last report)" if more else "")
            self.accept_logged = now
            self.accept_errors = 0

    # -- serving ----------------------------------------------------------------------

    def _readable(self, conn: Connection) -> None:
        if conn.preamble is not None:
            self._step_preamble(conn)
            return
        if conn.lingering:
            if not conn.linger_read(time.monotonic()):
                self._forget(conn)
                conn.close()
            return
        if self.pool is None:
            keep = self._serve(conn)
            if not keep:
                self._close(conn)
            return
        conn.busy = True
        self.busy += 1
        if self.busy >= self.cfg.threads:
            self._sync_accept()
        self.pool.submit(self._serve_threaded, conn)

    def _preambles(self) -> dict[int, tuple[Any, TrustedProxies | None]]:
        """What each shared listener's connections owe before HTTP (the private probe
        socket is always plain): (TLS context or None, --proxy-allow-from or None)."""
        tls = context_for(self.cfg)  # the certificate files, read anew by every worker
        proxies = TrustedProxies(self.cfg.proxy_allow_from) if self.cfg.proxy_protocol else None
        if tls is None and proxies is None:
            return {}
        return {fd: (tls, proxies) for fd in self.shared}

    def _step_preamble(self, conn: Connection) -> None:
        """One non-blocking step of a connection's PROXY header and TLS handshake (see
        preamble.py); once done, the connection is served like any other."""
        preamble: Preamble = conn.preamble  # type: ignore[assignment]
        try:
            want = preamble.step()
        except PreambleError as exc:
            self.log.log(exc.level, "%s", exc)
            want = None
        if preamble.tls_sock is not None:
            conn.sock = preamble.tls_sock  # the same fd: closing it must go through this one
        if want is None:
            self._forget(conn)
            conn.close()
        elif want != DONE:
            self._watch(conn, want | select.EPOLLET)  # peeked bytes stay: edge-triggered
        else:
            conn.preamble = None
            if preamble.proxied is not None and preamble.proxied.client is not None:
                conn.peer = preamble.proxied.client
            if preamble.tls_sock is not None:
                conn.start_tls(preamble.tls_sock)
            if self.pool is None:
                self._watch(conn, select.EPOLLIN)
            elif conn.registered:  # a thread takes it now: out of epoll until handed back
                conn.registered = False
                self.epoll.unregister(conn.fd)
            self._readable(conn)

    def _watch(self, conn: Connection, events: int) -> None:
        if conn.registered:
            self.epoll.modify(conn.fd, events)
        else:
            self.epoll.register(conn.fd, events)
            conn.registered = True

    def _serve_threaded(self, conn: Connection) -> None:
        try:
            keep = self._serve(conn)
        except BaseException:
            self.log.exception("unexpected error serving a connection")
            keep = False
        self.returned.append((conn, keep))
        self._wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while self.returned:
            conn, keep = self.returned.popleft()
            conn.busy = False
            self.busy -= 1
            if keep:
                self._arm(conn)
            else:
                self._close(conn)
        if self.busy < self.cfg.threads:
            self._sync_accept()

    def _serve(self, conn: Connection) -> bool:
        """Read what is there and answer every complete request, in order."""
        if not conn.receive():
            return False
        parser = conn.parser
        answered = False
        while parser.ready:
            req = parser.ready.popleft()
            conn.served = answered = True
            if req.body_error is not None:
                # Its body broke the parser before the app ran: refuse it unseen.
                break
            if self.pool is None:
                self._beat_if_stale()
            conn.new_response()
            keep = wsgi.handle(self.site, conn, req)  # it answers every error of its own
            if not keep:
                if conn.timed_out:
                    self.log.warning("%s %s: response not sent within %g s; connection reset",
                                     req.method, req.target.decode("latin-1")[:200],
                                     conn.response_time)
                return False
        if parser.error is not None:
            self._refuse(conn, parser.error)
            return False
        conn.last_active = time.monotonic()
        if not parser.in_message:
            conn.head_started = None  # between requests no head is owed
        elif answered:
            conn.head_started = conn.last_active  # part of the next one came with this one
        return True

    def _beat_if_stale(self) -> None:
        """Inline, the loop cannot beat while a request runs: beat just before, so the
        response deadline (below --timeout) is all the master ever waits on top of the
        app's own time."""
        now = time.monotonic()
        if now - self.last_beat >= self.beat_interval / 4:
            self.last_beat = now
            self._tell(b".")

    def _refuse(self, conn: Connection, error: HttpError) -> None:
        self.log.info("refused request from %s: %d %s",
                      conn.peer[0] if conn.peer else "unix socket", error.status, error.reason)
        conn.linger = True
        conn.new_response()
        try:
            conn.send(resp.error_response(error.status, error.reason))
        except OSError:
            pass

    def _close(self, conn: Connection) -> None:
        """Close, or for a refused request start a lingering close the loop times."""
        if conn.linger and not conn.lingering and not conn.closed:
            conn.begin_linger(time.monotonic())
            events = select.EPOLLIN
            if conn.registered:
                self.epoll.modify(conn.fd, events)
            else:
                self.epoll.register(conn.fd, events)
                conn.registered = True
            self.conns[conn.fd] = conn
            return
        self._forget(conn)
        conn.close()

    def _arm(self, conn: Connection) -> None:
        """Back in epoll, for one event (EPOLLONESHOT): the next request goes to one thread."""
        events = select.EPOLLIN | select.EPOLLONESHOT
        if conn.registered:
            self.epoll.modify(conn.fd, events)
        else:
            self.epoll.register(conn.fd, events)
            conn.registered = True

    def _forget(self, conn: Connection) -> None:
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
            if self.accept_paused_until:
                # An fd is free again: one more connection can be accepted now.
                self.accept_paused_until = 0.0
                self._sync_accept()
        if conn.registered:
            conn.registered = False
            try:
                self.epoll.unregister(conn.fd)
            except (OSError, ValueError):
                pass

    # -- master channel ---------------------------------------------------------------

    def _tell(self, message: bytes) -> bool:
        return tell_master(self.spec.status_fd, message)


def _io_timeout(timeout: float) -> float:
    """Socket I/O gives up before the master's heartbeat timeout does, so a stalled client
    costs one request, not the whole (inline) worker."""
    return max(0.5, timeout * 0.75)


def _one_line(text: str) -> bytes:
    """A reason for the status pipe: one line, since a newline ends the `E` message."""
    return " ".join(text.split()).encode("utf-8", "replace")


def _term_when_parent_dies() -> None:
    """Ask Linux for SIGTERM when the master dies, so a SIGKILLed master leaves no worker
    serving (the heartbeat pipe and getppid() check remain as the portable fallback)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _server_address(listener: Listener) -> tuple[str, str]:
    name = listener.sock.getsockname()
    if isinstance(name, tuple):
        return str(name[0]), str(name[1])
    return "localhost", "80"


def tell_master(status_fd: int, message: bytes) -> bool:
    """Write a status byte (or an `E` line) to the master's pipe; False when the master has
    gone (EPIPE). A full pipe drops the message: the master reads heartbeats, not history."""
    try:
        os.write(status_fd, message)
        return True
    except BlockingIOError:
        return True
    except OSError:
        return False
