"""The upgrade orchestrator (Python and sh) against a fake master that plays the protocol.

The fake is a real process family: a Python "old master" that forks two workers, and on
USR2 writes PIDFILE.oldbin and forks+execs a "new master" that writes PIDFILE when ready.
It reacts to WINCH/HUP/QUIT as DESIGN.md says, so the step logic is exercised through
real signals, real /proc and real files, without needing the server itself.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from pidfiles import Pidfile, procs
from upgrade import orchestrator
from upgrade.orchestrator import UpgradeError, UpgradeReport, run_upgrade

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hotswap-upgrade.sh"

FAKE_MASTER = textwrap.dedent(
    r'''
    import os, signal, sys, time
    from setproctitle import setproctitle

    ROLE, PIDFILE = sys.argv[1], sys.argv[2]
    OLDBIN, FAILED = PIDFILE + ".oldbin", PIDFILE + ".upgrade-failed"
    MODE = os.environ.get("FAKE_MODE", "ok")
    READY_DELAY = float(os.environ.get("FAKE_READY_DELAY", "0.2"))
    ME = os.getpid()
    HANDLED = (signal.SIGUSR2, signal.SIGWINCH, signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM)
    queue = []

    def write(path, text):
        tmp = "%s.tmp%d" % (path, ME)
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)

    def read(path):
        try:
            with open(path) as fh:
                return fh.read().strip()
        except OSError:
            return None

    def remove_if_mine(path):
        if (read(path) or "").split()[:1] == [str(ME)]:
            os.unlink(path)

    def worker():
        pid = os.fork()
        if pid:
            return pid
        try:
            setproctitle("hotswap: worker (fake)")
            for sig in HANDLED:
                signal.signal(sig, signal.SIG_IGN)
            stuck = ROLE == "old" and MODE in ("stuck-workers", "m2-crashes")
            signal.signal(signal.SIGTERM, signal.SIG_IGN if stuck else signal.SIG_DFL)
            signal.signal(signal.SIGQUIT, signal.SIG_DFL)
            while os.getppid() == master:
                time.sleep(0.02)
        finally:
            os._exit(0)

    def start_new_master():
        write(OLDBIN, "%d\n" % ME)
        pid = os.fork()
        if pid == 0:
            env = dict(os.environ, HOTSWAP_PARENT_PID=str(ME), HOTSWAP_GENERATION="2")
            os.execve(sys.executable, [sys.executable, __file__, "new", PIDFILE], env)
        return pid

    master = ME
    if ROLE == "old":
        setproctitle("hotswap: master (fake old)")
        write(PIDFILE, "%d\n" % ME)
    for sig in HANDLED:
        signal.signal(sig, lambda s, f: queue.append(s))
    workers = {worker(), worker()}
    new_master, new_ready, winched, born = None, False, False, time.monotonic()

    while True:
        while queue:
            sig = queue.pop(0)
            if sig == signal.SIGUSR2 and ROLE == "old" and new_master is None:
                new_master, new_ready = start_new_master(), False
            elif sig == signal.SIGWINCH and new_master is not None:
                winched = True
                for pid in workers:
                    os.kill(pid, signal.SIGTERM)
            elif sig == signal.SIGHUP and winched:
                # reload: fresh workers replace the retired ones (killed: they may be stuck)
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                workers.clear()
                winched = False
            elif sig in (signal.SIGQUIT, signal.SIGTERM):
                if MODE == ("m2-ignores-quit" if ROLE == "new" else "m1-ignores-quit"):
                    continue
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                remove_if_mine(OLDBIN)
                remove_if_mine(PIDFILE)
                os._exit(0)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            workers.discard(pid)
            if pid == new_master:
                if not new_ready:
                    write(FAILED, "%d %d new master exited with status %d before it was ready\n"
                          % (ME, time.time(), os.waitstatus_to_exitcode(status)))
                if read(PIDFILE) in (None, str(new_master)):
                    write(PIDFILE, "%d\n" % ME)
                remove_if_mine(OLDBIN)
                new_master = None
        if new_master is not None and read(PIDFILE) == str(new_master):
            new_ready = True
        if ROLE == "new" and time.monotonic() - born >= READY_DELAY:
            if MODE == "fail":
                os._exit(3)
            if MODE == "m2-crashes" and read(PIDFILE) == str(ME):
                if time.monotonic() - born >= READY_DELAY + 0.5:
                    os._exit(4)
            elif MODE not in ("fail", "hang", "m2-ignores-quit") and read(PIDFILE) != str(ME):
                write(PIDFILE, "%d\n" % ME)
        while not winched and len(workers) < 2:
            workers.add(worker())
        time.sleep(0.01)
    '''
)


def wait_for(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.01)


def worker_pids(master: int) -> list[int]:
    return [
        pid
        for pid in procs.children(master)
        if (procs.cmdline(pid) or "").startswith("hotswap: worker")
    ]


@dataclass
class Fake:
    pid: int
    pidfile: str
    pf: Pidfile


@contextmanager
def fake_master(tmp_path: Path, mode: str = "ok", ready_delay: float = 0.2) -> Iterator[Fake]:
    script = tmp_path / "fake_hotswap_master.py"
    script.write_text(FAKE_MASTER)
    pidfile = str(tmp_path / "hotswap.pid")
    env = dict(os.environ, FAKE_MODE=mode, FAKE_READY_DELAY=str(ready_delay))
    proc = subprocess.Popen(
        [sys.executable, str(script), "old", pidfile], env=env, start_new_session=True
    )
    try:
        pf = Pidfile(pidfile)
        wait_for(lambda: pf.read() == proc.pid, what="fake master's pidfile")
        wait_for(lambda: len(worker_pids(proc.pid)) == 2, what="fake master's workers")
        yield Fake(proc.pid, pidfile, pf)
    finally:
        # The whole fake family shares the session/group whose id is the old master's pid;
        # the old master is ours to reap, the orphans (new master, its workers) are init's.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
        wait_for(lambda: not live_group_members(proc.pid), what="the fake family to die")


def live_group_members(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.getpgid(int(name)) == pgid and procs.is_alive(int(name)):
                members.append(int(name))
        except ProcessLookupError:
            continue
    return members


# -- UpgradeReport --------------------------------------------------------------------


def test_line_of_a_success_has_every_number() -> None:
    report = UpgradeReport(1234, 5678, 3, 0.411, 0.123, 0.6, "upgraded", "")
    assert report.line() == (
        "upgraded: 1234 -> 5678 (generation 3), ready in 0.41 s, drained in 0.12 s, "
        "handover 0.60 s"
    )


def test_line_of_a_failure_says_the_old_master_still_serves() -> None:
    report = UpgradeReport(old_pid=1234, outcome="failed", reason="new master failed: boom")
    assert report.line() == "upgrade failed, old master 1234 still serving: new master failed: boom"


def test_line_without_a_master_does_not_claim_one_serves() -> None:
    report = UpgradeReport(outcome="failed", reason="no running master: /x.pid is missing")
    assert report.line() == "upgrade failed: no running master: /x.pid is missing"
    died = UpgradeReport(old_pid=7, outcome="failed", reason="old master 7 died", old_alive=False)
    assert "still serving" not in died.line()


def test_line_of_a_rollback_and_notes() -> None:
    report = UpgradeReport(1, 2, 2, 0.1, None, None, "rolled back", "health check failed: 503")
    report.notes.append("something odd")
    assert report.line() == (
        "upgrade rolled back, old master 1 still serving: health check failed: 503; "
        "note: something odd"
    )
    assert "\n" not in report.line()


def test_as_json_round_trips_every_field() -> None:
    report = UpgradeReport(1234, 5678, None, 0.5, 0.25, 1.0, "upgraded", "")
    data = json.loads(report.as_json())
    assert data["old_pid"] == 1234 and data["new_pid"] == 5678
    assert data["generation"] is None and data["ready_seconds"] == 0.5
    assert data["outcome"] == "upgraded" and data["reason"] == ""
    assert data["line"] == report.line()


def test_upgrade_error_carries_its_outcome() -> None:
    exc = UpgradeError("health check failed", outcome="rolled back")
    assert str(exc) == "health check failed" and exc.outcome == "rolled back"
    assert UpgradeError("x").outcome == "failed"


# -- step 1 refusals ------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_missing_pidfile_fails_without_signalling(tmp_path: Path) -> None:
    report = run_upgrade(str(tmp_path / "none.pid"), timeout=1)
    assert report.outcome == "failed"
    assert report.reason.startswith("no running master:")
    assert report.old_pid is None


@pytest.mark.timeout(10)
def test_pidfile_naming_a_non_master_fails(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    pidfile.write_text(f"{os.getpid()}\n")  # pytest: alive, not a hotswap master
    report = run_upgrade(str(pidfile), timeout=1)
    assert report.outcome == "failed"
    assert "not a hotswap master" in report.reason


@pytest.mark.timeout(10)
def test_live_oldbin_means_an_upgrade_is_running(tmp_path: Path) -> None:
    with fake_master(tmp_path) as fake:
        Path(fake.pf.oldbin_path).write_text(f"{os.getpid()}\n")
        report = run_upgrade(fake.pidfile, timeout=1)
        assert report.outcome == "failed"
        assert report.reason == (
            f"an upgrade is already in progress: {fake.pf.oldbin_path} names {os.getpid()}"
        )
        assert worker_pids(fake.pid) and fake.pf.read() == fake.pid  # left untouched


# -- the steps against the fake master ------------------------------------------------


@pytest.mark.timeout(10)
def test_success_path(tmp_path: Path) -> None:
    steps: list[str] = []
    with fake_master(tmp_path) as fake:
        report = run_upgrade(fake.pidfile, timeout=5, on_step=steps.append)
        assert report.outcome == "upgraded", report.line()
        assert report.old_pid == fake.pid
        assert report.new_pid is not None and report.new_pid != fake.pid
        assert report.generation == 2
        assert fake.pf.read() == report.new_pid
        assert not procs.is_alive(fake.pid)
        assert not os.path.exists(fake.pf.oldbin_path)
        assert procs.is_alive(report.new_pid)
        for value in (report.ready_seconds, report.drain_seconds, report.handover_seconds):
            assert value is not None and 0 <= value < 5
        assert report.ready_seconds <= report.handover_seconds  # type: ignore[operator]
        assert report.line().startswith(f"upgraded: {fake.pid} -> {report.new_pid}")
        assert steps[-1] == report.line() and any("WINCH" in s for s in steps)


@pytest.mark.timeout(10)
def test_failure_record_path(tmp_path: Path) -> None:
    with fake_master(tmp_path, mode="fail") as fake:
        report = run_upgrade(fake.pidfile, timeout=5)
        assert report.outcome == "failed"
        assert report.reason == "new master failed: new master exited with status 3 before it was ready"
        assert report.line().startswith(f"upgrade failed, old master {fake.pid} still serving")
        assert fake.pf.read() == fake.pid
        assert procs.is_alive(fake.pid) and len(worker_pids(fake.pid)) == 2


@pytest.mark.timeout(10)
def test_stale_failure_record_is_not_mistaken_for_a_new_one(tmp_path: Path) -> None:
    with fake_master(tmp_path) as fake:
        Path(fake.pf.failed_path).write_text(f"{fake.pid} 1 an earlier upgrade failed\n")
        report = run_upgrade(fake.pidfile, timeout=5)
        assert report.outcome == "upgraded", report.line()


@pytest.mark.timeout(10)
def test_timeout_path_stops_the_late_new_master(tmp_path: Path) -> None:
    with fake_master(tmp_path, mode="hang") as fake:
        report = run_upgrade(fake.pidfile, timeout=1)
        assert report.outcome == "failed"
        assert report.reason.startswith("new master not ready within 1 s; stopped ")
        late = int(report.reason.rsplit(" ", 1)[1])
        assert not procs.is_alive(late)
        assert fake.pf.read() == fake.pid
        assert procs.children(fake.pid) == sorted(worker_pids(fake.pid))
        assert not os.path.exists(fake.pf.oldbin_path)


@pytest.mark.timeout(15)
def test_late_new_master_ignoring_quit_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orchestrator, "KILL_GRACE", 0.5)
    with fake_master(tmp_path, mode="m2-ignores-quit", ready_delay=1e9) as fake:
        steps: list[str] = []
        report = run_upgrade(fake.pidfile, timeout=1, on_step=steps.append)
        assert report.outcome == "failed"
        assert any("SIGKILL" in step for step in steps)
        assert fake.pf.read() == fake.pid


@pytest.mark.timeout(10)
def test_stuck_old_workers_roll_back(tmp_path: Path) -> None:
    with fake_master(tmp_path, mode="stuck-workers") as fake:
        before = set(worker_pids(fake.pid))
        report = run_upgrade(fake.pidfile, timeout=1)
        assert report.outcome == "rolled back", report.line()
        assert report.reason == "old workers did not finish within 1 s"
        assert report.new_pid is not None and not procs.is_alive(report.new_pid)
        assert fake.pf.read() == fake.pid
        # HUP reached M1: it replaced the stuck workers with fresh ones.
        wait_for(lambda: len(worker_pids(fake.pid)) == 2 and not before & set(worker_pids(fake.pid)))
        assert not os.path.exists(fake.pf.oldbin_path)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def health_server(status: int) -> Iterator[str]:
    handler = type("Handler", (_Health,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.timeout(10)
def test_health_check_passing_upgrades(tmp_path: Path) -> None:
    with fake_master(tmp_path) as fake, health_server(204) as url:
        report = run_upgrade(fake.pidfile, timeout=5, health_url=url)
        assert report.outcome == "upgraded", report.line()


@pytest.mark.timeout(10)
def test_health_check_failing_rolls_back(tmp_path: Path) -> None:
    with fake_master(tmp_path) as fake, health_server(503) as url:
        report = run_upgrade(fake.pidfile, timeout=5, health_url=url)
        assert report.outcome == "rolled back"
        assert report.reason == f"health check failed: {url} answered HTTP 503"
        assert report.new_pid is not None and not procs.is_alive(report.new_pid)
        assert fake.pf.read() == fake.pid and len(worker_pids(fake.pid)) == 2


@pytest.mark.timeout(10)
def test_generation_comes_from_the_title_when_setproctitle_hid_the_environment() -> None:
    code = (
        "import sys, setproctitle; setproctitle.setproctitle('hotswap: master generation 5');"
        "print('ok', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, HOTSWAP_GENERATION="9"),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ok\n"
        assert orchestrator._generation(proc.pid) == 5
    finally:
        proc.kill()
        proc.wait(timeout=5)


@pytest.mark.timeout(10)
def test_new_master_dying_during_the_drain_rolls_back(tmp_path: Path) -> None:
    with fake_master(tmp_path, mode="m2-crashes") as fake:
        before = set(worker_pids(fake.pid))
        report = run_upgrade(fake.pidfile, timeout=5)
        assert report.outcome == "rolled back", report.line()
        assert report.reason == f"new master {report.new_pid} exited during the drain"
        assert fake.pf.read() == fake.pid
        wait_for(lambda: len(worker_pids(fake.pid)) == 2 and not before & set(worker_pids(fake.pid)))


@pytest.mark.timeout(10)
def test_old_master_ignoring_quit_is_killed_and_noted(tmp_path: Path) -> None:
    with fake_master(tmp_path, mode="m1-ignores-quit") as fake:
        report = run_upgrade(fake.pidfile, timeout=1)
        assert report.outcome == "upgraded", report.line()
        assert not procs.is_alive(fake.pid)
        assert f"old master {fake.pid} ignored QUIT for 1 s and was killed" in report.notes
        assert f"{fake.pf.oldbin_path} still names the old master {fake.pid}" in report.notes
        assert report.line().count("; note: ") == 2


# -- the same steps through scripts/hotswap-upgrade.sh --------------------------------


def run_script(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.timeout(10)
def test_script_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in ((), ("a", "b", "c"), (str(tmp_path / "p"), "soon"), (str(tmp_path / "p"), "0")):
        result = run_script(*args)
        assert result.returncode == 2, args
        assert result.stdout == "" and "usage:" in result.stderr


@pytest.mark.timeout(10)
def test_script_without_master_fails(tmp_path: Path) -> None:
    result = run_script(str(tmp_path / "none.pid"), "1")
    assert result.returncode == 1
    assert result.stdout.startswith("failed: no running master:")


@pytest.mark.timeout(10)
def test_script_success_path(tmp_path: Path) -> None:
    with fake_master(tmp_path) as fake:
        result = run_script(fake.pidfile, "5")
        new = fake.pf.read()
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == f"upgraded: {fake.pid} -> {new}\n"
        assert new != fake.pid and new is not None and procs.is_alive(new)
        assert not procs.is_alive(fake.pid)
        assert not os.path.exists(fake.pf.oldbin_path)
        assert "sent WINCH" in result.stderr


@pytest.mark.timeout(10)
def test_script_failure_record_path(tmp_path: Path) -> None:
    with fake_master(tmp_path, mode="fail") as fake:
        result = run_script(fake.pidfile, "5")
        assert result.returncode == 1
        assert result.stdout == (
            "failed: new master failed: new master exited with status 3 before it was ready\n"
        )
        assert fake.pf.read() == fake.pid and procs.is_alive(fake.pid)


@pytest.mark.timeout(10)
def test_script_timeout_path(tmp_path: Path) -> None:
    with fake_master(tmp_path, mode="hang") as fake:
        result = run_script(fake.pidfile, "1")
        assert result.returncode == 1
        assert result.stdout.startswith("failed: new master not ready within 1 s; stopped ")
        late = int(result.stdout.split()[-1])
        assert not procs.is_alive(late)
        assert fake.pf.read() == fake.pid
        assert procs.children(fake.pid) == sorted(worker_pids(fake.pid))


@pytest.mark.timeout(10)
def test_script_stuck_old_workers_roll_back(tmp_path: Path) -> None:
    with fake_master(tmp_path, mode="stuck-workers") as fake:
        before = set(worker_pids(fake.pid))
        result = run_script(fake.pidfile, "1")
        assert result.returncode == 1
        assert result.stdout == "rolled back: old workers did not finish within 1 s\n"
        assert fake.pf.read() == fake.pid
        assert not os.path.exists(fake.pf.oldbin_path)
        wait_for(lambda: len(worker_pids(fake.pid)) == 2 and not before & set(worker_pids(fake.pid)))


@pytest.mark.timeout(10)
def test_script_old_master_ignoring_quit_is_killed(tmp_path: Path) -> None:
    with fake_master(tmp_path, mode="m1-ignores-quit") as fake:
        result = run_script(fake.pidfile, "1")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == f"upgraded: {fake.pid} -> {fake.pf.read()}\n"
        assert not procs.is_alive(fake.pid)
        assert "sending SIGKILL" in result.stderr
