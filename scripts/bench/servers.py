"""Starting, upgrading and stopping the contenders: hotswap, gunicorn and nginx.

Each server gets its own folder (pidfile, log, unix socket), runs in its own session,
and is stopped by the pids it wrote. The two upgrade procedures are each server's
documented one, timed from the same client-side vantage point: from the moment USR2 is
sent until the old master is gone.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Flavor:
    """One contender: a server and the settings that make the comparison fair."""

    key: str
    label: str
    kind: str  # "hotswap", "gunicorn" or "nginx"
    threads: int = 1
    worker_class: str = ""


HOTSWAP_T1 = Flavor("hotswap-t1", "hotswap --threads 1", "hotswap", 1)
HOTSWAP_T2 = Flavor("hotswap-t2", "hotswap --threads 2", "hotswap", 2)
GUNICORN_SYNC = Flavor("gunicorn-sync", "gunicorn sync", "gunicorn", 1, "sync")
GUNICORN_GTHREAD = Flavor("gunicorn-gthread", "gunicorn gthread --threads 2", "gunicorn", 2, "gthread")
NGINX = Flavor("nginx", "nginx return 200", "nginx")


@dataclass
class UpgradeResult:
    """One upgrade as a client saw it; times are time.monotonic(), shared by every process."""

    ok: bool
    started: float  # USR2 sent
    ended: float  # old master gone (or the attempt given up)
    ready_s: float | None
    handover_s: float | None
    old_pid: int | None
    new_pid: int | None
    reason: str = ""


@dataclass
class Server:
    flavor: Flavor
    folder: Path
    workers: int
    tcp: bool = True
    unix: bool = False
    port: int = 0
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
        """The current master: PIDFILE, or gunicorn's PIDFILE.2 while it is missing."""
        pid = read_pid(self.pidfile)
        if self.flavor.kind == "gunicorn" and not (pid and proctree.alive(pid)):
            pid = read_pid(Path(f"{self.pidfile}.2")) or pid
        return pid

    def workers_of(self, master: int) -> list[int]:
        return [p.pid for p in proctree.children(master) if p.state not in ("Z", "X")]

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
        if kind == "hotswap":
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
            cmd = [str(PYTHON), "-m", "hotswap", "start", "apps:app", "--workers", str(self.workers),
                   "--threads", str(self.flavor.threads), "--pidfile", str(self.pidfile),
                   "--keepalive", "5", "--log-level", "warning"]
            for bind in self.binds:
                cmd += ["--bind", bind]
            return cmd, env
        if kind == "gunicorn":
            env["PYTHONPATH"] = str(HERE)
            cmd = [str(VENV / "bin" / "gunicorn"), "apps:app", "--workers", str(self.workers),
                   "--worker-class", self.flavor.worker_class, "--threads", str(self.flavor.threads),
                   "--pid", str(self.pidfile), "--keep-alive", "5", "--log-level", "warning",
                   # one control socket per instance would share ~/.gunicorn/gunicorn.ctl: off
                   "--no-control-socket"]
            for bind in self.binds:
                cmd += ["--bind", bind]
            return cmd, env
        conf = self._nginx_conf()
        return ["nginx", "-p", str(self.folder), "-c", str(conf), "-e", str(self.log_path)], env

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
        """`hotswap upgrade`: USR2, ready, WINCH, drain, QUIT, done by the project's own CLI.

        The window is timed from the CLI's own progress lines, read as they are printed:
        from "sent USR2" to "old master … gone", so the CLI's start-up and its last checks
        are not part of it. The durations come from the CLI's JSON report.
        """
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
        cmd = [str(PYTHON), "-m", "hotswap", "upgrade", "--pidfile", str(self.pidfile), "--json",
               "--timeout", str(UPGRADE_TIMEOUT)]
        began = time.monotonic()
        marks: dict[str, float] = {}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=self.folder, text=True)
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:  # ends when the CLI exits; every step has its own deadline
            if "sent USR2" in line:
                marks.setdefault("usr2", time.monotonic())
            elif " gone; handover" in line:
                marks.setdefault("gone", time.monotonic())
        out = proc.stdout.read()
        try:
            proc.wait(timeout=4 * UPGRADE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ended = time.monotonic()
        proctree.reap_orphans(set())
        try:
            report = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return UpgradeResult(False, began, ended, None, None, None, None,
                                 f"no JSON from the CLI (exit {proc.returncode})")
        handover = report.get("handover_seconds")
        gone = marks.get("gone", ended)
        # The CLI starts its clock just after USR2 and its line reaches us a little later:
        # whichever start is earlier covers the whole handover.
        started = min(marks.get("usr2", began), gone - handover if handover else began)
        return UpgradeResult(report.get("outcome") == "upgraded", started, gone,
                             report.get("ready_seconds"), handover, report.get("old_pid"),
                             report.get("new_pid"), report.get("reason", ""))

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
        return UpgradeResult(gone, began, ended, ready, handover if gone else None, old, new[0],
                             "" if gone else "old master did not exit")


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
