"""Running real `hotswap start` masters from tests, and never leaking one.

Each master is started in a new session (its own process group), so teardown can kill
the master, its workers and any new master it forked, by that group's id, even when a
test fails half-way. Every wait polls a condition against a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from pidfiles import procs


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> Any:
    """Poll until `condition()` is truthy; fail the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def workers_of(pid: int) -> list[int]:
    return procs.hotswap_workers(pid)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`, read from /proc."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] not in ("Z", "X") and fields[2] == str(pgid):
            members.append(int(name))
    return members


class Master:
    """A `hotswap start` subprocess with its log file, pidfile and process group."""

    def __init__(self, tmp: Path, args: list[str], cwd: Path | None = None,
                 env: dict[str, str] | None = None, pidfile: bool = True,
                 prefix: list[str] | None = None, python: str | None = None) -> None:
        self.tmp = tmp
        self.log_path = tmp / f"master-{time.monotonic_ns()}.log"
        self.pidfile = tmp / "hotswap.pid" if pidfile else None
        full = list(args)
        if self.pidfile is not None and "--pidfile" not in full:
            full += ["--pidfile", str(self.pidfile)]
        # `python`: another path to the interpreter (e.g. a symlink a test deletes later).
        self.argv = [*(prefix or []), python or sys.executable, "-m", "hotswap", "start", *full]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parent.parent), self.env.get("PYTHONPATH"))
            if p)
        self.cwd = cwd or tmp
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.pgid = self.proc.pid
        self.extra_pids: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 15.0, pid: int | None = None) -> None:
        """Until the master (by default the first) logged that all its workers booted."""
        pid = pid or self.pid
        marker = f"[{pid}] [INFO] ready:"

        def ready() -> bool:
            if pid == self.pid and self.proc.poll() is not None:
                raise AssertionError(f"master exited with {self.proc.returncode}:\n{self.log()}")
            return marker in self.log()

        wait_for(ready, timeout, what=f"master {pid} to be ready; log:\n{self.log()[-3000:]}")

    def current_pid(self) -> int | None:
        assert self.pidfile is not None
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def workers(self, pid: int | None = None) -> list[int]:
        return workers_of(pid or self.pid)

    def signal(self, sig: int, pid: int | None = None) -> None:
        os.kill(pid or self.pid, sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"master {self.pid} still running after {timeout:g} s:\n"
                                 f"{self.log()[-3000:]}") from None

    def stop(self) -> None:
        """Teardown: TERM, then SIGKILL the whole process group; always reap."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        for pid in list(self.extra_pids):
            if procs.is_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self._log.close()


class MasterFactory:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.masters: list[Master] = []

    def __call__(self, *args: str, ready: bool = True, **kwargs: Any) -> Master:
        master = Master(self.tmp, list(args), **kwargs)
        self.masters.append(master)
        if ready:
            master.wait_ready()
        return master

    def close(self) -> None:
        for master in self.masters:
            master.stop()


def get(url: str, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("timeout", 10)
    return requests.get(url, **kwargs)


def write_app(folder: Path, name: str, body: str) -> Path:
    """Write an app module; removes stale bytecode so a rewrite is seen on the next import."""
    path = folder / f"{name}.py"
    path.write_text(body)
    cache = folder / "__pycache__"
    if cache.exists():
        for pyc in cache.glob(f"{name}.*.pyc"):
            pyc.unlink()
    return path


def http_raw(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 5.0,
             read_until_close: bool = True) -> bytes:
    """Send raw bytes, return what the server answers until it closes (or timeout)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


# -- process trees, README blocks (keeper, daemon, fd tests) ------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of `pid`, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def descendants(root: int) -> list[int]:
    """Every process below `root` (zombies included), by walking /proc's parent links."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat is not None:
                parents[int(name)] = stat[1]
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def zombies_below(root: int) -> list[int]:
    return [pid for pid in descendants(root) if (proc_stat(pid) or ("?", 0))[0] == "Z"]


def masters_below(root: int) -> list[int]:
    """Live `hotswap: master` processes below `root` (a keeper, a pid namespace's init)."""
    return [pid for pid in descendants(root)
            if (procs.cmdline(pid) or "").startswith("hotswap: master")
            and (proc_stat(pid) or ("Z", 0))[0] != "Z"]


def readme_block(lang: str, must_contain: str) -> str:
    """The README's fenced ```lang block that contains `must_contain` (tests use the
    documented configuration itself, so the documentation cannot rot)."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks = text.split("```" + lang + "\n")[1:]
    for block in blocks:
        body = block.split("```", 1)[0]
        if must_contain in body:
            return body
    raise AssertionError(f"README has no ```{lang} block containing {must_contain!r}")


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a hotswap command run by a test: this worktree first on the path."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


class Daemons:
    """Runs `hotswap start -D`; teardown kills every daemon it can find, by pid."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pidfiles: list[Path] = []
        self.pids: set[int] = set()

    def start(self, *args: str, cwd: Path | None = None,
              pidfile: Path | None = None) -> subprocess.CompletedProcess[str]:
        pidfile = pidfile or self.tmp / "hotswap.pid"
        self.pidfiles.append(pidfile)
        before = set(_masters_titled())
        try:
            return subprocess.run([sys.executable, "-m", "hotswap", "start", "--daemon", *args],
                                  cwd=cwd or self.tmp, env=python_env(), capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
        finally:
            self.pids |= {pid for pid in _masters_titled() if pid not in before
                          and _started_in(pid, self.tmp)}

    def close(self) -> None:
        pids = set(self.pids)
        for path in self.pidfiles:
            try:
                pids.add(int(path.read_text().strip()))
            except (OSError, ValueError):
                pass
        for pid in pids:
            if procs.is_hotswap_master(pid):
                family = descendants(pid)
                for target in [pid, *family]:
                    try:
                        os.kill(target, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def _masters_titled() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()
            and (procs.cmdline(int(n)) or "").startswith("hotswap: master")]


def _started_in(pid: int, tmp: Path) -> bool:
    """Ours, not another test's (other suites may run on this machine at the same time)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd").startswith(str(tmp))
    except OSError:
        return False


def send_sleep(port: int, folder: Path, seconds: float,
               timeout: float = 30) -> tuple[threading.Thread, list]:
    """GET /sleep?SECONDS on a thread; returns once the app has started sleeping.

    The app (each test's own) leaves a `started-*` file in `folder` when the request
    reaches it; the outcome (response or exception) lands in the returned list.
    """
    before = set(folder.glob("started-*"))
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(requests.get(f"http://127.0.0.1:{port}/sleep?{seconds}",
                                        timeout=timeout))
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: set(folder.glob("started-*")) - before or outcome, 10,
             what="the slow request to reach the app")
    assert not outcome, f"the slow request ended early: {outcome!r}"
    return thread, outcome
