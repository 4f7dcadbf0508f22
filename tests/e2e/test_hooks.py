"""Hooks of a Python config file, seen through a real master's whole life.

Every hook appends one line (`name pid detail...`) to a file; the test reads that file
after each step. Per process the order is exact; across processes only what causality
guarantees is checked (the new master starts after pre_upgrade, the old one hears READY
after the new one is ready, and so on), since the two masters run concurrently.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import MasterFactory, free_port, get, wait_for, workers_of, write_app

from pidfiles import procs
from upgrade import names, record

APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''

HOOKS = '''
import os
TAG = "{tag}"
OUT = {out!r}

def _line(name, *detail):
    with open(OUT, "a") as fh:
        fh.write(" ".join(str(part) for part in (name, os.getpid(), *detail)) + "\\n")

def on_starting(server): _line("on_starting", server.generation, TAG)
def when_ready(server): _line("when_ready", len(server.worker_pids), TAG)
def pre_fork(server, worker): _line("pre_fork", worker.pid, TAG)
def post_fork(server, worker): _line("post_fork", worker.master_pid, TAG)
def post_worker_init(worker): _line("post_worker_init", worker.master_pid, TAG)
def worker_int(worker): _line("worker_int", TAG)
def worker_abort(worker): _line("worker_abort", TAG)
def pre_exec(server): _line("pre_exec", TAG)
def pre_request(worker, req): _line("pre_request", req.method, req.path, TAG)
def post_request(worker, req, environ, resp): _line("post_request", resp.status_code, TAG)
def child_exit(server, worker): _line("child_exit", worker.pid, worker.exit_code, TAG)
def worker_exit(server, worker): _line("worker_exit", server.pid, TAG)
def on_reload(server): _line("on_reload", TAG)
def on_exit(server): _line("on_exit", TAG)
def pre_upgrade(server): _line("pre_upgrade", server.generation, TAG)
def on_upgrade_ready(server, new_pid): _line("on_upgrade_ready", new_pid, TAG)
def on_upgrade_committed(server, new_pid): _line("on_upgrade_committed", new_pid, TAG)
def on_upgrade_failed(server, reason): _line("on_upgrade_failed", reason.replace(" ", "_"), TAG)
'''


class Lines:
    """The hook lines written so far, as (name, pid, detail...) tuples."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        return [line.split(" ") for line in self.path.read_text().splitlines()]

    def of(self, pid: int) -> list[str]:
        return [fields[0] for fields in self.all() if int(fields[1]) == pid]

    def index(self, name: str, pid: int) -> int:
        for number, fields in enumerate(self.all()):
            if fields[0] == name and int(fields[1]) == pid:
                return number
        raise AssertionError(f"no {name} from {pid} in:\n{self.path.read_text()}")

    def wait(self, name: str, pid: int, what: str = "") -> list[str]:
        def found() -> list[str] | None:
            for fields in self.all():
                if fields[0] == name and int(fields[1]) == pid:
                    return fields
            return None

        return wait_for(found, 20, what=f"hook {name} in {pid} {what}")


def wait_final(pidfile: Path, old: int) -> record.UpgradeRecord:
    def final() -> record.UpgradeRecord | None:
        rec = record.read_state(str(pidfile))
        return rec if rec is not None and rec.old == old and rec.final else None

    return wait_for(final, 40, what=f"the upgrade of {old} to finish")


@pytest.mark.timeout(120)
def test_hooks_run_in_order_through_start_request_hup_upgrades_and_stop(
        masters: MasterFactory, tmp_path: Path) -> None:
    out = tmp_path / "hooks.out"
    lines = Lines(out)
    conf = tmp_path / "app.conf.py"
    conf.write_text(HOOKS.format(tag="v1", out=str(out)))
    write_app(tmp_path, "hookapp", APP)
    port = free_port()
    m = masters("hookapp:app", "--config", str(conf), "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--watch-window", "0.5")
    m1 = m.pid
    [w1] = workers_of(m1)

    # start
    assert lines.of(m1) == ["on_starting", "pre_fork", "when_ready"]
    assert lines.all()[0][2] == "1"  # generation 1
    assert lines.of(w1) == ["post_fork", "post_worker_init"]
    assert lines.index("post_worker_init", w1) < lines.index("when_ready", m1)

    # a request
    assert get(f"http://127.0.0.1:{port}/hello?x=1").text == "ok"
    lines.wait("post_request", w1)
    assert lines.of(w1)[2:] == ["pre_request", "post_request"]
    request = [f for f in lines.all() if f[1] == str(w1)]
    assert request[2][2:4] == ["GET", "/hello"] and request[3][2] == "200"

    # HUP re-reads the file: the new hooks (v2) run from on_reload on
    conf.write_text(HOOKS.format(tag="v2", out=str(out)))
    m.signal(signal.SIGHUP)
    lines.wait("child_exit", m1, "(the old worker after the reload)")
    [w2] = wait_for(lambda: [p for p in workers_of(m1) if p != w1], what="the new worker")
    assert lines.of(m1)[3:] == ["on_reload", "pre_fork", "child_exit"]
    assert [f[-1] for f in lines.all() if f[0] == "on_reload"] == ["v2"]
    assert lines.of(w1)[-1] == "worker_exit"
    assert lines.index("worker_exit", w1) < lines.index("child_exit", m1)
    assert lines.of(w2) == ["post_fork", "post_worker_init"]

    # a successful upgrade
    os.kill(m1, signal.SIGUSR2)
    rec = wait_final(m.pidfile, m1)
    assert rec.state == names.STATE_COMMITTED, rec.line()
    m2 = rec.new
    m.extra_pids.add(m2)
    wait_for(lambda: not procs.is_alive(m1), what="the old master to exit")
    assert lines.of(m1)[6:] == ["pre_upgrade", "pre_exec", "on_upgrade_ready",
                                "on_upgrade_committed", "child_exit", "on_exit"]
    assert lines.of(m2) == ["on_starting", "pre_fork", "when_ready"]
    assert [f[2] for f in lines.all() if f[0] == "on_starting"] == ["1", "2"]  # generations
    assert (lines.index("pre_exec", m1) < lines.index("on_starting", m2)
            < lines.index("when_ready", m2) < lines.index("on_upgrade_ready", m1)
            < lines.index("on_upgrade_committed", m1))
    assert [f[2] for f in lines.all() if f[0] == "on_upgrade_ready"] == [str(m2)]
    assert lines.of(w2)[-1] == "worker_exit"

    # a failed upgrade: the new code cannot even be imported
    write_app(tmp_path, "hookapp", "raise RuntimeError('broken deploy')\n")
    os.kill(m2, signal.SIGUSR2)
    rec = wait_final(m.pidfile, m2)
    assert rec.state == names.STATE_FAILED, rec.line()
    m3 = rec.new
    lines.wait("on_upgrade_failed", m2)  # just after the record says failed
    assert lines.of(m2)[3:] == ["pre_upgrade", "pre_exec", "on_upgrade_failed"]
    assert lines.of(m3) == ["on_starting", "pre_fork", "child_exit", "on_exit"]
    [failed] = [f for f in lines.all() if f[0] == "on_upgrade_failed"]
    assert "broken_deploy" in failed[2], failed
    assert lines.index("on_exit", m3) < lines.index("on_upgrade_failed", m2)
    assert get(f"http://127.0.0.1:{port}/").text == "ok"  # m2 serves on

    # stop
    [w3] = workers_of(m2)
    m.signal(signal.SIGTERM, m2)
    wait_for(lambda: not procs.is_alive(m2), what="the master to stop")
    assert lines.of(m2)[-2:] == ["child_exit", "on_exit"]
    assert lines.of(w3) == ["post_fork", "post_worker_init", "pre_request", "post_request",
                            "worker_exit"]


HOOKS_THAT_RAISE = '''
def on_starting(server): raise RuntimeError("on_starting broke")
def when_ready(server): raise RuntimeError("when_ready broke")
def post_worker_init(worker): raise ValueError("post_worker_init broke")
def pre_request(worker, req): raise KeyError("pre_request broke")
def post_request(worker, req, environ, resp): 1 / 0
def child_exit(server, worker): raise SystemExit(3)
'''


def test_a_hook_that_raises_is_logged_and_everything_keeps_serving(
        masters: MasterFactory, tmp_path: Path) -> None:
    conf = tmp_path / "raising.conf.py"
    conf.write_text(HOOKS_THAT_RAISE)
    write_app(tmp_path, "hookapp", APP)
    port = free_port()
    m = masters("hookapp:app", "--config", str(conf), "--bind", f"127.0.0.1:{port}",
                "--workers", "2")  # the error log is the master's stderr: m.log()
    workers = workers_of(m.pid)
    for _ in range(10):
        answer = get(f"http://127.0.0.1:{port}/")
        assert answer.status_code == 200 and answer.text == "ok"
    os.kill(workers[0], signal.SIGKILL)  # child_exit raises SystemExit in the master
    wait_for(lambda: len([p for p in workers_of(m.pid) if p not in workers]) == 1,
             what="a replacement worker")
    assert get(f"http://127.0.0.1:{port}/").text == "ok"
    assert procs.is_alive(m.pid) and m.proc.poll() is None
    assert set(workers_of(m.pid)) >= {workers[1]}
    log = m.log()
    for name, error in [("on_starting", "RuntimeError: on_starting broke"),
                        ("when_ready", "RuntimeError: when_ready broke"),
                        ("post_worker_init", "ValueError: post_worker_init broke"),
                        ("pre_request", "KeyError: 'pre_request broke'"),
                        ("post_request", "ZeroDivisionError"),
                        ("child_exit", "SystemExit: 3")]:
        assert f"hook {name} ({conf}) raised; going on" in log, name
        assert error in log, error
    assert log.count("Traceback (most recent call last)") >= 6


@pytest.mark.parametrize("body, reason", [
    ("workers = 2\n1 / 0\n", "line 2: ZeroDivisionError: division by zero"),
    ("def when_ready(:\n", "line 1: SyntaxError"),
    ("worker = 4\n", "unknown setting 'worker'"),
    ("def on_start(server): pass\n", "unknown hook 'on_start'"),
    ("def when_ready(): pass\n", "hook when_ready must take 1 argument(s): when_ready(server)"),
    ("workers = str(2)\n", "'workers' must be an integer, got '2'"),
])
def test_a_broken_python_config_is_one_line_and_exit_1(tmp_path: Path, body: str,
                                                       reason: str) -> None:
    conf = tmp_path / "bad.conf.py"
    conf.write_text(body)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "hotswap", "start", "--config", str(conf),
                           "--bind", f"127.0.0.1:{free_port()}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"hotswap: error: config file {conf}")
    assert reason in done.stderr, done.stderr


def test_a_timed_out_worker_gets_sigabrt_and_its_worker_abort_hook_runs(
        masters: MasterFactory, tmp_path: Path) -> None:
    out = tmp_path / "abort.out"
    conf = tmp_path / "abort.conf.py"
    conf.write_text(f'''
import os
def worker_abort(worker):
    with open({str(out)!r}, "a") as fh:
        fh.write(f"worker_abort {{os.getpid()}} {{worker.pid}}\\n")
''')
    write_app(tmp_path, "hangapp", '''
import time
def app(environ, start_response):
    if environ["PATH_INFO"] == "/hang":
        time.sleep(60)
    start_response("200 OK", [])
    return [b"ok"]
''')
    port = free_port()
    m = masters("hangapp:app", "--config", str(conf), "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--timeout", "2")
    [hung] = workers_of(m.pid)
    try:
        get(f"http://127.0.0.1:{port}/hang", timeout=20)
    except OSError:
        pass  # the worker left without answering
    wait_for(lambda: out.exists(), 20, what="the worker_abort hook")
    assert out.read_text() == f"worker_abort {hung} {hung}\n"
    assert f"worker {hung} timed out (no heartbeat for" in m.log() and "aborting it" in m.log()
    wait_for(lambda: f"worker {hung} exited with status 1; replacing it" in m.log(),
             what="the aborted worker to be reaped and replaced")
    wait_for(lambda: [p for p in workers_of(m.pid) if p != hung], what="a new worker")
    assert get(f"http://127.0.0.1:{port}/").text == "ok"


@pytest.mark.timeout(90)
def test_a_rollback_calls_on_upgrade_failed_with_rolled_back(masters: MasterFactory,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "hooks.out"
    lines = Lines(out)
    conf = tmp_path / "app.conf.py"
    conf.write_text(HOOKS.format(tag="v1", out=str(out)))
    write_app(tmp_path, "hookapp", APP)
    port = free_port()
    m = masters("hookapp:app", "--config", str(conf), "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--watch-window", "10")
    # The new version boots, then its workers crash: the watch window rolls it back.
    write_app(tmp_path, "hookapp", APP + "import os, threading, time\n"
              "threading.Thread(target=lambda: (time.sleep(1.5), os._exit(1)), daemon=True).start()\n")
    m.signal(signal.SIGUSR2)
    rec = wait_final(m.pidfile, m.pid)
    assert rec.state == names.STATE_ROLLED_BACK, rec.line()
    m.extra_pids.add(rec.new)
    failed = lines.wait("on_upgrade_failed", m.pid)
    assert failed[2].startswith("rolled_back:"), failed
    assert lines.of(m.pid)[-4:] == ["pre_upgrade", "pre_exec", "on_upgrade_ready",
                                    "on_upgrade_failed"]
    assert "on_upgrade_committed" not in lines.of(m.pid)
    assert get(f"http://127.0.0.1:{port}/").text == "ok"
