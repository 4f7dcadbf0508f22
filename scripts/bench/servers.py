"""Starting, upgrading and stopping the contenders: hotswap, gunicorn and nginx.

Each server gets its own folder (pidfile, log, unix socket), runs in its own session,
and is stopped by the pids it wrote. The two upgrade procedures are each server's
documented one, timed from the same client-side vantage point. Two moments end an
upgrade: the *handover* (USR2 until the old generation no longer serves) and the *commit*
(USR2 until the old master has exited). hotswap keeps its old master, and its parked
workers with the old code, for a watch window after the handover, so its commit comes
`--watch-window` seconds later; gunicorn has no watch window: its commit is its handover.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import apps
import proctree

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = Path(os.environ.get("HOTSWAP_BENCH_VENV", str(HERE / ".venv")))
# Both servers run on the venv's interpreter: same Python, same site setup (a .pth file in
# the system site-packages can import megabytes at start-up), only the server differs.
PYTHON = VENV / "bin" / "python"
START_TIMEOUT = 30.0
UPGRADE_TIMEOUT = 30.0
# hotswap's default watch window is 10 s; the benchmark's upgrades come back to back, so
# its servers get a short one (bench.py passes its own, written into the results).
WATCH_WINDOW = 1.0


@dataclass(frozen=True)
class Flavor:
    """One contender: a server and the settings that make the comparison fair."""

    key: str
    label: str
    kind: str  # "hotswap", "gunicorn", "uvicorn" or "nginx"
    threads: int = 1
    worker_class: str = ""
    interface: str = "wsgi"  # "asgi": serves asgiapps:app instead of apps:app


HOTSWAP_T1 = Flavor("hotswap-t1", "hotswap --threads 1", "hotswap", 1)
HOTSWAP_T2 = Flavor("hotswap-t2", "hotswap --threads 2", "hotswap", 2)
GUNICORN_SYNC = Flavor("gunicorn-sync", "gunicorn sync", "gunicorn", 1, "sync")
GUNICORN_GTHREAD = Flavor("gunicorn-gthread", "gunicorn gthread --threads 2", "gunicorn", 2, "gthread")
NGINX = Flavor("nginx", "nginx return 200", "nginx")
# The ASGI contenders (issue 11): the same 2 workers, uvloop wherever the venv has it.
HOTSWAP_ASGI = Flavor("hotswap-asgi", "hotswap --interface asgi", "hotswap", interface="asgi")
UVICORN = Flavor("uvicorn", "uvicorn --http httptools --loop uvloop --ws websockets-sansio", "uvicorn",
                 interface="asgi")
GUNICORN_ASGI = Flavor("gunicorn-asgi", "gunicorn -k asgi --asgi-loop uvloop", "gunicorn", 1, "asgi",
                       interface="asgi")


@dataclass
class UpgradeResult:
    """One upgrade as a client saw it; times are time.monotonic(), shared by every process."""

    ok: bool
    started: float  # USR2 sent
    ended: float  # handover: the old generation no longer serves (or the attempt given up)
    ready_s: float | None
    handover_s: float | None  # USR2 -> the old generation no longer serves
    old_pid: int | None
    new_pid: int | None
    reason: str = ""
    commit_s: float | None = None  # USR2 -> the old master exits (after hotswap's watch window)
    committed: float | None = None  # when the harness saw the old master gone

    @property
    def commit_end(self) -> float:
        """End of the window until commit; never before the handover's."""
        return max(self.ended, self.committed if self.committed is not None else self.ended)


@dataclass
class Server:
    flavor: Flavor
    folder: Path
    workers: int
    tcp: bool = True
    unix: bool = False
    port: int = 0
    watch_window: float = WATCH_WINDOW  # hotswap only: --watch-window
    proc: subprocess.Popen[bytes] | None = None
    binds: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pidfile = self.folder / f"{self.flavor.kind}.pid"
        self.log_path = self.folder / "server.log"
        self.sock_path = self.folder / "s.sock"
        if self.tcp and not self.port:
            self.port = free_port()
        if self.tcp:
            self.binds.append(f"127.0.0.1:{self.port}")
        if self.unix:
            self.binds.append(f"unix:{self.sock_path}")

    # -- addresses --------------------------------------------------------------------

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def target(self, unix: bool) -> str:
        """What the load generator takes: a URL base, or unix:PATH."""
        return f"unix:{self.sock_path}" if unix else f"http://127.0.0.1:{self.port}"

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        cmd, env = self._command()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.folder, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        if not proctree.wait_until(self._serving, START_TIMEOUT, 0.05):
            self.stop()
            raise RuntimeError(f"{self.flavor.label} did not start within {START_TIMEOUT:g} s; "
                               f"see {self.log_path}: {self._log_tail()}")

    def _serving(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.flavor.label} exited with {self.proc.returncode}: "
                               f"{self._log_tail()}")
        pid = self.master_pid()
        if pid is None or len(self.workers_of(pid)) < self.workers:
            return False
        return all(probe(b) for b in self.binds)

    def master_pid(self) -> int | None:
        """The current master: PIDFILE, or gunicorn's PIDFILE.2 while it is missing.

        uvicorn writes no pidfile: its master is the process we started.
        """
        if self.flavor.kind == "uvicorn":
            return self.proc.pid if self.proc is not None and self.proc.poll() is None else None
        pid = read_pid(self.pidfile)
        if self.flavor.kind == "gunicorn" and not (pid and proctree.alive(pid)):
            pid = read_pid(Path(f"{self.pidfile}.2")) or pid
        return pid

    def workers_of(self, master: int) -> list[int]:
        """Live children, less multiprocessing's resource tracker (uvicorn's master starts one)."""
        return [p.pid for p in proctree.children(master)
                if p.state not in ("Z", "X") and "resource_tracker" not in proctree.cmdline(p.pid)]

    def stop(self) -> None:
        """TERM every master we know of (pidfile, .oldbin, the first one), then KILL leftovers."""
        pids = [p for p in (self.master_pid(), read_pid(Path(f"{self.pidfile}.oldbin")),
                            read_pid(Path(f"{self.pidfile}.2")),
                            self.proc.pid if self.proc else None) if p]
        proctree.kill_tree(sorted(set(pids)))
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        proctree.reap_orphans(set())

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"

    # -- commands ---------------------------------------------------------------------

    def _command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        kind = self.flavor.kind
        asgi = self.flavor.interface == "asgi"
        app = "asgiapps:app" if asgi else "apps:app"
        if kind == "hotswap":
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
            cmd = [str(PYTHON), "-m", "hotswap", "start", app, "--workers", str(self.workers),
                   *(["--interface", "asgi"] if asgi else ["--threads", str(self.flavor.threads)]),
                   "--pidfile", str(self.pidfile), "--keepalive", "5", "--log-level", "warning",
                   "--watch-window", f"{self.watch_window:g}"]
            for bind in self.binds:
                cmd += ["--bind", bind]
            return cmd, env
        if kind == "gunicorn":
            env["PYTHONPATH"] = str(HERE)
            cmd = [str(VENV / "bin" / "gunicorn"), app, "--workers", str(self.workers),
                   "--worker-class", self.flavor.worker_class, "--threads", str(self.flavor.threads),
                   "--pid", str(self.pidfile), "--keep-alive", "5", "--log-level", "warning",
                   # one control socket per instance would share ~/.gunicorn/gunicorn.ctl: off
                   "--no-control-socket",
                   *(["--asgi-loop", "uvloop" if venv_has("uvloop") else "asyncio"] if asgi else [])]
            for bind in self.binds:
                cmd += ["--bind", bind]
            return cmd, env
        if kind == "uvicorn":
            return self._uvicorn_command(env), env
        conf = self._nginx_conf()
        return ["nginx", "-p", str(self.folder), "-c", str(conf), "-e", str(self.log_path)], env

    def _uvicorn_command(self, env: dict[str, str]) -> list[str]:
        """uvicorn's own multi-process mode (its master spawns the workers, sharing one socket)."""
        if self.unix or not self.tcp:
            raise ValueError("the benchmark runs uvicorn on TCP only")
        env["PYTHONPATH"] = str(HERE)
        return [str(VENV / "bin" / "uvicorn"), "asgiapps:app", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(self.workers), "--http", "httptools",
                "--loop", "uvloop" if venv_has("uvloop") else "asyncio", "--ws", "websockets-sansio",
                "--timeout-keep-alive", "5", "--backlog", "2048", "--log-level", "warning",
                "--no-access-log"]

    def _nginx_conf(self) -> Path:
        """A self-contained nginx: every path in our folder, nothing in /etc or /var touched."""
        big = self.folder / "16k.bin"
        big.write_bytes(apps.BIG)
        temps = "\n".join(f"  {name}_temp_path {self.folder}/{name}_temp;"
                          for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        user = "user root;\n" if os.geteuid() == 0 else ""
        hello = apps.HELLO.decode()
        conf = self.folder / "nginx.conf"
        conf.write_text(f"""{user}worker_processes {self.workers};
daemon off;
master_process on;
pid {self.pidfile};
error_log {self.log_path} warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
{temps}
  keepalive_timeout 5s;
  keepalive_requests 1000000;
  sendfile on;
  server {{
    listen 127.0.0.1:{self.port} backlog=2048;
    location = / {{ default_type text/plain; return 200 "{hello}"; }}
    location = /16k {{ default_type application/octet-stream; alias {big}; }}
  }}
}}
""")
        return conf

    # -- upgrades ---------------------------------------------------------------------

    def upgrade(self) -> UpgradeResult:
        if self.flavor.kind == "hotswap":
            return self._upgrade_hotswap()
        if self.flavor.kind == "gunicorn":
            return self._upgrade_gunicorn()
        raise ValueError(f"{self.flavor.label} is not upgraded in this benchmark")

    def _upgrade_hotswap(self) -> UpgradeResult:
        """`hotswap upgrade`: it sends USR2 and follows the server's record to its final state.

        The handover end is the moment the CLI's "handover done in" line reaches us (the old
        workers are parked and idle), so the CLI's start-up is not part of the window and its
        polling only widens it. The CLI returns at the commit; we then wait until the old
        master is really gone, which ends the window until commit (and lets the next USR2
        in: a new master refuses one while its parent still watches).
        """
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
        cmd = [str(PYTHON), "-m", "hotswap", "upgrade", "--pidfile", str(self.pidfile), "--json",
               "--timeout", f"{UPGRADE_TIMEOUT + self.watch_window:g}"]
        began = time.monotonic()
        marks: dict[str, float] = {}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=self.folder, text=True)
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:  # ends when the CLI exits; it has its own --timeout
            for key, text in PROGRESS_MARKS.items():
                if text in line:
                    marks.setdefault(key, time.monotonic())
        out = proc.stdout.read()
        try:
            proc.wait(timeout=4 * UPGRADE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        returned = time.monotonic()
        try:
            report = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            proctree.reap_orphans(set())
            return UpgradeResult(False, began, returned, None, None, None, None,
                                 f"no JSON from the CLI (exit {proc.returncode})")
        gone = self._wait_gone(report.get("old_pid")) if report.get("outcome") == "upgraded" else None
        return hotswap_result(report, marks, began, returned, gone)

    def _wait_gone(self, pid: int | None) -> float | None:
        """When the old master was seen gone (reaping it if it is ours); None if it stays."""
        if pid is None:
            return None
        gone = proctree.wait_until(lambda: not proctree.alive(pid), UPGRADE_TIMEOUT, 0.01)
        seen = time.monotonic()
        proctree.reap_orphans({self.proc.pid} if self.proc else set())
        return seen if gone else None

    def _upgrade_gunicorn(self) -> UpgradeResult:
        """gunicorn's documented dance: USR2, wait for the new master's pidfile, TERM the old one.

        The new master writes PIDFILE.2 (gunicorn >= 22; older ones renamed the old pidfile to
        PIDFILE.oldbin and the new master wrote PIDFILE), and renames it to PIDFILE once it
        notices its parent is gone. WINCH is skipped: gunicorn honours it only when
        daemonized, so it would change nothing.
        """
        # A new master refuses USR2 until it has promoted itself (renamed PIDFILE.2 to
        # PIDFILE, up to a second after its parent left): wait for that, untimed.
        second = Path(f"{self.pidfile}.2")
        proctree.wait_until(lambda: not second.exists() and proctree.alive(read_pid(self.pidfile) or 0),
                            UPGRADE_TIMEOUT, 0.01)
        old = self.master_pid()
        began = time.monotonic()
        if old is None or not proctree.alive(old):
            return UpgradeResult(False, began, began, None, None, old, None, "no running master")
        os.kill(old, signal.SIGUSR2)
        new: list[int] = []

        def new_master_up() -> bool:
            for pid in (read_pid(Path(f"{self.pidfile}.2")), self.master_pid()):
                if pid is not None and pid != old and proctree.alive(pid):
                    new.append(pid)
                    return True
            return False

        if not proctree.wait_until(new_master_up, UPGRADE_TIMEOUT, 0.01):
            return UpgradeResult(False, began, time.monotonic(), None, None, old, None,
                                 "new master never wrote its pidfile")
        ready = time.monotonic() - began
        os.kill(old, signal.SIGTERM)
        gone = proctree.wait_until(lambda: not proctree.alive(old), UPGRADE_TIMEOUT + 5, 0.01)
        handover = time.monotonic() - began
        # The new master may still be forking workers: requests queue until they exist, so
        # the window (not the handover time) lasts until they do.
        proctree.wait_until(lambda: len(self.workers_of(new[0])) >= self.workers, UPGRADE_TIMEOUT, 0.01)
        ended = time.monotonic()
        proctree.reap_orphans({self.proc.pid} if self.proc else set())
        # No watch window: the old master is gone at the handover, which is also the commit.
        return UpgradeResult(gone, began, ended, ready, handover if gone else None, old, new[0],
                             "" if gone else "old master did not exit",
                             commit_s=handover if gone else None, committed=ended)


# Progress lines of `hotswap upgrade` (stderr) whose arrival the harness timestamps.
PROGRESS_MARKS = {"usr2": "sent USR2", "handover": "handover done in"}


def hotswap_result(report: dict, marks: dict[str, float], began: float, returned: float,
                   gone: float | None) -> UpgradeResult:
    """One `hotswap upgrade --json` report and the harness's own marks, as an UpgradeResult.

    The CLI starts its clock just after USR2 and its lines reach us a little later:
    whichever start is earlier covers the whole handover. Without a "handover done in" line
    (the CLI polls, so it can miss the short watching state), the handover ends at
    start + handover_seconds.
    """
    handover = report.get("handover_seconds")
    commit = report.get("commit_seconds")
    ok = report.get("outcome") == "upgraded"
    seen = marks.get("handover")
    starts = [marks.get("usr2", began)]
    if seen is not None and handover is not None:
        starts.append(seen - handover)
    started = min(starts)
    if seen is not None:
        ended = seen
    elif handover is not None:
        ended = started + handover
    else:
        ended = returned
    reason = report.get("reason", "") or ("" if ok else report.get("line", ""))
    if ok and gone is None:
        ok, reason = False, f"old master {report.get('old_pid')} still alive after the commit"
    return UpgradeResult(ok, started, ended, report.get("ready_seconds"), handover,
                         report.get("old_pid"), report.get("new_pid"), reason,
                         commit_s=commit, committed=gone if gone is not None else returned)


@functools.cache
def venv_has(module: str) -> bool:
    """Whether the bench venv's Python can import `module` (uvloop is used only where it can)."""
    if not PYTHON.exists():
        return False
    return subprocess.run([str(PYTHON), "-c", f"import {module}"], capture_output=True,
                          timeout=30).returncode == 0


@functools.cache
def hotswap_serves_asgi() -> bool:
    """Whether this work tree's hotswap has an ASGI worker (`hotswap start --interface`)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    python = str(PYTHON) if PYTHON.exists() else "python3"
    done = subprocess.run([python, "-m", "hotswap", "start", "--help"], capture_output=True, text=True,
                          env=env, timeout=30)
    return done.returncode == 0 and "--interface" in done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_pid(path: Path) -> int | None:
    """A pid from a pidfile being rewritten under us: anything unreadable is 'not yet'."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def probe(bind: str, timeout: float = 2.0) -> bool:
    """One GET / over a raw socket: True for a 200. No HTTP library, so no client quirks."""
    try:
        if bind.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(bind[5:])
        else:
            host, _, port = bind.rpartition(":")
            sock = socket.create_connection((host, int(port)), timeout=timeout)
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 12:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False
